# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Trace a model and read its cache
#
# savlens reads activations by **hook name** (TransformerLens names: `blocks.{l}.attn.hook_z`, ...) inside one
# forward pass of an unmodified Hugging Face model. This tutorial builds a batch that mixes an image example and
# a text-only example, saves every head's output at the last token and the residual stream at the image tokens,
# and checks that reading them changed nothing.
#
# It runs offline on a tiny random Qwen2-VL built in memory. Set `SAVLENS_MODEL` to a checkpoint (e.g.
# `Qwen/Qwen2-VL-7B-Instruct` or `llava-hf/llava-onevision-qwen2-7b-ov-hf`) to run the same steps on it.

# %%
import os

import torch

import savlens
from savlens.testing.tiny import build_tiny, sample_images

MODEL = os.environ.get("SAVLENS_MODEL")
if MODEL:
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = savlens.load(MODEL, dtype=dtype, device_map="auto" if torch.cuda.is_available() else None)
else:
    tm = build_tiny("qwen2_vl")  # 3 layers, 4 query heads over 2 KV heads (GQA), random weights
    model = savlens.wrap(tm.model, tm.processor, model_id="tiny-qwen2_vl")
model

# %% [markdown]
# The `Model` wrapper found the family spec, resolved the module paths by role and checked the sizes in the
# config against the weights. Every tensor savlens can read has one canonical name:

# %%
names = model.hook_names()
print(len(names), "hooks, e.g.", names[:3], "...", [n for n in names if n.startswith("blocks.0.")])

# %% [markdown]
# ## A batch
# `Batch.from_examples` applies the chat template, expands image tokens, pads (left by default) and records, per
# row, where the last real token is and which positions are image tokens.

# %%
image = sample_images(1, sizes=((64, 64),))[0]
examples = [
    savlens.Example("what color is the circle ?", images=[image], id="with-image"),
    savlens.Example("is there a red shape ?", id="text-only"),
]
if not model.multimodal:  # a text LM (SAVLENS_MODEL=smollm2-135m, ...): drop the image
    examples[0] = savlens.Example("what color is the circle ?", id="with-image")
batch = savlens.Batch.from_examples(model, examples)
print(batch)
print("last real token of each row:", batch.last_index.tolist())
print("image tokens per row:", batch.image_mask.sum(-1).tolist())

# %% [markdown]
# ## Saving inside a trace
# Declare what to save inside the `with` block; the model runs once when the block ends. `positions="last"` (the
# default for language-model hooks) slices each row at its own last real token *inside the hook*, so no
# full-sequence tensor is kept. `"image"` positions are ragged (rows hold different numbers of image tokens): they
# come padded, with a mask.

# %%
with savlens.trace(model, batch) as t:
    z = t.save("blocks.*.attn.hook_z")  # every layer, every query head, at the last token
    resid = t.save("blocks.0.hook_resid_pre", positions="image" if model.multimodal else "all")
print(z)
print("dims:", z.dims, "shape:", tuple(z.value.shape))
print(t.cache)

# %% [markdown]
# `z.value` is `batch pos layer head_index d_head`: the SAV feature of every head. One layer's tensor is
# `z["blocks.0.attn.hook_z"]`; the cache entry of a ragged save carries its mask.

# %%
entry = t.cache.entry("blocks.0.hook_resid_pre")
print(entry)
if entry.mask is not None:
    print("real image-token slots per row:", entry.mask.sum(-1).tolist())
s = model.sizes
assert z.value.shape[2:] == (s.n_layers, s.n_heads, s.d_head)
print(f"{s.n_heads} query heads share {s.n_kv_heads} KV heads: head h reads KV group h // {s.n_heads // s.n_kv_heads}")

# %% [markdown]
# ## Saving changes nothing
# The logits under the trace equal a plain forward of the HF model on the same inputs, and a padded batch gives
# the same features as running each example alone (positions are rebuilt from the attention mask).

# %%
with torch.no_grad():
    plain = model.hf(**batch.inputs, use_cache=False).logits
last = plain[torch.arange(batch.size), batch.last_index.to(plain.device)]
print("max |logit difference|:", float((t.logits[:, 0] - last).abs().max()))
assert torch.allclose(t.logits[:, 0].float(), last.float(), atol=1e-4)

one = savlens.Batch.from_examples(model, examples[1:])
with savlens.trace(model, one) as t1:
    z1 = t1.save("blocks.*.attn.hook_z")
diff = float((z.value[1] - z1.value[0]).abs().max())
print("text-only row, batched vs alone, max |difference|:", diff)
assert diff < (1e-4 if model.dtype == torch.float32 else 5e-2)

# %% [markdown]
# ## TransformerLens style
# `run_with_cache` is one forward pass returning `(logits, cache)`.

# %%
logits, cache = savlens.run_with_cache(model, batch, "blocks.*.hook_resid_post")
print(tuple(logits.shape), cache.stack("blocks.*.hook_resid_post").shape)  # batch pos layer d_model
