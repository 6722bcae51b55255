"""Execute the book's notebooks and keep an honest record of how their outputs were made.

The committed notebooks carry the outputs readers see on the site (the site never re-executes), so those
outputs must come from the current code. `run` executes a notebook in-process with execnb's CaptureShell (no
Jupyter kernel needed, so it also works on a bare GPU machine that has only execnb, fastcore and IPython),
stores the outputs, and records in the notebook's metadata under ``recbook.execution``: the hash of its code,
the mode, the device, the date, the seconds taken and the versions. A full-mode `run` then times the notebook in
smoke mode too, without keeping that run's outputs, under ``recbook.timings``, one per mode and kind of device
(`time` does that alone), so the
front page can say how long each chapter takes both ways. `check` fails for any notebook whose code no longer
matches its record or its smoke timing.

    python tools/notebooks.py run nbs/01_data.ipynb            # full mode: the outputs the site shows (+ smoke timing)
    python tools/notebooks.py run nbs/01_data.ipynb --mode smoke
    python tools/notebooks.py time nbs/01_data.ipynb           # smoke mode, timed; the stored outputs stay
    python tools/notebooks.py check                            # exit 1 if any notebook's outputs are stale

Cells are skipped exactly as ``nbdev.test.test_nb`` skips them (cells calling ``nbdev_export(``, ``#| eval:
false``, and cells marked with a flag of settings.ini's ``tst_flags``), with the flags a run forces, as
``nbdev_test --flags`` does: ``notest`` in full mode (those cells are too slow for tests, not for the site),
``gpu`` when CUDA is there, and any given with ``--flags``. The notebook's ``parameters`` cell reads the mode
from the environment variable RECBOOK_MODE.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
from nbdev_directives import directives  # noqa: E402  (nbdev's parser, shared with the site)

CELL_SEPARATOR = "\n\x1e\n"  # ASCII record separator: does not occur in source code


def code_hash(nb) -> str:
    """sha256 (hex) of the UTF-8 bytes of every code cell's source, in order, joined by CELL_SEPARATOR.

    Markdown, outputs and metadata are left out: only a change of code makes the outputs stale."""
    sources = [_source(c) for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256(CELL_SEPARATOR.join(sources).encode("utf-8")).hexdigest()


def _source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def settings() -> configparser.SectionProxy:
    "settings.ini, the nbdev configuration, read without nbdev."
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def skip_flags(mode: str, has_gpu: bool, forced=()) -> set[str]:
    "settings.ini's tst_flags less the flags this run forces (see the module's docstring)."
    forced = set(forced) | ({"notest"} if mode == "full" else set()) | ({"gpu"} if has_gpu else set())
    return set(settings().get("tst_flags", "").split()) - forced


def skip_cell(cell, flags: set[str]) -> bool:
    "Whether to skip a cell: nbdev.test.test_nb's `_no_eval`, with nbdev's directive parser."
    if cell["cell_type"] != "code":
        return True
    source = _source(cell)
    if "nbdev_export" + "(" in source:
        return True
    found = directives(source)
    if found.get("eval:", [""])[0].lower() == "false":
        return True
    return bool(flags & found.keys())


def device_description() -> tuple[str, bool]:
    "The device the notebook runs on ('cuda: <gpu>' or 'cpu: <model>, N cores'), and whether CUDA is there."
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}", True
    except ImportError:
        pass
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), flags=re.M)
        cpu = names[0].strip() if names else cpu
    return f"cpu: {cpu}, {os.cpu_count()} cores", False


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _git_commit() -> str | None:
    "The checkout's short commit, or None outside git (e.g. a copy of the tree on a GPU machine)."
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    commit = result.stdout.strip() if result.returncode == 0 else ""
    return commit or None


def clean(nb) -> None:
    "Clean like `nbdev_clean` with this repository's settings.ini, so that nbdev_clean afterwards changes nothing."
    cfg = settings()
    options = dict(clear_all=cfg.getboolean("clear_all", False),
                   allowed_metadata_keys=cfg.get("allowed_metadata_keys", "").split(),
                   allowed_cell_metadata_keys=cfg.get("allowed_cell_metadata_keys", "").split(),
                   clean_ids=cfg.getboolean("clean_ids", True))
    try:
        from nbdev.clean import clean_nb
    except ImportError:  # a bare GPU machine: same rules, see clean_without_nbdev
        clean_nb = clean_without_nbdev
    clean_nb(nb, **options)


_REPR_ID = re.compile("(<.*?)( at 0x[0-9a-fA-F]+)(>)")


def clean_without_nbdev(nb, clear_all=False, allowed_metadata_keys=(), allowed_cell_metadata_keys=(),
                        clean_ids=True) -> None:
    """`nbdev.clean.clean_nb` of nbdev 2.4.14, for machines without nbdev (tests check that both agree).

    Clears execution counts, keeps only the allowed notebook and cell metadata, drops Colab's private outputs,
    strips trailing whitespace from base64 images and, with clean_ids, object addresses (' at 0x7f..') from
    text reprs."""
    cell_keys = {"hide_input", *allowed_cell_metadata_keys}
    for cell in nb["cells"]:
        _clean_cell(cell, clear_all, cell_keys, clean_ids)
    kernelspec = nb.get("metadata", {}).get("kernelspec", {})
    if kernelspec.get("name"):
        kernelspec["display_name"] = kernelspec["name"]
    keys = {"kernelspec", "jekyll", "jupytext", "doc", "widgets", *allowed_metadata_keys}
    nb["metadata"] = {k: v for k, v in nb["metadata"].items() if k in keys}
    if nb.get("nbformat") == 4 and nb.get("nbformat_minor", 0) < 5:
        nb["nbformat_minor"] = 5


def _clean_cell(cell, clear_all: bool, cell_keys: set[str], clean_ids: bool) -> None:
    if "execution_count" in cell:
        cell["execution_count"] = None
    if "outputs" in cell:
        if clear_all:
            cell["outputs"] = []
        for output in cell["outputs"]:
            _clean_output(output, clean_ids)
    if cell["source"] == [""]:
        cell["source"] = []
    cell["metadata"] = {} if clear_all else {k: v for k, v in cell["metadata"].items() if k in cell_keys}
    if "id" not in cell:
        cell["id"] = os.urandom(4).hex()


def _without_ids(text):
    "A text output (a string or a list of lines) without object addresses, which change at every run."
    if not isinstance(text, str):
        return [_without_ids(line) for line in text]
    return _REPR_ID.sub(r"\1\3", text) if "at 0x" in text else text


def _clean_output(output, clean_ids: bool) -> None:
    if "execution_count" in output:
        output["execution_count"] = None
    data = output.get("data", {})
    data.pop("application/vnd.google.colaboratory.intrinsic+json", None)
    for kind in data:
        if kind.startswith("text") and clean_ids:
            data[kind] = _without_ids(data[kind])
        if kind.startswith("image") and "svg" not in kind:
            data[kind] = data[kind].rstrip()
    if "text" in output and clean_ids:
        output["text"] = _without_ids(output["text"])


@contextlib.contextmanager
def _notebook_context(path: Path, mode: str):
    "What nbdev_test gives a notebook: its folder as cwd and the repository importable; plus RECBOOK_MODE."
    old_cwd, old_mode = os.getcwd(), os.environ.get("RECBOOK_MODE")
    os.environ["RECBOOK_MODE"] = mode
    sys.path.insert(0, str(ROOT))
    os.chdir(path.parent)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path.remove(str(ROOT))
        if old_mode is None:
            os.environ.pop("RECBOOK_MODE", None)
        else:
            os.environ["RECBOOK_MODE"] = old_mode


TIMED_FIELDS = ("code_sha256", "mode", "device", "date", "seconds", "git_commit")  # what a timing keeps of a run


def _execute(path: Path, mode: str, forced=()):
    "The notebook at `path`, executed in `mode`, with its outputs and execution record; raises SystemExit on error."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell

    nb = read_nb(path)
    for cell in nb.cells:  # outputs of cells that are skipped now, or print nothing now, must not survive
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    device, has_gpu = device_description()
    flags = skip_flags(mode, has_gpu, forced)
    shell = CaptureShell(path)
    start = time.time()
    with _notebook_context(path, mode):
        try:
            shell.run_all(nb, exc_stop=True, preproc=lambda cell: skip_cell(cell, flags))
        except BaseException:
            if shell.exc is None:  # interrupted, not a failing cell
                raise
            sys.stderr.write(shell.prettytb(fname=path) + "\n")
            raise SystemExit(f"{path}: execution failed in {mode} mode (traceback above); the notebook was "
                             "left unchanged") from None
        recbook_version = _version("recbook")
    record = {"code_sha256": code_hash(nb), "mode": mode, "device": device,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.time() - start, 1), "python": platform.python_version(),
              "torch": _version("torch"), "recbook_version": recbook_version, "git_commit": _git_commit()}
    nb.metadata.setdefault("recbook", {})["execution"] = record
    nb.metadata["recbook"].setdefault("timings", {})[timing_key(mode, has_gpu)] = {k: record[k] for k in TIMED_FIELDS}
    return nb


def timing_key(mode: str, has_gpu: bool) -> str:
    "Where a notebook keeps the timing of a run: one per mode and kind of device ('smoke-cpu', 'full-gpu', ...)."
    return f"{mode}-{'gpu' if has_gpu else 'cpu'}"


def write_atomically(path: Path, text: str) -> None:
    "Replace the file at `path` in one step (a temp file beside it, then os.replace), keeping its permissions."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def run(path: Path, mode: str = "full", forced=(), smoke_timing: bool = True) -> dict:
    """Execute the notebook at `path`; on success store its outputs and execution record, cleaned; returns the record.
    After a full-mode run, `smoke_timing` also times the notebook in smoke mode (see `time_notebook`)."""
    from execnb.nbio import nb2str

    path = Path(path).resolve()
    nb = _execute(path, mode, forced)
    clean(nb)
    write_atomically(path, nb2str(nb))
    if mode == "full" and smoke_timing:
        time_notebook(path, "smoke", forced)
    return nb.metadata["recbook"]["execution"]


def time_notebook(path: Path, mode: str = "smoke", forced=()) -> dict:
    """Execute the notebook at `path` in `mode` only to time it: the file keeps its outputs and execution record and
    gains ``recbook.timings[timing_key(mode, ...)]`` (the code hash, device, date and seconds of this run)."""
    from execnb.nbio import nb2str, read_nb

    path = Path(path).resolve()
    key = timing_key(mode, device_description()[1])
    timing = _execute(path, mode, forced).metadata["recbook"]["timings"][key]
    nb = read_nb(path)
    nb.metadata.setdefault("recbook", {}).setdefault("timings", {})[key] = timing
    write_atomically(path, nb2str(nb))
    return timing


def staleness(path: Path) -> str | None:
    "Why the notebook's outputs were not made by its current code, or None when they were."
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    record = nb.get("metadata", {}).get("recbook", {}).get("execution")
    if record is None:
        return "no execution record"
    if record.get("code_sha256") != code_hash(nb):
        return f"code changed since its outputs were made ({record.get('date')}, {record.get('mode')} mode)"
    smoke = [t for key, t in nb["metadata"]["recbook"].get("timings", {}).items() if key.startswith("smoke-")]
    if not smoke:
        return "no smoke-mode timing"
    if all(t.get("code_sha256") != code_hash(nb) for t in smoke):
        return f"code changed since its smoke-mode timing ({max(t.get('date', '') for t in smoke)})"
    return None


def notebooks() -> list[Path]:
    "The book's notebooks."
    return sorted((ROOT / "nbs").glob("*.ipynb"))


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="execute notebooks and store outputs + execution record")
    run_cmd.add_argument("notebooks", nargs="+", type=Path)
    run_cmd.add_argument("--mode", choices=["full", "smoke"], default="full")
    run_cmd.add_argument("--flags", default="", help="space-separated tst_flags to run anyway, as nbdev_test's")
    run_cmd.add_argument("--no-smoke-timing", action="store_true", help="after a full-mode run, do not time smoke mode")
    time_cmd = commands.add_parser("time", help="execute notebooks only to time them (their outputs stay)")
    time_cmd.add_argument("notebooks", nargs="+", type=Path)
    time_cmd.add_argument("--mode", choices=["full", "smoke"], default="smoke")
    check_cmd = commands.add_parser("check", help="exit 1 if any notebook's outputs are stale or unrecorded")
    check_cmd.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        for path in args.notebooks:
            record = run(path, args.mode, args.flags.split(), smoke_timing=not args.no_smoke_timing)
            print(f"{_shown(path)}: {record['mode']} mode on {record['device']} in {record['seconds']} s")
        return 0
    if args.command == "time":
        for path in args.notebooks:
            timing = time_notebook(path, args.mode)
            print(f"{_shown(path)}: timed in {timing['mode']} mode on {timing['device']}: {timing['seconds']} s")
        return 0
    problems = {path: staleness(path) for path in args.notebooks or notebooks()}
    problems = {path: why for path, why in problems.items() if why}
    for path, why in problems.items():
        print(f"{_shown(path)}: {why}; re-execute with: python tools/notebooks.py run {_shown(path)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
