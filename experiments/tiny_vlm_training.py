"""Train the projector of :mod:`savlens.zoo.tiny_vlm` on easy-VQA, and evaluate the model generatively.

Only the projector (1.07M parameters) is trained; EfficientNet-Lite0 and SmolLM2-135M-Instruct stay frozen.

- The frozen image features (the pooled 2x2x1280 grid of every image) are computed once and cached on disk
  (``<savlens cache>/tiny_vlm/``, keyed by the EfficientNet weights' hash, image size, grid and split).
- The training prompt is exactly what :meth:`savlens.Model.render` gives at inference: the SmolLM2 chat template
  with its default system prompt, a user turn of ``<image>\\n<question>`` and the generation prompt. The target
  is the answer's tokens followed by ``<|im_end|>``; the loss is the cross-entropy on those tokens only.
- Every prompt starts with the same tokens (system prompt and ``<|im_start|>user\\n``, up to the first image
  token): their KV cache is computed once and shared by every row of every step, and logits are computed at
  the answer positions only.
- Seeded and reproducible on CPU with one thread (data order from a seeded ``torch.Generator``, the projector
  init from ``torch.manual_seed``); bf16 autocast by default (the saved weights are evaluated in fp32). On
  torch builds where a bf16 step is slower than fp32 on the CPU (torch 2.14.1's CUDA build: ~20x), train
  with ``bf16=False``.
- The last ``val_images`` train images (and their questions) are held out for validation; the test split is
  never used for training or model selection.
"""

import json
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import DynamicCache

from savlens.datasets.easyvqa import EASY_VQA_COLORS, EASY_VQA_SHAPES, EASY_VQA_TASKS, easy_vqa_dir, easy_vqa_task
from savlens.io import savlens_cache_root, sha256_file
from savlens.zoo.efficientnet import efficientnet_lite0_path
from savlens.zoo.tiny_vlm import TinyVLM, TinyVLMProcessor, TinyVLMProjector

