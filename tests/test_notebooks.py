"""The book's notebooks: each carries outputs its current code made and matches the library (each runs in smoke mode
on a simulated fresh Colab runtime in test_colab.py)."""
import filecmp
import functools
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


@functools.cache  # one inspection of the library for all chapters
def _library_vocabulary() -> tuple[set[str], set[str]]:
    "Every name the library defines (modules, classes and their attributes) and every parameter or field name."
    import dataclasses
    import importlib
    import inspect

    names, parameters = set(), set()
    for module in ("data", "pretraining", "towers", "training", "evaluation", "serving", "adaptation", "privacy"):
        for name, value in vars(importlib.import_module(f"recbook.{module}")).items():
            names.add(name)
            if inspect.isclass(value):
                names.update(vars(value))
                if dataclasses.is_dataclass(value): parameters.update(f.name for f in dataclasses.fields(value))
            for function in [value, *vars(value).values()] if inspect.isclass(value) else [value]:
                if callable(function):
                    try:
                        parameters.update(inspect.signature(function).parameters)
                    except (TypeError, ValueError):
                        pass
    return names, parameters


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_exercises_name_what_exists(path):
    "What an exercise gives in backticks — a library name, a setting, a command line or a flag — exists as written."
    import re
    import shlex

    from recbook.cli import build_parser

    nb = json.loads(path.read_text(encoding="utf-8"))
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    exercises = text.split("## Exercises", 1)[1].split("\n## ", 1)[0]
    names, parameters = _library_vocabulary()
    parser = build_parser()
    flags = {flag for action in parser._subparsers._group_actions for sub in action.choices.values()
             for option in sub._actions for flag in option.option_strings}
    wrong = []
    for quoted in re.findall(r"`([^`]+)`", exercises):
        if quoted.startswith("recbook "):
            try:
                parser.parse_args(shlex.split(quoted)[1:])
            except SystemExit:
                wrong.append(quoted)
        elif quoted.startswith("--"):
            if quoted.split()[0] not in flags: wrong.append(quoted)
        elif match := re.fullmatch(r"([A-Za-z_]\w*)(=.*|\(.*)?", quoted, flags=re.S):
            name, rest = match.groups()
            known = parameters if rest and rest.startswith("=") else names
            if name not in known: wrong.append(quoted)
    assert wrong == [], f"{path.name}: exercises name what the library does not have: {wrong}"
