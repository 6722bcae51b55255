"""What every benchmark here shares: a description of the device and the provenance fields of a JSON record."""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from recbook.training import describe_device as describe  # noqa: F401  (the benchmarks' name for it)
from recbook.training import run_provenance

RESULTS = Path(__file__).resolve().parent / "results"


def provenance(device) -> dict:
    """Device, versions, date and git commit (the library's run provenance), and whether the checkout was dirty:
    tracked files changed since that commit, other than the benchmarks' own records (a rerun rewrites them)."""
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)results"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip())
    return {**run_provenance(torch.device(device)), "git_dirty": dirty}
