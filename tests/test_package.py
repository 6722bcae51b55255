"""The package as users get it: a wheel that carries the data, an import without side effects, a version."""
import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def settings_version() -> str:
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    return cfg["DEFAULT"]["version"]


def test_version_matches_settings():
    import recbook

    assert recbook.__version__ == settings_version()


def test_import_has_no_side_effects(tmp_path):
    code = ("import sys, recbook, recbook.data; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]" and result.stderr == ""  # no heavy imports, no warnings, no output
    assert list(tmp_path.iterdir()) == []  # and no files written


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                             str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("recbook-*.whl")
    return path


def test_wheel_carries_the_data_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("recbook/data.py", "recbook/cli.py", "recbook/datasets/beauty/interactions.csv.gz",
                   "recbook/datasets/beauty/items.csv.gz", "recbook/datasets/beauty/README.md"):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "recbook = recbook.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_loads_beauty_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import recbook, recbook.data as d; ds = d.load_dataset('beauty'); "
            "print(recbook.__file__); print(ds.n_users, ds.n_items, ds.n_interactions)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    location, counts = result.stdout.strip().splitlines()
    assert location.startswith(str(target))  # the wheel's copy, not the repository's
    assert counts == "22363 12101 198502"


def test_requirements_keep_colabs_torch_and_pin_the_cpu_build_on_cpu_machines(wheel):
    """The package asks for any recent torch, so `pip install` on Colab keeps Colab's CUDA build; the README's install
    and CI add constraints-cpu.txt, which picks the CPU-only build instead of PyPI's multi-GB CUDA one."""
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    torch_requirements = [l for l in metadata.splitlines() if l.startswith("Requires-Dist: torch")]
    assert torch_requirements == ["Requires-Dist: torch>=2.5"], torch_requirements
    pins = [l for l in (ROOT / "constraints-cpu.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert pins == ["torch==2.13.0+cpu"]
    # PyPI has no +cpu build: a fresh machine gets it from PyTorch's CPU index, before the package asks for torch
    cpu_torch = f"pip install --no-deps {pins[0]} --index-url https://download.pytorch.org/whl/cpu"
    first_command = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("\n", 1)[0]
    assert first_command.index(cpu_torch) < first_command.index("pip install -e . -c constraints-cpu.txt")
    test_sh = (ROOT / "tools" / "test.sh").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in test_sh and "-c constraints-cpu.txt" in test_sh
