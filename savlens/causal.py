"""Causal checks of SAV heads, and where they look.

SAV picks heads by correlation. These functions ask whether those heads matter to the model's own answer:

- :func:`causal_validation`: mean-ablate the k selected heads, versus k random heads drawn from the same layers
  (matched layer distribution), versus nothing, and measure the model's zero-shot answer accuracy and the
  log-probability of the correct answer, with spread over seeds;
- :func:`steer_to_class`: the reverse, in the style of multimodal task vectors: write class ``c``'s centroid into
  the selected heads at the last token and measure how far the answer moves towards ``c``;
- :func:`attention_shares`: the share of a head's last-token attention that goes to image tokens, video
  tokens, the text, and the chat template / system prompt (patterns captured under the model's own attention backend:
  :func:`savlens.attention.attention_patterns`).
"""

import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, FeatureError, InputError
from savlens.example import Example
from savlens.heads import Head, HeadSet
from savlens.inputs import Batch
from savlens.loading import Model
from savlens.tracing import attention_patterns, trace


@dataclass
class AnswerScores:
    """Zero-shot answers of the model under one condition.

    Attributes:
        accuracy: share of examples whose best-scoring answer (among the class answers) is the right one.
        logprob: ``example`` log-probability of the right answer's first token (full-vocabulary softmax).
        predicted: the predicted label of each example.
    """

    accuracy: float
    logprob: Float[Tensor, " example"]
    predicted: list[Hashable]


def answer_token_ids(model: Model, answers: Mapping[Hashable, str]) -> dict[Hashable, int]:
    """Return the first token id of each class's answer text (e.g. ``{"yes": "Yes", "no": "No"}``)."""
    ids: dict[Hashable, int] = {}
    for label, text in answers.items():
        toks = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not toks:
            raise InputError(f"the answer {text!r} of class {label!r} encodes to no token.")
        ids[label] = int(toks[0])
    if len(set(ids.values())) != len(ids):
        raise InputError(f"the answers {dict(answers)} do not start with distinct tokens; make them distinct.")
    return ids


def answer_scores(
    model: Model,
    examples: Sequence[Example],
    answers: Mapping[Hashable, str],
    *,
    edit: Any = None,
    batch_size: int = 8,
    **batch_options: Any,
) -> AnswerScores:
    """Score the model's zero-shot answer on labelled ``examples``, optionally under an edit.

    Args:
        model: the model.
        examples: labelled examples (``label`` must be a key of ``answers``).
        answers: the answer text of each class; the first token of each is compared at the last position.
        edit: optional ``fn(t: Trace, batch: Batch, rows: slice)`` called inside each trace to declare
            interventions.
        batch_size: rows per forward pass.
        **batch_options: passed to :meth:`Batch.from_examples` (``prompt_template``, ``system_prompt``, ``chat``).
    """
    tok = answer_token_ids(model, answers)
    labels = list(tok)
    cand = torch.tensor([tok[label] for label in labels])
    for e in examples:
        if e.label not in tok:
            raise InputError(f"example {e.id!r} has label {e.label!r}, which has no answer in {list(answers)}.")
    logps: list[Tensor] = []
    preds: list[Hashable] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        batch = Batch.from_examples(model, chunk, **batch_options)
        with trace(model, batch) as t:
            if edit is not None:
                edit(t, batch, slice(start, start + len(chunk)))
        lp = torch.log_softmax(t.logits[:, 0].float(), dim=-1).cpu()
        right = torch.tensor([tok[e.label] for e in chunk])
        logps.append(lp.gather(1, right[:, None])[:, 0])
        preds.extend(labels[i] for i in lp[:, cand].argmax(-1).tolist())
    truth = [e.label for e in examples]
    acc = sum(p == y for p, y in zip(preds, truth)) / len(truth)
    return AnswerScores(acc, torch.cat(logps), preds)


def matched_random_heads(heads: HeadSet, n_heads: int, seed: int, n_layers: int | None = None) -> HeadSet:
    """Draw as many random heads as ``heads`` holds, never one of ``heads``, matching its layer distribution.

    Each layer gets as many random heads as ``heads`` has there; where a layer has fewer heads outside ``heads``
    than that, the rest come from the nearest layers with free heads (nearest first, lower layer on a tie).
    """
    gen = torch.Generator().manual_seed(seed)
    n_layers = n_layers if n_layers is not None else max(h.layer for h in heads) + 2
    taken = set(heads)
    per_layer: dict[int, int] = {}
    for h in heads:
        per_layer[h.layer] = per_layer.get(h.layer, 0) + 1
    chosen: list[Head] = []
    for layer, count in sorted(per_layer.items()):
        for near in sorted(range(n_layers), key=lambda x: (abs(x - layer), x)):
            if count == 0:
                break
            pool = [Head(near, i) for i in range(n_heads) if Head(near, i) not in taken]
            pick = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:count].tolist()]
            chosen.extend(pick)
            taken.update(pick)
            count -= len(pick)
        if count:
            raise ArgumentError(f"cannot draw {len(heads)} random heads outside the given ones in this grid.")
    return HeadSet(chosen)


