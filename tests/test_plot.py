"""Plots draw the values they are given: heatmap arrays, marked cells, points per class, bar heights, curves."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

import savlens
from savlens import plot
from savlens.errors import ArgumentError, FeatureError, LabelError, PositionError
from savlens.heads import HeadScores, HeadSet
from savlens.transfer import transfer_matrix

pytest.importorskip("matplotlib")


def _features(n_per_class: int = 12, seed: int = 0) -> savlens.HeadFeatures:
    """Three classes; head L1H2 separates them, the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    labels = ["a", "b", "c"] * n_per_class
    z = torch.randn(len(labels), 3, 4, 8, generator=g)
    for i, lab in enumerate(labels):
        z[i, 1, 2, "abc".index(lab)] += 6.0
    return savlens.HeadFeatures(z, labels=labels, model_id="synthetic")


def _scatter(ax, gid):  # type: ignore[no-untyped-def]
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, [c.get_gid() for c in ax.collections]
    return found[0]


def _save(fig, tmp_path: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    fig.savefig(path)
    assert path.stat().st_size > 2000 and path.read_bytes()[:4] == b"\x89PNG"
    return path


def test_score_heatmap_draws_the_scores_and_marks_the_top_k(tmp_path: Path) -> None:
    scores = HeadScores(torch.rand(5, 4, generator=torch.Generator().manual_seed(1)), "centroid", "loo")
    fig = plot.score_heatmap(scores, k=3)
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), scores.scores.numpy())
    marks = _scatter(ax, "selected-heads").get_offsets()
    top = scores.top_k(3)
    np.testing.assert_array_equal(marks, [[h.head, h.layer] for h in top])
    ranks = [t.get_text() for t in ax.texts]
    assert ranks == ["1", "2", "3"]
    assert [tuple(t.get_position()) for t in ax.texts] == [(h.head, h.layer) for h in top]
    _save(fig, tmp_path, "heatmap.png")


def test_score_heatmap_marks_given_heads_on_rows_of_model_layers() -> None:
    scores = HeadScores(torch.arange(8.0).reshape(2, 4), "fisher", layers=[5, 9])  # rows are layers 5 and 9
    heads = HeadSet(["L9H1", "L5H3"])
    fig = plot.score_heatmap(scores, heads=heads, ranks=False)
    ax = fig.axes[0]
    np.testing.assert_array_equal(_scatter(ax, "selected-heads").get_offsets(), [[1, 1], [3, 0]])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["5", "9"]
    with pytest.raises(FeatureError, match="L7H0 is not in these scores"):
        plot.score_heatmap(scores, heads=["L7H0"])


def test_score_heatmap_keeps_inf_scores_and_colours_finite_range() -> None:
    table = torch.tensor([[0.5, float("inf")], [0.1, 0.2]])
    fig = plot.score_heatmap(HeadScores(table, "fisher"), k=1)
    image = fig.axes[0].images[0]
    assert np.isinf(np.asarray(image.get_array())[0, 1])
    assert image.get_clim() == (pytest.approx(0.1), pytest.approx(0.5))


def test_head_overlay_puts_each_tasks_heads_in_their_cells(tmp_path: Path) -> None:
    a = HeadSet(["L0H1", "L2H3"])
    scores = HeadScores(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.9, 0.0, 0.0, 0.8], [0.0, 0.0, 0.0, 0.0]]), "demo")
    fig = plot.head_overlay({"A": a, "B": scores}, k=2)
    ax = fig.axes[0]
    np.testing.assert_array_equal(_scatter(ax, "task:A").get_offsets(), [[1, 0], [3, 2]])
    np.testing.assert_array_equal(_scatter(ax, "task:B").get_offsets(), [[0, 1], [3, 1]])
    assert ax.get_xlim() == (-0.5, 3.5) and ax.get_ylim() == (2.5, -0.5)  # grid from the scores, layer 0 on top
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A (2)", "B (2)"]
    _save(fig, tmp_path, "overlay.png")


def test_head_overlay_takes_fitted_savs() -> None:
    sav = savlens.SAV(k=2).fit(_features())
    fig = plot.head_overlay({"task": sav}, n_layers=3, n_heads=4)
    offsets = _scatter(fig.axes[0], "task:task").get_offsets()
    np.testing.assert_array_equal(offsets, [[h.head, h.layer] for h in sav.heads_])


