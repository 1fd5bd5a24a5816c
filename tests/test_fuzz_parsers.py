"""Fuzzing the parsers of user text: data files (JSONL / JSON / CSV / TSV) and hook-name patterns.

Each parser must either return a valid result or raise a SavlensError, never another exception, and never hang
(patterns once took exponential time: ``"*" * 30 + "x"`` ran for minutes; the regexes patterns compile to are
checked for that structure, not timed). Runs are derandomized so CI sees the
same inputs every time; ``FUZZ_EXAMPLES`` inputs per test.
"""

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import jaxtyping
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from savlens import Example, HeadSet
from savlens.datasets import load_examples
from savlens.errors import HookNameError, SavlensError
from savlens.names import _pattern_regex, all_names, resolve

FUZZ_EXAMPLES = 200
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=None,  # no timing checks in tests (a loaded CI machine is slow); hangs show as a stuck job
    suppress_health_check=[HealthCheck.too_slow],
)
KEYS = ["text", "label", "id", "image", "images", "answer", "claim_label", "instruction", "meta"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
records = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=5)


def _check_examples(result: Any) -> None:
    assert isinstance(result, list)
    ids = [e.id for e in result]
    assert len(ids) == len(set(ids)) and all(isinstance(i, str) for i in ids)
    for e in result:
        assert isinstance(e, Example) and isinstance(e.text, str)
        assert e.label is None or isinstance(e.label, str | int)
        assert all(isinstance(im, str) for im in e.images)
    assert len({type(e.label) for e in result if e.label is not None}) <= 1


def _load(data: bytes, suffix: str, **kw: Any) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        path.write_bytes(data)
        try:
            result = load_examples(path, check_images=False, **kw)
        except SavlensError:
            return
        _check_examples(result)


def _jsonl(rows: list[Any], corrupt: list[int]) -> bytes:
    lines = [json.dumps(r, allow_nan=True) for r in rows]
    for k in corrupt:  # cut some lines short: half-written files
        if lines:
            i = k % len(lines)
            lines[i] = lines[i][: max(1, len(lines[i]) // 2)]
    return ("\n".join(lines) + "\n").encode()


@FUZZ
@given(st.lists(records, max_size=6), st.lists(st.integers(0, 10), max_size=2), st.sampled_from([None, "{text}?"]))
def test_jsonl_records(rows: list[dict[str, Any]], corrupt: list[int], template: str | None) -> None:
    _load(_jsonl(rows, corrupt), ".jsonl", template=template)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]))
def test_arbitrary_bytes(data: bytes, suffix: str) -> None:
    _load(data, suffix)


@FUZZ
@given(st.lists(json_values | records, max_size=5))
def test_json_documents(doc: list[Any]) -> None:
    _load(json.dumps(doc, allow_nan=True).encode(), ".json")


@FUZZ
@given(
    st.lists(st.sampled_from(KEYS) | st.text(max_size=6), min_size=1, max_size=4),
    st.lists(st.lists(st.text(max_size=15), max_size=5), max_size=6),
    st.sampled_from([(",", ".csv"), ("\t", ".tsv")]),
)
def test_csv_and_tsv(header: list[str], rows: list[list[str]], fmt: tuple[str, str]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=fmt[0])
    writer.writerow(header)
    writer.writerows(rows)
    _load(out.getvalue().encode(), fmt[1])


# ---- hook-name patterns ------------------------------------------------------------------------------------------
TOKENS = [
    "blocks",
    ".",
    "*",
    "**",
    "{",
    "}",
    ",",
    "-",
    "0",
    "1",
    "2",
    "9",
    "12",
    "attn",
    "hook_z",
    "hook_q",
    "hook_k",
    "hook_resid_pre",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_pattern",
    "hook_result",
    "hook_embed",
    "vision_encoder",
    "vision_projector",
    "hook_out",
    "_",
    "x",
    " ",
    "\x00",
    "\\",
    "(",
    "[",
    "$",
    "?",
]
patterns = st.lists(st.sampled_from(TOKENS), max_size=14).map("".join) | st.text(max_size=30)


def _check_resolve(pattern: Any, n_layers: int, multimodal: bool) -> None:
    try:
        names = resolve(pattern, n_layers, multimodal)
    except SavlensError:
        return
    valid = all_names(n_layers, multimodal)
    assert names and len(names) == len(set(names))
    assert names == [n for n in valid if n in set(names)]  # valid names, in execution order


@FUZZ
@given(patterns, st.integers(1, 40), st.booleans())
def test_hook_patterns(pattern: str, n_layers: int, multimodal: bool) -> None:
    _check_resolve(pattern, n_layers, multimodal)


@FUZZ
@given(st.lists(patterns | st.none() | st.integers(), max_size=3) | st.none() | st.integers(), st.integers(1, 8))
def test_hook_pattern_lists_and_wrong_types(pattern: Any, n_layers: int) -> None:
    # values of the wrong type on purpose: switch off the suite's runtime type checker so they meet savlens' checks
    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.jaxtyping_disable = True
    try:
        _check_resolve(pattern, n_layers, True)
    finally:
        jaxtyping.config.jaxtyping_disable = old


@FUZZ
@given(st.lists(st.sampled_from(["L", "H", "l", "h", "1", "12", "0", ",", " ", "-", "x"]), max_size=12).map("".join))
def test_head_labels(text: str) -> None:
    try:
        heads = HeadSet(text)
    except SavlensError:
        return
    assert all(h.layer >= 0 and h.head >= 0 for h in heads)
    assert HeadSet(str(heads)) == heads


def test_patterns_that_used_to_backtrack_exponentially_compile_to_linear_regexes() -> None:
    # a run of wildcards collapses to one (40 nested `[^.]+` would backtrack exponentially on a near miss)
    for pattern in ["*" * 40 + "x", "**" * 20 + "x", "*" * 3 + "x"]:
        assert _pattern_regex(pattern).pattern == "^.+x$"
    assert _pattern_regex("*" * 2 + "x").pattern == "^.+x$" and _pattern_regex("*x").pattern == r"^[^.]+x$"
    with pytest.raises(HookNameError, match="spanning fewer than"):  # never expanded into 10**8 alternatives
        resolve("blocks.{0-99999999}.attn.hook_z", 28, True)
    with pytest.raises(HookNameError):
        resolve("*o" * 15 + "x", 28, True)
