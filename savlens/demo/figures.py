"""The demo's figures and the accuracy sweeps (over shots and over k) they draw."""

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from savlens.cache import HeadFeatures
from savlens.demo.tasks import DemoTask
from savlens.errors import SavlensError
from savlens.inputs import Batch
from savlens.loading import Model
from savlens.sav import SAV
from savlens.tracing import trace

# ---- the accuracy sweeps --------------------------------------------------------------------------------

SHOTS_SWEEP = (1, 2, 5, 10, 20)
K_SWEEP = (1, 2, 5, 10, 20, 50, 100)
SWEEP_SEEDS = 5


def accuracy_by_k(train: HeadFeatures, test: HeadFeatures, ks: Sequence[int], *, seed: int = 0) -> list[float]:
    """Return the test accuracy of an SAV fitted on ``train`` for each number of heads ``k``."""
    return [SAV(k=k, seed=seed).fit(train).score(test) for k in ks]


def accuracy_by_shots(
    train: HeadFeatures, test: HeadFeatures, shots: Sequence[int], *, k: int = 20, seeds: int = SWEEP_SEEDS
) -> list[list[float]]:
    """Return, per number of shots, the test accuracies of SAVs fitted on seeded per-class subsets of ``train``.

    ``k`` is capped at the number of heads; with all of ``train``'s shots one subset is drawn (it is the
    training set), otherwise ``seeds`` subsets. With one shot per class every leave-one-out head score is 0 (a
    lone example has no centroid of its own class), so the heads are the seeded tie-break's: that point is a
    random-heads baseline.
    """
    labels = list(train.labels or [])
    by_class: dict[Hashable, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    most = min(len(v) for v in by_class.values())
    k = min(k, train.n_layers * train.n_heads)
    out = []
    for n in shots:
        runs = []
        for s in range(1 if n >= most else seeds):
            rng = np.random.default_rng(s)
            idx = sorted(i for v in by_class.values() for i in rng.permutation(v)[: min(n, most)].tolist())
            runs.append(SAV(k=k, seed=s).fit(train.subset(idx)).score(test))
        out.append(runs)
    return out


def pair_tasks(classes: Sequence[Hashable], n_pairs: int = 3) -> list[tuple[Hashable, Hashable]]:
    """Return up to ``n_pairs`` disjoint-ish class pairs for the head-overlay and transfer figures.

    >>> pair_tasks(["a", "b", "c", "d", "e"])
    [('a', 'b'), ('c', 'd'), ('e', 'a')]
    """
    cs = list(classes)
    return [(cs[(2 * i) % len(cs)], cs[(2 * i + 1) % len(cs)]) for i in range(min(n_pairs, len(cs) // 2 + 1))]


# ---- the figures ----------------------------------------------------------------------------------------


def write_figures(
    out: Path,
    task: DemoTask,
    train: HeadFeatures,
    test: HeadFeatures,
    sav: SAV,
    votes: Any,
    rows: list[dict[str, Any]],
    *,
    seed: int,
    k: int,
    model: Model | None = None,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Write the demo's figures into ``out``; return their paths.

    With a vision-language ``model``, also where the selected heads look (``attention_shares.png``; their mean
    shares go into ``extra["attention_shares"]``) and the attention over the image of the head that looks at it
    most (``attention.png``), under the model's own attention backend.
    """
    from savlens import plot
    from savlens.transfer import TaskSplit, transfer_matrix

    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=130)
        written.append(str(path))

    scores = sav.scores_
    assert scores is not None
    truth = list(test.labels or [])
    save(
        plot.score_heatmap(scores, heads=sav.heads_, title=f"{task.name}: LOO centroid accuracy per head"), "heads.png"
    )
    ranking = scores.ranking(seed=seed)
    best, median = ranking[0], ranking[len(ranking) // 2]
    both = HeadFeatures.concat([train, test])
    save(plot.head_tsne(both, [best, median], scores=scores, seed=seed), "tsne.png")
    save(plot.vote_histograms(votes, truth, title=f"{task.name}: votes of the {k} heads on the test set"), "votes.png")
    save(plot.confusion_heatmap(truth, sav.predict(test), task.classes), "confusion.png")
    short = {
        "zero-shot: the model's greedy answer": "zero-shot (greedy)",
        "zero-shot: answer restricted to the labels": "zero-shot (restricted to labels)",
    }
    baselines = {short[r["method"]]: r["accuracy"] for r in rows if r["method"] in short and r["accuracy"] is not None}
    chance = rows[-1]["accuracy"]
    shots_axis = [s for s in SHOTS_SWEEP if s < len(task.train) // len(task.classes)] + [
        len(task.train) // len(task.classes)
    ]
    by_shots = accuracy_by_shots(train, test, shots_axis, k=k)
    save(
        plot.accuracy_vs_shots(shots_axis, {f"SAV (k={k})": by_shots}, chance=chance, baselines=baselines),
        "accuracy_vs_shots.png",
    )
    n_units = train.n_layers * train.n_heads
    ks = [v for v in K_SWEEP if v < n_units] + [n_units]
    save(
        plot.accuracy_vs_k(ks, {"SAV": accuracy_by_k(train, test, ks, seed=seed)}, chance=chance, baselines=baselines),
        "accuracy_vs_k.png",
    )
    # tasks built from the same features: the full task and class pairs; where their heads sit, and transfer
    splits: dict[str, TaskSplit] = {"all": TaskSplit(train, test)}
    for a, b in pair_tasks(task.classes):
        pick = [i for i, lab in enumerate(train.labels or []) if lab in (a, b)]
        pick_test = [i for i, lab in enumerate(truth) if lab in (a, b)]
        splits[f"{a}/{b}"] = TaskSplit(train.subset(pick), test.subset(pick_test))
    matrix = transfer_matrix(splits, k=k, seed=seed, baselines=("random", "all"))
    save(
        plot.head_overlay(
            matrix.heads, n_layers=train.n_layers, n_heads=train.n_heads, title=f"top-{k} heads of each task"
        ),
        "head_overlay.png",
    )
    save(plot.transfer_heatmap(matrix), "transfer.png")
    if model is not None and model.multimodal and task.test and task.test[0].n_images:
        _attention_figures(model, task, sav, save, extra if extra is not None else {})
    return written


def _attention_figures(
    model: Model, task: DemoTask, sav: SAV, save: Callable[[Any, str], None], extra: dict[str, Any]
) -> None:
    """Where the selected heads look from the last token (image / text / template shares over up to 16 test
    examples: ``attention_shares.png``), and the attention over the image of the first test example of the
    selected head that looks at the image most, at the image's real token grid (``attention.png``; tiles, views
    and newline tokens as :func:`savlens.models.grids.token_grids` maps them), under the model's own attention
    backend."""
    import warnings

    from savlens import plot
    from savlens.causal import attention_shares

    examples = [e for e in task.test if e.n_images][:16]
    try:
        shares = attention_shares(model, examples, sav.heads_, prompt_template=task.prompt_template)
        save(plot.attention_share_bars(shares, title=f"{task.name}: where the {len(sav.heads_)} SAV heads look"),
             "attention_shares.png")  # fmt: skip
        extra["attention_shares"] = {"n_examples": len(examples), "mean": shares.mean()}
        looks = shares.image.mean(0)
        head = sav.heads_[int(looks.argmax())]
        example = examples[0]
        batch = Batch.from_examples(model, [example], prompt_template=task.prompt_template)
        with trace(model, batch, logits=None, stop_at_layer=head.layer) as t:
            pattern = t.save(f"blocks.{head.layer}.attn.hook_pattern", "last", device="cpu")
        image = example.load_images()[0]
        fig = plot.attention_on_image(pattern.value, model, batch, head.head, layer=head.layer, image=image)
        save(fig, "attention.png")
    except SavlensError as e:  # e.g. a family without a token map (docs/positions.md, "Token grids"): no figure
        warnings.warn(f"savlens demo: no attention figure ({e.detail})", stacklevel=2)


# ---- a head's attention at a real patch grid (a tiny random model: the mapping, not meaning) ------------------

GRID_PICTURE_SIZE = (224, 168)  # (width, height): Qwen2-VL's 28-pixel merged cells give an 8 x 6 grid


def grid_picture(size: tuple[int, int] = GRID_PICTURE_SIZE) -> Any:
    """A synthetic picture: a red disc top left and a blue square bottom right on grey (PIL image)."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(img)
    draw.ellipse((w * 0.08, h * 0.1, w * 0.38, h * 0.5), fill=(220, 30, 30))
    draw.rectangle((w * 0.6, h * 0.55, w * 0.9, h * 0.9), fill=(30, 60, 220))
    return img


def real_grid_attention(
    out: str | Path, family: str = "qwen2_vl", *, seed: int = 0, name: str = "attention-real-grid"
) -> dict[str, Any]:
    """Draw, on a tiny random ``family`` model (``savlens.testing.tiny``: random weights, so the figure shows
    how a head's weights map onto the image's real token grid, not what a trained head looks at), the
    last-token attention of the head that puts the largest share on the image, over :func:`grid_picture`.

    Writes ``{name}.png`` and ``{name}.json`` (the head, its share, the grid, the machine) under ``out`` and
    returns the JSON's dict. Not part of the demo's default run (it builds a second model); seconds on a CPU.
    """
    import json
    import os
    import platform

    import torch

    import savlens
    from savlens import plot
    from savlens.example import Example
    from savlens.heads import HeadSet
    from savlens.models.grids import token_grids
    from savlens.testing.tiny import build_tiny
    from savlens.tracing import attention_patterns

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tm = build_tiny(family, seed=seed)
    size = getattr(tm.processor.image_processor, "size", None)
    if family in ("qwen2_vl", "qwen2_5_vl") and size is not None:  # the tiny processor caps images at 16 patches:
        size.longest_edge = GRID_PICTURE_SIZE[0] * GRID_PICTURE_SIZE[1]  # let the picture keep its 8 x 6 cells
    model = savlens.wrap(tm.model, tm.processor, model_id=f"tiny-{family}")
    picture = grid_picture()
    batch = Batch.from_examples(model, [Example("where is the red disc ?", images=[picture])])
    heads = HeadSet([(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)])
    weights = attention_patterns(model, batch, heads, "last").value[0, :, -1].float().cpu()  # k key_pos
    share = weights[:, batch.image_mask[0].cpu()].sum(-1)
    best = int(share.argmax())
    head = heads[best]
    pattern = weights[best][None, None, None, :].expand(1, 1, 1, -1)
    fig = plot.attention_on_image(
        pattern, model, batch, 0, image=picture,
        title=f"tiny random {family}, L{head.layer}H{head.head}: {float(share[best]):.0%} of\nlast-token attention "
        "on the image\n(random weights: the mapping, not meaning)",
    )  # fmt: skip
    fig.savefig(out / f"{name}.png", dpi=110)
    (g,) = token_grids(model, batch, 0)
    record = {
        "family": family,
        "model": f"savlens.testing.tiny.build_tiny({family!r}, seed={seed}): random weights",
        "picture": {"size": list(GRID_PICTURE_SIZE), "what": "savlens.demo.figures.grid_picture()"},
        "prompt": "where is the red disc ?",
        "head": str(head),
        "image_share": round(float(share[best]), 4),
        "grid": [{"view": p.view, "rows": p.rows, "cols": p.cols} for p in g.panels],
        "n_image_tokens": int(batch.image_mask[0].sum()),
        "heads_searched": len(heads),
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}",
        "load_1min": round(os.getloadavg()[0], 2),
        "code": "python -c \"from savlens.demo.figures import real_grid_attention; real_grid_attention('docs/img')\"",
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record

