"""Faults: extractions killed with SIGKILL resume exactly; interrupted writes never leave a store that loads as
valid; a full disk or a read-only target gives a clear StoreError and loses nothing.

The SIGKILL trials fork children from a forkserver that has imported torch and savlens once (tests/fault_child.py),
so each child starts in milliseconds; kill times are drawn from a seeded generator.
"""

import contextlib
import errno
import multiprocessing as mp
import os
import pwd
import random
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fault_child
import pytest
import torch

import savlens
import savlens.io as sio
from savlens import SAV, HeadFeatures, extract, open_store
from savlens.errors import StoreError
from savlens.store import read_index

KILL_TRIALS = 24  # kills that land while the child is still extracting (the issue asks for at least 20)
SEED = 20241124


@pytest.fixture(scope="module")
def ctx() -> Iterator[Any]:
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["fault_child", "savlens", "savlens.testing.tiny"])
    yield context


@pytest.fixture(scope="module")
def model() -> savlens.Model:
    return fault_child.model()


@pytest.fixture(scope="module")
def reference(model: savlens.Model, tmp_path_factory: pytest.TempPathFactory) -> HeadFeatures:
    """An uninterrupted extraction, in this process."""
    return extract(
        model,
        fault_child.examples(),
        batch_size=fault_child.BATCH_SIZE,
        store=tmp_path_factory.mktemp("ref") / "store",
        progress=False,
    )


def _done(store: Path) -> int:
    try:
        return sum(len(s["ids"]) for s in read_index(store / "index.jsonl"))
    except (FileNotFoundError, StoreError):
        return 0


def _run_child(ctx: Any, store: Path, delay: float | None) -> tuple[int | None, float]:
    """Start a child extracting into ``store``; SIGKILL it ``delay`` s after it opened the store (None: let it
    finish). Return its exit code (-9 when killed) and how long it ran after opening the store."""
    proc = ctx.Process(target=fault_child.extract_into, args=(str(store),))
    proc.start()
    deadline = time.monotonic() + 120
    while not (store / "manifest.json").exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    opened = time.monotonic()
    if delay is not None:
        proc.join(delay)
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it may finish between the check and the kill
                os.kill(proc.pid, signal.SIGKILL)
    proc.join(120)
    return proc.exitcode, time.monotonic() - opened


def _check_store_equals(store: Path, reference: HeadFeatures) -> None:
    listed = [i for s in read_index(store / "index.jsonl") for i in s["ids"]]
    assert len(listed) == len(set(listed)) == len(reference.example_ids or [])  # no duplicates, none lost
    reopened = open_store(store)  # every shard's hash checked
    assert reopened.example_ids == reference.example_ids
    assert reopened.labels == reference.labels
    assert torch.equal(reopened.z, reference.z)  # bit-identical


