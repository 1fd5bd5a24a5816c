"""The feature store's format version 2: an append-only index (O(n) writes), the write lock, version-1 stores."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import savlens.store as st
from savlens.errors import StoreError
from savlens.store import FeatureStore, migrate_store, open_store, read_index

HEADER = {"model_id": "m", "fingerprint": None, "hook": "blocks.*.attn.hook_z", "positions": "last",
          "prompt_template": None, "chat": True, "system_prompt": None, "layers": [0, 1], "dtype": "float16",
          "logits": None, "logit_tokens": None}  # fmt: skip


def _write(root: Path, n_shards: int, per: int, start: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(start)
    zs = []
    with FeatureStore(root, {**HEADER, "order": None}) as fs:
        for s in range(n_shards):
            z = torch.randn(per, 2, 3, 4, generator=g).half()
            ids = [f"e{start + s * per + i}" for i in range(per)]
            fs.append(z, ids, [i % 2 for i in range(per)])
            zs.append(z)
    return torch.cat(zs)


def test_index_writes_grow_linearly_with_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: dict[str, int] = {}
    real = st.atomic_write_bytes

    def counting(path: object, data: bytes) -> None:
        name = Path(str(path)).name
        written[name] = written.get(name, 0) + len(data)
        real(path, data)  # type: ignore[arg-type]

    monkeypatch.setattr(st, "atomic_write_bytes", counting)
    sizes = []
    for n_shards in (10, 40):
        root = tmp_path / f"s{n_shards}"
        written.clear()
        with FeatureStore(root, {**HEADER, "order": None}) as fs:
            for s in range(n_shards):
                fs.append(torch.zeros(5, 2, 3, 4).half(), [f"x{s:04d}-{i}" for i in range(5)], [0, 1, 0, 1, 0])
            sizes.append(fs.index_bytes_written)
        records = read_index(root / "index.jsonl")
        assert len(records) == n_shards and [r["n"] for r in records] == [5] * n_shards  # one record per shard
        assert written["manifest.json"] == len((root / "manifest.json").read_bytes())  # written once, at creation
        assert fs.index_bytes_written == (root / "index.jsonl").stat().st_size
    # every record has the same size here, so 4x the shards is exactly 4x the index bytes (the old manifest,
    # rewritten whole after each shard, grew quadratically)
    assert sizes[1] == 4 * sizes[0]


def test_reopen_and_extend(tmp_path: Path) -> None:
    z1 = _write(tmp_path, 3, 4)
    z2 = _write(tmp_path, 2, 4, start=12)
    feats = open_store(tmp_path)
    assert feats.n_examples == 20 and feats.z.dtype == torch.float16 and torch.equal(feats.z, torch.cat([z1, z2]))
    assert feats.meta["dtype"] == "float16"
    assert len({r["file"] for r in read_index(tmp_path / "index.jsonl")}) == 5


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    with FeatureStore(tmp_path, {**HEADER, "order": None}):
        holder = json.loads((tmp_path / "write.lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(StoreError, match=rf"being written by another process \(pid {os.getpid()} on host"):
            FeatureStore(tmp_path, {**HEADER, "order": None})
    assert not (tmp_path / "write.lock").exists()
    # another live process on this host
    (tmp_path / "write.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": 0.0}))
    with pytest.raises(StoreError, match=rf"pid {os.getppid()}.*Wait for that extraction to finish"):
        FeatureStore(tmp_path, {**HEADER, "order": None})
    # a process on another host: cannot be checked, so refused, with the way out named
    (tmp_path / "write.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 0.0}))
    with pytest.raises(StoreError, match=r"host 'elsewhere'.*if it is not, delete .*write\.lock"):
        FeatureStore(tmp_path, {**HEADER, "order": None})


def test_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "write.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": 0.0}))
    with FeatureStore(tmp_path, {**HEADER, "order": None}) as fs:
        fs.append(torch.zeros(2, 2, 3, 4).half(), ["a", "b"], [0, 1])
        assert json.loads((tmp_path / "write.lock").read_text())["pid"] == os.getpid()
    assert open_store(tmp_path).example_ids == ["a", "b"]


def test_ranks_write_their_own_shards_beside_each_other(tmp_path: Path) -> None:
    with (
        FeatureStore(tmp_path, {**HEADER, "order": None}, rank=0) as r0,
        FeatureStore(tmp_path, {**HEADER, "order": None}, rank=1) as r1,
    ):
        r0.append(torch.zeros(2, 2, 3, 4).half(), ["a", "b"], [0, 1])
        r1.append(torch.ones(2, 2, 3, 4).half(), ["c", "d"], [0, 1])
        with FeatureStore(tmp_path, {**HEADER, "order": None}, rank=2) as r2:  # a rank (re)starting sees all
            assert r2.done_ids == {"a", "b", "c", "d"}
    st.merge_ranks(tmp_path, HEADER, 3, ["c", "a", "b", "d"])
    feats = open_store(tmp_path)
    assert feats.example_ids == ["c", "a", "b", "d"] and feats.z[:, 0, 0, 0].tolist() == [1, 0, 0, 1]
    assert sorted(p.name for p in tmp_path.iterdir() if "rank" in p.name) == []
    with FeatureStore(tmp_path, {**HEADER, "order": None}, rank=0) as r0:  # a later rank run: fresh shard names
        r0.append(torch.zeros(1, 2, 3, 4).half(), ["e"], [0])
        assert r0.records[0]["file"] == "shard-r0-00001.safetensors"


def test_version_1_stores_open_and_migrate(tmp_path: Path) -> None:
    z = _write(tmp_path, 2, 3)
    records = read_index(tmp_path / "index.jsonl")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    v1 = {**manifest, "version": 1, "shards": [{k: v for k, v in r.items() if k != "n"} for r in records]}
    (tmp_path / "manifest.json").write_text(json.dumps(v1))
    (tmp_path / "index.jsonl").unlink()
    assert torch.equal(open_store(tmp_path).z, z)  # a version-1 store opens as it is
    out = subprocess.run(
        [sys.executable, "-m", "savlens.store", "migrate", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(st.__file__).parents[1])},
    )  # fmt: skip
    assert out.returncode == 0 and "migrated to feature store version 2" in out.stdout, out.stderr
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == 2
    assert read_index(tmp_path / "index.jsonl") == records
    assert torch.equal(open_store(tmp_path).z, z)
    assert migrate_store(tmp_path) is False


def test_a_broken_index_line_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, 2, 3)
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    (tmp_path / "index.jsonl").write_text(lines[0] + "\n{not json}\n" + lines[1] + "\n")
    with pytest.raises(StoreError, match=r"index .* is invalid at line 2"):
        open_store(tmp_path)


def test_index_append_failure_keeps_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, 2, 3)
    real = st.append_record

    def full(path: Path, record: dict) -> int:  # type: ignore[type-arg]
        with open(path, "ab") as fh:
            fh.write(b'{"file": "sha')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "append_record", full)
    with FeatureStore(tmp_path, {**HEADER, "order": None}) as fs, pytest.raises(StoreError, match="keeps the 2 shards"):
        fs.append(torch.zeros(1, 2, 3, 4).half(), ["z"], [0])
    monkeypatch.setattr(st, "append_record", real)
    assert (tmp_path / "index.jsonl").read_bytes().endswith(b"\n")  # the torn line was cut off
    assert open_store(tmp_path).n_examples == 6


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(layers=[0, True]), r"layers\.1: Input should be a valid integer"),
        (lambda m: m.update(model_id=7), r"model_id: Input should be a valid string"),
        (lambda m: m.pop("hook"), r"hook: Field required"),
        (lambda m: m.update(logits="last", logit_tokens=None), r"'logit_tokens' must be \"all\" or a list"),
        (lambda m: m.update(order=["e0", 1]), r"order\.1: Input should be a valid string"),
    ],
    ids=["bool-layer", "int-model-id", "no-hook", "logits-without-tokens", "int-order-id"],
)
def test_an_edited_manifest_is_refused_naming_the_field(tmp_path: Path, edit: object, message: str) -> None:
    root = tmp_path / "s"
    _write(root, 2, 3)
    manifest = json.loads((root / st.MANIFEST).read_text())
    edit(manifest)  # type: ignore[operator]
    (root / st.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"incomplete or invalid \(" + message):
        open_store(root)


def test_an_index_line_with_a_wrong_type_is_refused_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _write(root, 2, 3)
    lines = (root / st.INDEX).read_text().splitlines()
    rec = json.loads(lines[1])
    rec["ids"][0] = 5
    (root / st.INDEX).write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    with pytest.raises(StoreError, match=r"invalid at line 2 \(shard 1: ids\.0: Input should be a valid string\)"):
        open_store(root)
