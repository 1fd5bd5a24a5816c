"""Cross-task head transfer: heads chosen on task A, centroids from task B's shots, tested on task B.

:func:`transfer_matrix` fills the ``task x task`` accuracy matrix (rows: where the heads were chosen;
columns: where they are used); its diagonal is the plain SAV of each task. :func:`task_overlap` compares the
tasks' head selections (Jaccard of the top-k sets) and rankings (Spearman correlation of the score tables).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.compare import jaccard, spearman
from savlens.errors import ArgumentError
from savlens.heads import HeadScores, HeadSet
from savlens.sav import SAV
from savlens.scoring import Scorer


@dataclass(frozen=True)
class TaskSplit:
    """A task's labelled few-shot training features and labelled test features."""

    train: HeadFeatures
    test: HeadFeatures


def _table(tasks: tuple[str, ...], values: Tensor, fmt: str) -> str:
    width = max(8, *(len(t) for t in tasks)) + 1
    lines = [" " * width + "".join(t.rjust(width) for t in tasks)]
    for i, t in enumerate(tasks):
        lines.append(t.ljust(width) + "".join(format(float(v), fmt).rjust(width) for v in values[i]))
    return "\n".join(lines)


@dataclass(eq=False)
class TaskOverlap:
    """How much tasks agree on heads.

    Attributes:
        tasks: the task names (both axes).
        jaccard: ``task task`` Jaccard overlap of the tasks' top-``k`` head sets.
        spearman: ``task task`` Spearman correlation of the tasks' full head score tables.
        k: the size of the compared head sets.
    """

    tasks: tuple[str, ...]
    jaccard: Float[Tensor, "task task"]
    spearman: Float[Tensor, "task task"]
    k: int

    def __str__(self) -> str:
        return (
            f"Jaccard overlap of top-{self.k} heads\n{_table(self.tasks, self.jaccard, '.2f')}\n"
            f"Spearman correlation of head scores\n{_table(self.tasks, self.spearman, '.2f')}"
        )


@dataclass(eq=False)
class TransferMatrix:
    """Accuracy of heads chosen on one task (row) used on another (column).

    Attributes:
        tasks: the task names (both axes).
        accuracy: ``task task`` test accuracy; ``accuracy[a, b]`` uses task ``a``'s heads with task ``b``'s
            training centroids on task ``b``'s test features.
        heads: the heads each task selected.
        scores: each task's head scores.
        k: heads per task.
    """

    tasks: tuple[str, ...]
    accuracy: Float[Tensor, "task task"]
    heads: dict[str, HeadSet]
    scores: dict[str, HeadScores]
    k: int

    def __getitem__(self, pair: tuple[str, str]) -> float:
        source, target = pair
        try:
            return float(self.accuracy[self.tasks.index(source), self.tasks.index(target)])
        except ValueError:
            raise ArgumentError(f"TransferMatrix: tasks are {self.tasks}; got {pair!r}.") from None

    def overlap(self) -> TaskOverlap:
        """Return the Jaccard overlap of the tasks' heads and the Spearman correlation of their scores."""
        return task_overlap(self.scores, heads=self.heads)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (tasks, accuracy rows, heads)."""
        return {
            "tasks": list(self.tasks),
            "accuracy": self.accuracy.tolist(),
            "heads": {t: h.to_list() for t, h in self.heads.items()},
            "k": self.k,
        }

    def __str__(self) -> str:
        return f"accuracy (rows: heads from; columns: used on), k={self.k}\n{_table(self.tasks, self.accuracy, '.3f')}"


def transfer_matrix(
    tasks: Mapping[str, TaskSplit | tuple[HeadFeatures, HeadFeatures]],
    *,
    k: int = 20,
    scorer: str | Scorer = "centroid",
    mode: str | None = None,
    seed: int = 0,
    reference: bool = False,
) -> TransferMatrix:
    """Select heads on each task and evaluate them on every task.

    Heads of task ``a`` come from an SAV fitted on ``a``'s training features; for target ``b`` their class
    centroids are fitted on ``b``'s training features (:meth:`SAV.fit_heads`) and accuracy measured on
    ``b``'s test features. All features must come from the same model, hook, positions and grid (prompt
    templates may differ between tasks).

    Args:
        tasks: task name -> :class:`TaskSplit` (or a ``(train, test)`` pair), all labelled.
        k: heads per task.
        scorer: criterion (see :mod:`savlens.scoring`).
        mode: scoring mode (None: the criterion's default).
        seed: fold and tie-break seed.
        reference: use reference-mode SAVs.
    """
    if not tasks:
        raise ArgumentError("transfer_matrix: no tasks given.")
    splits = {name: s if isinstance(s, TaskSplit) else TaskSplit(*s) for name, s in tasks.items()}
    names = tuple(splits)
    first = splits[names[0]].train
    for name, split in splits.items():
        for part, feats in (("train", split.train), ("test", split.test)):
            first.check_compatible(feats, f"the features of task {names[0]!r} and task {name!r} ({part})")
    savs = {t: SAV(k, scorer, mode, seed, reference).fit(splits[t].train) for t in names}
    acc = torch.zeros(len(names), len(names), dtype=torch.float64)
    for i, source in enumerate(names):
        for j, target in enumerate(names):
            if i == j:
                sav = savs[source]
            else:
                sav = SAV(k, scorer, mode, seed, reference).fit_heads(splits[target].train, heads=savs[source].heads_)
            acc[i, j] = sav.score(splits[target].test)
    scores = {t: s.scores_ for t, s in savs.items() if s.scores_ is not None}
    return TransferMatrix(names, acc, {t: s.heads_ for t, s in savs.items()}, scores, k)


def task_overlap(
    scores: Mapping[str, HeadScores], *, k: int = 20, seed: int = 0, heads: Mapping[str, HeadSet] | None = None
) -> TaskOverlap:
    """Compare tasks' head choices: Jaccard of their top-``k`` sets and Spearman of their score tables.

    Args:
        scores: task name -> that task's :class:`HeadScores` (same grid).
        k: size of the top-k sets (ignored where ``heads`` gives a task's selection).
        seed: tie-break seed of :meth:`HeadScores.top_k`.
        heads: optional task name -> selected heads (e.g. a reference-mode selection).

    Example:
        >>> a = HeadScores(torch.tensor([[3.0, 2.0], [1.0, 0.0]]), "demo")
        >>> b = HeadScores(torch.tensor([[3.0, 0.0], [1.0, 2.0]]), "demo")
        >>> o = task_overlap({"A": a, "B": b}, k=2)
        >>> o.jaccard[0, 1].item(), o.spearman[0, 1].item()
        (0.3333333333333333, 0.2)
    """
    names = tuple(scores)
    chosen = {t: (heads or {}).get(t) or scores[t].top_k(k, seed=seed) for t in names}
    size = len(next(iter(chosen.values()))) if chosen else k
    jac = torch.ones(len(names), len(names), dtype=torch.float64)
    rho = torch.ones(len(names), len(names), dtype=torch.float64)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                jac[i, j] = jaccard(chosen[a], chosen[b])
                rho[i, j] = spearman(scores[a], scores[b])
    return TaskOverlap(names, jac, rho, size)
