"""Examples from tables: Hugging Face datasets objects (duck-typed here), parquet files, lists of rows."""

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from savlens.datasets import load_examples, load_table
from savlens.errors import InputError, LabelError, LoadError


class ClassLabel:
    """What ``datasets.ClassLabel`` offers that savlens reads: the class names."""

    def __init__(self, names: list[str]) -> None:
        self.names = names


class FakeDataset:
    """The parts of ``datasets.Dataset`` savlens uses: ``column_names``, ``features`` and iteration over rows."""

    def __init__(self, rows: list[dict], features: dict) -> None:  # type: ignore[type-arg]
        self.rows, self.features = rows, features
        self.column_names = list(rows[0])

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def test_a_datasets_object_with_images_as_datasets_gives_them(tmp_path: Path) -> None:
    Image.new("RGB", (2, 2), (0, 0, 255)).save(tmp_path / "blue.png")
    rows = [
        {"question": "what colour?", "answer": 0, "picture": Image.new("RGB", (5, 5), (255, 0, 0)), "uid": "r"},
        {"question": "and this?", "answer": 1, "picture": {"bytes": png_bytes((0, 255, 0)), "path": None}, "uid": "g"},
        {"question": "this one?", "answer": 1, "picture": {"bytes": None, "path": "blue.png"}, "uid": "b"},
        {"question": "no image", "answer": 0, "picture": None, "uid": "n"},
    ]
    ds = FakeDataset(rows, {"answer": ClassLabel(["red", "green"])})
    exs = load_table(ds, text_key="question", label_key="answer", image_key="picture", id_key="uid", root=tmp_path)
    assert [(e.id, e.text, e.label, e.n_images) for e in exs] == [
        ("r", "what colour?", "red", 1),
        ("g", "and this?", "green", 1),
        ("b", "this one?", "green", 1),
        ("n", "no image", "red", 0),
    ]
    assert exs[1].load_images()[0].getpixel((0, 0)) == (0, 255, 0)
    assert exs[2].images[0] == str(tmp_path / "blue.png")
    assert "picture" not in exs[0].meta["record"]
    ints = load_table(
        ds, text_key="question", label_key="answer", image_key="picture", root=tmp_path, class_names=False
    )
    assert [e.label for e in ints] == [0, 1, 1, 0] and ints[0].id == "table:0"


def test_a_dataset_dict_needs_a_split_and_bad_rows_are_named() -> None:
    ds = {
        "train": FakeDataset([{"text": "a", "label": "x"}], {}),
        "test": FakeDataset([{"text": "b", "label": "y"}], {}),
    }
    with pytest.raises(InputError, match=r"has the splits \['test', 'train'\]; pass split="):
        load_table(ds)
    assert [e.text for e in load_table(ds, split="test")] == ["b"]
    with pytest.raises(InputError, match="no split 'dev'"):
        load_table(ds, split="dev")
    with pytest.raises(InputError, match="image bytes cannot be decoded"):
        load_table([{"text": "a", "label": "x", "image": b"not a png"}])
    with pytest.raises(LabelError, match="no label"):
        load_table([{"text": "a"}], require_label=True)
    with pytest.raises(InputError, match="id 'x' is used by examples 0 and 1"):
        load_table([{"text": "a", "id": "x"}, {"text": "b", "id": "x"}])
    arr = load_table([{"text": "a", "label": 1, "image": np.zeros((3, 3, 3), dtype=np.uint8)}])
    assert arr[0].load_images()[0].size == (3, 3)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_a_reader_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(LoadError, match=r"pip install 'savlens\[datasets\]'"):
            load_examples(tmp_path / "d.parquet")


def test_parquet_files_load_like_jsonl(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "text": ["is it red?", "is it green?"],
            "label": ["yes", "no"],
            "image": [{"bytes": png_bytes((255, 0, 0)), "path": None}, {"bytes": None, "path": "g.png"}],
        }
    )
    Image.new("RGB", (2, 2), (0, 255, 0)).save(tmp_path / "g.png")
    pq.write_table(table, tmp_path / "d.parquet")
    exs = load_examples(tmp_path / "d.parquet")
    assert [(e.id, e.label, e.n_images) for e in exs] == [("d.parquet:0", "yes", 1), ("d.parquet:1", "no", 1)]
    assert exs[0].load_images()[0].getpixel((0, 0)) == (255, 0, 0)
