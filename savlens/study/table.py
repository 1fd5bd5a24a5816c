"""The tidy result table of a study: one row per setting and seed, summaries over seeds, export, figures."""

import csv
import json
import math
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from savlens.errors import ArgumentError, LoadError
from savlens.io import json_safe, write_bytes
from savlens.stats import t_quantile_975

#: The setting columns of a row (what a summary groups by, besides the seed).
SETTING = ("kind", "source", "target", "shots", "k", "criterion", "mode", "voting")
#: What a row is: the SAV of a task on itself, heads transferred between tasks, or a baseline.
KINDS = ("sav", "transfer", "random", "all")

@dataclass
class StudyRow:
    """One setting and seed of a study, with its test results.

    Attributes:
        kind: ``"sav"`` (heads chosen and used on ``target``), ``"transfer"`` (heads chosen on ``source``, class
            centroids and vote weights from ``target``'s shots), ``"random"`` (``k`` random heads, the mean over
            the study's ``n_random`` draws) or ``"all"`` (every head votes).
        source: the task the heads were chosen on (None for the baselines).
        target: the task the SAV was fitted (centroids, vote weights) and tested on.
        shots: training examples per class.
        k: heads voting.
        seed: the seed of the split, the criterion's folds, the top-k tie-breaks and the random heads.
        criterion: the head-selection criterion (None for the baselines).
        mode: the criterion's mode (None: its default).
        voting: the voting rule.
        accuracy: test accuracy.
        macro_f1: test macro-F1 over the target's classes.
        recall: class label (as text) -> test recall.
        heads: the voting heads, best first (empty for the baselines).
        n_train: training examples (shots x classes).
        n_test: test examples.
        seconds: time to fit the SAV (centroids, vote weights) and test it; ``score_seconds`` is the criterion's.
        score_seconds: time of the criterion on the source task's shots (shared by the rows that use it).
    """

    kind: str
    source: str | None
    target: str
    shots: int
    k: int
    seed: int
    criterion: str | None
    mode: str | None
    voting: str
    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    heads: list[str] = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0
    seconds: float = 0.0
    score_seconds: float = 0.0

    def setting(self) -> tuple[Any, ...]:
        """Return the values of :data:`SETTING`: what identifies the row besides its seed."""
        return tuple(getattr(self, name) for name in SETTING)


