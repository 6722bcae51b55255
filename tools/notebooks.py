"""Execute the book's notebooks and keep an honest record of how their outputs were made.

The committed notebooks carry the outputs readers see on the site, so those outputs must come from the current
code. `run` executes a notebook in-process (execnb's CaptureShell: no Jupyter kernel needed, so it also works on
a bare GPU machine that has only execnb, fastcore and IPython), stores the outputs, and records in the notebook's
metadata under ``recbook.execution``: the hash of its code, the mode, the device, the date, the seconds taken and
the versions. `check` fails for any notebook whose code no longer matches its record.

    python tools/notebooks.py run nbs/01_data.ipynb --mode full
    python tools/notebooks.py check
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
from nbdev_directives import directives  # noqa: E402  (one parser for the site and for execution)

CELL_SEPARATOR = "\n\x1e\n"  # record separator: cannot occur inside normal source code


def code_hash(nb) -> str:
    "sha256 of the notebook's code: every code cell's source, in order, joined by a record separator."
    sources = [_source(c) for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256(CELL_SEPARATOR.join(sources).encode("utf-8")).hexdigest()


def _source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def skip_cell(cell, mode: str, has_gpu: bool) -> bool:
    "nbdev's rules (as in `nbdev.test.test_nb`): skip `eval: false` and export cells; `notest` only in smoke mode."
    if cell["cell_type"] != "code":
        return True
    source = _source(cell)
    if "nbdev_export" + "(" in source:
        return True
    found = dict(directives(source))
    if found.get("eval") == "false":
        return True
    if "notest" in found and mode == "smoke":
        return True
    return "gpu" in found and not has_gpu


def device_description() -> tuple[str, bool]:
    "The device the notebook ran on, and whether a CUDA GPU was there."
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}", True
    except ImportError:
        pass
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"cpu: {cpu}, {os.cpu_count()} cores", False


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for name in ("torch", "recbook"):
        with contextlib.suppress(ImportError):
            found[name] = __import__(name).__version__
    return found


def _git_commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


def clean(nb) -> None:
    "Clean like `nbdev_clean` with this repository's settings, so that nbdev_clean afterwards changes nothing."
    try:
        from nbdev.clean import clean_nb
    except ImportError:  # a bare GPU machine: run `nbdev_clean` on the notebook once it is back
        print("nbdev is not installed here: run nbdev_clean on the notebook before committing it", file=sys.stderr)
        return
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    cfg = cfg["DEFAULT"]
    clean_nb(nb, clear_all=cfg.getboolean("clear_all", False),
             allowed_metadata_keys=cfg.get("allowed_metadata_keys", "").split(),
             allowed_cell_metadata_keys=cfg.get("allowed_cell_metadata_keys", "").split(),
             clean_ids=cfg.getboolean("clean_ids", True))


def run(path: Path, mode: str) -> dict:
    "Execute the notebook at `path` in `mode`; on success store outputs and the record, atomically."
    from execnb.nbio import nb2str, read_nb
    from execnb.shell import CaptureShell

    path = Path(path).resolve()
    nb = read_nb(path)
    for cell in nb.cells:  # outputs of cells that are skipped now, or print nothing now, must not survive
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    device, has_gpu = device_description()
    os.environ["RECBOOK_MODE"] = mode
    shell = CaptureShell(path)
    start = time.time()
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        shell.run_all(nb, exc_stop=True, preproc=lambda cell: skip_cell(cell, mode, has_gpu))
    except BaseException:
        sys.stderr.write(shell.prettytb(fname=path) + "\n")
        raise SystemExit(f"{path.name}: execution failed; the notebook was left unchanged")
    finally:
        os.chdir(cwd)
    record = {"code_sha256": code_hash(nb), "mode": mode, "device": device,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.time() - start, 1), **_versions(), "git_commit": _git_commit()}
    nb.metadata["recbook"] = {"execution": record}
    clean(nb)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(nb2str(nb))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return record


def stale(paths) -> list[str]:
    "One message per notebook whose outputs were not made by its current code."
    import json

    problems = []
    for path in paths:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        record = nb.get("metadata", {}).get("recbook", {}).get("execution")
        if record is None:
            problems.append(f"{path}: no execution record")
        elif record.get("code_sha256") != code_hash(nb):
            problems.append(f"{path}: code changed since its outputs were made ({record.get('date')}, "
                            f"{record.get('mode')} mode)")
    return problems


def notebooks() -> list[Path]:
    return sorted((ROOT / "nbs").glob("*.ipynb"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="execute notebooks and store outputs + execution record")
    run_cmd.add_argument("notebooks", nargs="+", type=Path)
    run_cmd.add_argument("--mode", choices=["full", "smoke"], default="full")
    check_cmd = commands.add_parser("check", help="fail if any notebook's outputs are stale")
    check_cmd.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        for path in args.notebooks:
            record = run(path, args.mode)
            print(f"{path}: {record['mode']} mode on {record['device']} in {record['seconds']} s")
        return 0
    problems = stale(args.notebooks or notebooks())
    for problem in problems:
        print(problem)
    if problems:
        print("re-execute with: python tools/notebooks.py run <notebook> --mode full")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
