"""The notebooks: each runs in smoke mode, carries outputs its current code made, and matches the library."""
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

NOTEBOOKS = notebooks.notebooks()
BIN = Path(sys.executable).parent


def test_there_are_notebooks():
    assert {"index.ipynb", "01_data.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path):
    "nbdev's own runner, which honours `#| eval: false` and the skip flags of settings.ini."
    env = {**os.environ, "RECBOOK_MODE": "smoke"}
    result = subprocess.run([str(BIN / "nbdev_test"), "--path", str(path), "--do_print"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "Success" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_outputs_were_made_by_the_current_code(path):
    assert notebooks.stale([path]) == [], f"re-execute: python tools/notebooks.py run {path.relative_to(ROOT)}"


def test_stale_outputs_are_detected(tmp_path):
    import json

    nb = json.loads(NOTEBOOKS[0].read_text())
    code_cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code_cell["source"] = "".join(code_cell["source"]) + "\n# an edit after the outputs were made"
    changed = tmp_path / "changed.ipynb"
    changed.write_text(json.dumps(nb))
    assert "code changed since its outputs were made" in notebooks.stale([changed])[0]
    del nb["metadata"]["recbook"]
    changed.write_text(json.dumps(nb))
    assert "no execution record" in notebooks.stale([changed])[0]


def _copy_project(tmp_path) -> Path:
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "settings.ini", copy)
    shutil.copytree(ROOT / "nbs", copy / "nbs")
    shutil.copytree(ROOT / "recbook", copy / "recbook", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _differences(left: Path, right: Path, pattern: str) -> list[str]:
    names = sorted({p.relative_to(left) for p in left.rglob(pattern)} | {p.relative_to(right) for p in right.rglob(pattern)})
    return [str(n) for n in names if not ((left / n).exists() and (right / n).exists()
                                          and filecmp.cmp(left / n, right / n, shallow=False))]


def test_library_matches_the_notebooks(tmp_path):
    copy = _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_export")], cwd=copy, check=True, capture_output=True, timeout=300)
    changed = _differences(ROOT / "recbook", copy / "recbook", "*.py")
    assert changed == [], f"nbdev_export would change {changed}: run nbdev_export and commit"


def test_notebooks_are_clean(tmp_path):
    copy = _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_clean")], cwd=copy, check=True, capture_output=True, timeout=300)
    changed = _differences(ROOT / "nbs", copy / "nbs", "*.ipynb")
    assert changed == [], f"nbdev_clean would change {changed}: run nbdev_clean and commit"


def test_execution_records_say_how_outputs_were_made():
    import json

    for path in NOTEBOOKS:
        record = json.loads(path.read_text())["metadata"]["recbook"]["execution"]
        assert record["mode"] in {"full", "smoke"} and record["device"] and record["seconds"] >= 0
        assert {"date", "python", "code_sha256"} <= record.keys()
