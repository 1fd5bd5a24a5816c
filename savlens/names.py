"""The hook registry: one canonical name per tensor, its dims, glob matching and ``L{l}H{h}`` labels.

Names follow TransformerLens (``blocks.{l}.attn.hook_z``); there are no aliases. Patterns use ``*``
for one dotted segment (``blocks.*.attn.hook_z``: every layer's ``hook_z``) and ``**`` for any run of
segments (``**.hook_z``). Layer ranges can be written ``blocks.{0-3}.attn.hook_z`` or
``blocks.{0,5,9}.attn.hook_z``.
"""

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from savlens.errors import HookNameError, HookNotAvailableError

#: The dim words used in every annotation and einops pattern (docs/hooks.md's table is :func:`dims_markdown`).
DIM_GLOSSARY: dict[str, str] = {
    "batch": "rows of one forward pass",
    "example": "examples of a data set (dataset-level features)",
    "pos": "sequence positions (after chat template and image-token expansion), or the positions selected",
    "query_pos": "query positions of an attention pattern",
    "key_pos": "key positions of an attention pattern",
    "layer": "decoder layers of the language model",
    "head_index": "query heads",
    "kv_head_index": "key/value heads (fewer than query heads under GQA)",
    "d_head": "width of one head",
    "d_model": "width of the residual stream",
    "d_vocab": "vocabulary size",
    "class": "classes of a task",
    "k": "selected heads, in rank order",
    "fold": "cross-validation folds",
    "task": "tasks of a transfer experiment",
    "vision_pos": "positions (patches) inside the vision tower",
    "d_vision": "width of the vision tower",
    "vision_height": "rows of a convolutional vision tower's feature grid",
    "vision_width": "columns of a convolutional vision tower's feature grid",
    "vision_batch": "images or image tiles fed to the vision tower",
    "image_token": "image tokens of all images, packed",
}


@dataclass(frozen=True)
class HookPoint:
    """One registered hook: its name template, dims and meaning.

    Attributes:
        template: the name, with ``{l}`` standing for the layer number in per-layer hooks.
        dims: the dim words of the saved tensor (glossary words), before position slicing.
        doc: what the tensor is, in one line.
        derived: True for tensors savlens computes from others (``hook_result``).
    """

    template: str
    dims: tuple[str, ...]
    doc: str
    derived: bool = False

    @property
    def per_layer(self) -> bool:
        return "{l}" in self.template

    @property
    def leaf(self) -> str:
        """The name with the layer part removed, e.g. ``attn.hook_z``."""
        return self.template.removeprefix("blocks.{l}.")


