"""Adapt easy-VQA (``pip install easy-vqa==1.0``) questions into classification examples.

easy-VQA: 64x64 images of one coloured shape; 4,000 train / 1,000 test images, 38,575 / 9,673 questions,
13 answers. Each answer set is a classification task: ``"yes_no"`` (2 classes), ``"color"`` (8) and
``"shape"`` (3). Caveat: the yes/no questions are answerable from the text alone about 80% of the time, so
report a text-only baseline next to SAV accuracy on that task.
"""

import importlib.util
import json
from pathlib import Path

from savlens.datasets._common import check_examples
from savlens.errors import InputError, LoadError
from savlens.example import Example

__all__ = [
    "EASY_VQA_COLORS",
    "EASY_VQA_SHAPES",
    "EASY_VQA_TASKS",
    "PIP_INSTALL_EASY_VQA",
    "easy_vqa_dir",
    "easy_vqa_task",
    "load_easy_vqa",
]

PIP_INSTALL_EASY_VQA = "pip install easy-vqa==1.0"
EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
EASY_VQA_TASKS: dict[str, tuple[str, ...]] = {
    "yes_no": ("yes", "no"),
    "color": EASY_VQA_COLORS,
    "shape": EASY_VQA_SHAPES,
}
"""Each task and its classes (the answers of its questions)."""


def easy_vqa_dir() -> Path:
    """Return the data folder of the installed ``easy-vqa`` package (without importing it).

    Raises:
        LoadError: the package is not installed (names the pip command).
    """
    spec = importlib.util.find_spec("easy_vqa")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    data = Path(locations[0]) / "data" if locations else None
    if data is None or not (data / "train" / "questions.json").is_file():
        raise LoadError(f"load_easy_vqa(): easy-VQA is not installed; install it with\n    {PIP_INSTALL_EASY_VQA}")
    return data


def easy_vqa_task(answer: str) -> str:
    """Return the task (``"yes_no"``, ``"color"`` or ``"shape"``) an easy-VQA answer belongs to.

    Example:
        >>> easy_vqa_task("teal")
        'color'
    """
    for task, classes in EASY_VQA_TASKS.items():
        if answer in classes:
            return task
    raise InputError(f"easy-VQA answer {answer!r} belongs to no task; tasks: {EASY_VQA_TASKS}.")


def load_easy_vqa(split: str = "train", task: str | None = None, template: str = "{question}") -> list[Example]:
    """Load easy-VQA questions as single-image classification examples.

    Args:
        split: ``"train"`` or ``"test"``.
        task: ``"yes_no"``, ``"color"`` or ``"shape"`` keeps the questions whose answer is in that task's
            classes; None keeps all (``meta["task"]`` says which).
        template: a ``str.format`` template for the text, given ``{question}``.

    Returns:
        Examples in the order of the package's ``questions.json``: text the question (e.g. "what color is
        the shape?"), one image path (a 64x64 PNG), label the answer. Ids ``"easy-vqa/<split>/<index>"``
        (index in ``questions.json``); ``meta`` holds ``image_id``, ``task``, ``question``, ``split``.

    Raises:
        LoadError: easy-VQA is not installed, or an image file is missing.
        InputError: an unknown split or task.
    """
    if split not in ("train", "test"):
        raise InputError(f"load_easy_vqa(split={split!r}): expected 'train' or 'test'.")
    if task is not None and task not in EASY_VQA_TASKS:
        raise InputError(f"load_easy_vqa(task={task!r}): expected one of {sorted(EASY_VQA_TASKS)} or None.")
    data = easy_vqa_dir() / split
    questions = json.loads((data / "questions.json").read_text(encoding="utf-8"))
    images = data / "images"
    checked: set[int] = set()
    examples = []
    for i, (question, answer, image_id) in enumerate(questions):
        q_task = easy_vqa_task(answer)
        if task is not None and q_task != task:
            continue
        path = images / f"{image_id}.png"
        if image_id not in checked:
            if not path.is_file():
                raise LoadError(f"load_easy_vqa(): image {str(path)!r} is missing; reinstall easy-vqa.")
            checked.add(image_id)
        examples.append(
            Example(
                text=template.format(question=question),
                images=[str(path)],
                label=answer,
                id=f"easy-vqa/{split}/{i}",
                meta={"image_id": image_id, "task": q_task, "question": question, "split": split},
            )
        )
    return check_examples(examples, f"easy-VQA {split}")
