"""Shared setup of tutorials 3-6: tutorial 2's task and the feature store it writes.

Not a tutorial (no number: CI and the docs do not run or render it as one). Tutorial 2 extracts the features of
its task into a store under ``SAVLENS_TUTORIAL_CACHE`` (default: a folder in the temporary directory); the later
tutorials reopen that store through :func:`task_features`, which extracts whatever is missing, so each also runs
on its own. The task and the store's name here are the ones tutorial 2 spells out in its first cells.
"""

import os
import tempfile
from pathlib import Path

import savlens
from savlens.demo import DemoTask, task_for

CATEGORIES = ("science", "politics", "food", "love")
"""The fortunes topics of the tutorials' text-model task."""


def tutorial_task(model: savlens.Model) -> DemoTask:
    """Return tutorial 2's task: four fortunes topics (easy-VQA colours for a VLM), 10 shots and 8 tests a class."""
    return task_for(model, shots=10, n_test=8, categories=CATEGORIES)


def task_features(model: savlens.Model, task: DemoTask) -> tuple[savlens.HeadFeatures, savlens.HeadFeatures]:
    """Return the training and test features of ``task`` from its store (one per model and task).

    The store is read where tutorial 2 wrote it; examples it lacks are extracted now and added to it.
    """
    cache = Path(os.environ.get("SAVLENS_TUTORIAL_CACHE", Path(tempfile.gettempdir()) / "savlens-tutorials"))
    feats = savlens.extract(
        model,
        task.train + task.test,
        prompt_template=task.prompt_template,
        store=cache / f"{model.fingerprint}-{task.name}",
    )
    n_train = len(task.train)
    return feats.subset(range(n_train)), feats.subset(range(n_train, feats.n_examples))


def tutorial_data(model: savlens.Model) -> tuple[DemoTask, savlens.HeadFeatures, savlens.HeadFeatures]:
    """Return tutorial 2's task and its training and test features (from tutorial 2's store when it ran)."""
    task = tutorial_task(model)
    return (task, *task_features(model, task))