@dataclass
class CausalReport:
    """Zero-shot answer accuracy and right-answer log-prob under ablations.

    Attributes:
        heads: the SAV heads ablated.
        baseline: scores with no edit.
        selected: scores with the SAV heads mean-ablated.
        random: scores with k random heads (matched layers) mean-ablated, one per seed.
        random_heads: the random head sets, one per seed (never containing a SAV head).
    """

    heads: HeadSet
    baseline: AnswerScores
    selected: AnswerScores
    random: list[AnswerScores]
    random_heads: list[HeadSet] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Return accuracy and mean log-prob change per condition (mean and std over seeds for random)."""
        base_lp = self.baseline.logprob
        rand_acc = [r.accuracy for r in self.random]
        rand_dlp = [float((r.logprob - base_lp).mean()) for r in self.random]
        return {
            "k": len(self.heads),
            "accuracy": {
                "none": self.baseline.accuracy,
                "sav_heads": self.selected.accuracy,
                "random_heads_mean": statistics.fmean(rand_acc) if rand_acc else None,
                "random_heads_std": statistics.pstdev(rand_acc) if len(rand_acc) > 1 else 0.0,
            },
            "delta_logprob": {
                "sav_heads": float((self.selected.logprob - base_lp).mean()),
                "random_heads_mean": statistics.fmean(rand_dlp) if rand_dlp else None,
                "random_heads_std": statistics.pstdev(rand_dlp) if len(rand_dlp) > 1 else 0.0,
            },
            "n_seeds": len(self.random),
        }


def causal_validation(
    sav: Any,
    model: Model,
    examples: Sequence[Example],
    answers: Mapping[Hashable, str],
    *,
    means: HeadFeatures,
    n_random: int = 5,
    seed: int = 0,
    batch_size: int = 8,
    **batch_options: Any,
) -> CausalReport:
    """Mean-ablate a fitted SAV's heads vs matched random heads vs none; score the model's own answers.

    Args:
        sav: a fitted :class:`savlens.SAV` (its ``heads_`` are ablated).
        model: the model the SAV was fitted on.
        examples: labelled evaluation examples.
        answers: the answer text of each class (``{"yes": "Yes", "no": "No"}``).
        means: features whose per-head mean is written into ablated heads (e.g. the training features).
        n_random: random head sets (one per seed).
        seed: first seed of the random head sets.
    """
    heads: HeadSet = sav.heads_
    mean_z = _mean_grid(means, model)

    def ablating(hs: HeadSet) -> Any:
        return lambda t, batch, rows: t.ablate(hs, "mean", means=mean_z, positions="all")

    opts = dict(batch_options, batch_size=batch_size)
    base = answer_scores(model, examples, answers, **opts)
    sel = answer_scores(model, examples, answers, edit=ablating(heads), **opts)
    rand_sets = [matched_random_heads(heads, model.n_heads, seed + i, model.n_layers) for i in range(n_random)]
    rand = [answer_scores(model, examples, answers, edit=ablating(hs), **opts) for hs in rand_sets]
    return CausalReport(heads, base, sel, rand, rand_sets)


@dataclass
class SteeringReport:
    """How far writing class centroids into the SAV heads moves the model's answer.

    Attributes:
        target: the class whose centroid was written.
        share_before / share_after: share of examples answered ``target`` without / with the edit.
        delta_logprob: mean change of the log-prob of ``target``'s answer token.
    """

    target: Hashable
    share_before: float
    share_after: float
    delta_logprob: float


def steer_to_class(
    sav: Any,
    model: Model,
    examples: Sequence[Example],
    answers: Mapping[Hashable, str],
    target: Hashable,
    *,
    batch_size: int = 8,
    **batch_options: Any,
) -> SteeringReport:
    """Replace the SAV heads' last-token outputs with ``target``'s class centroid (MTV-style) and measure
    the share of answers that become ``target`` and the change of its answer log-prob."""
    if target not in sav.classes_:
        raise InputError(f"target {target!r} is not a class of this SAV ({list(sav.classes_)}).")
    c = list(sav.classes_).index(target)
    heads: HeadSet = sav.heads_
    grid = _head_grid(model, ([h.layer for h in heads], [h.head for h in heads]), sav.centroids_[:, c].float())
    relabelled = [Example(e.text, e.images, target, e.id, e.messages, e.meta) for e in examples]
    opts = dict(batch_options, batch_size=batch_size)
    before = answer_scores(model, relabelled, answers, **opts)
    after = answer_scores(
        model,
        relabelled,
        answers,
        **opts,
        edit=lambda t, batch, rows: t.ablate(heads, "mean", means=grid, positions="last"),
    )
    n = len(examples)
    return SteeringReport(
        target,
        sum(p == target for p in before.predicted) / n,
        sum(p == target for p in after.predicted) / n,
        float((after.logprob - before.logprob).mean()),
    )


def _head_grid(model: Model, index: Any, values: Tensor) -> Float[Tensor, "layer head_index d_head"]:
    """Return a float32 ``layer head_index d_head`` grid of ``model``: zero, with ``values`` written at ``index``.

    ``index`` picks whole layers (a list of layers) or single heads (a list of layers and a list of heads).
    """
    grid = torch.zeros(model.n_layers, model.n_heads, model.sizes.d_head)
    grid[index] = values.to(grid.device)
    return grid


def _mean_grid(means: HeadFeatures, model: Model) -> Float[Tensor, "layer head_index d_head"]:
    """Return each head's mean ``hook_z`` over the examples of ``means`` (zero in layers it lacks)."""
    if not isinstance(means, HeadFeatures):
        raise FeatureError(f"means must be HeadFeatures (e.g. the training features); got {type(means).__name__}.")
    return _head_grid(model, list(means.layers or ()), means.z.float().mean(0))


