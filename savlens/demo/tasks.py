"""The demo's tasks: few-shot training and test examples and the prompt of each (fortunes topics, easy-VQA)."""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from savlens.errors import ArgumentError
from savlens.example import Example
from savlens.loading import Model

DEFAULT_MODEL = "tiny-vlm"
#: Control models of the demo (``--no-control`` skips them): zoo name -> (control's zoo name, what it lacks).
CONTROLS = {"tiny-vlm": ("tiny-vlm-random", "projector untrained: random weights")}
#: The held-out-skill comparison (``--no-held-out`` skips it): zoo name -> {task: the model trained the same
#: way without that task's skill}. The demo's headline model becomes the held-out one (SAV against its own
#: answer on a skill it was never taught to say), and the named model gives the trained-skill rows.
HELD_OUT = {"tiny-vlm": {"easy-vqa-color": "tiny-vlm-heldout-color"}}
#: The demo prompt for fortunes: it names the classes, so the model's zero-shot answer is a fair baseline.
FORTUNES_DEMO_PROMPT = "Classify the topic of this quote as {choices}.\nQuote: {{text}}\nTopic:"


@dataclass
class DemoTask:
    """A classification task of the demo: few-shot training examples, test examples, the prompt template.

    ``prompt_template`` is used for the head features and the zero-shot answer of the same forward pass;
    ``other_prompts`` (name -> template) adds, per other prompt, an SAV fitted and tested under that prompt
    and the model's zero-shot answers under it (forward passes of their own).
    """

    name: str
    classes: tuple[Hashable, ...]
    train: list[Example]
    test: list[Example]
    prompt_template: str | None
    description: str
    other_prompts: dict[str, str] = field(default_factory=dict)


#: The demo's tasks (``--task``): fortunes topics for text models, easy-VQA question types for VLMs.
TASKS = ("fortunes", "easy-vqa-color", "easy-vqa-shape", "easy-vqa-yes-no")


def choices_text(classes: Sequence[Hashable]) -> str:
    """Return ``"a, b or c"``.

    >>> choices_text(["science", "food", "love"])
    'science, food or love'
    """
    names = [str(c) for c in classes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def fortunes_task(
    categories: Sequence[str] | None = None, *, shots: int = 20, n_test: int = 40, seed: int = 0
) -> DemoTask:
    """Return the fortunes topic task: ``shots`` training and ``n_test`` test examples per category (seeded)."""
    from savlens.datasets import FORTUNES_CATEGORIES, few_shot_split, load_fortunes

    cats = tuple(categories or FORTUNES_CATEGORIES)
    train, test = few_shot_split(load_fortunes(cats, template="{text}"), shots, n_test, seed=seed)
    return DemoTask(
        name="fortunes",
        classes=cats,
        train=train,
        test=test,
        prompt_template=FORTUNES_DEMO_PROMPT.format(choices=choices_text(cats)),
        description=f"fortunes topics ({', '.join(cats)})",
    )


def easy_vqa_task(task: str = "color", *, shots: int = 20, n_test: int = 20, seed: int = 0) -> DemoTask:
    """Return an easy-VQA task (``"color"``, ``"shape"`` or ``"yes_no"``): training shots from its train split,
    test examples from its test split (seeded, stratified).

    The prompt is the question as the tiny VLM was trained on it (``"what is the color of the triangle?"``);
    the demo also runs SAV and zero-shot answering with the labels listed after the question
    (``other_prompts``), a prompt format the model never saw in training.
    """
    from savlens.datasets import EASY_VQA_TASKS, few_shot_split, load_easy_vqa

    if task not in EASY_VQA_TASKS:
        raise ArgumentError(f"easy_vqa_task(): unknown task {task!r}; choose one of {sorted(EASY_VQA_TASKS)}.")
    classes = EASY_VQA_TASKS[task]
    train, _ = few_shot_split(load_easy_vqa("train", task), shots, 0, seed=seed)
    test, _ = few_shot_split(load_easy_vqa("test", task), n_test, 0, seed=seed)
    return DemoTask(
        name=f"easy-vqa-{task}",
        classes=classes,
        train=train,
        test=test,
        prompt_template=None,
        description=f"easy-VQA {task} questions (" + ", ".join(classes) + ")",
        other_prompts={"labels listed after the question": "{text} Answer with one of: " + choices_text(classes) + "."},
    )


def task_for(
    model: Model,
    task: str | None = None,
    *,
    shots: int = 20,
    n_test: int | None = None,
    seed: int = 0,
    categories: Sequence[str] | None = None,
) -> DemoTask:
    """Return the demo task ``task`` (one of :data:`TASKS`; default: easy-VQA colours for a VLM, fortunes
    topics for a text model), with ``shots`` training and ``n_test`` test examples per class."""

    name = task or ("easy-vqa-color" if model.multimodal else "fortunes")
    if name not in TASKS:
        raise ArgumentError(f"unknown demo task {name!r}; choose one of {', '.join(TASKS)}.")
    if name == "fortunes":
        return fortunes_task(categories, shots=shots, n_test=n_test or 40, seed=seed)
    if not model.multimodal:
        raise ArgumentError(f"demo task {name!r} needs a vision-language model; {model.model_id!r} is text-only.")
    return easy_vqa_task(name.removeprefix("easy-vqa-").replace("-", "_"), shots=shots, n_test=n_test or 20, seed=seed)
