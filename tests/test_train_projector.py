"""The projector's training sampler: the committed draw order, and yes/no balanced against the text prior.

Model-free: the sampler only sees the questions, so these run on synthetic items in well under a second.
"""

import importlib.util
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest
import torch
from tiny_vlm_training import TrainConfig, VQAItem, _sampler, hold_out_items, yes_no_balance_weights

from savlens.datasets.easyvqa import EASY_VQA_COLORS, EASY_VQA_SHAPES, EASY_VQA_TASKS


def _reference_sampler(items: Sequence[VQAItem], config: TrainConfig, gen: torch.Generator) -> Callable[[], list[int]]:
    """A frozen copy of ``_sampler`` as it was when the committed projector was trained (before
    ``balance_yes_no``): the default configuration must keep drawing exactly these indices."""
    tasks = tuple(EASY_VQA_TASKS)
    pools = (
        {t: [i for i, it in enumerate(items) if it.task == t] for t in tasks}
        if config.task_weights is not None
        else {"all": list(range(len(items)))}
    )
    queues: dict[str, list[int]] = {k: [] for k in pools}

    def take(key: str) -> int:
        if not queues[key]:
            pool = pools[key]
            queues[key] = [pool[j] for j in torch.randperm(len(pool), generator=gen).tolist()]
        return queues[key].pop(0)

    def draw() -> list[int]:
        if config.task_weights is None:
            return [take("all") for _ in range(config.batch_size)]
        w = torch.tensor(config.task_weights, dtype=torch.float)
        picks = torch.multinomial(w, config.batch_size, replacement=True, generator=gen).tolist()
        return [take(tasks[k]) for k in picks]

    return draw


def _items() -> list[VQAItem]:
    """Yes/no texts with skewed answers (as in easy-VQA: 9:1 to 1:3), one text with a single answer, and
    colour and shape questions."""
    g = torch.Generator().manual_seed(1)
    rows: list[tuple[str, str, str]] = []
    for k, (n_yes, n_no) in enumerate([(9, 81), (70, 8), (25, 75), (40, 40), (3, 60), (50, 17)]):
        rows += [(f"is there shape {k}?", "yes", "yes_no")] * n_yes + [(f"is there shape {k}?", "no", "yes_no")] * n_no
    rows += [("is there only ever no?", "no", "yes_no")] * 30
    rows += [("what color is the shape?", c, "color") for c in ("red", "blue", "teal") * 20]
    rows += [("what shape is this?", s, "shape") for s in ("circle", "triangle") * 20]
    order = torch.randperm(len(rows), generator=g).tolist()
    return [VQAItem(*rows[j], image=i % 50, index=i) for i, j in enumerate(order)]


def _draws(items: Sequence[VQAItem], config: TrainConfig, steps: int, sampler: Callable = _sampler) -> list[int]:
    draw = sampler(items, config, torch.Generator().manual_seed(config.seed))
    return [i for _ in range(steps) for i in draw()]


@pytest.mark.parametrize("task_weights", [(2.0, 1.0, 1.0), None])
def test_default_sampler_draws_the_committed_order(task_weights: tuple[float, float, float] | None) -> None:
    items = _items()
    cfg = replace(TrainConfig(), task_weights=task_weights)
    assert cfg.balance_yes_no is False
    for seed in (0, 3):
        c = replace(cfg, seed=seed)
        assert _draws(items, c, 200) == _draws(items, c, 200, sampler=_reference_sampler)


def test_balanced_sampler_makes_yes_and_no_equally_likely_for_every_text() -> None:
    items = _items()
    cfg = replace(TrainConfig(), balance_yes_no=True, seed=0)
    drawn = [items[i] for i in _draws(items, cfg, 2000)]
    assert _draws(items, cfg, 50) == _draws(items, cfg, 50)  # seeded
    yes_no = [it for it in drawn if it.task == "yes_no"]
    by_text = Counter((it.question, it.answer) for it in yes_no)
    texts = {q for q, _ in by_text}
    assert "is there only ever no?" not in texts  # a text with one answer only is dropped
    assert len(texts) == 6
    for q in texts:
        n = by_text[q, "yes"] + by_text[q, "no"]
        assert abs(by_text[q, "yes"] / n - 0.5) < 0.05, (q, by_text[q, "yes"], n)  # ~2,700 draws: sd 0.01
        assert abs(n / len(yes_no) - 1 / 6) < 0.02  # every text equally often
    # the task mix is unchanged: half the rows yes/no
    assert abs(len(yes_no) / len(drawn) - 0.5) < 0.02
    # and the data's own answer rates per text are skewed, so the balance is the sampler's doing
    raw = Counter((it.question, it.answer) for it in items if it.task == "yes_no")
    assert raw["is there shape 0?", "no"] / (raw["is there shape 0?", "no"] + raw["is there shape 0?", "yes"]) == 0.9