_BPD = ("batch", "pos", "d_model")
HOOKS: tuple[HookPoint, ...] = (
    HookPoint(
        "vision_encoder.hook_out",
        ("vision_batch", "vision_pos", "d_vision"),
        "output of the last block of the vision tower (tower-specific layout, see the family spec)",
    ),
    HookPoint(
        "vision_projector.hook_out",
        ("vision_batch", "vision_pos", "d_model"),
        "output of the projector that maps vision features to LM input embeddings",
    ),
    HookPoint("hook_embed", _BPD, "LM input embeddings, after image features are merged in"),
    HookPoint("blocks.{l}.hook_resid_pre", _BPD, "residual stream into layer l"),
    HookPoint(
        "blocks.{l}.attn.hook_q",
        ("batch", "pos", "head_index", "d_head"),
        "query projection, per query head, before rotary embedding",
    ),
    HookPoint(
        "blocks.{l}.attn.hook_k",
        ("batch", "pos", "kv_head_index", "d_head"),
        "key projection, per KV head, before rotary embedding",
    ),
    HookPoint("blocks.{l}.attn.hook_v", ("batch", "pos", "kv_head_index", "d_head"), "value projection, per KV head"),
    HookPoint(
        "blocks.{l}.attn.hook_z",
        ("batch", "pos", "head_index", "d_head"),
        "input of the attention output projection, split per query head: the SAV feature",
    ),
    HookPoint(
        "blocks.{l}.attn.hook_result",
        ("batch", "pos", "head_index", "d_model"),
        "each head's contribution z_h @ W_O[h] to the attention output (no bias)",
        derived=True,
    ),
    HookPoint(
        "blocks.{l}.hook_attn_out",
        _BPD,
        "token-mixer output: of o_proj (attention), of the linear-attention or convolution module's output "
        "projection on those layers",
    ),
    HookPoint(
        "blocks.{l}.attn.hook_pattern",
        ("batch", "head_index", "query_pos", "key_pos"),
        "attention probabilities at the saved query positions, under any attention backend (see savlens.attention)",
    ),
    HookPoint(
        "blocks.{l}.cross_attn.hook_q",
        ("batch", "pos", "head_index", "d_head"),
        "query projection of a cross-attention layer (keys and values come from the image), per query head",
    ),
    HookPoint(
        "blocks.{l}.cross_attn.hook_z",
        ("batch", "pos", "head_index", "d_head"),
        "input of a cross-attention layer's output projection, split per query head",
    ),
    HookPoint(
        "blocks.{l}.cross_attn.hook_result",
        ("batch", "pos", "head_index", "d_model"),
        "each cross-attention head's contribution z_h @ W_O[h] to the layer's attention output (no bias)",
        derived=True,
    ),
    HookPoint("blocks.{l}.hook_mlp_out", _BPD, "MLP output"),
    HookPoint("blocks.{l}.hook_resid_post", _BPD, "residual stream out of layer l"),
)
_BY_TEMPLATE = {h.template: h for h in HOOKS}
#: the per-layer hooks with one vector per query head (``... head_index d_head``, or ``d_model`` for results)
QUERY_HEAD_HOOKS = tuple(
    h.template
    for h in HOOKS
    if h.per_layer
    and h.dims[-2:-1] == ("head_index",)
    and h.template.rsplit(".", 1)[-1] in ("hook_z", "hook_result", "hook_q")
)
_NAME_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def hook_point(name: str) -> HookPoint:
    """Return the :class:`HookPoint` of a concrete name (``blocks.3.attn.hook_z``)."""
    m = _NAME_RE.match(name)
    template = f"blocks.{{l}}.{m.group(2)}" if m else name
    try:
        return _BY_TEMPLATE[template]
    except KeyError:
        raise HookNameError(f"{name!r} is not a registered hook name.") from None


def split_name(name: str) -> tuple[int | None, str]:
    """Return ``(layer, template)`` of a concrete name; layer is None for non-layer hooks."""
    m = _NAME_RE.match(name)
    if m:
        return int(m.group(1)), f"blocks.{{l}}.{m.group(2)}"
    return None, name


#: the per-layer hooks of every layer kind (residual, token-mixer output and MLP hooks exist on every layer)
_COMMON = (
    "blocks.{l}.hook_resid_pre",
    "blocks.{l}.hook_attn_out",
    "blocks.{l}.hook_mlp_out",
    "blocks.{l}.hook_resid_post",
)


def layer_hooks(kind: str = "attention") -> list[str]:
    """The per-layer hook templates a layer of ``kind`` has, in execution order.

    >>> layer_hooks("convolution")
    ['blocks.{l}.hook_resid_pre', 'blocks.{l}.hook_attn_out', 'blocks.{l}.hook_mlp_out', 'blocks.{l}.hook_resid_post']
    """
    prefix = {"attention": "blocks.{l}.attn.", "cross_attention": "blocks.{l}.cross_attn."}.get(kind)
    return [
        h.template
        for h in HOOKS
        if h.per_layer and (h.template in _COMMON or (prefix is not None and h.template.startswith(prefix)))
    ]