@pytest.mark.slow
def test_extraction_killed_at_random_points_resumes_bit_identical(
    ctx: Any, model: savlens.Model, reference: HeadFeatures, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    code, duration = _run_child(ctx, tmp_path / "timing", None)  # how long a whole run takes here, now
    assert code == 0
    _check_store_equals(tmp_path / "timing", reference)
    kills = leftovers = stores = 0
    for trial in range(4 * KILL_TRIALS):
        if kills >= KILL_TRIALS:
            break
        store = tmp_path / f"s{trial}"
        stores += 1
        for _ in range(3):  # up to three kills of the same store, each resumed by the next child
            remaining = 1 - _done(store) / fault_child.N_EXAMPLES
            code, _ = _run_child(ctx, store, rng.uniform(0, 1.2 * duration * remaining))
            if code == -signal.SIGKILL:
                kills += 1
                leftovers += any(p.name.endswith(".tmp") for p in store.iterdir())  # killed mid-write
                if (store / "manifest.json").exists() and _done(store):
                    part = open_store(store)  # what survived a kill always loads, and is a prefix of the truth
                    rows = [reference.example_ids.index(i) for i in part.example_ids]  # type: ignore[union-attr]
                    assert torch.equal(part.z, reference.z[rows])
            else:
                assert code == 0
                break
        resumed = extract(model, fault_child.examples(), batch_size=fault_child.BATCH_SIZE, store=store, progress=False)
        assert resumed.example_ids == reference.example_ids and torch.equal(resumed.z, reference.z)
        _check_store_equals(store, reference)
    print(f"\nSIGKILL: {kills} kills survived over {stores} stores ({leftovers} left a half-written temp file)")
    assert kills >= KILL_TRIALS


# ---- writes interrupted mid-file ---------------------------------------------------------------------------------
class _Crash(BaseException):
    """Stands for the process dying (not an Exception, so nothing on the way catches it)."""


def _fail_writes(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[str], bool], exc: BaseException, fraction: float = 0.5
) -> None:
    """Make savlens.io's writer (``open(..., "wb")``: every file savlens writes, tensors serialised to bytes first)
    write ``fraction`` of a matching file's bytes, then raise ``exc``: a crash, a full disk, a read-only mount."""
    real_open = open

    class Half:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def write(self, data: bytes) -> int:
            self.fh.write(data[: int(len(data) * fraction)])
            self.fh.flush()
            raise exc

        def __enter__(self) -> "Half":
            return self

        def __exit__(self, *a: Any) -> None:
            self.fh.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

    def fake_open(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        fh = real_open(path, mode, *args, **kw)
        return Half(fh) if ("w" in mode or "a" in mode) and when(os.fspath(path)) else fh

    monkeypatch.setattr(sio, "open", fake_open, raising=False)
    monkeypatch.setattr(savlens.store, "open", fake_open, raising=False)


def _nth(marker: str, n: int) -> Callable[[str], bool]:
    """A path predicate true for the ``n``-th write whose path holds ``marker``."""
    seen: list[str] = []

    def when(path: str) -> bool:
        if marker not in path:
            return False
        seen.append(path)
        return len(seen) == n

    return when


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("target", ["shard", "index"])
def test_write_interrupted_mid_file_keeps_the_previous_store(
    target: str, model: savlens.Model, reference: HeadFeatures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s"
    exs = fault_child.examples()
    _fail_writes(monkeypatch, _nth(".shard-", 4), _Crash())
    with pytest.raises(_Crash):  # a first run dies writing its 4th shard: a valid store of 3 shards
        extract(model, exs, batch_size=2, store=store, progress=False)
    monkeypatch.undo()
    before = _snapshot(store)
    done = open_store(store).example_ids
    assert done is not None and len(done) == 6
    marker = ".shard-" if target == "shard" else "index.jsonl"  # a shard's temp file, or the index append
    _fail_writes(monkeypatch, lambda p: marker in p, _Crash())
    with pytest.raises(_Crash):  # the resumed run dies half-way through its first shard / manifest
        extract(model, exs, batch_size=2, store=store, progress=False)
    monkeypatch.undo()
    after = _snapshot(store)
    assert not [n for n in after if n.endswith(".tmp")]  # the half-written temp file was removed
    assert after["manifest.json"] == before["manifest.json"]  # the manifest lists the same complete shards
    assert open_store(store).example_ids == done
    resumed = extract(model, exs, batch_size=2, store=store, progress=False)
    assert torch.equal(resumed.z, reference.z) and resumed.example_ids == reference.example_ids


def test_torn_files_never_load_as_valid(model: savlens.Model, tmp_path: Path) -> None:
    """Cut a shard or the manifest at many points (a disk that lost the end of a file): every cut is refused."""
    store = tmp_path / "s"
    extract(model, fault_child.examples()[:6], batch_size=3, store=store, progress=False)
    good = open_store(store)
    for name in ("shard-00001.safetensors", "manifest.json"):
        data = (store / name).read_bytes()
        cuts = sorted({*range(0, len(data), max(1, len(data) // 40)), len(data) - 1, 8, 9})
        for cut in cuts:
            (store / name).write_bytes(data[:cut])
            for verify in (True, False):
                if not data[cut:].strip():  # only trailing whitespace lost: the same store
                    assert torch.equal(open_store(store, verify=verify).z, good.z)
                    continue
                with pytest.raises(StoreError):
                    open_store(store, verify=verify)
        (store / name).write_bytes(data)
    assert torch.equal(open_store(store).z, good.z)
    data = (store / "index.jsonl").read_bytes()  # the index: a cut drops the torn record, never more
    good_index = data
    for cut in range(0, len(data), max(1, len(data) // 40)):
        (store / "index.jsonl").write_bytes(data[:cut])
        whole = data[:cut].count(b"\n")
        if whole == 0:
            with pytest.raises(StoreError, match="holds no examples yet"):
                open_store(store)
            continue
        part = open_store(store)
        want = [i for rec in read_index(store / "index.jsonl") for i in rec["ids"]]
        assert len(want) == 3 * whole and part.example_ids == want
        assert torch.equal(part.z, good.z[[(good.example_ids or []).index(i) for i in want]])
    (store / "index.jsonl").write_bytes(good_index)


def test_sav_save_interrupted_between_its_two_files_keeps_the_old_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(0)
    a = HeadFeatures(torch.randn(12, 2, 4, 8, generator=g), labels=["x", "y"] * 6)
    b = HeadFeatures(torch.randn(12, 2, 4, 8, generator=g), labels=["x", "y"] * 6)
    old = SAV(k=3).fit(a)
    folder = old.save(tmp_path / "clf.sav")
    _fail_writes(monkeypatch, lambda p: ".manifest.json." in p, _Crash())
    with pytest.raises(_Crash):
        SAV(k=3).fit(b).save(folder)  # new tensors written, then the process dies writing the manifest
    monkeypatch.undo()
    kept = SAV.load(folder)  # the old manifest still names the old tensor file: the old save, whole
    assert torch.equal(kept.centroids_, old.centroids_) and kept.heads_ == old.heads_
    assert kept.predict(b) == old.predict(b)


# ---- a full disk, a read-only target -----------------------------------------------------------------------------
def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_gives_a_clear_error_and_the_extraction_resumes(
    model: savlens.Model, reference: HeadFeatures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s"
    _fail_writes(monkeypatch, _nth(".shard-", 4), _no_space())  # the disk fills up while the 4th shard is written
    with pytest.raises(StoreError, match=r"No space left on device.*keeps the 3 shards.*free disk space"):
        extract(model, fault_child.examples(), batch_size=2, store=store, progress=False)
    monkeypatch.undo()
    assert not [p for p in store.iterdir() if p.name.endswith(".tmp")]
    assert len(open_store(store).example_ids or []) == 6
    resumed = extract(model, fault_child.examples(), batch_size=2, store=store, progress=False)
    assert torch.equal(resumed.z, reference.z) and resumed.example_ids == reference.example_ids


def test_full_disk_when_saving_an_sav_or_creating_a_store(
    model: savlens.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feats = HeadFeatures(torch.randn(8, 2, 4, 8, generator=torch.Generator().manual_seed(1)), labels=["x", "y"] * 4)
    old = SAV(k=2).fit(feats).save(tmp_path / "clf.sav")
    before = _snapshot(old)
    _fail_writes(monkeypatch, lambda p: True, _no_space())
    with pytest.raises(StoreError, match=r"cannot write .*tensors-[0-9a-f]{16}\.safetensors.*No space left on device"):
        SAV(k=3).fit(feats).save(old)
    assert _snapshot(old) == before
    with pytest.raises(StoreError, match=r"No space left on device.*free disk space"):
        extract(model, ["hi"], store=tmp_path / "new", progress=False)
    monkeypatch.undo()
    assert SAV.load(old).k == 2


def test_read_only_target_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EROFS from the writer (what a read-only mount gives, root included)."""
    feats = HeadFeatures(torch.randn(8, 2, 4, 8), labels=["x", "y"] * 4)
    erofs = OSError(errno.EROFS, os.strerror(errno.EROFS))
    _fail_writes(monkeypatch, lambda p: True, erofs)
    with pytest.raises(StoreError, match=r"Read-only file system.*choose a writable folder.*Nothing was written"):
        SAV(k=2).fit(feats).save(tmp_path / "clf.sav")
    assert not (tmp_path / "clf.sav").exists() or not list((tmp_path / "clf.sav").iterdir())


def _unprivileged(check: Callable[[], None]) -> None:
    """Run ``check`` here, or, where this process is root (root ignores permission bits), in a forked child that
    first drops to the ``nobody`` user; an assertion failing in the child fails the test with its traceback.

    A fork, not a new interpreter: the child keeps the modules already imported, so it needs no read access to
    the Python installation (under /root in many containers)."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        check()
        return
    try:
        uid, gid = pwd.getpwnam("nobody")[2:4]
    except KeyError:
        uid = gid = 65534
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        code, report = 1, b""
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            check()
            code = 0
        except BaseException:
            report = traceback.format_exc().encode()
        finally:
            os.write(write, report[-60_000:])
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "as the nobody user:\n" + report.decode(errors="replace")


def test_read_only_folder_by_permissions(model: savlens.Model) -> None:
    """A folder without write permission (a real one: as root, the check runs as ``nobody``)."""
    feats = HeadFeatures(torch.randn(8, 2, 4, 8), labels=["x", "y"] * 4)
    sav = SAV(k=2).fit(feats)
    base = Path(tempfile.mkdtemp(prefix="savlens-ro-"))  # not under pytest's root-only tmp folder
    try:
        base.chmod(0o755)
        extract(model, ["hi"], store=base / "warm", progress=False)  # every lazy import done before a fork
        sav.save(base / "warm.sav")
        target = base / "ro"
        target.mkdir()
        target.chmod(0o555)

        def check() -> None:
            with pytest.raises(StoreError, match="is not writable; fix its permissions"):
                extract(model, ["hi"], store=target, progress=False)
            with pytest.raises(StoreError, match=r"Permission denied.*choose a writable folder"):
                sav.save(target / "clf.sav")
            assert list(target.iterdir()) == []

        _unprivileged(check)
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)
