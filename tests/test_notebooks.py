"""The book's notebooks: each carries outputs its current code made and matches the library (each runs in smoke mode
on a simulated fresh Colab runtime in test_colab.py)."""
import filecmp
import json
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
IDS = [p.stem for p in NOTEBOOKS]
BIN = Path(sys.executable).parent


def test_there_are_notebooks():
    assert {"index.ipynb", "01_data.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_outputs_were_made_by_the_current_code(path):
    name = path.relative_to(ROOT)
    why = notebooks.staleness(path)
    assert why is None, f"{name}: {why}; re-execute with: python tools/notebooks.py run {name}"
    record = json.loads(path.read_text(encoding="utf-8"))["metadata"]["recbook"]["execution"]
    assert record["mode"] in {"full", "smoke"} and record["device"].startswith(("cpu: ", "cuda: "))
    assert {"date", "seconds", "python", "torch", "git_commit"} <= record.keys(), record


def _copy_project(tmp_path) -> Path:
    "What nbdev_export and nbdev_clean read and write, in a scratch folder."
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "settings.ini", copy)
    shutil.copytree(ROOT / "nbs", copy / "nbs")
    shutil.copytree(ROOT / "recbook", copy / "recbook", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _differences(left: Path, right: Path, pattern: str) -> list[str]:
    "Files matching `pattern` that are in only one tree or differ in bytes."
    names = sorted({p.relative_to(left) for p in left.rglob(pattern)} | {p.relative_to(right) for p in right.rglob(pattern)})
    return [str(n) for n in names if not ((left / n).is_file() and (right / n).is_file()
                                          and filecmp.cmp(left / n, right / n, shallow=False))]


def test_library_matches_the_notebooks(tmp_path):
    copy = _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_export")], cwd=copy, check=True, capture_output=True, timeout=300)
    changed = _differences(ROOT / "recbook", copy / "recbook", "*.py")
    assert changed == [], f"nbdev_export would change recbook/{changed}: run nbdev_export and commit"


def test_notebooks_are_clean(tmp_path):
    copy = _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_clean")], cwd=copy, check=True, capture_output=True, timeout=300)
    changed = _differences(ROOT / "nbs", copy / "nbs", "*.ipynb")
    assert changed == [], f"nbdev_clean would change nbs/{changed}: run nbdev_clean and commit"


CHAPTERS = [p for p in NOTEBOOKS if p.name[:2].isdigit()]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_has_the_courses_shape(path):
    "Why it matters first, then the chapter, and a summary, exercises and references at its end, in that order."
    nb = json.loads(path.read_text(encoding="utf-8"))
    headings = [line for c in nb["cells"] if c["cell_type"] == "markdown"
                for line in "".join(c["source"]).splitlines() if line.startswith("## ")]
    shape = ["## Why it matters", "## Summary", "## Exercises", "## References"]
    assert [h for h in headings if h in shape] == shape, headings
    assert headings[0] == shape[0] and headings[-3:] == shape[1:], headings


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_stderr_stored_with_the_outputs(path):
    "Progress bars, warnings and other stderr noise stay out of what the site shows."
    nb = json.loads(path.read_text(encoding="utf-8"))
    noise = ["".join(o["text"])[:200] for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
             if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert noise == [], noise[:3]
