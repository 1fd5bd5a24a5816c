"""What a user would run instead of savlens: the baselines of the benchmark, on the same model and inputs.

1. :func:`bare_forward`: the HF model's own forward on the same padded batch (the floor).
2. :class:`FullSequenceHooks` / :func:`reference_fit`: the published reference code's style of capture: a plain
   forward hook on every layer's output projection that retains its full-sequence input *and* output
   (baukit ``TraceDict(retain_input=True, retain_output=True)`` style), one example per forward pass (batch
   size 1), and three passes over the training examples for a fit (class means, head scoring, means again).
3. :func:`nnsight_full_sequence`: nnsight's plain ``trace`` saving every layer's output-projection input, whole
   sequence (what a plain nnsight recipe does, without slicing inside the trace).

Choices that favour the baselines (so that a savlens lead is not an artefact): every forward gets the same
inputs savlens builds (``use_cache=False``, ``logits_to_keep=1`` where the model takes it, padding-aware
positions); the reference-style scoring is vectorised over heads (one ``cosine_similarity`` call per example,
not a Python loop over heads); inputs are built with savlens's own ``Batch.from_examples``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import savlens
from savlens.engine import model_inputs as _model_inputs
from savlens.models import get_path


def model_inputs(model: savlens.Model, batch: savlens.Batch) -> dict[str, Any]:
    """The forward kwargs savlens passes for ``batch`` (same tensors, ``logits_to_keep=1``, no KV cache)."""
    return _model_inputs(model, batch, "last")


def bare_forward(model: savlens.Model, inputs: dict[str, Any]) -> Any:
    """One plain HF forward pass (no hooks, no tracing)."""
    with torch.no_grad():
        return model.hf(**inputs)


class FullSequenceHooks:
    """Forward hooks on every layer's ``o_proj`` that retain its whole input and output (reference style).

    Use as a context manager; after each forward, ``retained[l] = (input, output)`` of layer ``l``.
    """

    def __init__(self, model: savlens.Model) -> None:
        self.model = model
        self.modules = [model.module(model.resolved.block_path(layer, "o_proj")) for layer in range(model.n_layers)]
        self.retained: dict[int, tuple[Tensor, Tensor]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> FullSequenceHooks:
        for layer, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._hook(layer)))
        return self

    def _hook(self, layer: int) -> Any:
        def hook(module: Any, args: tuple[Tensor, ...], output: Tensor) -> None:
            self.retained[layer] = (args[0].detach(), output.detach())

        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def last_token_heads(self) -> Tensor:
        """``layer head_index d_head`` at the last token of the (single, unpadded) row of the last forward."""
        s = self.model.sizes
        z = torch.stack([self.retained[layer][0][0, -1] for layer in range(self.model.n_layers)])
        return z.reshape(s.n_layers, s.n_heads, s.d_head).float()


def reference_capture(model: savlens.Model, hooks: FullSequenceHooks, inputs: Sequence[dict[str, Any]]) -> Tensor:
    """Reference-style capture of prebuilt one-row inputs: ``example layer head_index d_head``."""
    out = []
    for inp in inputs:
        bare_forward(model, inp)
        out.append(hooks.last_token_heads())
    return torch.stack(out)


def _classes_in_order(labels: Sequence[Hashable]) -> list[Hashable]:
    return list(dict.fromkeys(labels))


def reference_fit(model: savlens.Model, examples: Sequence[savlens.Example], k: int) -> dict[str, Any]:
    """A full fit in the reference code's style: three passes of batch-size-1 forwards with full-sequence hooks.

    Pass 1 computes every head's class means; pass 2 scores each head in sample (cosine to the pass-1 means,
    first maximum); the top ``k`` heads are ``argsort(scores, kind="stable")[-k:][::-1]``; pass 3 computes the
    class means again, kept for the selected heads. Inputs are re-encoded for every forward, as the
    reference does.

    Returns:
        ``{"heads": [(layer, head), ...], "centroids": k class d_head, "scores": layer*head,
        "z": example layer head_index d_head}`` (``z``: the features pass 2 read, kept for checks)
    """
    labels = [e.label for e in examples]
    classes = _classes_in_order(labels)
    codes = [classes.index(y) for y in labels]
    s = model.sizes

    def activations(hooks: FullSequenceHooks, ex: savlens.Example) -> Tensor:
        batch = savlens.Batch.from_examples(model, [ex])
        bare_forward(model, model_inputs(model, batch))
        return hooks.last_token_heads()

    def class_means(hooks: FullSequenceHooks) -> Tensor:  # class layer head_index d_head
        members: list[list[Tensor]] = [[] for _ in classes]
        for ex, c in zip(examples, codes):
            members[c].append(activations(hooks, ex))
        return torch.stack([torch.stack(m).mean(dim=0) for m in members])

    with FullSequenceHooks(model) as hooks:
        means = class_means(hooks)  # pass 1
        scores = np.zeros(s.n_layers * s.n_heads)
        seen = []
        for ex, c in zip(examples, codes):  # pass 2
            z = activations(hooks, ex)
            seen.append(z)
            sim = F.cosine_similarity(z[None], means, dim=-1, eps=1e-8)  # class layer head
            scores += (sim.argmax(0) == c).flatten().numpy()
        top = np.argsort(scores, kind="stable")[-k:][::-1]
        heads = [(int(i) // s.n_heads, int(i) % s.n_heads) for i in top]
        means = class_means(hooks)  # pass 3
    centroids = torch.stack([means[:, layer, head] for layer, head in heads])
    return {"heads": heads, "centroids": centroids, "scores": scores, "z": torch.stack(seen)}


def nnsight_full_sequence(model: savlens.Model, inputs: dict[str, Any]) -> list[Tensor]:
    """nnsight's plain trace saving every layer's ``o_proj`` input over the whole sequence."""
    env = model.envoy
    paths = [model.resolved.block_path(layer, "o_proj") for layer in range(model.n_layers)]
    zs: list[Tensor] = []
    with torch.no_grad(), env.trace(**inputs):
        for path in paths:
            zs.append(get_path(env, path).input.save())
    return zs


def nnsight_empty(model: savlens.Model, inputs: dict[str, Any]) -> None:
    """An nnsight trace that saves nothing: nnsight's fixed cost per forward pass."""
    env = model.envoy
    with torch.no_grad(), env.trace(**inputs):
        pass


def nnsight_last_token(model: savlens.Model, inputs: dict[str, Any], last: Tensor) -> list[Tensor]:
    """nnsight's plain trace saving every layer's ``o_proj`` input at each row's last token (indexed inside the
    trace) and stopping there, as savlens's capture does: the same work written directly in nnsight."""
    env = model.envoy
    paths = [model.resolved.block_path(layer, "o_proj") for layer in range(model.n_layers)]
    rows = torch.arange(last.shape[0])
    zs: list[Tensor] = []
    with torch.no_grad(), env.trace(**inputs) as tracer:
        for path in paths:
            zs.append(get_path(env, path).input[rows, last].save())
        tracer.stop()
    return zs
