"""Cross-task head transfer: heads chosen on task A, centroids from task B's shots, tested on task B.

:func:`transfer_matrix` fills the ``task x task`` accuracy matrix (rows: where the heads were chosen;
columns: where they are used); its diagonal is the plain SAV of each task. With ``baselines=("random", "all")``
it adds, per column, the accuracy of ``k`` random heads and of all heads, without which a transfer number cannot
be read. :meth:`TransferMatrix.mean` averages matrices over seeds (mean and sd). :func:`task_overlap` compares
the tasks' head selections (Jaccard of the top-k sets) and rankings (Spearman correlation of the score tables).

Splits may be :class:`~savlens.outofcore.StoredFeatures` (e.g. ``open_shards(path).subset(indices)``): every SAV is
then scored and fitted streamed, reading only the selected heads for centroids and votes, within
:func:`savlens.outofcore.memory_bound`, and the matrix equals the one computed on the same features in memory.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from savlens.cache import PROMPT_FIELDS, HeadFeatures, check_same_source
from savlens.compare import jaccard, spearman
from savlens.errors import ArgumentError, FeatureError
from savlens.heads import HeadScores, HeadSet
from savlens.outofcore import StoredFeatures
from savlens.sav import SAV
from savlens.scoring import Criterion


@dataclass(frozen=True)
class TaskSplit:
    """A task's labelled few-shot training features and labelled test features (in memory or stored)."""

    train: "HeadFeatures | StoredFeatures"
    test: "HeadFeatures | StoredFeatures"


def _table(tasks: tuple[str, ...], values: Tensor, fmt: str, rows: Sequence[str] = ()) -> str:
    rows = tuple(rows) or tasks
    width = max(8, *(len(t) for t in tasks + rows)) + 1
    lines = [" " * width + "".join(t.rjust(width) for t in tasks)]
    for i, t in enumerate(rows):
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


#: The baseline rows :func:`transfer_matrix` can add, in the order they are drawn.
BASELINES = ("random", "all")