class StudyTable:
    """The result of :func:`savlens.study.run_study`: a tidy table, one :class:`StudyRow` per setting and seed.

    Attributes:
        rows: the rows, in the order they were run.
        config: the study's settings (JSON-serialisable).
        tasks: task name -> what its features were (examples, classes, model, hook).
    """

    def __init__(self, rows: Iterable[StudyRow], config: Mapping[str, Any], tasks: Mapping[str, Any]) -> None:
        self.rows = list(rows)
        self.config = dict(config)
        self.tasks = dict(tasks)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"StudyTable({len(self.rows)} rows; tasks {list(self.tasks)})"

    # views -------------------------------------------------------------------------------------------
    def records(self, *, timing: bool = True) -> list[dict[str, Any]]:
        """Return the rows as dicts (``recall`` a dict, ``heads`` a list); ``timing=False`` drops the times,
        which is what two runs of the same config must agree on."""
        out = []
        for row in self.rows:
            r = asdict(row)
            if not timing:
                r.pop("seconds")
                r.pop("score_seconds")
            out.append(r)
        return out

    def flat_records(self) -> list[dict[str, Any]]:
        """Return the rows flattened for CSV and pandas: ``heads`` as one space-separated string and one
        ``recall[<class>]`` column per class (empty where the row's task has no such class)."""
        classes = list(dict.fromkeys(c for row in self.rows for c in row.recall))
        out = []
        for r in self.records():
            recall = r.pop("recall")
            r["heads"] = " ".join(r["heads"])
            r |= {f"recall[{c}]": recall.get(c) for c in classes}
            out.append(r)
        return out

    def select(self, **where: Any) -> "StudyTable":
        """Return the rows whose columns equal the given values (a list or tuple: any of them).

        Example: ``table.select(kind="sav", voting=["majority", "reliability"])``.
        """
        for name in where:
            if name not in StudyRow.__dataclass_fields__:
                raise ArgumentError(
                    f"StudyTable.select: no column {name!r}; columns: {list(StudyRow.__dataclass_fields__)}."
                )

        def keep(row: StudyRow) -> bool:
            for name, want in where.items():
                value = getattr(row, name)
                if isinstance(want, list | tuple | set):
                    if value not in want:
                        return False
                elif value != want:
                    return False
            return True

        return StudyTable([r for r in self.rows if keep(r)], self.config, self.tasks)

    def summary(self, metric: str = "accuracy") -> list[dict[str, Any]]:
        """Return the mean of ``metric`` over seeds per setting, with its sample sd and a 95% interval.

        One dict per setting (the :data:`SETTING` columns), in the order settings first appear: those columns
        and ``n`` (seeds), ``mean``, ``sd`` (sample sd, divisor n - 1; 0 for one seed), ``ci_low`` / ``ci_high``
        (Student t interval ``mean ± t_{0.975, n-1} sd / sqrt(n)``; equal to the mean for one seed),
        ``min``, ``max``.
        """
        if metric not in ("accuracy", "macro_f1", "seconds"):
            raise ArgumentError(
                f"StudyTable.summary: metric must be 'accuracy', 'macro_f1' or 'seconds'; got {metric!r}."
            )
        groups: dict[tuple[Any, ...], list[float]] = {}
        for row in self.rows:
            groups.setdefault(row.setting(), []).append(float(getattr(row, metric)))
        out = []
        for setting, values in groups.items():
            a = np.asarray(values, dtype=np.float64)
            n = a.size
            sd = float(a.std(ddof=1)) if n > 1 else 0.0
            half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else 0.0
            mean = float(a.mean())
            out.append(
                dict(zip(SETTING, setting))
                | {
                    "metric": metric,
                    "n": n,
                    "mean": mean,
                    "sd": sd,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                    "min": float(a.min()),
                    "max": float(a.max()),
                }  # fmt: skip
            )
        return out

    def to_markdown(self, columns: Sequence[str] = ("target", "shots", "k", "criterion", "voting")) -> str:
        """Return the summary over seeds as a Markdown table: ``columns``, then accuracy (mean ± sd and its 95%
        interval) and macro-F1 (mean ± sd), one line per setting. Select rows first with :meth:`select`."""
        acc, f1 = self.summary("accuracy"), self.summary("macro_f1")
        head = [*columns, "seeds", "accuracy", "95% interval", "macro-F1"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns) + "---:|" * 4]
        for a, f in zip(acc, f1):
            cells = ["-" if a[c] is None else str(a[c]) for c in columns]
            cells += [
                str(a["n"]),
                f"{a['mean']:.3f} ± {a['sd']:.3f}",
                f"{a['ci_low']:.3f} .. {a['ci_high']:.3f}",
                f"{f['mean']:.3f} ± {f['sd']:.3f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        acc, f1 = self.summary("accuracy"), self.summary("macro_f1")
        cols = ["kind", "source", "target", "shots", "k", "criterion", "voting"]
        head = [*cols, "seeds", "accuracy", "95% interval", "macro-F1"]
        lines = []
        for a, f in zip(acc, f1):
            cells = [str(a[c]) if a[c] is not None else "-" for c in cols]
            cells += [str(a["n"]), f"{a['mean']:.3f}", f"{a['ci_low']:.3f}..{a['ci_high']:.3f}", f"{f['mean']:.3f}"]
            lines.append(cells)
        widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(head)]
        text = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        text += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
        return "\n".join(text)

    # export ------------------------------------------------------------------------------------------
    def to_pandas(self) -> Any:
        """Return a ``pandas.DataFrame`` of :meth:`flat_records` (needs pandas: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise LoadError("StudyTable.to_pandas needs pandas, which is not installed: pip install pandas.") from None
        return pd.DataFrame(self.flat_records())

    def to_dict(self) -> dict[str, Any]:
        """Return the table as JSON-serialisable data: ``config``, ``tasks``, ``rows`` and the ``summary`` of
        accuracy and macro-F1."""
        return json_safe(
            {
                "config": self.config,
                "tasks": self.tasks,
                "rows": self.records(),
                "summary": {"accuracy": self.summary("accuracy"), "macro_f1": self.summary("macro_f1")},
            }
        )

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` to ``path`` as indented JSON (atomically); return the path."""
        data = json.dumps(self.to_dict(), indent=1) + "\n"
        write_bytes(Path(path), data.encode("utf-8"))
        return Path(path)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`flat_records` to ``path`` as CSV (atomically); return the path."""
        import io

        rows = self.flat_records()
        buf = io.StringIO()
        names = list(rows[0]) if rows else list(StudyRow.__dataclass_fields__)
        writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_bytes(Path(path), buf.getvalue().encode("utf-8"))
        return Path(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StudyTable":
        """Rebuild a table from :meth:`to_dict` (e.g. a committed JSON)."""
        return cls([StudyRow(**r) for r in data["rows"]], data.get("config", {}), data.get("tasks", {}))

    # curves and matrices for figures ---------------------------------------------------------------
    def curves(
        self, x: str, target: str, *, label: Sequence[str] = ("criterion", "voting"), **fixed: Any
    ) -> dict[str, Any]:
        """Return ``{"x": values, "curves": {name: one list of per-seed accuracies per x value}}`` for the SAV
        rows (``kind="sav"``) of ``target``, one curve per distinct ``label`` columns, other columns fixed.

        ``x`` is ``"shots"`` or ``"k"``; ``fixed`` gives the other columns' values (defaults: the most shots, the
        k nearest 20 (the paper's), the first criterion, mode and voting rule of the table).
        """
        rows = [r for r in self.rows if r.kind == "sav" and r.target == target]
        for name in ("shots", "k", "criterion", "mode", "voting"):
            if name == x or name in label:
                continue
            want = fixed.get(name, _default(rows, name))
            rows = [r for r in rows if getattr(r, name) == want]
        xs = sorted({getattr(r, x) for r in rows})
        curves: dict[str, list[list[float]]] = {}
        for r in rows:
            name = "/".join(str(getattr(r, c)) for c in label)
            curves.setdefault(name, [[] for _ in xs])[xs.index(getattr(r, x))].append(r.accuracy)
        return {"x": xs, "curves": curves}

    def transfer_matrix(self, **fixed: Any) -> Any:
        """Return the seed-mean :class:`~savlens.transfer.TransferMatrix` of one setting (mean and sd over seeds).

        Cells with no row (a pair the study did not run) are NaN. ``fixed`` picks ``shots``, ``k``,
        ``criterion``, ``mode``, ``voting`` (defaults as for :meth:`curves`). The
        baseline rows are those of the same shots (and k, for random heads) and seed, under majority voting.
        """
        from savlens.heads import HeadSet
        from savlens.transfer import TransferMatrix

        sav = [r for r in self.rows if r.kind in ("sav", "transfer")]
        if not sav:
            raise ArgumentError("StudyTable.transfer_matrix: the table has no SAV rows.")
        want = {n: fixed.get(n, _default(sav, n)) for n in ("shots", "k", "criterion", "mode", "voting")}
        rows = [r for r in sav if all(getattr(r, n) == v for n, v in want.items())]
        tasks = tuple(self.tasks)
        seeds = sorted({r.seed for r in rows})
        matrices = []
        for seed in seeds:
            acc = torch.full((len(tasks), len(tasks)), float("nan"), dtype=torch.float64)
            heads = {}
            for r in rows:
                if r.seed == seed:
                    acc[tasks.index(r.source or ""), tasks.index(r.target)] = r.accuracy
                    if r.kind == "sav":
                        heads[r.target] = HeadSet(r.heads)
            baselines = {}
            for kind in ("random", "all"):
                cells = {
                    r.target: r.accuracy
                    for r in self.rows
                    if r.kind == kind
                    and r.seed == seed
                    and r.shots == want["shots"]
                    and (kind == "all" or r.k == want["k"])
                }
                if cells:
                    baselines[kind] = torch.tensor([cells.get(t, float("nan")) for t in tasks], dtype=torch.float64)
            n_random = int(self.config.get("n_random", 0)) if "random" in baselines else 0
            matrices.append(
                TransferMatrix(tasks, acc, heads, {}, int(want["k"]), baselines=baselines, n_random=n_random)
            )
        if not matrices:
            raise ArgumentError(f"StudyTable.transfer_matrix: no rows for {want}.")
        return TransferMatrix.mean(matrices)


def write_figures(table: StudyTable, folder: str | os.PathLike[str], *, prefix: str = "") -> dict[str, str]:
    """Write the study's standard figures into ``folder`` (file names after ``prefix``); return name -> path.

    - ``accuracy-vs-shots-<task>.png`` (when the study has several shots): one curve per criterion and voting
      rule, mean over seeds with a min-max band (:func:`savlens.plot.accuracy_vs_shots`);
    - ``accuracy-vs-k-<task>.png`` (when it has several k): the same against k;
    - ``transfer.png`` (when it has transfer rows or baselines): the seed-mean transfer matrix with its baseline
      rows (:func:`savlens.plot.transfer_heatmap`).

    The settings not on an axis are fixed as in :meth:`StudyTable.curves`: the most shots, the k nearest 20,
    the first criterion, mode and voting rule.
    """
    from savlens import plot

    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    config = table.config
    chance = {t: 1.0 / max(1, len(info.get("classes", []))) for t, info in table.tasks.items()}

    def save(fig: Any, name: str) -> None:
        name = prefix + name
        path = out_dir / name
        fig.savefig(path, dpi=110)
        written[name] = str(path)

    for task in table.tasks:
        for x, draw in (("shots", plot.accuracy_vs_shots), ("k", plot.accuracy_vs_k)):
            if len(config.get(x, ())) < 2:
                continue
            c = table.curves(x, task)
            if c["curves"]:
                fixed = "k" if x == "shots" else "shots"
                value = _default([r for r in table.rows if r.kind == "sav"], fixed)
                title = f"{task}: accuracy vs {x} ({fixed}={value}; mean, min-max of seeds)"
                fig = draw(c["x"], c["curves"], chance=chance[task], title=title)
                save(fig, f"accuracy-vs-{x}-{_slug(task)}.png")
    if any(r.kind in ("transfer", "random", "all") for r in table.rows) and len(table.tasks) > 0:
        matrix = table.transfer_matrix()
        title = f"head transfer, k={matrix.k}" + (
            f" (mean ± sd, {matrix.n_matrices} seeds)" if matrix.n_matrices > 1 else ""
        )
        fig = plot.transfer_heatmap(matrix, title=title)
        fig.set_size_inches(max(5.0, 1.6 * len(table.tasks) + 3.2), max(3.6, 0.7 * (len(table.tasks) + 2) + 2.0))
        save(fig, "transfer.png")
    return written


def _default(rows: Sequence[StudyRow], name: str) -> Any:
    """The value a figure fixes column ``name`` at: the most shots, the k nearest 20, else the first value."""
    values = list(dict.fromkeys(getattr(r, name) for r in rows))
    if not values:
        return None
    if name == "shots":
        return max(values)
    if name == "k":
        return min(values, key=lambda k: (abs(k - 20), k))
    return values[0]


def _slug(name: Hashable) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(name))
