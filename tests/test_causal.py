"""Causal checks and attention shares on tiny models (mechanics) — real effect sizes are in docs/results.md."""

import torch
from conftest import tiny

import savlens
from savlens.causal import (
    answer_scores,
    attention_shares,
    causal_validation,
    matched_random_heads,
    steer_to_class,
    template_prefix_length,
)
from savlens.extraction import extract
from savlens.heads import HeadSet
from savlens.sav import SAV
from savlens.testing.tiny import sample_images

ANSWERS = {"yes": "yes", "no": "no"}


def _examples(n: int, seed: int, images: bool = True) -> list[savlens.Example]:
    imgs = sample_images(n, seed=seed)
    return [
        savlens.Example(
            "is there a red shape ?" + " please" * (i % 2),
            images=[imgs[i]] if images else [],
            label=["yes", "no"][i % 2],
            id=f"c{seed}-{i}",
        )
        for i in range(n)
    ]


def test_matched_random_heads_keep_the_layer_distribution() -> None:
    heads = HeadSet(["L0H1", "L0H2", "L2H3"])
    for seed in range(5):
        r = matched_random_heads(heads, n_heads=4, seed=seed)
        assert sorted(h.layer for h in r) == [0, 0, 2]
        assert not set(r) & set(heads)
    assert matched_random_heads(heads, 4, 1) == matched_random_heads(heads, 4, 1)
    # a layer crowded with selected heads: the rest come from the nearest layers, never a selected head
    crowded = HeadSet(["L1H0", "L1H1", "L1H2"])
    for seed in range(5):
        r = matched_random_heads(crowded, n_heads=4, seed=seed, n_layers=3)
        assert len(r) == 3 and not set(r) & set(crowded)
        assert sum(h.layer == 1 for h in r) == 1 and all(h.layer in (0, 2) for h in r if h.layer != 1)