__all__ = [
    "PromptCodec",
    "TrainConfig",
    "TrainResult",
    "VQAItem",
    "accuracy_by_task",
    "answer_prior",
    "cached_image_features",
    "HOLD_OUT_SKILLS",
    "evaluate_generative",
    "hold_out_items",
    "image_features",
    "load_vqa_items",
    "mentions_skill",
    "normalize_answer",
    "save_projector",
    "train_projector",
    "yes_no_balance_weights",
]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_projector` (saved with the weights)."""

    seed: int = 0
    steps: int = 2400
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    bf16: bool = True
    threads: int = 1
    val_images: int = 200
    log_every: int = 50
    #: sampling weight of each task (yes_no, color, shape): half the rows yes/no, a quarter each colour and
    #: shape (a pilot of 300 steps learnt colour to 77% with equal weights but not at all, 9%, with the data's
    #: own mix of 74% yes/no); None: every question equally often
    task_weights: tuple[float, float, float] | None = (2.0, 1.0, 1.0)
    #: draw the yes/no rows so that the question text carries no information about the answer: each yes/no
    #: question is weighted by 1 / (number of yes/no questions with its exact text and answer), so every
    #: (text, answer) pair has equal mass and "yes" and "no" are equally likely for every text (sampled with
    #: replacement; texts that only ever have one answer are dropped). Off: the committed run's sampler.
    balance_yes_no: bool = False
    #: a skill left out of the training data (a key of :data:`HOLD_OUT_SKILLS`, e.g. ``"color"``): every
    #: question that asks about it or names one of its words is dropped (:func:`hold_out_items`); None: all
    hold_out: str | None = None


@dataclass(frozen=True)
class VQAItem:
    """One easy-VQA question: its text, answer, task and the row of its image in the feature tensor."""

    question: str
    answer: str
    task: str
    image: int
    index: int


@dataclass
class TrainResult:
    """What :func:`train_projector` returns: the loss curve and timings (wall and process CPU seconds)."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    steps: int = 0
    examples: int = 0


# ---- data ----------------------------------------------------------------------------------------------


def load_vqa_items(split: str) -> tuple[list[VQAItem], list[Path]]:
    """Return the questions of an easy-VQA split and the paths of its images (image id = row)."""
    data = easy_vqa_dir() / split
    questions = json.loads((data / "questions.json").read_text(encoding="utf-8"))
    n_images = 1 + max(int(i) for _, _, i in questions)
    paths = [data / "images" / f"{i}.png" for i in range(n_images)]
    items = [VQAItem(q, a, easy_vqa_task(a), int(i), k) for k, (q, a, i) in enumerate(questions)]
    return items, paths


@torch.no_grad()
def image_features(
    model: TinyVLM, processor: TinyVLMProcessor, paths: Sequence[Path], batch_size: int = 50
) -> Float[Tensor, "image vision_pos d_vision"]:
    """Run the frozen vision tower (and pooling) on image files; return fp32 features on the CPU."""
    out = []
    dtype = next(model.vision_tower.parameters()).dtype
    for i in range(0, len(paths), batch_size):
        ims = []
        for p in paths[i : i + batch_size]:
            with Image.open(p) as f:
                ims.append(f.convert("RGB"))
        px = processor.image_processor(ims)["pixel_values"].to(dtype)
        out.append(model.image_grid_features(px).float())
    return torch.cat(out)


def cached_image_features(
    model: TinyVLM, processor: TinyVLMProcessor, split: str, cache_dir: str | os.PathLike[str] | None = None
) -> Float[Tensor, "image vision_pos d_vision"]:
    """Return the features of every image of an easy-VQA split, computed once and cached as safetensors."""
    _, paths = load_vqa_items(split)
    cfg = model.config
    key = f"{sha256_file(efficientnet_lite0_path())[:12]}-{cfg.image_size}px-{cfg.image_grid}x{cfg.image_grid}"
    path = savlens_cache_root(cache_dir) / "tiny_vlm" / f"easy-vqa-{split}-{key}.safetensors"
    if path.is_file():
        feats = load_file(str(path))["features"]
        if feats.shape[0] == len(paths):
            return feats
    feats = image_features(model, processor, paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({"features": feats.contiguous()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return feats


#: The words that mark a question as being about a skill: the skill's name and its answer words. Colour:
#: "color" / "colour" and the 8 easy-VQA colours; shape: "shape" is in every colour question too, so only
#: the three shape names mark it.
HOLD_OUT_SKILLS: dict[str, frozenset[str]] = {
    "color": frozenset({"color", "colour", "colors", "colours", *EASY_VQA_COLORS}),
    "shape": frozenset(EASY_VQA_SHAPES),
}


def mentions_skill(question: str, skill: str) -> bool:
    """Return True if ``question`` names a word of ``skill`` (:data:`HOLD_OUT_SKILLS`), whole words only.

    >>> mentions_skill("is there a red shape in the image?", "color"), mentions_skill("is there a circle?", "color")
    (True, False)
    >>> mentions_skill("what is the teal shape?", "color")
    True
    """
    if skill not in HOLD_OUT_SKILLS:
        raise ValueError(f"hold_out={skill!r}: expected one of {sorted(HOLD_OUT_SKILLS)}.")
    words = set(re.findall(r"[a-z]+", question.lower()))
    return bool(words & HOLD_OUT_SKILLS[skill])


def hold_out_items(items: Sequence[VQAItem], skill: str | None) -> list[VQAItem]:
    """Drop every question of task ``skill`` and every question that names one of its words (so for
    ``"color"``: "what color is the shape?", "is there a red shape?", "what is the teal shape?"); None
    keeps all.

    >>> items = [VQAItem("what color is the shape?", "red", "color", 0, 0),
    ...          VQAItem("is there a red shape?", "no", "yes_no", 0, 1),
    ...          VQAItem("what is the red shape?", "circle", "shape", 0, 2),
    ...          VQAItem("is there a circle?", "yes", "yes_no", 0, 3)]
    >>> [it.index for it in hold_out_items(items, "color")]
    [3]
    """
    if skill is None:
        return list(items)
    return [
        it
        for it in items
        if it.task != skill and not mentions_skill(it.question, skill) and not mentions_skill(it.answer, skill)
    ]


def normalize_answer(text: str) -> str:
    """Lower-case, strip spaces and a final full stop: the exact-match form of a generated answer.

    >>> normalize_answer(" Teal. ")
    'teal'
    """
    return text.strip().lower().rstrip(".").strip()


# ---- prompts -------------------------------------------------------------------------------------------


class PromptCodec:
    """Token ids of easy-VQA prompts, rendered exactly as :meth:`savlens.Model.render` renders them.

    ``prefix`` is the part every prompt shares (up to the first image token); :meth:`suffix` the rest of a
    question's prompt (image tokens, question, generation prompt); :meth:`answer` the target tokens.
    """

    def __init__(self, processor: TinyVLMProcessor) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.eos_id = int(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self._prompts: dict[str, list[int]] = {}
        self._answers: dict[str, list[int]] = {}
        ids = self.prompt("what color is the shape?")
        self.prefix_len = ids.index(processor.image_token_id)
        self.prefix = ids[: self.prefix_len]

    def prompt(self, question: str) -> list[int]:
        """Return the full prompt ids of ``question`` (with its image tokens)."""
        if question not in self._prompts:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            n = self.processor.num_image_tokens
            ids = self.processor.tokenizer(
                text.replace(self.processor.image_token, self.processor.image_token * n), add_special_tokens=False
            )["input_ids"]
            self._prompts[question] = list(ids)
        return self._prompts[question]

    def suffix(self, question: str) -> list[int]:
        ids = self.prompt(question)
        if ids[: self.prefix_len] != self.prefix:
            raise ValueError(f"the prompt of {question!r} does not start with the shared prefix.")
        return ids[self.prefix_len :]

    def answer(self, answer: str) -> list[int]:
        """Return the target ids: the answer's tokens and ``<|im_end|>``."""
        if answer not in self._answers:
            self._answers[answer] = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) + [self.eos_id]
        return self._answers[answer]


def _sampler(items: Sequence[VQAItem], config: TrainConfig, gen: torch.Generator) -> Callable[[], list[int]]:
    """Return a function that gives the item indices of the next batch (seeded permutations, one per task
    when ``config.task_weights`` is set; with ``config.balance_yes_no`` the yes/no rows are instead drawn with
    replacement by :func:`yes_no_balance_weights`)."""
    tasks = tuple(EASY_VQA_TASKS)
    pools = (
        {t: [i for i, it in enumerate(items) if it.task == t] for t in tasks}
        if config.task_weights is not None
        else {"all": list(range(len(items)))}
    )
    queues: dict[str, list[int]] = {k: [] for k in pools}
    if config.task_weights is not None:
        empty = [t for t, w in zip(tasks, config.task_weights) if w > 0 and not pools[t]]
        if empty:
            raise ValueError(f"task_weights give weight to {empty}, which have no questions (set their weight to 0).")
    if config.balance_yes_no:
        if config.task_weights is None:
            raise ValueError("balance_yes_no needs task_weights (the yes/no rows are drawn from their own pool).")
        yes_no = yes_no_balance_weights(items)
        balanced, weights = list(yes_no), torch.tensor(list(yes_no.values()), dtype=torch.double)

    def take(key: str) -> int:
        if config.balance_yes_no and key == "yes_no":
            return balanced[int(torch.multinomial(weights, 1, generator=gen))]
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


def yes_no_balance_weights(items: Sequence[VQAItem]) -> dict[int, float]:
    """Return the sampling weight of each yes/no item (by position in ``items``) that removes the text prior.

    An item's weight is 1 / (number of yes/no items with its exact question text and answer): every
    (text, answer) pair gets the same mass, so every text is drawn equally often and "yes" and "no" are equally
    likely for each. The exact text is the unit because it is what the prior is keyed on (easy-VQA's texts are
    templates whose only variable parts are the colour or shape word, which the prior depends on: "is there a
    red shape?" is "no" 88% of the time in train). Texts that only ever have one answer are left out (none in
    easy-VQA train).

    >>> q, r = "is there a circle?", "is there a red shape?"
    >>> items = [VQAItem(q, "no", "yes_no", 0, 0), VQAItem(q, "no", "yes_no", 1, 1), VQAItem(q, "yes", "yes_no", 2, 2),
    ...          VQAItem(r, "no", "yes_no", 3, 3), VQAItem("what color?", "red", "color", 0, 4)]
    >>> yes_no_balance_weights(items)
    {0: 0.5, 1: 0.5, 2: 1.0}
    """
    counts = Counter((it.question, it.answer) for it in items if it.task == "yes_no")
    both = {q for q, a in counts if (q, "no" if a == "yes" else "yes") in counts}
    return {
        i: 1.0 / counts[it.question, it.answer]
        for i, it in enumerate(items)
        if it.task == "yes_no" and it.question in both
    }


def _prefix_kv(model: TinyVLM, prefix: list[int]) -> list[tuple[Tensor, Tensor]]:
    with torch.no_grad():
        cache = model.language_model.model(input_ids=torch.tensor([prefix]), use_cache=True).cache
    return [(layer.keys, layer.values) for layer in cache.layers]


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# ---- training ------------------------------------------------------------------------------------------


def train_projector(
    model: TinyVLM,
    processor: TinyVLMProcessor,
    items: Sequence[VQAItem],
    features: Float[Tensor, "image vision_pos d_vision"],
    config: TrainConfig = TrainConfig(),
    *,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train ``model.multi_modal_projector`` in place (re-initialised from ``config.seed``) on ``items``.

    Each step draws ``batch_size`` questions (a seeded permutation per epoch), projects their cached image
    features, and minimises the cross-entropy of the answer tokens and ``<|im_end|>`` given the prompt.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    d_vision, d_model = model.config.vision_hidden_size, int(model.language_model.config.hidden_size)
    fresh = TinyVLMProjector(d_vision, d_model).to(next(model.multi_modal_projector.parameters()).dtype)
    model.multi_modal_projector.load_state_dict(fresh.state_dict())
    proj = model.multi_modal_projector.train().requires_grad_(True)
    model.vision_tower.requires_grad_(False)
    model.language_model.requires_grad_(False)
    lm: Any = model.language_model
    codec = PromptCodec(processor)
    P = codec.prefix_len
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(proj.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16)
    with autocast:
        prefix_kv = _prefix_kv(model, codec.prefix)
    result = TrainResult()
    draw = _sampler(items, config, gen)
    start, cpu_start = time.perf_counter(), time.process_time()
    window: list[float] = []
    for step in range(config.steps):
        batch = [items[i] for i in draw()]
        seqs, targets = [], []
        for it in batch:
            s, a = codec.suffix(it.question), codec.answer(it.answer)
            seqs.append(s + a[:-1])
            targets.append([-100] * (len(s) - 1) + a)
        L = max(len(s) for s in seqs)
        B = len(batch)
        ids = torch.full((B, L), codec.eos_id, dtype=torch.long)
        tgt = torch.full((B, L), -100, dtype=torch.long)
        mask = torch.zeros(B, P + L, dtype=torch.long)
        mask[:, :P] = 1
        for r, (s, t) in enumerate(zip(seqs, targets)):  # right padding: positions continue the prefix
            ids[r, : len(s)] = torch.tensor(s)
            tgt[r, : len(t)] = torch.tensor(t)
            mask[r, P : P + len(s)] = 1
        feats = features[[it.image for it in batch]]
        for g in opt.param_groups:
            g["lr"] = _lr(step, config)
        with autocast:
            embeds = model.embed(ids, proj(feats.to(next(proj.parameters()).dtype)))
            cache = DynamicCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix_kv])
            pos = (P + torch.arange(L))[None].expand(B, L)
            h = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            sel = tgt != -100
            logits = lm.lm_head(h.last_hidden_state[sel])
        loss = F.cross_entropy(logits.float(), tgt[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        result.losses.append(value)
        window.append(value)
        result.steps, result.examples = step + 1, (step + 1) * B
        if log is not None and ((step + 1) % config.log_every == 0 or step == 0):
            el = time.perf_counter() - start
            log(
                f"step {step + 1}/{config.steps} loss {sum(window) / len(window):.4f} lr {_lr(step, config):.2e} "
                f"{el:.0f}s ({el / (step + 1):.2f} s/step)"
            )
            window = []
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    proj.eval().requires_grad_(False)
    return result


def save_projector(projector: TinyVLMProjector, path: str | os.PathLike[str], record: dict[str, Any]) -> str:
    """Save the projector as fp16 safetensors plus a JSON file (same stem) holding ``record`` and the
    weights' sha256; both written atomically. Returns the sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in projector.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt", "model": "savlens tiny-vlm projector"})
        sha = sha256_file(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = path.with_suffix(".json")
    fd, tmp = tempfile.mkstemp(prefix=f".{meta.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({**record, "file": path.name, "sha256": sha}, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, meta)
    return sha


def evaluate_generative(
    model: TinyVLM,
    processor: TinyVLMProcessor,
    items: Sequence[VQAItem],
    image_embeds: Float[Tensor, "item vision_pos d_model"],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 4,
) -> list[str]:
    """Answer each item greedily from its prompt and the given image-token embeddings (row ``i`` for item
    ``i``: pass shuffled or mean embeddings for controls); return the normalised answers."""
    codec = PromptCodec(processor)
    tok = processor.tokenizer
    dtype = next(model.language_model.parameters()).dtype
    preds: list[str] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        prompts = [codec.prompt(it.question) for it in chunk]
        L = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), L), codec.eos_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding
            ids[r, L - len(p) :] = torch.tensor(p)
            mask[r, L - len(p) :] = 1
        new = model.generate(
            ids,
            mask,
            image_embeds=image_embeds[i : i + len(chunk)].to(dtype),
            max_new_tokens=max_new_tokens,
            eos_token_id=codec.eos_id,
        )
        for row in new.tolist():
            cut = row.index(codec.eos_id) if codec.eos_id in row else len(row)
            preds.append(normalize_answer(tok.decode(row[:cut])))
    return preds


def accuracy_by_task(items: Sequence[VQAItem], preds: Sequence[str]) -> dict[str, float]:
    """Return exact-match accuracy overall (``"all"``) and per task.

    >>> items = [VQAItem("is there a circle?", "yes", "yes_no", 0, 0), VQAItem("what color?", "red", "color", 0, 1)]
    >>> accuracy_by_task(items, ["yes", "blue"])
    {'all': 0.5, 'yes_no': 1.0, 'color': 0.0}
    """
    out: dict[str, float] = {}
    for task in ("all", *EASY_VQA_TASKS):
        pairs = [(it, p) for it, p in zip(items, preds) if task == "all" or it.task == task]
        if pairs:
            out[task] = sum(p == it.answer for it, p in pairs) / len(pairs)
    return out


def answer_prior(train: Sequence[VQAItem]) -> tuple[dict[str, str], dict[str, str]]:
    """Return the blind baselines fitted on ``train``: the most frequent answer of each question text, and of
    each task (ties broken by answer name).

    >>> q = "is there a circle?"
    >>> train = [VQAItem(q, "no", "yes_no", 0, 0), VQAItem(q, "no", "yes_no", 1, 1), VQAItem(q, "yes", "yes_no", 2, 2)]
    >>> answer_prior(train)
    ({'is there a circle?': 'no'}, {'yes_no': 'no'})
    """

    def top(c: Counter[str]) -> str:
        return min(c, key=lambda a: (-c[a], a))

    by_q: dict[str, Counter[str]] = {}
    by_task: dict[str, Counter[str]] = {}
    for it in train:
        by_q.setdefault(it.question, Counter())[it.answer] += 1
        by_task.setdefault(it.task, Counter())[it.answer] += 1
    return {q: top(c) for q, c in by_q.items()}, {t: top(c) for t, c in by_task.items()}
