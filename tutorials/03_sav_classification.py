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
# # 3. Classify with Sparse Attention Vectors
#
# `savlens.SAV` is the whole method as a scikit-learn-style estimator: `fit` scores every head and keeps the `k`
# best with their class centroids; `predict` lets each kept head vote for its nearest centroid; `votes` shows
# who voted for what. Same model and data as tutorial 2 (SmolLM2-135M offline on four fortunes topics, or
# `SAVLENS_MODEL`); the features come from tutorial 2's store when it ran before, else they are extracted now.

# %%
import os
import sys
import tempfile
from pathlib import Path

import torch

import savlens

if "__file__" in globals():  # run from another folder (as CI does); a notebook runs in this one
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import tutorial_data  # tutorials/_setup.py

MODEL = os.environ.get("SAVLENS_MODEL", "smollm2-135m")
gpu = torch.cuda.is_available()
model = savlens.load(MODEL, dtype=torch.bfloat16 if gpu else "auto", device_map="auto" if gpu else None)
task, train, test = tutorial_data(model)  # tutorial 2's task, and its features from tutorial 2's store
print(train, "\n", test)

# %% [markdown]
# ## Fit, predict, score

# %%
sav = savlens.SAV(k=20).fit(train)
print(sav)
print("classes:", sav.classes_)
print("test accuracy:", sav.score(test), "| chance:", 1 / len(sav.classes_))
predicted = sav.predict(test)
print("first predictions:", list(zip(predicted[:4], (test.labels or [])[:4])))

# %% [markdown]
# ## Votes
# Each of the `k` heads votes for its nearest class centroid (cosine). The vote shares are the SAV's confidence;
# ties between classes go to the class with the highest summed similarity.

# %%
votes = sav.votes(test)
print("vote counts of the first example:", dict(zip(sav.classes_, votes.counts[0].tolist())))
print("what the five best heads voted for:", dict(list(votes.of_example(0).items())[:5]))
proba = sav.predict_proba(test)
assert torch.allclose(proba.sum(-1), torch.ones(len(test), dtype=proba.dtype))

# %%
from savlens import plot

plot.vote_histograms(votes, test.labels or [])

# %% [markdown]
# ## The same classifier from the model directly
# `SAV(...).fit_model(model, examples, **extract_options)` extracts and fits in one call; `sav.extract(model,
# examples)` makes the features `predict` needs the way the training features were made (prompt template, chat,
# system prompt, position: the SAV's `extract_options_`). Only the layers of the selected heads are read and the
# forward pass stops after the deepest of them.

# %%
print("layers the SAV needs:", sav.required_layers)
few = task.test[:6]
print("extracted as the training features were:", sav.extract_options_)
direct = sav.predict(sav.extract(model, few))
assert direct == predicted[:6], (direct, predicted[:6])
print("predict(sav.extract(model, examples)) agrees with predict(features) on", len(few), "examples")

# %% [markdown]
# ## Save and load
# A saved SAV is a folder: a tensor file named by its hash (centroids, scores) and `manifest.json` (classes,
# heads, where the features came from, library versions, the tensor file's name and hash). `expect=` refuses to
# load it for features from another model, hook, positions, prompt template or grid.

# %%
folder = Path(tempfile.mkdtemp()) / "fortunes.sav"
sav.save(folder)
print(sorted(p.name for p in folder.iterdir()))
again = savlens.SAV.load(folder, expect=test)
assert again.predict(test) == predicted
try:
    savlens.SAV.load(folder, expect={"model_id": "another-model"})
except savlens.SavlensError as e:
    print("refused:", str(e).splitlines()[0])

# %% [markdown]
# ## The paper's ablations on the same heads (Table 3)
# Other classifiers of the same selected heads' vectors, sparse layers instead of sparse heads, and the
# reference code's exact behaviour (in-sample scores, its tie-breaks).

# %%
from savlens.classifiers import HeadKNN, HeadLinearProbe, SparseLayers
from savlens.compare import jaccard

rows = {
    "SAV (centroid vote, k=20)": sav.score(test),
    "kNN on the same heads": HeadKNN(sav.heads_, n_neighbors=5).fit(train).score(test),
    "logistic probe on the same heads": HeadLinearProbe(sav.heads_).fit(train).score(test),
    "sparse layers (k_layers=2)": SparseLayers(k_layers=2).fit(train).score(test),
}
reference = savlens.SAV(k=20, reference=True).fit(train)
rows["SAV, reference mode"] = reference.score(test)
for name, acc in rows.items():
    print(f"{name:<34} {acc:.3f}")
print("heads shared by default and reference mode:", f"{jaccard(sav.heads_, reference.heads_):.2f} (Jaccard)")