def test_answer_scores_match_a_plain_forward() -> None:
    model = tiny("llama")
    exs = _examples(5, 0, images=False)
    s = answer_scores(model, exs, ANSWERS, batch_size=2)
    yes, no = (model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    batch = savlens.Batch.from_examples(model, exs)
    with torch.no_grad():
        lp = torch.log_softmax(model.hf(**batch.inputs).logits[:, -1], -1)
    want = [("yes" if lp[i, yes] >= lp[i, no] else "no") for i in range(5)]
    assert s.predicted == want
    right = torch.tensor([yes if e.label == "yes" else no for e in exs])
    torch.testing.assert_close(s.logprob, lp.gather(1, right[:, None])[:, 0], atol=1e-5, rtol=1e-5)


def test_causal_validation_and_steering_run_and_move_the_answer() -> None:
    model = tiny("qwen2_vl")
    train, test = _examples(8, 0), _examples(6, 1)
    feats = extract(model, train, progress=False)
    sav = SAV(k=4).fit(feats)
    rep = causal_validation(sav, model, test, ANSWERS, means=feats, n_random=2, batch_size=3)
    s = rep.summary()
    assert s["k"] == 4 and s["n_seeds"] == 2
    assert rep.baseline.logprob.shape == (6,)
    assert s["delta_logprob"]["sav_heads"] != 0.0  # ablating 4 of 12 heads moves a random model's answer
    steer = steer_to_class(sav, model, test, ANSWERS, "yes", batch_size=3)
    assert steer.share_before == sum(p == "yes" for p in rep.baseline.predicted) / len(test)  # the same clean run
    assert steer.delta_logprob != 0.0


def test_steering_writes_the_target_class_mean_into_the_sav_heads() -> None:
    """Steering to a class is mean-ablating the SAV heads at the last token to that class's training mean."""
    model = tiny("qwen2_vl")
    train, test = _examples(8, 0), _examples(6, 1)
    feats = extract(model, train, progress=False)
    sav = SAV(k=4).fit(feats)
    steer = steer_to_class(sav, model, test, ANSWERS, "no", batch_size=3)
    class_mean = feats.subset([i for i, e in enumerate(train) if e.label == "no"])
    as_target = [savlens.Example(e.text, e.images, "no", e.id) for e in test]
    before = answer_scores(model, as_target, ANSWERS, batch_size=3)
    after = answer_scores(
        model,
        as_target,
        ANSWERS,
        batch_size=3,
        edit=lambda t, batch, rows: t.ablate(sav.heads_, "mean", means=class_mean, positions="last"),
    )
    assert steer.share_after == sum(p == "no" for p in after.predicted) / len(test)
    assert abs(steer.delta_logprob - float((after.logprob - before.logprob).mean())) < 1e-5
    assert steer.delta_logprob != 0.0


def test_attention_shares_sum_to_one_and_find_the_template() -> None:
    model = tiny("llava_onevision")
    exs = _examples(3, 2)
    exs.append(savlens.Example("hello", id="text-only"))
    n_prefix = template_prefix_length(model)
    assert n_prefix > 0
    two = savlens.Batch.from_examples(model, [savlens.Example("0"), savlens.Example("1", id="1")]).input_ids
    assert torch.equal(two[0, :n_prefix], two[1, :n_prefix]) and two[0, n_prefix] != two[1, n_prefix]
    shares = attention_shares(model, exs, ["L1H0", "L2H3"], batch_size=2, return_patterns=True)
    total = shares.image + shares.text + shares.system + shares.video
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=1e-5)
    assert torch.all(shares.video == 0)  # no video in these examples
    assert torch.all(shares.image[-1] == 0)  # the text-only row has no image tokens
    assert shares.image[:3].min() > 0
    assert model.attn_implementation == "sdpa"  # never switched
    assert set(shares.mean()) == {"L1H0", "L2H3"}
    # the same shares as the eager model's own attention weights give
    eager = attention_shares(tiny("llava_onevision", "eager"), exs, ["L1H0", "L2H3"], batch_size=2)
    for region in ("image", "video", "text", "system"):
        torch.testing.assert_close(getattr(shares, region), getattr(eager, region), atol=1e-5, rtol=0)
    # return_patterns: each example's patterns over its own tokens, which the shares sum
    assert shares.patterns is not None and eager.patterns is None and len(shares.patterns) == len(exs)
    for i, e in enumerate(exs):
        own = savlens.Batch.from_examples(model, [e])
        p = shares.patterns[i]
        assert p.shape == (2, own.seq_len)
        torch.testing.assert_close(p[:, own.image_mask[0]].sum(-1), shares.image[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(p[:, n_prefix:].sum(-1) - p[:, own.image_mask[0]].sum(-1), shares.text[i])


def test_attention_shares_count_video_tokens_as_video() -> None:
    """Video tokens are neither image nor text: their own share, the eager pattern's weight on them, and the
    four shares still sum to 1 in a batch mixing a video row, an image row and a text-only row."""
    import numpy as np

    model, eager = tiny("qwen2_vl"), tiny("qwen2_vl", "eager")
    clip = np.random.default_rng(0).integers(0, 255, (4, 40, 72, 3), dtype=np.uint8)
    exs = [
        savlens.Example("what moves ?", videos=[clip], id="video"),
        savlens.Example("what is it ?", images=sample_images(1, seed=1), id="image"),
        savlens.Example("hello there", id="text"),
    ]
    heads = ["L1H0", "L0H1"]
    shares = attention_shares(model, exs, heads, batch_size=3)
    total = shares.image + shares.video + shares.text + shares.system
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=1e-5)
    assert shares.video[0].min() > 0.01 and torch.all(shares.image[0] == 0)
    assert torch.all(shares.video[1:] == 0) and shares.image[1].min() > 0.01
    assert set(shares.mean()["L1H0"]) == {"image", "video", "text", "system"}
    batch = savlens.Batch.from_examples(eager, exs[:1])
    assert batch.video_mask is not None
    for k, (layer, head) in enumerate(((1, 0), (0, 1))):
        with savlens.trace(eager, batch) as t:
            p = t.save(f"blocks.{layer}.attn.hook_pattern", positions="last")
        w = p.value[0, head, -1]
        torch.testing.assert_close(shares.video[0, k], w[batch.video_mask[0]].sum(), atol=1e-5, rtol=0)