def test_balance_weights_give_each_text_and_answer_equal_mass() -> None:
    items = _items()
    w = yes_no_balance_weights(items)
    mass: Counter[tuple[str, str]] = Counter()
    for i, weight in w.items():
        mass[items[i].question, items[i].answer] += weight
    assert len(mass) == 12 and all(m == pytest.approx(1.0) for m in mass.values())
    assert all(items[i].task == "yes_no" for i in w)


def test_balance_needs_task_weights() -> None:
    cfg = replace(TrainConfig(), balance_yes_no=True, task_weights=None)
    with pytest.raises(ValueError, match="task_weights"):
        _sampler(_items(), cfg, torch.Generator())


@pytest.mark.skipif(importlib.util.find_spec("easy_vqa") is None, reason="pip install easy-vqa==1.0")
def test_easy_vqa_train_keeps_every_yes_no_text() -> None:
    from tiny_vlm_training import load_vqa_items

    items, _ = load_vqa_items("train")
    w = yes_no_balance_weights(items)
    assert len(w) == sum(it.task == "yes_no" for it in items)  # every text has both answers: none dropped
    assert len({items[i].question for i in w}) == 88


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


COLOR_WORDS = {"color", "colour", *EASY_VQA_COLORS}


def test_hold_out_color_drops_every_question_that_asks_or_names_a_colour() -> None:
    items = _items() + [
        VQAItem("is there a red shape in the image?", "no", "yes_no", 1, 900),
        VQAItem("is no teal shape present?", "yes", "yes_no", 2, 901),
        VQAItem("what is the gray shape?", "circle", "shape", 3, 902),
        VQAItem("What Colour is it?", "red", "color", 4, 903),
    ]
    kept = hold_out_items(items, "color")
    assert kept and all(
        it.task != "color" and not (_words(it.question) | _words(it.answer)) & COLOR_WORDS for it in kept
    )
    assert {it.index for it in items} - {it.index for it in kept} >= {900, 901, 902, 903}
    assert hold_out_items(items, None) == items
    with pytest.raises(ValueError, match="hold_out"):
        hold_out_items(items, "size")


def test_held_out_task_is_never_drawn() -> None:
    items = hold_out_items(_items(), "color")
    cfg = replace(TrainConfig(), task_weights=(2.0, 0.0, 1.0), hold_out="color")
    drawn = Counter(items[i].task for i in _draws(items, cfg, 300))
    assert drawn["color"] == 0 and abs(drawn["yes_no"] / (drawn["yes_no"] + drawn["shape"]) - 2 / 3) < 0.03
    with pytest.raises(ValueError, match="no questions"):  # a weight on an empty task is an error, not a crash
        _draws(items, replace(cfg, task_weights=(2.0, 1.0, 1.0)), 5)


@pytest.mark.skipif(importlib.util.find_spec("easy_vqa") is None, reason="pip install easy-vqa==1.0")
def test_easy_vqa_train_held_out_color_has_no_colour_question_or_word() -> None:
    from tiny_vlm_training import load_vqa_items

    items, _ = load_vqa_items("train")
    kept = hold_out_items(items, "color")
    vocab = set().union(*(_words(it.question) | _words(it.answer) for it in kept))
    assert not vocab & COLOR_WORDS
    assert {it.task for it in kept} == {"yes_no", "shape"}
    assert {it.answer for it in kept} == {"yes", "no", *EASY_VQA_SHAPES}
    # what is left: the 3 "what shape ..." texts and the 24 yes/no texts about a shape
    assert len({it.question for it in kept}) == 27
    # nothing without a colour word was dropped
    kept_set = set(kept)
    dropped = [it for it in items if it not in kept_set]
    assert all(it.task == "color" or _words(it.question) & COLOR_WORDS for it in dropped)
