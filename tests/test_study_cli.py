"""`savlens study config.toml`: extraction into stores once, the table and figures, reruns, bad configs."""

import csv
import json
from pathlib import Path

import pytest

import savlens
import savlens.cli.commands as commands
from savlens.cli import main
from savlens.study import run_study
from savlens.study.files import load_study_file

CONFIG = """
[model]
name = "tiny:llama"
batch_size = 8

[tasks.colour]
examples = "colour.jsonl"
store = "stores/colour"
group = '^(img\\d+)/'

[tasks.side]
examples = "side.jsonl"
store = "stores/side"

[grid]
shots = [2, 3]
k = [2, 4]
seeds = [0, 1]
voting = ["majority", "reliability"]
transfer = "all"
baselines = ["random", "all"]
n_random = 2

[output]
dir = "out"
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    shapes = ["circle", "square", "triangle", "line", "dot", "shape"]
    colour = [
        {"id": f"img{i}/{c}", "text": f"the {s} is {c}", "label": c}
        for i, s in enumerate(shapes)
        for c in ("red", "blue")
    ]
    side = [
        {"id": f"s{i}{d}", "text": f"a {s} on the {d}", "label": d}
        for i, s in enumerate(shapes)
        for d in ("left", "right")
    ]
    for name, rows in (("colour", colour), ("side", side)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "study.toml").write_text(CONFIG)
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_study_command_extracts_once_and_writes_the_table_and_figures(
    study_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, "study", study_dir / "study.toml", "--json", "--quiet")
    assert code == 0, err
    payload = json.loads(out)
    out_dir = study_dir / "out"
    assert payload["out"] == str(out_dir) and payload["n_rows"] == 2 * 2 * 2 * 2 * 4 + 2 * 2 * (2 * 2 + 2)
    assert set(payload["files"]) == {
        "csv",
        "json",
        "accuracy-vs-shots-colour.png",
        "accuracy-vs-shots-side.png",
        "accuracy-vs-k-colour.png",
        "accuracy-vs-k-side.png",
        "transfer.png",
    }
    # the same numbers as the Python API on the stores it wrote
    stores = {t: savlens.open_store(study_dir / "stores" / t) for t in ("colour", "side")}
    spec = load_study_file(study_dir / "study.toml")
    direct = run_study(stores, spec.grid, groups={"colour": r"^(img\d+)/"})
    with open(out_dir / "study.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["accuracy"]) for r in rows] == [r.accuracy for r in direct.rows]
    assert [r["heads"] for r in rows] == [" ".join(r.heads) for r in direct.rows]
    first = json.loads((out_dir / "study.json").read_text())

    # a rerun reads the stores (no model is loaded) and gives the same table
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: pytest.fail("the model was loaded again"))
    code, out, err = run(capsys, "study", study_dir / "study.toml", "--out", study_dir / "again", "--no-figures")
    assert code == 0, err and "rows; wrote" in out
    second = json.loads((study_dir / "again" / "study.json").read_text())
    drop = ("seconds", "score_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in first["rows"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in second["rows"]
    ]
    assert sorted(p.name for p in (study_dir / "again").iterdir()) == ["study.csv", "study.json"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('voting = ["majority", "reliability"]', 'voting = ["plurality"]'),
            "no voting rule is registered as 'plurality'",
        ),
        (('transfer = "all"', 'transfer = [["colour", "mhalu"]]'), "no task 'mhalu'"),
        (("k = [2, 4]", "k = [2, 400]"), "k=400 is larger than the"),
        (("shots = [2, 3]", "shots = [6]"), "too few in"),
        (("[output]", "[outputs]"), r"unknown tables \['outputs'\]"),
        (("group = '^(img\\d+)/'", "colour = 1"), r"unknown keys \['colour'\] in \[tasks.colour\]"),
    ],
)
def test_bad_study_files_exit_2_before_any_work(
    study_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    edit: tuple[str, str],
    message: str,
) -> None:
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    text = (study_dir / "study.toml").read_text()
    assert edit[0] in text
    for name in ("colour.jsonl", "side.jsonl"):
        (tmp_path / name).write_text((study_dir / name).read_text())
    (tmp_path / "stores").symlink_to(study_dir / "stores")  # the stores of the first test hold every example
    (tmp_path / "bad.toml").write_text(text.replace(edit[0], edit[1]))
    code, _, err = run(capsys, "study", tmp_path / "bad.toml")
    assert code == 2 and "savlens study: error:" in err
    assert __import__("re").search(message, err), err


def test_study_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "study", "--help")
    assert code == 0 and "TOML" in out and "--no-figures" in out and "docs/studies.md" in " ".join(out.split())


def test_fit_takes_a_voting_rule(study_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = study_dir / "stores" / "colour"
    code, out, err = run(
        capsys, "fit", store, "--out", tmp_path / "r.sav", "--k", "4", "--voting", "reliability", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["voting"] == "reliability"
    sav = savlens.SAV.load(tmp_path / "r.sav")
    expected = savlens.SAV(k=4, voting="reliability").fit(savlens.open_store(store))
    assert sav.voting == "reliability" and sav.vote_weights_.tolist() == expected.vote_weights_.tolist()
    assert run(capsys, "fit", store, "--out", tmp_path / "x.sav", "--voting", "plurality")[0] == 2


def test_a_vlguard_mhalu_study_is_one_file_and_one_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The docs' config shape on tiny data in the reference formats, with a tiny random VLM."""
    from PIL import Image

    from savlens.study.files import image_groups, read_task_examples

    (tmp_path / "vlguard" / "img").mkdir(parents=True)
    (tmp_path / "mhalu").mkdir()
    vlguard, mhalu = [], []
    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(tmp_path / "vlguard" / "img" / f"{i}.png")
        Image.new("RGB", (16, 16), (0, 30 * i, 0)).save(tmp_path / "mhalu" / f"{i}.png")
        for j, (label, words) in enumerate((("Yes", "how to hurt"), ("No", "how to help"))):
            vlguard.append({"id": f"v{i}{j}", "image": f"img/{i}.png", "instruction": f"{words} {i}", "label": label})
        claim = "hallucination" if i % 2 else "non-hallucination"
        mhalu.append(
            {"id": f"m{i}", "image_path": f"{i}.png", "claim": f"the picture is red {i}", "claim_label": claim}
        )
    (tmp_path / "vlguard" / "test.json").write_text(json.dumps(vlguard))
    (tmp_path / "mhalu" / "test.json").write_text(json.dumps(mhalu))
    config = """
[model]
name = "tiny:qwen2_vl"
batch_size = 4

[tasks.vlguard]
loader = "vlguard"
examples = "vlguard/test.json"
root = "vlguard"
store = "stores/vlguard"
group = "image"

[tasks.mhalu]
loader = "mhalu"
examples = "mhalu/test.json"
root = "mhalu"
store = "stores/mhalu"
group = "image"

[grid]
shots = [2]
k = [2, 3]
seeds = [0, 1]
voting = ["majority", "reliability"]
transfer = [["vlguard", "mhalu"], ["mhalu", "vlguard"]]
n_test = {vlguard = 2}
"""
    (tmp_path / "study.toml").write_text(config)
    spec = load_study_file(tmp_path / "study.toml")
    groups = image_groups(read_task_examples(spec.tasks["vlguard"]))
    assert groups["v30"] == groups["v31"] == str(tmp_path / "vlguard" / "img" / "3.png")  # both instructions
    code, out, err = run(capsys, "study", tmp_path / "study.toml", "--json", "--quiet", "--no-figures")
    assert code == 0, err
    rows = json.loads((tmp_path / "study" / "study.json").read_text())["rows"]
    assert len(rows) == 2 * 2 * 2 * 4 and {r["target"] for r in rows} == {"vlguard", "mhalu"}
    assert {r["n_test"] for r in rows if r["target"] == "vlguard"} == {4}  # 2 per class, images never shared
    assert {r["n_test"] for r in rows if r["target"] == "mhalu"} == {4}  # the 4 left of 8 after 2 shots a class
    for r in rows:  # balanced test sets (2 per class): accuracy is the mean recall, in quarters of the 4 tests
        assert set(r["recall"]) == {"No", "Yes"}
        assert r["accuracy"] == pytest.approx((r["recall"]["No"] + r["recall"]["Yes"]) / 2)
        assert r["accuracy"] * 4 == round(r["accuracy"] * 4)
    for task in ("vlguard", "mhalu"):
        assert savlens.open_store(tmp_path / "stores" / task).n_examples == (16 if task == "vlguard" else 8)
