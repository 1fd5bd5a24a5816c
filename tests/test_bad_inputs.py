"""The bad-input catalogue: every entry is refused by a named SavlensError subclass whose message says what was
wrong and what to do, and leaves files, weights and tokenizer state as they were.

Each case builds its inputs under ``tmp_path`` and returns the call to make. The harness snapshots every file
under ``tmp_path`` (names and bytes), the weights of the models involved and their tokenizers' padding side,
makes the call, checks the error class (exactly, not a parent) and two regexes on the message (what was wrong,
what to do) and the docs link, then checks the snapshot is unchanged.

Inputs that are accepted with a conversion instead (grey, RGBA, 16-bit, 1x1 images, mixed feature dtypes) are
tested at the end; docs/errors/input-error.md records each decision.
"""

import hashlib
import json
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jaxtyping
import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image
from torch import nn

import savlens
from savlens import SAV, Example, HeadFeatures, HeadScores, cli, extract, open_store
from savlens.datasets import load_examples
from savlens.errors import (
    ArgumentError,
    BatchMismatchError,
    FeatureError,
    HookNameError,
    HookNotAvailableError,
    InputError,
    LabelError,
    LoadError,
    ModelSpecError,
    NotFittedError,
    PositionError,
    SavlensError,
    StoreError,
    TraceStateError,
    UnsupportedModelError,
)
from savlens.testing.tiny import build_tiny, build_tokenizer, sample_images


@dataclass
class Env:
    tmp: Path
    monkeypatch: pytest.MonkeyPatch

    def untyped(self) -> None:
        """Switch off the test suite's runtime type checker (jaxtyping + beartype) for a case that passes a value
        of the wrong type on purpose, so the call meets savlens' own check, as it does for a user."""
        self.monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)


@dataclass
class Call:
    """What a case returns: the call to make and the models whose state must not change."""

    fn: Callable[[], Any]
    models: tuple[Any, ...] = ()
    state: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Bad:
    name: str
    error: type[SavlensError]
    what: str  # regex: the message says what was wrong
    todo: str  # regex: the message says what to do
    setup: Callable[[Env], Call] = field(compare=False)


CASES: list[Bad] = []


def bad(name: str, error: type[SavlensError], what: str, todo: str) -> Callable[[Callable[[Env], Call]], Any]:
    def register(setup: Callable[[Env], Call]) -> Callable[[Env], Call]:
        CASES.append(Bad(name, error, what, todo, setup))
        return setup

    return register