# ---- where heads look ------------------------------------------------------------------------------
@dataclass
class AttentionShares:
    """Share of each head's last-token attention going to image tokens, video tokens, text, and the template /
    system prompt.

    Attributes:
        heads: the heads, in order.
        image / text / system / video: ``example k`` shares; each row of the four together sums to 1
            (:data:`REGIONS`). ``video`` defaults to zeros (a model or batch without video).
        patterns: with ``return_patterns=True``, one ``k key_pos`` tensor per example: each head's attention from
            the example's last token over the example's own tokens (padding removed; ``key_pos`` 0 is its first
            token); None otherwise.
    """

    heads: HeadSet
    image: Float[Tensor, "example k"]
    text: Float[Tensor, "example k"]
    system: Float[Tensor, "example k"]
    patterns: list[Tensor] | None = None  # per example: k key_pos (key_pos differs by example)
    video: Float[Tensor, "example k"] | None = None

    def __post_init__(self) -> None:
        if self.video is None:
            self.video = torch.zeros_like(self.image)

    def mean(self) -> dict[str, dict[str, float]]:
        """Return ``{head label: {"image": ..., "video": ..., "text": ..., "system": ...}}`` averaged over
        examples."""
        return {
            str(h): {region: float(getattr(self, region)[:, i].mean()) for region in REGIONS}
            for i, h in enumerate(self.heads)
        }


#: the regions of :class:`AttentionShares`: every token of an example is in exactly one
REGIONS = ("image", "video", "text", "system")


def template_prefix_length(model: Model, **batch_options: Any) -> int:
    """Return the number of tokens the chat template puts before the user's content (system prompt and role
    markers): the common token prefix of two prompts that differ only in their text."""
    a = Batch.from_examples(model, [Example("0", id="a")], **batch_options).input_ids[0].tolist()
    b = Batch.from_examples(model, [Example("1", id="b")], **batch_options).input_ids[0].tolist()
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def attention_shares(
    model: Model,
    examples: Sequence[Example],
    heads: Any,
    *,
    batch_size: int = 8,
    return_patterns: bool = False,
    **batch_options: Any,
) -> AttentionShares:
    """Measure where ``heads`` look from the last token: the share of their attention on image tokens, video
    tokens, the text and the chat template / system prompt (every token in exactly one; the shares sum to 1).

    The patterns are computed for ``heads`` only, at the last query position only, inside the model's own forward
    pass under its attention backend (SDPA included; :func:`savlens.attention.attention_patterns`), and the pass
    stops after the last layer of ``heads``.

    Args:
        model: the model.
        examples: the examples.
        heads: a :class:`HeadSet`, ``"L14H3"`` labels or ``(layer, head)`` pairs.
        batch_size: rows per forward pass.
        return_patterns: also return each example's ``k key_pos`` patterns (``AttentionShares.patterns``).
        **batch_options: passed to :meth:`Batch.from_examples` (``prompt_template``, ``system_prompt``, ``chat``).
    """
    hs = heads if isinstance(heads, HeadSet) else HeadSet(heads)
    prefix = template_prefix_length(model, **batch_options)
    out: dict[str, list[Tensor]] = {region: [] for region in REGIONS}
    kept: list[Tensor] = []
    for start in range(0, len(examples), batch_size):
        batch = Batch.from_examples(model, list(examples[start : start + batch_size]), **batch_options)
        per_head = attention_patterns(model, batch, hs, "last").value[:, :, 0]  # batch k key_pos
        first = (batch.last_index - batch.lengths + 1)[:, None]
        pos = torch.arange(batch.seq_len)[None, :]
        image = batch.image_mask
        video = batch.video_mask if batch.video_mask is not None else torch.zeros_like(image)
        system = (pos >= first) & (pos < first + prefix) & ~image & ~video
        text = batch.attention_mask.bool() & ~image & ~video & ~system
        regions = {"image": image, "video": video, "text": text, "system": system}
        for name in REGIONS:
            out[name].append((per_head * regions[name][:, None, :]).sum(-1))
        if return_patterns:
            kept.extend(per_head[r, :, batch.attention_mask[r].bool()] for r in range(batch.size))
    return AttentionShares(
        hs,
        image=torch.cat(out["image"]),
        text=torch.cat(out["text"]),
        system=torch.cat(out["system"]),
        patterns=kept if return_patterns else None,
        video=torch.cat(out["video"]),
    )
