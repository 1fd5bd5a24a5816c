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
# # 4. Heads across tasks, and heads vs layers
#
# Do two tasks use the same heads? The paper chooses heads on one safety task (VLGuard) and uses them on another
# (MHalu). Here the tasks are the ones available offline: with SmolLM2, two topic pairs of `fortunes`
# (science vs politics, food vs love) and the four-way task; with a vision-language `SAVLENS_MODEL`, easy-VQA
# colour and shape questions. The same code runs on VLGuard / MHalu with `savlens.datasets.load_vlguard` and
# `load_mhalu`.

# %%
import os
import sys
from pathlib import Path

import torch

import savlens
from savlens.demo import easy_vqa_task
from savlens.transfer import TaskSplit, transfer_matrix

if "__file__" in globals():  # run from another folder (as CI does); a notebook runs in this one
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import task_features, tutorial_data  # tutorials/_setup.py

MODEL = os.environ.get("SAVLENS_MODEL", "smollm2-135m")
gpu = torch.cuda.is_available()
model = savlens.load(MODEL, dtype=torch.bfloat16 if gpu else "auto", device_map="auto" if gpu else None)

if model.multimodal:  # each task's features from its store (one per model and task, shared by the tutorials)
    splits = {
        name: TaskSplit(*task_features(model, easy_vqa_task(name, shots=10, n_test=8))) for name in ("color", "shape")
    }
else:
    _, train, test = tutorial_data(model)  # tutorial 2's four-way task and its features
    splits = {"all four": TaskSplit(train, test)}
    for a, b in [("science", "politics"), ("food", "love")]:
        tr = [i for i, lab in enumerate(train.labels or []) if lab in (a, b)]
        te = [i for i, lab in enumerate(test.labels or []) if lab in (a, b)]
        splits[f"{a}/{b}"] = TaskSplit(train.subset(tr), test.subset(te))
for name, s in splits.items():
    print(
        f"{name:>17}: {s.train.n_examples} train, {s.test.n_examples} test, classes {sorted(set(s.train.labels or []))}"
    )

# %% [markdown]
# ## The transfer matrix
# Row: the task the heads were chosen on. Column: the task they are used on, with that task's own training
# centroids and test examples. The diagonal is each task's own SAV.

# %%
matrix = transfer_matrix(splits, k=10)
print(matrix)
print(matrix.overlap())

# %%
from savlens import plot

plot.transfer_heatmap(matrix)

# %%
plot.head_overlay(matrix.heads, n_layers=model.n_layers, n_heads=model.n_heads)

# %% [markdown]
# A head set chosen on one task can also be applied by hand: `SAV.fit_heads` keeps given heads and fits only
# their centroids.

# %%
names = list(splits)
source, target = names[-1], names[-2]
borrowed = savlens.SAV().fit_heads(splits[target].train, heads=matrix.heads[source])
print(
    f"{target} with the heads of {source}: {borrowed.score(splits[target].test):.3f} (= matrix cell "
    f"{matrix[source, target]:.3f})"
)
assert abs(borrowed.score(splits[target].test) - matrix[source, target]) < 1e-12

# %% [markdown]
# ## Sparse heads vs sparse layers
# Table 3b of the paper: the same number of feature dimensions spent on a few whole layers instead of
# individual heads. `compare_heads_layers` fits both on the same stratified folds, and each again with
# shuffled training labels (a control that should sit at chance).

# %%
from savlens.compare import compare_heads_layers

first = splits[names[0]]
both = savlens.HeadFeatures.concat([first.train, first.test])
result = compare_heads_layers(both, k=10, n_folds=4, seed=0)
print(result)
means = result.mean()
assert means["heads_shuffled"] < means["heads"] + 0.1
