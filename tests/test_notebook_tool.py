"""tools/notebooks.py: it executes a notebook as nbdev_test would, records how, and never leaves a half-written one."""
import copy
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from nbdev.clean import clean_nb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

TOOL = [sys.executable, str(ROOT / "tools" / "notebooks.py")]


def _code(source, n):
    return {"cell_type": "code", "execution_count": None, "id": f"c{n}", "metadata": {}, "outputs": [], "source": source}


def sample_notebook(*extra) -> dict:
    "An nbdev-style chapter: a parameters cell, a plot, and cells that must not run."
    sources = ["#| default_exp sample", "import os\nMODE = os.environ.get('RECBOOK_MODE', 'full')\nprint('mode', MODE)",
               "#| eval: false\nraise RuntimeError('eval: false cells never run')",
               "#| notest\nprint('slow cell')",
               "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);",
               "#| hide\nimport nbdev; nbdev.nbdev_export()", *extra]
    return {"cells": [{"cell_type": "markdown", "id": "m0", "metadata": {}, "source": "# Sample"}]
            + [_code(s, n) for n, s in enumerate(sources)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def write(path: Path, nb: dict) -> Path:
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    path.chmod(0o664)
    return path


def outputs(nb: dict) -> list[list[dict]]:
    return [c["outputs"] for c in nb["cells"] if c["cell_type"] == "code"]


def run_tool(*args, cwd=ROOT):
    return subprocess.run([*TOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    "The sample notebook after `notebooks.py run --mode smoke`, started from another folder."
    path = write(tmp_path_factory.mktemp("nb") / "sample.ipynb", sample_notebook())
    result = run_tool("run", path, "--mode", "smoke", cwd=tmp_path_factory.getbasetemp())
    assert result.returncode == 0, result.stdout + result.stderr
    return path


def test_run_stores_outputs_and_skips_cells_as_nbdev_test(smoke_run):
    outs = outputs(json.loads(smoke_run.read_text()))
    assert outs[1] == [{"name": "stdout", "output_type": "stream", "text": ["mode smoke\n"]}]  # RECBOOK_MODE set
    assert outs[2] == [] and outs[3] == []  # eval: false never runs; notest is a test flag, skipped in smoke mode
    assert [o["output_type"] for o in outs[4]] == ["display_data"] and "image/png" in outs[4][0]["data"]


def test_run_records_how_the_outputs_were_made(smoke_run):
    nb = json.loads(smoke_run.read_text())
    record = nb["metadata"]["recbook"]["execution"]
    assert record["code_sha256"] == notebooks.code_hash(nb) and notebooks.staleness(smoke_run) is None
    assert record["mode"] == "smoke" and record["device"].startswith(("cpu: ", "cuda: "))
    assert record["date"].endswith("+00:00") and record["seconds"] >= 0 and record["python"].count(".") == 2
    assert record["torch"] and record["recbook_version"] and "git_commit" in record
    assert stat.S_IMODE(smoke_run.stat().st_mode) == 0o664  # the atomic write kept the file's permissions
    assert "language_info" not in nb["metadata"]  # cleaned as nbdev_clean cleans


def test_nbdev_clean_after_run_changes_nothing(smoke_run, tmp_path):
    shutil.copy(ROOT / "settings.ini", tmp_path)
    (tmp_path / "nbs").mkdir()
    cleaned = shutil.copy(smoke_run, tmp_path / "nbs")
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean")], cwd=tmp_path, check=True, timeout=120)
    assert Path(cleaned).read_bytes() == smoke_run.read_bytes()


def test_run_works_without_nbdev(tmp_path):
    "A GPU machine may have only execnb, fastcore and IPython: the same clean notebook must come out."
    (tmp_path / "nbs").mkdir()
    path = write(tmp_path / "nbs" / "bare.ipynb", sample_notebook())
    script = (f"import sys; sys.modules['nbdev'] = None; sys.path.insert(0, {str(ROOT / 'tools')!r}); "
              f"import notebooks; notebooks.main(['run', {str(path)!r}, '--mode', 'smoke']); "
              "assert 'nbdev' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = path.read_bytes()
    shutil.copy(ROOT / "settings.ini", tmp_path)
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean")], cwd=tmp_path, check=True, timeout=120)
    assert path.read_bytes() == ran


def test_full_mode_runs_notest_cells_and_restores_the_caller(tmp_path):
    "Imported, `run` gives the caller back its working directory and environment."
    path = write(tmp_path / "full.ipynb", sample_notebook())
    script = (f"import os, sys; sys.path.insert(0, {str(ROOT / 'tools')!r}); import notebooks; "
              f"record = notebooks.run({str(path)!r}); print(record['mode'], os.getcwd(), os.environ.get('RECBOOK_MODE'))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={k: v for k, v in os.environ.items()
                            if k != "RECBOOK_MODE"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.split() == ["full", str(ROOT), "None"], result.stderr
    outs = outputs(json.loads(path.read_text()))
    assert outs[1][0]["text"] == ["mode full\n"] and outs[3][0]["text"] == ["slow cell\n"] and outs[2] == []


def test_a_full_run_also_times_smoke_mode_and_time_keeps_the_outputs(tmp_path):
    "The front page shows both times; `time` measures a mode without touching the outputs the site shows."
    path = write(tmp_path / "timed.ipynb", sample_notebook())
    assert run_tool("run", path).returncode == 0
    nb = json.loads(path.read_text())
    timings, record = nb["metadata"]["recbook"]["timings"], nb["metadata"]["recbook"]["execution"]
    device = "gpu" if record["device"].startswith("cuda") else "cpu"
    assert sorted(timings) == [f"full-{device}", f"smoke-{device}"]
    assert timings[f"full-{device}"]["seconds"] == record["seconds"] and record["mode"] == "full"
    assert timings[f"smoke-{device}"]["code_sha256"] == record["code_sha256"]
    assert outputs(nb)[1][0]["text"] == ["mode full\n"], "the smoke run's outputs are not kept"
    nb["metadata"]["recbook"]["timings"][f"smoke-{device}"]["date"] = "2000-01-01T00:00:00+00:00"
    write(path, nb)
    assert run_tool("time", path).returncode == 0
    timed = json.loads(path.read_text())
    assert timed["metadata"]["recbook"]["timings"][f"smoke-{device}"]["date"] != "2000-01-01T00:00:00+00:00"
    assert outputs(timed) == outputs(nb) and timed["metadata"]["recbook"]["execution"] == record
    del timed["metadata"]["recbook"]["timings"][f"smoke-{device}"]
    untimed = write(tmp_path / "untimed.ipynb", timed)
    result = run_tool("check", untimed)
    assert result.returncode == 1 and "no smoke-mode timing" in result.stdout


def test_a_failing_notebook_is_left_unchanged(tmp_path):
    path = write(tmp_path / "broken.ipynb", sample_notebook("print('before')", "1 / 0", "print('after')"))
    before = path.read_bytes()
    result = run_tool("run", path, "--mode", "smoke")
    assert result.returncode != 0 and "ZeroDivisionError" in result.stderr
    assert "execution failed in smoke mode" in result.stderr and "left unchanged" in result.stderr
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["broken.ipynb"]


def test_code_hash_covers_code_only():
    nb = sample_notebook()
    base = notebooks.code_hash(nb)
    prose, run_ = copy.deepcopy(nb), copy.deepcopy(nb)
    prose["cells"][0]["source"] = "# Another title"
    run_["cells"][2]["outputs"] = [{"name": "stdout", "output_type": "stream", "text": ["x\n"]}]
    assert notebooks.code_hash(prose) == notebooks.code_hash(run_) == base
    joined = copy.deepcopy(nb)  # moving code across a cell boundary is a change of code
    joined["cells"][2]["source"] += "\n" + joined["cells"][3]["source"]
    joined["cells"][3]["source"] = ""
    assert notebooks.code_hash(joined) != base
    as_lines = copy.deepcopy(nb)  # nbformat stores sources as strings or as lists of lines: same code
    for cell in as_lines["cells"]:
        cell["source"] = cell["source"].splitlines(keepends=True)
    assert notebooks.code_hash(as_lines) == base


def test_check_fails_for_stale_or_unrecorded_notebooks(smoke_run, tmp_path):
    assert run_tool("check", smoke_run).returncode == 0
    nb = json.loads(smoke_run.read_text())
    nb["cells"][2]["source"] += "\n# an edit after the outputs were made"
    edited = write(tmp_path / "edited.ipynb", nb)
    del nb["metadata"]["recbook"]
    unrecorded = write(tmp_path / "unrecorded.ipynb", nb)
    result = run_tool("check", smoke_run, edited, unrecorded)
    assert result.returncode == 1
    assert "code changed since its outputs were made" in result.stdout and "no execution record" in result.stdout
    assert f"re-execute with: python tools/notebooks.py run {edited}" in result.stdout


def test_fallback_cleaner_matches_nbdev():
    "On a GPU machine without nbdev, the notebook is cleaned by our copy of clean_nb: it must do the same."
    nb = sample_notebook()
    nb["metadata"].update(recbook={"execution": {"mode": "full"}}, widgets={}, colab={"provenance": []})
    nb["nbformat_minor"] = 4
    cell = nb["cells"][2]
    cell.update(execution_count=7, metadata={"tags": ["x"], "hide_input": True, "scrolled": True})
    cell["outputs"] = [{"output_type": "execute_result", "execution_count": 7, "metadata": {},
                        "data": {"text/plain": ["<Model at 0x7f3a2b1c0d90>"], "image/png": "iVBOR\n",
                                 "application/vnd.google.colaboratory.intrinsic+json": {"type": "x"}}},
                       {"output_type": "stream", "name": "stdout", "text": "<object at 0xdeadbeef>\n"}]
    nb["cells"][3]["source"] = [""]
    for clear_all in (False, True):
        ours, theirs = copy.deepcopy(nb), copy.deepcopy(nb)
        options = dict(clear_all=clear_all, allowed_metadata_keys=["recbook"], allowed_cell_metadata_keys=[],
                       clean_ids=True)
        notebooks.clean_without_nbdev(ours, **options)
        clean_nb(theirs, **options)
        assert ours == theirs
