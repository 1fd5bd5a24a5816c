"""docs/studies.md: its VLGuard <-> MHalu config is a valid study file; its results are rendered from the JSON."""

import json
import re
from pathlib import Path

from savlens.study import StudyTable
from savlens.study.files import load_study_file

ROOT = Path(__file__).parent.parent
DOCS = (ROOT / "docs" / "studies.md").read_text()
RESULTS = ROOT / "experiments" / "results" / "study_tiny_vlm.json"


def test_the_vlguard_mhalu_config_is_a_valid_study_file(tmp_path: Path) -> None:
    (block,) = re.findall(r"```toml\n(.*?)```", DOCS, flags=re.S)
    (tmp_path / "vlguard-mhalu.toml").write_text(block)
    spec = load_study_file(tmp_path / "vlguard-mhalu.toml")
    assert {t: (s.loader, s.group) for t, s in spec.tasks.items()} == {
        "vlguard": ("vlguard", "image"),
        "mhalu": ("mhalu", "image"),
    }
    assert spec.tasks["vlguard"].examples == tmp_path / "data/VLGuard/test.json"
    assert spec.tasks["mhalu"].store == tmp_path / "stores/mhalu"
    assert spec.grid["voting"] == ["majority", "score", "reliability"] and spec.grid["transfer"] == "all"
    assert spec.model["name"].startswith("llava-hf/") and spec.out_dir == tmp_path / "study-vlguard-mhalu"


def test_the_offline_study_in_the_docs_is_the_committed_json() -> None:
    data = json.loads(RESULTS.read_text())
    table = StudyTable.from_dict(data)
    assert data["config"]["seeds"] == [0, 1, 2, 3, 4] and data["config"]["groups"] == {
        "color": "dict",
        "shape": "dict",
    }
    assert table.select(kind="sav", shots=10, k=20).to_markdown(columns=("target", "criterion", "voting")) in DOCS
    two_shots = table.select(kind="sav", shots=2, criterion="centroid", k=[1, 5, 20])
    assert two_shots.to_markdown(columns=("target", "k", "voting")) in DOCS
    assert str(table.transfer_matrix()) in DOCS
    assert f"{len(table)} rows (one per setting and seed), {data['experiment']['seconds_study']:.0f} s" in DOCS
    for name in re.findall(r"\(img/(study-[^)]+\.png)\)", DOCS):
        assert (ROOT / "docs" / "img" / name).stat().st_size > 5000
    # 10 test questions per class in every split, after leaving out the questions about the shots' images
    assert all(r["n_test"] == 10 * len(table.tasks[r["target"]]["classes"]) for r in data["rows"])
