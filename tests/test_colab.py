"""Every notebook as a reader meets it on a fresh Colab runtime, simulated here in smoke mode.

Colab gives a Python with its own CUDA torch, IPython and nothing of this project. The simulation: a fresh virtual
environment holding only torch, numpy and a notebook runner (execnb, which runs cells in IPython, as Colab does), with
`google.colab` importable, so each notebook's first code cell takes its Colab branch and installs the package —
pointed through RECBOOK_SOURCE at a wheel built from this checkout instead of GitHub. Each notebook is copied to a folder of its own,
away from the repository (no settings.ini above it, as on Colab), and run top to bottom in smoke mode. The test fails
if a cell fails, if the install replaces the runtime's torch, or if a notebook imports the package before installing
it. This is also the suite's smoke run of every notebook."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))

RUNNER = textwrap.dedent('''
    import importlib.metadata
    import sys
    import google.colab  # noqa: F401  (what makes a notebook's install cell take its Colab branch)
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell

    before = importlib.metadata.version("torch")  # not imported here: the notebook imports it, as on Colab
    path = sys.argv[1]
    shell = CaptureShell(path)
    shell.run_all(read_nb(path), exc_stop=True)
    after = importlib.metadata.version("torch")
    assert after == before, f"the install cell replaced the runtime's torch {before} with {after}"
    print("ran every cell; torch", after)
''')


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> Path:
    "The simulated runtime's python: a fresh venv with torch (the tested CPU build), numpy and execnb, nothing of the project."
    home = tmp_path_factory.mktemp("colab")
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True, timeout=300)
    python = home / "venv" / "bin" / "python"
    pins = [line.split("#")[0].strip() for line in (ROOT / "settings.ini").read_text().splitlines()
            if line.startswith("dev_requirements")][0].split("=", 1)[1].split()
    # Colab's runtime: its torch, numpy (which torch binds to when it is imported), IPython; and the notebook runner
    wanted = ["torch", "numpy"] + [p for p in pins if p.split("==")[0] in ("execnb", "fastcore")] + ["ipython"]
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted, "-c", str(ROOT / "constraints-cpu.txt")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "google" / "colab").mkdir(parents=True)
    (Path(site) / "google" / "colab" / "__init__.py").write_text('"Stands in for Colab\'s own module."\n')
    bare = subprocess.run([str(python), "-c", "import recbook"], capture_output=True, text=True, cwd=home)
    assert bare.returncode != 0 and "No module named 'recbook'" in bare.stderr, "nothing of the project in the runtime"
    (home / "runner.py").write_text(RUNNER)
    # the package as the install cells get it: built once from this checkout (pip on Colab builds it from GitHub)
    built = subprocess.run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(home / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=600, cwd=home)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return python


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_a_fresh_colab_runtime(colab, path, tmp_path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    first_use = next(i for i, c in enumerate(cells) if "recbook" in "".join(c["source"]).replace("#| default_exp", ""))
    assert "google.colab" in "".join(cells[first_use]["source"]), "the install cell comes before any use of recbook"
    folder = tmp_path / path.stem
    folder.mkdir()
    shutil.copy(path, folder / path.name)
    if (ROOT / "nbs" / "images").is_dir(): shutil.copytree(ROOT / "nbs" / "images", folder / "images")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    wheel = next((colab.parents[2] / "dist").glob("recbook-*.whl"))
    env.update(RECBOOK_MODE="smoke", RECBOOK_SOURCE=str(wheel), HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PATH=f"{colab.parent}:{env['PATH']}")
    result = subprocess.run([str(colab), str(colab.parents[2] / "runner.py"), str(folder / path.name)], cwd=folder,
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0 and "ran every cell" in result.stdout, result.stdout[-4000:] + result.stderr[-6000:]
