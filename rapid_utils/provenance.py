"""Where a result came from: the commit, the library versions and the machine it was made on.

Fine-tuning results, job times and exported models record these, so that a number can be traced
to the code and the CPU (or GPU host) that produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import safetensors
import torch
import torchvision

import rapid_utils


def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def versions() -> dict[str, str]:
    """The versions of the libraries whose behaviour a result or an exported model depends on."""
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "rapid_utils": rapid_utils.__version__,
    }


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU a run ran on, e.g. 'AMD EPYC, 2 CPUs, torch kernels AVX2'.

    Recorded beside times and results: the same commit runs at other speeds on other CPUs, and
    torch picks its CPU kernels (AVX2, AVX512) by the CPU, so float rounding, and results in
    their last digits, can differ between machines. `cpuinfo` is where Linux names the CPU
    model; elsewhere (or where it names none) the platform's processor name is given.
    """
    model = platform.processor() or platform.machine()
    try:  # on Linux platform.processor() says only 'x86_64'
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} CPUs, "
            f"torch kernels {torch.backends.cpu.get_cpu_capability()}")