# ---- helpers ------------------------------------------------------------------------------------------------
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def _weights(model: Any) -> str:
    hf = model.hf if isinstance(model, savlens.Model) else model
    digest = hashlib.sha256()
    for name, t in sorted(hf.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _padding(model: Any) -> Any:
    return getattr(getattr(model, "tokenizer", None), "padding_side", None)


def _png(path: Path, image: Image.Image | None = None) -> Path:
    (image or sample_images(1, seed=5)[0]).save(path)
    return path


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels (a decompression bomb, a few dozen bytes long)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _vlm() -> savlens.Model:
    return tiny("qwen2_vl")


def _lm() -> savlens.Model:
    return tiny("llama")


def _batch_call(model: savlens.Model, examples: list[Any], **kw: Any) -> Call:
    return Call(lambda: savlens.Batch.from_examples(model, examples, **kw), (model,))


def _image_case(env: Env, images: list[Any]) -> Call:
    return _batch_call(_vlm(), [Example("what is it ?", images=images, id="img")])


def _features(n: int = 12, labels: list[Any] | None = None, **kw: Any) -> HeadFeatures:
    z = torch.randn(n, 3, 4, 16, generator=torch.Generator().manual_seed(0))
    return HeadFeatures(z, labels=labels if labels is not None else ["a", "b"] * (n // 2), **kw)


def _text_examples(n: int = 6) -> list[Example]:
    return [
        Example(f"what color is shape {i} ?" + " red" * i, label=["yes", "no"][i % 2], id=f"e{i}") for i in range(n)
    ]


def _store(env: Env, model: savlens.Model | None = None, name: str = "store") -> Path:
    path = env.tmp / name
    extract(model or _lm(), _text_examples(), batch_size=3, store=path, progress=False)
    return path


def _edit_manifest(store: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit a store's manifest with its shard records (``index.jsonl``) seen as ``manifest["shards"]``."""
    manifest = json.loads((store / "manifest.json").read_text())
    index = store / "index.jsonl"
    manifest["shards"] = [json.loads(line) for line in index.read_text().splitlines()]
    edit(manifest)
    index.write_text("".join(json.dumps(s) + "\n" for s in manifest.pop("shards")))
    (store / "manifest.json").write_text(json.dumps(manifest))


def _saved_sav(env: Env) -> Path:
    return SAV(k=2).fit(_features(model_id="m")).save(env.tmp / "clf.sav")


def _edit_sav_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _trace_save(model: savlens.Model, names: Any = "blocks.0.attn.hook_z", **kw: Any) -> Call:
    batch = savlens.Batch.from_examples(model, ["what is it ?", "is there a red circle in the picture ?"])

    def run() -> Any:
        with savlens.trace(model, batch) as t:
            t.save(names, **kw)

    return Call(run, (model,))


# ---- images -------------------------------------------------------------------------------------------------
@bad("corrupt image", InputError, r"cannot read .*corrupt\.png' as an image", r"Re-save or re-download it")
def _(env: Env) -> Call:
    (env.tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    return _image_case(env, [env.tmp / "corrupt.png"])


@bad("truncated image", InputError, r"truncated\.png' as an image \(image file is truncated", r"drop this example")
def _(env: Env) -> Call:
    data = _png(env.tmp / "full.png").read_bytes()
    (env.tmp / "truncated.png").write_bytes(data[: len(data) // 2])
    return _image_case(env, [env.tmp / "truncated.png"])


@bad("text file named .png", InputError, r"cannot identify image file", r"not an image\. Re-save")
def _(env: Env) -> Call:
    (env.tmp / "notes.png").write_text("these are my notes, not a picture")
    return _image_case(env, [str(env.tmp / "notes.png")])


@bad(
    "image path that does not exist",
    InputError,
    r"image 0 of example 'img': no file at .*missing\.png",
    r"check the path",
)
def _(env: Env) -> Call:
    return _image_case(env, [env.tmp / "missing.png"])


@bad("image path that is a folder", InputError, r"no file at .*a_folder", r"check the path")
def _(env: Env) -> Call:
    (env.tmp / "a_folder").mkdir()
    return _image_case(env, [env.tmp / "a_folder"])


@bad("decompression bomb (100k x 100k header)", InputError, r"too large to decode safely", r"downscale it first")
def _(env: Env) -> Call:
    (env.tmp / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    return _image_case(env, [env.tmp / "bomb.png"])


@bad(
    "huge image file over the pixel limit",
    InputError,
    r"120x100 = 12,000 pixels, over the limit of 10,000",
    r"downscale",
)
def _(env: Env) -> Call:
    _png(env.tmp / "big.png", Image.new("RGB", (120, 100), (10, 20, 30)))  # PIL itself refuses above 2x the limit
    env.monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    return _image_case(env, [env.tmp / "big.png"])


@bad("huge in-memory image over the pixel limit", InputError, r"over the limit of 10,000", r"MAX_IMAGE_PIXELS")
def _(env: Env) -> Call:
    env.monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    return _image_case(env, [Image.new("RGB", (300, 300))])


@bad("image with a zero side", InputError, r"is 0x5 pixels", r"drop or replace it")
def _(env: Env) -> Call:
    return _image_case(env, [Image.new("RGB", (0, 5))])


@bad("floating-point image (mode F)", InputError, r"floating-point image \(PIL mode 'F'\)", r"convert it to 8-bit")
def _(env: Env) -> Call:
    return _image_case(env, [Image.fromarray(np.full((20, 20), 0.5, np.float32))])


@bad(
    "channel-first numpy array as an image",
    InputError,
    r"image 0 of example 'arr'.*got shape \(3, 8, 8\)",
    r"transpose\(1, 2, 0\)",
)
def _(env: Env) -> Call:
    return Call(lambda: Example("hi", images=[np.zeros((3, 8, 8), np.uint8)], id="arr").load_images())


@bad("a list as an image", InputError, r"image 0 of example 'lst' is a list", r"uint8 numpy array")
def _(env: Env) -> Call:
    env.untyped()
    return Call(lambda: Example("hi", images=[[1, 2, 3]], id="lst"))


@bad("image given to a text-only model", InputError, r"has 1 image\(s\) but .* text-only", r"drop the images or load")
def _(env: Env) -> Call:
    return _batch_call(_lm(), [Example("what is it ?", images=sample_images(1))])


@bad("image with an extreme aspect ratio", InputError, r"aspect ratio must be smaller than 200", r"Check this batch")
def _(env: Env) -> Call:
    return _image_case(env, [Image.new("RGB", (1, 500))])


# ---- text and examples ---------------------------------------------------------------------------------------
@bad("empty text", InputError, r"example 'blank' is empty \(no text, no image\)", r"give it text or an image")
def _(env: Env) -> Call:
    return _batch_call(_lm(), [Example("hello", id="ok"), Example("  \n ", id="blank")])


@bad("text longer than the model's context", InputError, r"more than the model's context of 512", r"shorten the text")
def _(env: Env) -> Call:
    return _batch_call(_lm(), ["what is it ? " * 200])


@bad("text that is not a string", InputError, r"Example\.text must be a str; got int", r"str\(\.\.\.\)")
def _(env: Env) -> Call:
    env.untyped()
    return Call(lambda: Example(42))  # type: ignore[arg-type]


@bad("no examples", InputError, r"got no examples", r"pass at least one")
def _(env: Env) -> Call:
    return _batch_call(_lm(), [])


@bad("duplicate ids in a batch", InputError, r"duplicate example ids in one batch: \['x'\]", r"unique id")
def _(env: Env) -> Call:
    return _batch_call(_lm(), [Example("a", id="x"), Example("b", id="x")])


@bad("duplicate ids in extract", InputError, r"duplicate example ids \['x'\]", r"unique id")
def _(env: Env) -> Call:
    store = env.tmp / "never"
    return Call(lambda: extract(_lm(), [Example("a", id="x"), Example("b", id="x")], store=store), (_lm(),))


@bad(
    "prompt template with an unknown field", InputError, r"prompt_template '\{question\}' cannot be filled", r"\{text\}"
)
def _(env: Env) -> Call:
    return _batch_call(_lm(), ["hi"], prompt_template="{question}")


@bad("chat messages that are not a list", InputError, r"Example\.messages must be a list of dicts", r"'role'")
def _(env: Env) -> Call:
    env.untyped()
    return Call(lambda: Example("", messages="hello"))  # type: ignore[arg-type]


@bad("padding side that does not exist", InputError, r"padding_side must be 'left' or 'right'; got 'middle'", r"left")
def _(env: Env) -> Call:
    env.untyped()
    return _batch_call(_lm(), ["hi"], padding_side="middle")


@bad("chat=True on a model without a chat template", InputError, r"has no chat template", r"pass chat=False")
def _(env: Env) -> Call:
    tm = build_tiny("llama")
    tok = build_tokenizer("plain")
    tok.chat_template = None
    model = savlens.wrap(tm.model, tok)
    return _batch_call(model, ["hi"])


# ---- labels ------------------------------------------------------------------------------------------------
@bad("labels with one class", LabelError, r"single class \('a', 12 examples\)", r"at least 2 classes")
def _(env: Env) -> Call:
    return Call(lambda: SAV(k=2).fit(_features(labels=["a"] * 12)))


@bad("a class left empty by a fold", LabelError, r"class 'b' is empty in the training split", r"use fewer folds")
def _(env: Env) -> Call:
    return Call(lambda: SAV(k=2, mode="kfold").fit(_features(labels=["a"] * 11 + ["b"])))


@bad("an empty class folder", LabelError, r"class folder 'dog' has no image files", r"remove it or add images")
def _(env: Env) -> Call:
    for cls in ("cat", "dog"):
        (env.tmp / "pets" / cls).mkdir(parents=True)
    _png(env.tmp / "pets" / "cat" / "1.png")
    return Call(lambda: load_examples(env.tmp / "pets"))


@bad("labels of mixed types", LabelError, r"labels mix types: str \(e\.g\. 'a'\), int \(e\.g\. 1\)", r"one type")
def _(env: Env) -> Call:
    return Call(lambda: SAV(k=2).fit(_features(labels=["a", 1] * 6)))


@bad("labels of mixed types in a data file", LabelError, r"labels mix the types int, str", r"use one type")
def _(env: Env) -> Call:
    (env.tmp / "d.jsonl").write_text('{"text": "a", "label": "yes"}\n{"text": "b", "label": 0}\n')
    return Call(lambda: load_examples(env.tmp / "d.jsonl"))


@bad("one label per example violated", LabelError, r"2 labels for 12 examples", r"one label per example")
def _(env: Env) -> Call:
    return Call(lambda: SAV(k=2).fit(_features(), ["a", "b"]))


@bad("a float label in a data file", LabelError, r"label must be a string or an integer; got float 0\.5", r"string")
def _(env: Env) -> Call:
    (env.tmp / "d.jsonl").write_text('{"text": "a", "label": 0.5}\n')
    return Call(lambda: load_examples(env.tmp / "d.jsonl"))


# ---- data files ------------------------------------------------------------------------------------------------
@bad("duplicate ids in a data file", InputError, r"id 'q1' is used by examples 0 and 1", r"id_key=None")
def _(env: Env) -> Call:
    (env.tmp / "d.jsonl").write_text('{"id": "q1", "text": "a"}\n{"id": "q1", "text": "b"}\n')
    return Call(lambda: load_examples(env.tmp / "d.jsonl"))


@bad("a JSONL line that is not JSON", InputError, r"d\.jsonl line 2: not valid JSON", r"fix or remove that line")
def _(env: Env) -> Call:
    (env.tmp / "d.jsonl").write_text('{"text": "a"}\n{"text": "b",\n')
    return Call(lambda: load_examples(env.tmp / "d.jsonl"))


@bad("a data file that is not UTF-8", InputError, r"d\.csv is not UTF-8 text", r"re-save it as UTF-8")
def _(env: Env) -> Call:
    (env.tmp / "d.csv").write_bytes(b"text,label\ncaf\xe9,yes\n")
    return Call(lambda: load_examples(env.tmp / "d.csv"))


@bad("an image path that escapes the data root", InputError, r"outside the root", r"Pass root= a folder")
def _(env: Env) -> Call:
    (env.tmp / "data").mkdir()
    _png(env.tmp / "secret.png")
    (env.tmp / "data" / "d.jsonl").write_text('{"text": "a", "image": "../secret.png"}\n')
    return Call(lambda: load_examples(env.tmp / "data" / "d.jsonl"))


@bad("a data file with an unknown suffix", InputError, r"cannot tell the format of .*d\.txt", r"pass format=")
def _(env: Env) -> Call:
    (env.tmp / "d.txt").write_text("text\nhello\n")
    return Call(lambda: load_examples(env.tmp / "d.txt"))


# ---- hooks and positions -------------------------------------------------------------------------------------
@bad(
    "a hook name with a typo",
    HookNameError,
    r"no hook matches 'blocks\.1\.attn\.hook_zz'",
    r"blocks\.1\.attn\.hook_z\b",
)
def _(env: Env) -> Call:
    return _trace_save(_lm(), "blocks.1.attn.hook_zz")


@bad(
    "a layer out of range",
    HookNameError,
    r"layer 7 in 'blocks\.7\.attn\.hook_z' is out of range",
    r"blocks\.0 \.\. blocks\.2",
)
def _(env: Env) -> Call:
    return _trace_save(_lm(), "blocks.7.attn.hook_z")


@bad(
    "a layer set out of range",
    HookNameError,
    r"layer 5 in 'blocks\.\{0-5\}\.attn\.hook_z' is out of range",
    r"blocks\.0 \.\. blocks\.2",
)
def _(env: Env) -> Call:
    return _trace_save(_lm(), "blocks.{0-5}.attn.hook_z")


@bad("a malformed layer set", HookNameError, r"bad layer set \{a-b\}", r"use \{0-3\} or \{0,5,9\}")
def _(env: Env) -> Call:
    return _trace_save(_lm(), "blocks.{a-b}.attn.hook_z")


@bad("a vision hook on a text-only model", HookNameError, r"needs a vision tower", r"drop this hook or load a vision")
def _(env: Env) -> Call:
    return _trace_save(_lm(), "vision_encoder.hook_out")


@bad(
    "attention patterns of a cross-attention head",
    HookNotAvailableError,
    r"layer 1 is a cross attention layer",
    r"self-attention layers only. Layers by kind",
)
def _(env: Env) -> Call:
    from savlens.tracing import attention_patterns

    model = tiny("mllama")
    batch = savlens.Batch.from_examples(model, ["what is it ?"])
    return Call(lambda: attention_patterns(model, batch, ["L1H0"]), (model,))


@bad(
    "positions out of range",
    PositionError,
    r"positions \[40\] do not exist in row 0",
    r"indices must lie in \[-\d+, \d+\]",
)
def _(env: Env) -> Call:
    return _trace_save(_lm(), positions=[40])


@bad(
    "positions that are not whole numbers",
    PositionError,
    r"whole token indices \(ints\); got \[1\.5\]",
    r"Use e\.g\. \[0, -1\]",
)
def _(env: Env) -> Call:
    env.untyped()
    return _trace_save(_lm(), positions=[1.5])


@bad("image positions on a text-only batch", PositionError, r"no row of this batch has image tokens", r"add images")
def _(env: Env) -> Call:
    return _trace_save(_lm(), positions="image")


@bad("extract at a position out of range", PositionError, r"positions \[99\] do not exist", r"indices must lie in")
def _(env: Env) -> Call:
    return Call(lambda: extract(_lm(), _text_examples(2), positions=99, progress=False), (_lm(),))


# ---- k -----------------------------------------------------------------------------------------------------
@bad("k = 0", ArgumentError, r"k must be a positive int .* got 0", r"Pass k between 1 and layer x head_index = 12")
def _(env: Env) -> Call:
    return Call(lambda: SAV(k=0).fit(_features()))


@bad("k above layers x heads", FeatureError, r"k=13 is larger than the 3 x 4 = 12 heads", r"pass k <= 12")
def _(env: Env) -> Call:
    return Call(lambda: SAV(k=13).fit(_features()))


@bad("top_k(0) on head scores", ArgumentError, r"k must be a positive int .* got 0", r"Pass k between 1 and 4")
def _(env: Env) -> Call:
    return Call(lambda: HeadScores(torch.zeros(2, 2), "demo").top_k(0))


# ---- dtype and device ------------------------------------------------------------------------------------------
@bad("a dtype given as a string", ArgumentError, r"dtype='float32' is not a floating torch dtype", r"torch\.float32")
def _(env: Env) -> Call:
    env.untyped()
    return _trace_save(_lm(), dtype="float32")


@bad(
    "integer features asked of extract",
    ArgumentError,
    r"dtype=torch\.int64 is not a floating torch dtype",
    r"torch\.bfloat16",
)
def _(env: Env) -> Call:
    return Call(lambda: extract(_lm(), ["hi"], dtype=torch.int64, progress=False), (_lm(),))


@bad(
    "a device this machine does not have",
    ArgumentError,
    r"device='cuda:99' cannot be used here",
    r"pass 'cpu' or a device",
)
def _(env: Env) -> Call:
    return _trace_save(_lm(), device="cuda:99")


@bad("a device string torch does not know", ArgumentError, r"device='gpu7' cannot be used here", r"pass 'cpu'")
def _(env: Env) -> Call:
    return _trace_save(_lm(), device="gpu7")


@bad("features on the meta device", FeatureError, r"on the meta device", r"move them to a real device")
def _(env: Env) -> Call:
    return Call(lambda: HeadFeatures(torch.empty(4, 3, 4, 16, device="meta")))


@bad(
    "predict on features of another grid",
    FeatureError,
    r"d_head: fitted on 16, these features have 8",
    r"Extract them with the same model",
)
def _(env: Env) -> Call:
    sav = SAV(k=2).fit(_features())
    other = HeadFeatures(torch.randn(3, 3, 4, 8))
    return Call(lambda: sav.predict(other), state=lambda: sav.centroids_.clone().numpy().tobytes())


@bad(
    "predict on features rendered without the chat template the SAV was fitted with",
    FeatureError,
    r"chat: fitted on True, these features have False",
    r"Extract them with the same model, hook, positions, prompt template and chat settings",
)
def _(env: Env) -> Call:
    sav = SAV(k=2).fit(_features(meta={"chat": True, "system_prompt": None}))
    raw = _features(meta={"chat": False, "system_prompt": None})
    return Call(lambda: sav.predict(raw), state=lambda: sav.centroids_.clone().numpy().tobytes())


@bad(
    "predict on features rendered with another system prompt",
    FeatureError,
    r"system_prompt: fitted on None, these features have 'Be brief.'",
    r"SAV.extract\(model, examples\) does",
)
def _(env: Env) -> Call:
    sav = SAV(k=2).fit(_features(meta={"chat": True, "system_prompt": None}))
    other = _features(meta={"chat": True, "system_prompt": "Be brief."})
    return Call(lambda: sav.score(other), state=lambda: sav.centroids_.clone().numpy().tobytes())


@bad(
    "SAV.fit given a model instead of features",
    FeatureError,
    r"SAV.fit takes features, not a model",
    r"use SAV\(...\).fit_model\(model, examples",
)
def _(env: Env) -> Call:
    env.untyped()
    tm = build_tiny("llama")
    model = savlens.wrap(tm.model, tm.processor)
    return Call(lambda: SAV(k=2).fit(model, _text_examples()), models=(model,))


# ---- models and processors -----------------------------------------------------------------------------------
@bad(
    "a model without an output projection",
    ModelSpecError,
    r"cannot infer the decoder layers of LlamaForCausalLM.*output projection \(o_proj/out_proj",
    r"savlens\.wrap\(model, processor, spec=",
)
def _(env: Env) -> Call:
    tm = build_tiny("llama")
    for layer in tm.model.model.layers:
        del layer.self_attn.o_proj
    return Call(lambda: savlens.wrap(tm.model, tm.tokenizer), (tm.model,))


@bad(
    "an output projection that is not a linear layer",
    ModelSpecError,
    r"o_proj: expected in/out features 64/64",
    r"spec= that matches",
)
def _(env: Env) -> Call:
    tm = build_tiny("llama")
    for layer in tm.model.model.layers:
        layer.self_attn.o_proj = nn.Identity()
    return Call(lambda: savlens.wrap(tm.model, tm.tokenizer), (tm.model,))


@bad(
    "a processor that does not match the model",
    InputError,
    r"processor does not match qwen2_vl model",
    r"Pass the processor saved",
)
def _(env: Env) -> Call:
    qwen, llava = build_tiny("qwen2_vl"), build_tiny("llava_onevision")
    return Call(lambda: savlens.wrap(qwen.model, llava.processor), (qwen.model,))


@bad("a bare tokenizer for a vision-language model", InputError, r"is a vision-language model", r"pass its processor")
def _(env: Env) -> Call:
    qwen = build_tiny("qwen2_vl")
    return Call(lambda: savlens.wrap(qwen.model, qwen.tokenizer), (qwen.model,))


@bad(
    "a tokenizer larger than the embedding",
    InputError,
    r"it has \d+ tokens but the model's embedding has \d+ rows",
    r"tokenizer saved",
)
def _(env: Env) -> Call:
    tm = build_tiny("llama")
    tok = build_tokenizer("plain")
    tok.add_tokens([f"extra{i}" for i in range(64)])
    return Call(lambda: savlens.wrap(tm.model, tok), (tm.model,))


@bad(
    "a model class with no spec", UnsupportedModelError, r"no savlens spec for Sequential", r"savlens\.models\.register"
)
def _(env: Env) -> Call:
    net = nn.Sequential(nn.Linear(4, 4))
    return Call(lambda: savlens.wrap(net, build_tokenizer("plain")), (net,))


@bad("a checkpoint folder without a config", LoadError, r"cannot read a config for", r"local folder with config\.json")
def _(env: Env) -> Call:
    (env.tmp / "ckpt").mkdir()
    return Call(lambda: savlens.load(str(env.tmp / "ckpt")))


@bad(
    "a batch built for another model", BatchMismatchError, r"built for another model", r"Rebuild it with savlens\.Batch"
)
def _(env: Env) -> Call:
    a, b = tiny("llama"), tiny("qwen2")
    batch = savlens.Batch.from_examples(b, ["hi"])
    return Call(lambda: savlens.trace(a, batch), (a, b))


# ---- feature stores ------------------------------------------------------------------------------------------
@bad(
    "a store from another model",
    StoreError,
    r"holds features of another extraction \(model_id",
    r"Use a new store path",
)
def _(env: Env) -> Call:
    store = _store(env)
    return Call(lambda: extract(tiny("qwen2"), _text_examples(), store=store, progress=False), (_lm(), tiny("qwen2")))


@bad(
    "a store from another hook",
    StoreError,
    r"hook: store has 'blocks\.\*\.attn\.hook_z', this run 'blocks\.\*\.hook_resid_post'",
    r"delete this one",
)
def _(env: Env) -> Call:
    store = _store(env)
    return Call(lambda: extract(_lm(), _text_examples(), "blocks.*.hook_resid_post", store=store, progress=False))


@bad(
    "a store whose manifest and shards disagree",
    StoreError,
    r"holds 3 examples but the manifest lists 2 ids",
    r"Re-extract",
)
def _(env: Env) -> Call:
    store = _store(env)
    _edit_manifest(store, lambda m: m["shards"][0].update(ids=m["shards"][0]["ids"][:2]))
    return Call(lambda: open_store(store))


@bad("a store shard that is missing", StoreError, r"lists 'shard-00001\.safetensors', which is missing", r"Re-extract")
def _(env: Env) -> Call:
    store = _store(env)
    (store / "shard-00001.safetensors").unlink()
    return Call(lambda: open_store(store))


@bad("a store shard whose hash does not match", StoreError, r"does not match the sha256 in the manifest", r"Re-extract")
def _(env: Env) -> Call:
    store = _store(env)
    shard = store / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x55
    shard.write_bytes(bytes(data))
    return Call(lambda: open_store(store))


@bad(
    "a truncated store shard (no hash check)",
    StoreError,
    r"shard-00001\.safetensors' is truncated",
    r"Re-extract|corrupt",
)
def _(env: Env) -> Call:
    store = _store(env)
    shard = store / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])
    return Call(lambda: open_store(store, verify=False))


@bad(
    "a store manifest naming '../' paths",
    StoreError,
    r"names a shard '\.\./outside\.safetensors' outside the store",
    r"Re-extract",
)
def _(env: Env) -> Call:
    store = _store(env)
    shutil.copy(store / "shard-00000.safetensors", env.tmp / "outside.safetensors")
    _edit_manifest(store, lambda m: m["shards"][0].update(file="../outside.safetensors"))
    return Call(lambda: open_store(store))


@bad(
    "a store manifest naming an absolute path",
    StoreError,
    r"names a shard '/.*outside\.safetensors' outside the store",
    r"Re-extract",
)
def _(env: Env) -> Call:
    store = _store(env)
    target = env.tmp / "outside.safetensors"
    shutil.copy(store / "shard-00000.safetensors", target)
    _edit_manifest(store, lambda m: m["shards"][0].update(file=str(target)))
    return Call(lambda: open_store(store))


@bad(
    "a store manifest with fields missing", StoreError, r"shard 0: ids: Field required", r"Re-extract into a new store"
)
def _(env: Env) -> Call:
    store = _store(env)
    _edit_manifest(store, lambda m: m["shards"][0].pop("ids"))
    return Call(lambda: open_store(store))


@bad(
    "a store path that is a file", StoreError, r"cannot create the feature store folder", r"give a path where a folder"
)
def _(env: Env) -> Call:
    (env.tmp / "features.bin").write_bytes(b"not a folder")
    return Call(lambda: extract(_lm(), _text_examples(2), store=env.tmp / "features.bin", progress=False))


# ---- saved SAVs ------------------------------------------------------------------------------------------------
@bad("a saved SAV whose hash does not match", StoreError, r"has SHA-256 .* but its manifest records", r"Re-create it")
def _(env: Env) -> Call:
    folder = _saved_sav(env)
    tensors = folder / json.loads((folder / "manifest.json").read_text())["tensors"]["file"]
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    return Call(lambda: SAV.load(folder))


@bad(
    "a non-safetensors file named .sav",
    StoreError,
    r"x\.sav' is not a saved SAV \(it is a file\)",
    r"Give the path of that folder",
)
def _(env: Env) -> Call:
    (env.tmp / "x.sav").write_bytes(b"PK\x03\x04 a zip, or a pickle, or anything else")
    return Call(lambda: SAV.load(env.tmp / "x.sav"))


@bad("a SAV tensor file that is not safetensors", StoreError, r"is not a valid safetensors file", r"Re-create it")
def _(env: Env) -> Call:
    folder = _saved_sav(env)
    junk = b"\x80\x04\x95 pickled bytes, never unpickled"
    (folder / json.loads((folder / "manifest.json").read_text())["tensors"]["file"]).write_bytes(junk)
    _edit_sav_manifest(folder, lambda m: m["tensors"].update(sha256=hashlib.sha256(junk).hexdigest()))
    return Call(lambda: SAV.load(folder))


@bad(
    "a SAV manifest naming a file outside its folder",
    StoreError,
    r"names a tensor file '\.\./stolen\.safetensors' outside",
    r"Re-save the SAV",
)
def _(env: Env) -> Call:
    folder = _saved_sav(env)
    shutil.copy(
        folder / json.loads((folder / "manifest.json").read_text())["tensors"]["file"], env.tmp / "stolen.safetensors"
    )
    _edit_sav_manifest(folder, lambda m: m["tensors"].update(file="../stolen.safetensors"))
    return Call(lambda: SAV.load(folder))


@bad(
    "a SAV manifest with fields missing",
    StoreError,
    r"incomplete or invalid \(KeyError: 'sha256'\)",
    r"Re-fit and save",
)
def _(env: Env) -> Call:
    folder = _saved_sav(env)
    _edit_sav_manifest(folder, lambda m: m["tensors"].pop("sha256"))
    return Call(lambda: SAV.load(folder))


@bad(
    "a saved SAV loaded for another model",
    StoreError,
    r"fitted on other features \(model_id: saved 'm', expected 'other'\)",
    r"re-fit it",
)
def _(env: Env) -> Call:
    folder = _saved_sav(env)
    return Call(lambda: SAV.load(folder, expect={"model_id": "other"}))


@bad("SAV.save onto a file", StoreError, r"exists and is not a folder", r"give a new or existing folder")
def _(env: Env) -> Call:
    sav = SAV(k=2).fit(_features())
    (env.tmp / "clf.sav").write_text("keep me")
    return Call(lambda: sav.save(env.tmp / "clf.sav"))


# ---- using the API out of order, unknown names, missing extras -------------------------------------------------
@bad("a SAV used before fit", NotFittedError, r"this SAV is not fitted yet", r"call fit\(features\) first")
def _(env: Env) -> Call:
    return Call(lambda: SAV(k=2).predict(_features()))


@bad("a save after the trace ran", TraceStateError, r"this trace already ran", r"open a new `with savlens\.trace")
def _(env: Env) -> Call:
    model = _lm()
    with savlens.trace(model, savlens.Batch.from_examples(model, ["what is it ?"])) as t:
        t.save("blocks.0.attn.hook_z")
    return Call(lambda: t.save("blocks.1.attn.hook_z"), (model,))


@bad(
    "a criterion name that is not registered",
    ArgumentError,
    r"no criterion is registered as 'centroids'; registered: .*centroid",
    r"Register one with @savlens\.scoring\.register_criterion",
)
def _(env: Env) -> Call:
    return Call(lambda: SAV(k=2, criterion="centroids").fit(_features()))


# ---- the harness ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(
    case: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = case.setup(Env(tmp_path, monkeypatch))
    files = _files(tmp_path)
    weights = [_weights(m) for m in call.models]
    padding = [_padding(m) for m in call.models]
    state = call.state() if call.state else None

    with pytest.raises(SavlensError) as info:
        call.fn()

    err = info.value
    msg = str(err)
    assert type(err) is case.error, f"{case.name}: {type(err).__name__}: {msg}"
    assert re.search(case.what, msg), f"{case.name}: the message does not say what was wrong: {msg}"
    assert re.search(case.todo, msg), f"{case.name}: the message does not say what to do: {msg}"
    assert f"/errors/{err.page}/" in msg
    assert _files(tmp_path) == files, f"{case.name}: files changed"
    assert [_weights(m) for m in call.models] == weights, f"{case.name}: weights changed"
    assert [_padding(m) for m in call.models] == padding
    if call.state:
        assert call.state() == state


# ---- accepted with a conversion (the other half of each decision) -------------------------------------------
def _pixels(images: list[Any]) -> list[np.ndarray]:
    return [np.asarray(im) for im in Example("x", images=images).load_images()]


def test_grey_and_palette_images_become_rgb() -> None:
    grey = Image.fromarray(np.full((6, 6), 77, np.uint8), "L")
    pal = grey.convert("P")
    for arr in _pixels([grey, pal]):
        assert arr.shape == (6, 6, 3) and (arr == 77).all()


def test_transparency_is_composited_onto_white_like_hf_processors() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent on the left half, opaque on the right
    rgba[:, 2:, 3] = 255
    (arr,) = _pixels([Image.fromarray(rgba, "RGBA")])
    assert (arr[:, :2] == 255).all()  # white, not the black (or red) of a plain convert("RGB")
    assert (arr[:, 2:] == [200, 0, 0]).all()


def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    (arr,) = _pixels([tmp_path / "deep.png"])
    assert arr[0, :, 0].tolist() == [0, 1, 128, 255]  # PIL's convert("RGB") would give [0, 255, 255, 255]
    (arr32,) = _pixels([Image.fromarray(values.astype(np.int32), "I")])
    assert arr32[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen2_5_vl"])
def test_one_pixel_grey_rgba_and_16_bit_images_run_through_every_vlm(family: str, tmp_path: Path) -> None:
    Image.fromarray(np.array([[1000, 60000], [30000, 5]], np.uint16)).save(tmp_path / "deep.png")
    images = [
        Image.new("RGB", (1, 1), (9, 200, 30)),
        Image.new("L", (40, 30), 128),
        Image.new("RGBA", (30, 40), (0, 0, 0, 0)),
        tmp_path / "deep.png",
    ]
    model = tiny(family)
    exs = [Example("what is it ?", images=[im], id=str(i)) for i, im in enumerate(images)]
    batch = savlens.Batch.from_examples(model, exs)
    assert bool(batch.image_mask.any(-1).all())
    with savlens.trace(model, batch) as t:
        z = t.save("blocks.*.attn.hook_z")
    # the same features as the RGB images they stand for: grey as grey, transparency on white, 16 bit / 257
    deep = np.round(np.array([[1000, 60000], [30000, 5]]) / 257).astype(np.uint8)
    rgb = [
        images[0],
        Image.new("RGB", (40, 30), (128, 128, 128)),
        Image.new("RGB", (30, 40), (255, 255, 255)),
        Image.fromarray(np.repeat(deep[:, :, None], 3, axis=2), "RGB"),
    ]
    want = savlens.Batch.from_examples(model, [Example(e.text, images=[im], id=e.id) for e, im in zip(exs, rgb)])
    with savlens.trace(model, want) as t2:
        z2 = t2.save("blocks.*.attn.hook_z")
    assert torch.equal(z.value, z2.value)


def test_feature_dtypes_and_devices_are_converted_for_prediction() -> None:
    feats = _features()
    sav = SAV(k=3).fit(feats)
    want = sav.predict(feats)
    assert sav.predict(feats.subset(range(12)).with_labels(feats.labels or [])) == want
    half = HeadFeatures(feats.z.bfloat16(), labels=feats.labels)
    assert len(sav.predict(half)) == 12  # bf16 features are upcast, not refused
    double = HeadFeatures(feats.z.double(), labels=feats.labels)
    assert sav.predict(double) == want
    if torch.cuda.is_available():  # features on another device than the centroids are moved to them
        cuda = HeadFeatures(feats.z.cuda(), labels=feats.labels)
        assert sav.predict(cuda) == want
        assert SAV(k=3).fit(cuda).predict(feats) == want
        assert SAV(k=3, reference=True).fit(cuda).predict(feats) == SAV(k=3, reference=True).fit(feats).predict(feats)


# ---- the command line (savlens/cli.py): the same refusals, exit code 2, the message on stderr ----------------
@dataclass(frozen=True)
class BadCli:
    name: str
    error: type[SavlensError]
    what: str
    todo: str
    argv: Callable[[Path], list[str]] = field(compare=False)


CLI_CASES = [
    BadCli(
        "cli: a JSONL line that is not JSON",
        InputError,
        r"bad\.jsonl line 2: not valid JSON",
        r"fix or remove that line",
        lambda d: ["extract", str(d / "bad.jsonl"), "--model", "tiny:llama", "--out", str(d / "new")],
    ),
    BadCli(
        "cli: a hook name with a typo",
        HookNameError,
        r"no hook matches 'blocks\.\*\.attn\.hook_zz'",
        r"Closest valid names: blocks\.\*\.attn\.hook_z\b",
        lambda d: [
            "extract",
            str(d / "train.jsonl"),
            "--model",
            "tiny:llama",
            "--out",
            str(d / "new"),
            "--hook",
            "blocks.*.attn.hook_zz",
        ],
    ),
    BadCli(
        "cli: a store from another model",
        StoreError,
        r"holds features of another extraction \(model_id: store has 'tiny-llama', this run 'tiny-qwen2'",
        r"Use a new store path",
        lambda d: ["extract", str(d / "train.jsonl"), "--model", "tiny:qwen2", "--out", str(d / "store")],
    ),
    BadCli(
        "cli: k above layers x heads",
        FeatureError,
        r"k=99 is larger than the 3 x 4 = 12 heads",
        r"pass k <= 12",
        lambda d: ["fit", str(d / "store"), "--out", str(d / "clf"), "--k", "99"],
    ),
    BadCli(
        "cli: a store whose manifest was edited to escape it",
        StoreError,
        r"names a shard '\.\./train\.jsonl' outside the store folder",
        r"Re-extract",
        lambda d: ["fit", str(d / "escaped"), "--out", str(d / "clf"), "--k", "2"],
    ),
]


@pytest.fixture
def cli_data(tmp_path: Path) -> Path:
    rows = [{"id": f"r{i}", "text": f"the circle is red {i}", "label": ["red", "blue"][i % 2]} for i in range(6)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": \n')
    exs = load_examples(tmp_path / "train.jsonl")
    for name in ("store", "escaped"):
        extract(tiny("llama"), exs, store=tmp_path / name, progress=False)
    _edit_manifest(tmp_path / "escaped", lambda m: m["shards"][0].update(file="../train.jsonl"))
    return tmp_path


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_bad_input_on_the_command_line(case: BadCli, cli_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _files(cli_data)
    code = cli.main([*case.argv(cli_data), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"/errors/{case.error.page}/" in err, err
    assert re.search(case.what, err), err
    assert re.search(case.todo, err), err
    assert _files(cli_data) == files
