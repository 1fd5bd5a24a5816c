"""The hook registry: glob matching, layer sets, labels, suggestions."""

import pytest

from savlens.errors import HookNameError, HookNotAvailableError
from savlens.heads import Head
from savlens.names import HOOKS, all_names, hooks_markdown, match_saved, resolve


def test_star_matches_one_segment_only() -> None:
    names = all_names(3)
    assert resolve("blocks.*.attn.hook_z", 3) == [f"blocks.{i}.attn.hook_z" for i in range(3)]
    # '*' never crosses a dot: this pattern names no registered hook
    with pytest.raises(HookNameError):
        resolve("blocks.*.hook_z", 3)
    assert match_saved("**.hook_z", names) == [f"blocks.{i}.attn.hook_z" for i in range(3)]


def test_layer_sets_and_execution_order() -> None:
    assert resolve("blocks.{0,2}.hook_resid_post", 3) == [
        "blocks.0.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    assert resolve("blocks.{1-2}.attn.hook_q", 4) == ["blocks.1.attn.hook_q", "blocks.2.attn.hook_q"]
    got = resolve(["blocks.1.hook_resid_post", "blocks.1.attn.hook_z", "hook_embed", "blocks.0.hook_mlp_out"], 2)
    assert got == ["hook_embed", "blocks.0.hook_mlp_out", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]


def test_every_per_layer_hook_exists_once_per_layer() -> None:
    names = all_names(5, multimodal=True)
    assert len(names) == len(set(names))
    per_layer = [h for h in HOOKS if h.per_layer and ".cross_attn." not in h.template]
    assert len(names) == 5 * len(per_layer) + (len(HOOKS) - len([h for h in HOOKS if h.per_layer]))
    assert "vision_projector.hook_out" not in all_names(5, multimodal=False)


def test_layer_kinds_decide_which_hooks_exist() -> None:
    kinds = ["convolution", "attention", "cross_attention", "linear_attention"]
    names = all_names(4, multimodal=True, kinds=kinds)
    assert [n for n in names if n.endswith("attn.hook_z")] == ["blocks.1.attn.hook_z", "blocks.2.cross_attn.hook_z"]
    assert resolve("blocks.*.attn.hook_z", 4, kinds=kinds) == ["blocks.1.attn.hook_z"]
    assert resolve("blocks.*.cross_attn.hook_z", 4, kinds=kinds) == ["blocks.2.cross_attn.hook_z"]
    assert resolve("blocks.*.hook_attn_out", 4, kinds=kinds) == [f"blocks.{i}.hook_attn_out" for i in range(4)]
    with pytest.raises(HookNotAvailableError, match=r"layer 0 \(convolution\) has no such hook.*'attention': \[1\]"):
        resolve("blocks.0.attn.hook_z", 4, kinds=kinds)
    with pytest.raises(HookNotAvailableError, match=r"layer 3 \(linear attention\)"):
        resolve("blocks.3.attn.hook_q", 4, kinds=kinds)


def test_typo_lists_closest_valid_names() -> None:
    with pytest.raises(HookNameError, match=r"Closest valid names: blocks\.3\.attn\.hook_z"):
        resolve("blocks.3.attn.hook_zz", 4)
    with pytest.raises(HookNameError, match=r"blocks\.\*\.attn\.hook_result"):
        resolve("blocks.*.attn.hook_results", 4)


def test_layer_out_of_range_says_how_many_layers() -> None:
    with pytest.raises(
        HookNameError, match=r"layer 7 .* out of range: this model has 4 layers \(blocks.0 .. blocks.3\)"
    ):
        resolve("blocks.7.attn.hook_z", 4)


def test_vision_hook_on_text_model_is_explained() -> None:
    with pytest.raises(HookNameError, match="text-only"):
        resolve("vision_projector.hook_out", 2, multimodal=False)


def test_head_labels_round_trip() -> None:
    assert str(Head(14, 3)) == "L14H3"
    assert Head.parse(" L14H3 ") == Head(14, 3)
    with pytest.raises(HookNameError, match="cannot read a head"):
        Head.parse("14.3")


def test_markdown_table_lists_every_hook() -> None:
    md = hooks_markdown()
    for h in HOOKS:
        assert f"`{h.template}`" in md