@dataclass(eq=False)
class TransferMatrix:
    """Accuracy of heads chosen on one task (row) used on another (column), with optional baseline rows.

    The baseline rows are kept apart from the task rows: ``accuracy`` is always ``task x task``, and
    ``baselines`` maps a baseline name to one accuracy per column task.

    Attributes:
        tasks: the task names (both axes).
        accuracy: ``task task`` test accuracy; ``accuracy[a, b]`` uses task ``a``'s heads with task ``b``'s
            training centroids on task ``b``'s test features. For a :meth:`mean`, the mean over the matrices.
        heads: the heads each task selected (empty for a :meth:`mean`).
        scores: each task's head scores (empty for a :meth:`mean`).
        k: heads per task.
        baselines: baseline name -> ``task`` accuracy per column task: ``"random"``, the mean over
            ``n_random`` draws of ``k`` random heads (centroids fitted on the column task's training features);
            ``"all"``, an SAV voting with every head. Empty unless asked for.
        random_heads: column task -> the ``n_random`` head sets drawn for it (empty for a :meth:`mean`).
        random_accuracy: column task -> the test accuracy of each draw in ``random_heads``.
        n_random: draws per column of the ``"random"`` baseline (0 without it).
        sd: ``task task`` sample standard deviation over the matrices of a :meth:`mean`; None otherwise.
        baselines_sd: baseline name -> ``task`` sample sd over the matrices of a :meth:`mean`.
        n_matrices: how many matrices a :meth:`mean` averages (1 for one run).
    """

    tasks: tuple[str, ...]
    accuracy: Float[Tensor, "task task"]
    heads: dict[str, HeadSet]
    scores: dict[str, HeadScores]
    k: int
    baselines: dict[str, Float[Tensor, " task"]] = field(default_factory=dict)
    random_heads: dict[str, list[HeadSet]] = field(default_factory=dict)
    random_accuracy: dict[str, list[float]] = field(default_factory=dict)
    n_random: int = 0
    sd: Float[Tensor, "task task"] | None = None
    baselines_sd: dict[str, Float[Tensor, " task"]] = field(default_factory=dict)
    n_matrices: int = 1

    def __getitem__(self, pair: tuple[str, str]) -> float:
        source, target = pair
        try:
            return float(self.accuracy[self.tasks.index(source), self.tasks.index(target)])
        except ValueError:
            raise ArgumentError(f"TransferMatrix: tasks are {self.tasks}; got {pair!r}.") from None

    def baseline_label(self, name: str) -> str:
        """Return the row label of a baseline: ``"20 random heads"``, ``"all heads"``."""
        return f"{self.k} random heads" if name == "random" else f"{name} heads"

    def overlap(self) -> TaskOverlap:
        """Return the Jaccard overlap of the tasks' heads and the Spearman correlation of their scores."""
        if self.n_matrices > 1:
            raise ArgumentError(
                f"TransferMatrix.overlap: this is the mean of {self.n_matrices} matrices, which has no single "
                "head selection; call overlap() on each matrix and average those."
            )
        return task_overlap(self.scores, heads=self.heads)

    @classmethod
    def mean(cls, matrices: "Sequence[TransferMatrix]") -> "TransferMatrix":
        """Average transfer matrices (e.g. one per seed): the mean of every cell and its sample sd.

        ``accuracy`` and ``baselines`` of the result are the means over ``matrices``; ``sd`` and
        ``baselines_sd`` the **sample** standard deviations (Bessel's correction, divisor ``n - 1``: what
        ``torch.std`` and ``numpy.std(ddof=1)`` give), 0 when only one matrix is given. The result has no
        ``heads`` or ``scores`` (each matrix has its own).

        Args:
            matrices: matrices of the same tasks in the same order, the same ``k`` and the same baselines.

        Example:
            >>> a = TransferMatrix(("x", "y"), torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64), {}, {}, 2)
            >>> b = TransferMatrix(("x", "y"), torch.tensor([[0.8, 0.7], [0.5, 1.0]], dtype=torch.float64), {}, {}, 2)
            >>> m = TransferMatrix.mean([a, b])
            >>> m.accuracy[0].tolist(), [round(v, 4) for v in m.sd[0].tolist()], m.n_matrices
            ([0.9, 0.6], [0.1414, 0.1414], 2)
        """
        what = "TransferMatrix.mean"
        matrices = list(matrices)
        if not matrices:
            raise ArgumentError(f"{what}: no matrices given.")
        first = matrices[0]
        for i, m in enumerate(matrices):
            if not isinstance(m, TransferMatrix):
                raise ArgumentError(f"{what}: item {i} is a {type(m).__name__}, not a TransferMatrix.")
            if m.n_matrices > 1:
                raise ArgumentError(
                    f"{what}: matrix {i} is already a mean of {m.n_matrices} matrices; average the matrices themselves."
                )
            if m.tasks != first.tasks:
                raise ArgumentError(
                    f"{what}: matrix {i} has tasks {m.tasks} but matrix 0 has {first.tasks}; average matrices "
                    "of the same tasks in the same order."
                )
            if m.k != first.k:
                raise ArgumentError(f"{what}: matrix {i} has k={m.k} but matrix 0 has k={first.k}.")
            if tuple(m.baselines) != tuple(first.baselines) or m.n_random != first.n_random:
                raise ArgumentError(
                    f"{what}: matrix {i} has baselines {tuple(m.baselines)} (n_random={m.n_random}) but matrix 0 "
                    f"has {tuple(first.baselines)} (n_random={first.n_random}); compute them the same way."
                )
        accuracy, sd = _mean_sd([m.accuracy for m in matrices])
        means, sds = {}, {}
        for name in first.baselines:
            means[name], sds[name] = _mean_sd([m.baselines[name] for m in matrices])
        return cls(
            first.tasks,
            accuracy,
            {},
            {},
            first.k,
            baselines=means,
            n_random=first.n_random,
            sd=sd,
            baselines_sd=sds,
            n_matrices=len(matrices),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the matrix.

        Keys: ``tasks``, ``accuracy`` (rows), ``heads``, ``k``; with baselines also ``baselines`` (name -> one
        accuracy per column), ``n_random`` and ``random_accuracy`` (each draw's accuracy per column; the drawn
        head sets themselves are left out, see ``random_heads``); for a :meth:`mean` also ``sd``,
        ``baselines_sd`` and ``n_matrices``.
        """
        out: dict[str, Any] = {
            "tasks": list(self.tasks),
            "accuracy": self.accuracy.tolist(),
            "heads": {t: h.to_list() for t, h in self.heads.items()},
            "k": self.k,
        }
        if self.baselines:
            out["baselines"] = {name: v.tolist() for name, v in self.baselines.items()}
        if self.n_random:
            out["n_random"] = self.n_random
        if self.random_accuracy:
            out["random_accuracy"] = {t: list(v) for t, v in self.random_accuracy.items()}
        if self.sd is not None:
            out["n_matrices"] = self.n_matrices
            out["sd"] = self.sd.tolist()
            out["baselines_sd"] = {name: v.tolist() for name, v in self.baselines_sd.items()}
        return out

    def __str__(self) -> str:
        head = f"accuracy (rows: heads from; columns: used on), k={self.k}"
        if self.n_matrices > 1:
            head += f", mean of {self.n_matrices} matrices"
        rows = self.tasks + tuple(self.baseline_label(n) for n in self.baselines)
        values = torch.cat([self.accuracy, *(v[None] for v in self.baselines.values())])
        text = f"{head}\n{_table(self.tasks, values, '.3f', rows)}"
        if self.sd is not None:
            sds = torch.cat([self.sd, *(v[None] for v in self.baselines_sd.values())])
            text += f"\nsample sd over the {self.n_matrices} matrices\n{_table(self.tasks, sds, '.3f', rows)}"
        return text


def _mean_sd(values: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Return the mean and the sample sd (divisor n - 1; 0 for one value) of equally shaped tensors.

    Computed with numpy (``mean(0)``, ``std(0, ddof=1)``) in float64, so a result equals what numpy gives on the
    same numbers bit for bit; it agrees with ``torch.mean`` / ``torch.std`` to about 1e-16.
    """
    x = np.stack([v.double().numpy() for v in values])
    sd = x.std(0, ddof=1) if len(x) > 1 else np.zeros_like(x[0])
    return torch.from_numpy(x.mean(0)), torch.from_numpy(sd)


def _check_baselines(baselines: Sequence[str] | str, n_random: int) -> tuple[str, ...]:
    names = (baselines,) if isinstance(baselines, str) else tuple(baselines)
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise ArgumentError(
            f"transfer_matrix: unknown baselines {unknown}; choose from {BASELINES} (e.g. baselines=('random', 'all'))."
        )
    if "random" in names and (isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1):
        raise ArgumentError(
            f"transfer_matrix: n_random must be a positive int (draws of random heads); got {n_random!r}."
        )
    return tuple(b for b in BASELINES if b in names)


def _check_same_prompt(name: str, split: TaskSplit) -> None:
    """Refuse a task whose test features were rendered otherwise than its training features (template, chat)."""
    train, test = split.train.describe(), split.test.describe()
    diff = [f"{k}: train {train[k]!r}, test {test[k]!r}" for k in PROMPT_FIELDS if train[k] != test[k]]
    if diff:
        raise FeatureError(
            f"transfer_matrix: task {name!r} has test features made otherwise than its training features "
            f"({'; '.join(diff)}); extract both with the same prompt template, chat and system prompt."
        )


def transfer_matrix(
    tasks: "Mapping[str, TaskSplit | tuple[HeadFeatures | StoredFeatures, HeadFeatures | StoredFeatures]]",
    *,
    k: int = 20,
    criterion: str | Criterion = "centroid",
    mode: str | None = None,
    seed: int = 0,
    reference: bool = False,
    baselines: Sequence[str] | str = (),
    n_random: int = 10,
) -> TransferMatrix:
    """Select heads on each task and evaluate them on every task, optionally against baseline rows.

    Heads of task ``a`` come from an SAV fitted on ``a``'s training features; for target ``b`` their class
    centroids are fitted on ``b``'s training features (:meth:`SAV.fit_heads`) and accuracy measured on
    ``b``'s test features. All features must come from the same model, hook, positions and grid; the prompt
    (template, chat, system prompt) may differ between tasks but not between a task's training and test features.

    Baselines (``TransferMatrix.baselines``, one accuracy per column task ``b``):

    - ``"random"``: ``k`` heads drawn uniformly without replacement, centroids fitted on ``b``'s training
      features (:meth:`SAV.fit_heads`), scored on ``b``'s test features; the mean over ``n_random`` draws. The
      draws come from one ``numpy.random.default_rng(seed)``: ``n_random`` draws for the first column, then
      ``n_random`` for the next, in task order; each draw is ``rng.choice(layer * head_index, k,
      replace=False)`` over flat layer-major head indices. Each column has its own draws
      (``TransferMatrix.random_heads``, with their accuracies in ``random_accuracy``).
    - ``"all"``: an SAV with ``k`` = every head (``layer * head_index``) fitted on ``b``'s training features.

    Args:
        tasks: task name -> :class:`TaskSplit` (or a ``(train, test)`` pair), all labelled.
        k: heads per task (and per random draw).
        criterion: the head-selection criterion (a registered name or a function; see :mod:`savlens.scoring`).
        mode: scoring mode (None: the criterion's default).
        seed: fold and tie-break seed, and the seed of the random draws.
        reference: use reference-mode SAVs.
        baselines: any of ``"random"`` and ``"all"`` (they are computed and drawn in that order).
        n_random: draws of random heads per column.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(80, 2, 4, 8, generator=g)
        >>> z[0::2, 1, 2, 0] += 8; z[1::2, 1, 2, 1] += 8  # one informative head: L1H2
        >>> f = HeadFeatures(z, labels=["yes", "no"] * 40)
        >>> split = lambda start: (f.subset(range(start, start + 20)), f.subset(range(start + 20, start + 40)))
        >>> tasks = {"a": split(0), "b": split(40)}
        >>> m = transfer_matrix(tasks, k=1, baselines=("random", "all"), n_random=4)
        >>> m["a", "b"], len(m.random_heads["b"]), m.baselines["random"].shape
        (1.0, 4, torch.Size([2]))
    """
    if not tasks:
        raise ArgumentError("transfer_matrix: no tasks given.")
    chosen = _check_baselines(baselines, n_random)
    splits = {name: s if isinstance(s, TaskSplit) else TaskSplit(*s) for name, s in tasks.items()}
    names = tuple(splits)
    first = splits[names[0]].train
    for name, split in splits.items():
        for part, feats in (("train", split.train), ("test", split.test)):
            check_same_source(first, feats, f"the features of task {names[0]!r} and task {name!r} ({part})")
        _check_same_prompt(name, split)

    def make(n_heads: int = k) -> SAV:
        return SAV(n_heads, criterion, mode, seed, reference)

    savs = {t: make().fit(splits[t].train) for t in names}
    acc = torch.zeros(len(names), len(names), dtype=torch.float64)
    for i, source in enumerate(names):
        for j, target in enumerate(names):
            sav = savs[source] if i == j else make().fit_heads(splits[target].train, heads=savs[source].heads_)
            acc[i, j] = sav.score(splits[target].test)
    scores = {t: s.scores_ for t, s in savs.items() if s.scores_ is not None}
    rows: dict[str, Tensor] = {}
    random_heads: dict[str, list[HeadSet]] = {}
    random_accuracy: dict[str, list[float]] = {}
    n_heads, layers = first.n_heads, first.layers or tuple(range(first.n_layers))
    n_all = len(layers) * n_heads
    if "random" in chosen:
        rng = np.random.default_rng(seed)
        for target in names:
            s = splits[target]
            random_heads[target], random_accuracy[target] = [], []
            for _ in range(n_random):
                flat = rng.choice(n_all, size=k, replace=False).tolist()
                heads = HeadSet([(layers[f // n_heads], f % n_heads) for f in flat])
                sav = make().fit_heads(s.train, heads=heads)
                random_heads[target].append(heads)
                random_accuracy[target].append(sav.score(s.test))
        rows["random"] = torch.tensor([float(np.mean(random_accuracy[t])) for t in names], dtype=torch.float64)
    if "all" in chosen:
        every = [make(n_all).fit(splits[t].train).score(splits[t].test) for t in names]
        rows["all"] = torch.tensor(every, dtype=torch.float64)
    return TransferMatrix(
        names,
        acc,
        {t: s.heads_ for t, s in savs.items()},
        scores,
        k,
        baselines=rows,
        random_heads=random_heads,
        random_accuracy=random_accuracy,
        n_random=n_random if "random" in chosen else 0,
    )


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
        >>> o.jaccard[0, 1].item(), round(o.spearman[0, 1].item(), 6)
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
