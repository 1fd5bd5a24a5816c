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
# # 5. Write a new head-selection criterion
#
# A criterion is a function `(features, labels) -> HeadScores`, higher is better. Register it under a name and
# every tool that selects heads takes it: `SAV(criterion=...)`, the classifiers, `transfer_matrix`, the CLI's
# `savlens fit --criterion`. This tutorial writes a **cosine margin** criterion: for each example, how much closer
# (in cosine) it is to its own class centroid than to the nearest other one, averaged, with the example left
# out of its own centroid. Same data as tutorials 2-4.

# %%
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import savlens
from savlens.heads import HeadScores
from savlens.labels import resolve_labels
from savlens.scoring import register_criterion

if "__file__" in globals():  # run from another folder (as CI does); a notebook runs in this one
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import tutorial_data  # tutorials/_setup.py

MODEL = os.environ.get("SAVLENS_MODEL", "smollm2-135m")
gpu = torch.cuda.is_available()
model = savlens.load(MODEL, dtype=torch.bfloat16 if gpu else "auto", device_map="auto" if gpu else None)
task, train, test = tutorial_data(model)  # tutorial 2's task, and its features from tutorial 2's store

# %% [markdown]
# ## The criterion
# Work on the whole `example layer head_index d_head` tensor at once (no loop over heads): per-class sums give
# every centroid, and removing an example from its own class sum gives its leave-one-out centroid.


# %%
@register_criterion("cosine_margin", replace=True)
def cosine_margin(features: savlens.HeadFeatures, labels=None) -> HeadScores:  # type: ignore[no-untyped-def]
    """Score each head by the mean leave-one-out cosine margin of the examples to their own class centroid."""
    labels = resolve_labels(features, labels, "cosine_margin")
    classes = sorted(set(labels), key=str)
    codes = torch.tensor([classes.index(lab) for lab in labels])
    x = F.normalize(features.z.double(), dim=-1)  # example layer head_index d_head
    onehot = F.one_hot(codes, len(classes)).double()  # example class
    sums = torch.einsum("nc,nlhd->clhd", onehot, x)
    counts = onehot.sum(0)
    own_sum = sums[codes] - x  # each example's class sum without itself
    own = F.cosine_similarity(x, own_sum, dim=-1)  # example layer head_index
    other = F.cosine_similarity(x[:, None], sums[None] / counts[None, :, None, None, None], dim=-1)
    other = other.masked_fill(onehot.bool()[:, :, None, None], -torch.inf).max(dim=1).values
    margin = (own - other).mean(0)
    return HeadScores(margin, "cosine_margin", None, {"n_examples": features.n_examples}, features.layers)


# %% [markdown]
# ## Use it
# By name, everywhere a criterion is taken.

# %%
from savlens.compare import jaccard, spearman
from savlens.scoring import available_criteria, centroid_accuracy

print("registered criteria:", available_criteria())
margin = cosine_margin(train)
centroid = centroid_accuracy(train)
print(margin)
print(
    f"agreement with centroid accuracy: Spearman {spearman(margin, centroid):.2f}, "
    f"top-20 Jaccard {jaccard(margin.top_k(20), centroid.top_k(20)):.2f}"
)
for criterion in ("centroid", "cosine_margin"):
    sav = savlens.SAV(k=20, criterion=criterion).fit(train)
    print(f"SAV with {criterion:>13}: test accuracy {sav.score(test):.3f}; best heads {sav.heads_[:5]}")

# %% [markdown]
# The margin is continuous, so it separates heads that tie on accuracy (a count of correct examples):

# %%
ties = len(centroid.scores.unique())
print(
    f"distinct centroid-accuracy values: {ties} for {centroid.scores.numel()} heads; "
    f"distinct margins: {len(margin.scores.unique())}"
)

# %% [markdown]
# ## What is checked for you
# `run_criterion` (behind `SAV.fit`) refuses a criterion that returns something other than a
# `layer head_index` table for these features, and one that takes no `mode` when a mode is asked for.


# %%
@register_criterion("broken", replace=True)
def broken(features, labels=None):  # type: ignore[no-untyped-def]
    return HeadScores(torch.zeros(2, 2), "broken")


for criterion, kwargs in [("broken", {}), ("cosine_margin", {"mode": "kfold"})]:
    try:
        savlens.SAV(k=5, criterion=criterion, **kwargs).fit(train)
    except savlens.SavlensError as e:
        print(f"{criterion}: {str(e).splitlines()[0]}")

# %% [markdown]
# ## Voting rules are plug-ins too
# Selecting heads is one half of an SAV; the other is how their votes become a label. A voting rule
# (`savlens.voting`, docs/voting.md) turns what the selected heads did on the **shots** into per-head, per-class
# vote weights. Shipped: `"majority"` (the paper's rule, the default), `"score"` (each vote counts the head's
# criterion score) and `"reliability"` (the log-odds that a head is right when it votes a class, estimated with
# leave-one-out centroids so a shot never grades a head with a centroid it is part of). A new rule is a function
# of a `VoteContext` (the shots' leave-one-out similarities and votes, the heads' scores), registered by name:

# %%
from savlens.voting import VoteContext, available_votings, register_voting


@register_voting("loo_accuracy", replace=True)
def loo_accuracy(context: VoteContext) -> torch.Tensor:
    """Weigh each head's vote by its leave-one-out accuracy on the shots, above chance (0 at or below it)."""
    chance = 1.0 / context.n_classes
    return (context.correct.double().mean(0) - chance).clamp_min(0.0)  # k weights, the same for every class


print("registered voting rules:", available_votings())
for voting in ("majority", "score", "reliability", "loo_accuracy"):
    sav = savlens.SAV(k=20, voting=voting).fit(train)
    print(f"k=20, {voting:>12} vote: test accuracy {sav.score(test):.3f}")

# %% [markdown]
# Criteria and voting rules meet in a **study**: `savlens.study.run_study` sweeps shots, k, seeds, criteria and
# voting rules on feature stores (nothing is extracted again), with stratified seeded splits, and returns a tidy
# table with accuracy, macro-F1 and per-class recall per setting and seed (docs/studies.md). Here: the tutorial's
# examples pooled, 5 and 10 shots per class, three seeds.

# %%
from savlens.study import run_study

pool = savlens.HeadFeatures.concat([train, test])
table = run_study(
    {"fortunes": pool},
    shots=[5, 10],
    k=[20],
    seeds=[0, 1, 2],
    criteria=["centroid", "cosine_margin"],
    voting=["majority", "loo_accuracy"],
)
print(table.to_markdown(columns=("shots", "criterion", "voting")))