def all_names(n_layers: int, multimodal: bool = True, kinds: Sequence[str] | None = None) -> list[str]:
    """Return every concrete hook name of a model with ``n_layers`` layers, in execution order.

    ``kinds``: the kind of each layer (default: all softmax attention); a layer has the hooks of its kind
    (:func:`layer_hooks`).
    """
    out: list[str] = []
    for h in HOOKS:
        if h.template.startswith("vision_") and not multimodal:
            continue
        if not h.per_layer:
            out.append(h.template)
    by_kind: dict[str, list[str]] = {}
    for layer in range(n_layers):
        kind = kinds[layer] if kinds is not None else "attention"
        templates = by_kind.setdefault(kind, layer_hooks(kind))
        out.extend(t.format(l=layer) for t in templates)
    return out


#: the widest layer range a brace set may span (no model has more layers; keeps a typo from building a huge regex)
MAX_LAYER_RANGE = 10_000


def _layer_set(body: str, pattern: str) -> list[tuple[int, int]]:
    """Parse the inside of a ``{0-3}`` / ``{1,4}`` layer set into ``(first, last)`` ranges."""
    ranges: list[tuple[int, int]] = []
    for part in body.split(","):
        part = part.strip()
        if re.fullmatch(r"[0-9]{1,9}-[0-9]{1,9}", part):
            a, b = (int(x) for x in part.split("-"))
        elif re.fullmatch(r"[0-9]{1,9}", part):
            a = b = int(part)
        else:
            raise HookNameError(f"bad layer set {{{body}}} in {pattern!r}; use {{0-3}} or {{0,5,9}}.")
        if b < a or b - a >= MAX_LAYER_RANGE:
            raise HookNameError(
                f"bad layer range {{{part}}} in {pattern!r}: write it low to high, e.g. {{0-3}}, spanning fewer "
                f"than {MAX_LAYER_RANGE} layers."
            )
        ranges.append((a, b))
    return ranges


def _expand_braces(pattern: str) -> str:
    """Turn ``{0-3}`` / ``{1,4}`` layer sets into regex alternations."""

    def repl(m: re.Match[str]) -> str:
        items = [str(i) for a, b in _layer_set(m.group(1), pattern) for i in range(a, b + 1)]
        return "\x00(?:" + "|".join(items) + ")\x00"

    return re.sub(r"\{([^}]*)\}", repl, pattern)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    if "\x00" in pattern or "\x01" in pattern:
        raise HookNameError(f"hook pattern {pattern!r} holds control characters; hook names never do.")
    expanded = _expand_braces(pattern)
    out = []
    for piece in re.split(r"(\x00[^\x00]*\x00)", expanded):
        if piece.startswith("\x00"):
            out.append(piece.strip("\x00"))
            continue
        piece = re.sub(r"\*{3,}", "**", piece)  # runs of wildcards would make the regex backtrack exponentially
        piece = re.escape(piece).replace(r"\*\*", "\x01").replace(r"\*", r"[^.]+").replace("\x01", ".+")
        out.append(piece)
    return re.compile("^" + "".join(out) + "$")


def is_pattern(name: str) -> bool:
    return "*" in name or "{" in name