def test_tsne_colours_each_class_and_separates_the_informative_head(tmp_path: Path) -> None:
    feats = _features()
    fig = plot.head_tsne(feats, ["L1H2", "L0H0"], seed=0)
    good, noise = fig.axes[0], fig.axes[1]
    assert good.get_title() == "L1H2" and noise.get_title() == "L0H0"
    for ax in (good, noise):
        assert [c.get_label() for c in ax.collections] == ["a", "b", "c"]
        assert [len(c.get_offsets()) for c in ax.collections] == [12, 12, 12]
    emb = plot.tsne_embedding(feats, "L1H2", seed=0)
    a = np.asarray(good.collections[0].get_offsets())
    np.testing.assert_allclose(a, emb[[i for i, lab in enumerate(feats.labels or []) if lab == "a"]])

    def spread_ratio(ax) -> float:  # type: ignore[no-untyped-def]
        pts = [np.asarray(c.get_offsets()) for c in ax.collections]
        within = np.mean([p.std(0).sum() for p in pts])
        between = np.stack([p.mean(0) for p in pts]).std(0).sum()
        return float(between / within)

    assert spread_ratio(good) > 3 * spread_ratio(noise)
    np.testing.assert_allclose(plot.tsne_embedding(feats, "L1H2", seed=0), emb)  # seeded
    _save(fig, tmp_path, "tsne.png")


def test_vote_histograms_count_votes_for_the_true_class(tmp_path: Path) -> None:
    feats = _features()
    sav = savlens.SAV(k=5).fit(feats)
    votes = sav.votes(feats)
    truth = list(feats.labels or [])
    fig = plot.vote_histograms(votes, truth)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3
    for c, ax in enumerate(axes):
        right, wrong = ax.containers
        heights = np.array([b.get_height() for b in right]) + np.array([b.get_height() for b in wrong])
        rows = [i for i, lab in enumerate(truth) if lab == votes.classes[c]]
        expected = np.bincount(votes.counts[rows, c].numpy(), minlength=6)
        np.testing.assert_array_equal(heights, expected)
        n_right = sum(votes.labels()[i] == truth[i] for i in rows)
        assert sum(b.get_height() for b in right) == n_right
    _save(fig, tmp_path, "votes.png")
    with pytest.raises(LabelError, match="not classes"):
        plot.vote_histograms(votes, ["zzz"] * len(truth))


def test_accuracy_curves_draw_means_bands_and_baselines(tmp_path: Path) -> None:
    fig = plot.accuracy_vs_shots(
        [1, 5, 20], {"SAV": [[0.2, 0.4], [0.5, 0.7], [0.9]]}, chance=0.25, baselines={"zero-shot": 0.3}
    )
    ax = fig.axes[0]
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), [1, 5, 20])
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.6, 0.9])
    assert [ln.get_ydata()[0] for ln in ax.lines[1:]] == [0.3, 0.25]
    assert ax.get_xscale() == "log" and len(ax.collections) == 1  # one min-max band
    _save(fig, tmp_path, "shots.png")
    fig = plot.accuracy_vs_k([1, 2, 4], {"SAV": [0.1, 0.2, 0.3], "layers": [0.3, 0.2, 0.1]})
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), [0.3, 0.2, 0.1])
    with pytest.raises(ArgumentError, match="2 points for 3"):
        plot.accuracy_curve([1, 2, 3], {"x": [0.1, 0.2]}, xlabel="x")


def test_transfer_heatmap_draws_the_matrix(tmp_path: Path) -> None:
    feats = _features(16)
    tasks = {}
    for name, pair in {"ab": ("a", "b"), "bc": ("b", "c"), "abc": ("a", "b", "c")}.items():
        idx = [i for i, lab in enumerate(feats.labels or []) if lab in pair]
        tasks[name] = (feats.subset(idx[: len(idx) // 2]), feats.subset(idx[len(idx) // 2 :]))
    matrix = transfer_matrix(tasks, k=2)
    fig = plot.transfer_heatmap(matrix)
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), matrix.accuracy.numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ab", "bc", "abc"]
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in matrix.accuracy.reshape(-1).tolist()]
    assert not ax.lines  # no baseline rows, no rule
    _save(fig, tmp_path, "transfer.png")
    # baseline rows below the task rows, after a rule
    matrices = [transfer_matrix(tasks, k=2, seed=s, baselines=("random", "all"), n_random=3) for s in (0, 1, 2)]
    m = matrices[0]
    ax = plot.transfer_heatmap(m).axes[0]
    drawn = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(drawn[:3], m.accuracy.numpy())
    np.testing.assert_array_equal(drawn[3], m.baselines["random"].numpy())
    np.testing.assert_array_equal(drawn[4], m.baselines["all"].numpy())
    assert drawn[3].tolist() != drawn[4].tolist()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["ab", "bc", "abc", "2 random heads", "all heads"]
    assert [t.get_fontstyle() for t in ax.get_yticklabels()] == ["normal"] * 3 + ["italic"] * 2
    (rule,) = ax.lines
    assert rule.get_gid() == "transfer-baselines" and list(rule.get_ydata()) == [2.5, 2.5]
    # a mean over seeds: mean +- sd in every cell, baselines included
    mean = savlens.transfer.TransferMatrix.mean(matrices)
    fig = plot.transfer_heatmap(mean)
    ax = fig.axes[0]
    assert mean.sd is not None
    values = np.concatenate(
        [mean.accuracy.numpy(), mean.baselines["random"].numpy()[None], mean.baselines["all"].numpy()[None]]
    )
    sds = np.concatenate(
        [mean.sd.numpy(), mean.baselines_sd["random"].numpy()[None], mean.baselines_sd["all"].numpy()[None]]
    )
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), values)
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f} ± {e:.2f}" for v, e in zip(values.ravel(), sds.ravel())]
    assert sds.max() > 0 and "mean ± sd over 3 matrices" in ax.get_title()
    _save(fig, tmp_path, "transfer-mean.png")


