"""What every benchmark here shares: a description of the device and the provenance fields of a JSON record."""
from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def describe(device) -> str:
    "The device in words: the GPU's name, or the CPU's model and the threads torch uses."
    if device.type == "cuda": return f"cuda: {torch.cuda.get_device_name(0)}"
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


def provenance(device) -> dict:
    "Device, versions, date and git commit, for a benchmark's JSON record."
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip())
    return {"device": describe(device),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit, "git_dirty": dirty}