def match_saved(pattern: str, names: Sequence[str]) -> list[str]:
    """Return the names in ``names`` that ``pattern`` matches, in the given order."""
    rx = _pattern_regex(pattern)
    return [n for n in names if rx.match(n)]


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates closest to ``name`` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def resolve(
    patterns: str | Sequence[str], n_layers: int, multimodal: bool = True, kinds: Sequence[str] | None = None
) -> list[str]:
    """Expand names and glob patterns into concrete hook names, in execution order.

    Raises :class:`~savlens.errors.HookNameError` for an unknown name (listing the closest valid
    names), a layer out of range, or a pattern that matches nothing; :class:`~savlens.errors.HookNotAvailableError`
    for a hook that the named layer's kind does not have (``kinds``: the kind of each layer; a glob matches only
    the layers that have the hook).

    >>> resolve("blocks.*.attn.hook_z", n_layers=2)
    ['blocks.0.attn.hook_z', 'blocks.1.attn.hook_z']
    >>> resolve(["blocks.1.hook_resid_post", "hook_embed"], n_layers=2)
    ['hook_embed', 'blocks.1.hook_resid_post']
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Sequence) or not patterns:
        raise HookNameError(f"give a hook name, a pattern or a list of them; got {patterns!r}.")
    valid = all_names(n_layers, multimodal, kinds)
    chosen: set[str] = set()
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise HookNameError(f"hook names must be non-empty strings; got {pat!r}.")
        for body in re.findall(r"\{([^}]*)\}", pat):
            last = max(b for _, b in _layer_set(body, pat))
            if last >= n_layers:
                raise HookNameError(
                    f"layer {last} in {pat!r} is out of range: this model has {n_layers} layers "
                    f"(blocks.0 .. blocks.{n_layers - 1})."
                )
        hits = match_saved(pat, valid)
        if not hits and kinds is not None:
            everywhere = match_saved(
                pat,
                [n for k in ("attention", "cross_attention") for n in all_names(n_layers, multimodal, [k] * n_layers)],
            )
            if everywhere:
                layers = sorted({int(m.group(1)) for n in everywhere if (m := _NAME_RE.match(n))})
                have = {k: [i for i, kk in enumerate(kinds) if kk == k] for k in dict.fromkeys(kinds)}
                raise HookNotAvailableError(
                    f"{pat!r}: layer {layers[0]} ({kinds[layers[0]].replace('_', ' ')}) has no such hook. Layers by "
                    f"kind: {have}; attn.* hooks exist on attention layers, cross_attn.* on cross-attention layers, "
                    "and hook_resid_* / hook_attn_out / hook_mlp_out on every layer."
                )
        if not hits:
            raise HookNameError(_no_match_message(pat, n_layers, multimodal, valid))
        chosen.update(hits)
    return [n for n in valid if n in chosen]


def _no_match_message(pat: str, n_layers: int, multimodal: bool, valid: list[str]) -> str:
    m = _NAME_RE.match(pat)
    if m and not is_pattern(pat) and len(m.group(1)) < 10:
        layer, rest = int(m.group(1)), m.group(2)
        template = f"blocks.{{l}}.{rest}"
        if template in _BY_TEMPLATE and layer >= n_layers:
            return (
                f"layer {layer} in {pat!r} is out of range: this model has {n_layers} layers "
                f"(blocks.0 .. blocks.{n_layers - 1})."
            )
    if pat.startswith("vision_") and not multimodal:
        return (
            f"{pat!r} needs a vision tower, and this model is a text-only language model; drop this hook or load a "
            "vision-language model."
        )
    # suggest on the template level (so a typo in any layer is caught), then concretise
    layer_of = m.group(1) if m else None
    templates = [h.template for h in HOOKS if multimodal or not h.template.startswith("vision_")]
    generic = re.sub(r"^blocks\.(\d+|\*)\.", "blocks.{l}.", pat)
    hints = closest(generic, templates)
    if layer_of is not None:
        hints = [h.replace("{l}", layer_of) for h in hints]
    elif pat.startswith("blocks.*."):
        hints = [h.replace("{l}", "*") for h in hints]
    msg = f"no hook matches {pat!r}."
    if hints:
        msg += f" Closest valid names: {', '.join(hints)}."
    msg += " See savlens.names.HOOKS (docs: hook names) for the full list."
    return msg


def hooks_markdown() -> str:
    """Return the registry as a markdown table (the docs page is generated from this)."""
    rows = ["| name | dims | what it is |", "|---|---|---|"]
    for h in HOOKS:
        extra = " (derived)" if h.derived else ""
        rows.append(f"| `{h.template}` | `{' '.join(h.dims)}` | {h.doc}{extra} |")
    return "\n".join(rows)


def dims_markdown() -> str:
    """Return the dim words (:data:`DIM_GLOSSARY`) as a markdown table (docs/hooks.md's "Dim words")."""
    return "\n".join(["| dim | meaning |", "|---|---|", *(f"| `{d}` | {m} |" for d, m in DIM_GLOSSARY.items())])


if __name__ == "__main__":  # regenerate the tables of docs/hooks.md
    print(hooks_markdown(), dims_markdown(), sep="\n\n")