def test_confusion_heatmap_counts() -> None:
    fig = plot.confusion_heatmap(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b", "c"])
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), [[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert "0.500" in fig.axes[0].get_title()


def test_attention_on_image_draws_the_heads_weights_over_image_tokens(tmp_path: Path) -> None:
    from savlens.testing.tiny import sample_images

    model = tiny("qwen2_vl", "eager")
    img = sample_images(1, sizes=((56, 56),))[0]
    batch = savlens.Batch.from_examples(
        model, [savlens.Example("hello"), savlens.Example("what is it ?", images=[img])]
    )
    with savlens.trace(model, batch) as t:
        p = t.save("blocks.1.attn.hook_pattern", positions="last")
    pattern = p.value
    assert p.dims == ("batch", "head_index", "query_pos", "key_pos")
    from savlens.models.grids import token_grids
    from savlens.plot.grid import paint

    (g,) = token_grids(model, batch, 1)
    assert (g.panels[0].rows, g.panels[0].cols) == (2, 2)  # Qwen's 2x2-merged patches of a 56 x 56 image
    fig = plot.attention_on_image(pattern, model, batch, head=2, layer=1, row=1, image=img)
    ax = fig.axes[0]
    (want,) = paint(pattern[1, 2, 0], g, img.size).values()
    np.testing.assert_allclose(np.asarray(ax.images[-1].get_array()), want)  # the head's weights at their cells
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), np.asarray(img.convert("RGB")))
    share = float(pattern[1, 2, 0][batch.image_mask[1]].sum())
    assert fig._suptitle.get_text() == f"L1H2: {share:.0%} of last-token attention on image tokens"  # type: ignore[union-attr]
    _save(fig, tmp_path, "attention.png")
    with pytest.raises(PositionError, match="no image or video tokens"):
        plot.attention_on_image(pattern, model, batch, head=0, row=0)
    with pytest.raises(ArgumentError, match="media=1"):
        plot.attention_on_image(pattern, model, batch, head=0, row=1, media=1)


def test_attention_share_bars_stack_each_heads_mean_shares(tmp_path: Path) -> None:
    from savlens.causal import AttentionShares

    image = torch.tensor([[0.5, 0.1], [0.3, 0.3]])
    text = torch.tensor([[0.25, 0.6], [0.5, 0.5]])
    shares = AttentionShares(HeadSet(["L3H1", "L0H2"]), image, text, 1 - image - text)
    fig = plot.attention_share_bars(shares)
    ax = fig.axes[0]
    bars = {c.get_label(): [(round(r.get_x(), 6), round(r.get_width(), 6)) for r in c] for c in ax.containers}
    assert bars["image"] == [(0.0, 0.4), (0.0, 0.2)]  # means over the two examples, one bar per head in order
    assert bars["text"] == [(0.4, 0.375), (0.2, 0.55)]
    assert bars["system"] == [(0.775, 0.225), (0.75, 0.25)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L3H1", "L0H2"]
    _save(fig, tmp_path, "shares.png")


def test_the_docs_real_grid_attention_figure_is_reproduced(tmp_path: Path) -> None:
    """docs/img/attention-real-grid.{png,json}: a tiny random Qwen2-VL's head at the picture's real 8 x 6 grid of
    merged patches; a fresh run picks the same head with the same share as the committed record."""
    import json

    from savlens.demo.figures import real_grid_attention

    record = real_grid_attention(tmp_path)
    committed = json.loads((Path(__file__).parents[1] / "docs/img/attention-real-grid.json").read_text())
    assert record["grid"] == [{"view": "image", "rows": 6, "cols": 8}] and record["n_image_tokens"] == 48
    for key in ("family", "head", "grid", "n_image_tokens", "heads_searched", "prompt"):
        assert record[key] == committed[key], key
    assert record["image_share"] == pytest.approx(committed["image_share"], abs=2e-3)
    assert (tmp_path / "attention-real-grid.png").stat().st_size > 0
