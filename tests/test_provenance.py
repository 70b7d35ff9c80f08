"""What a result records about its origin: the machine, the library versions, the commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import rapid_utils
from rapid_utils import provenance


def test_machine_names_the_cpu_model_count_and_torchs_kernels(tmp_path: Path,
                                                              monkeypatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t: fpu\n")
    monkeypatch.setattr(provenance.os, "cpu_count", lambda: 3)
    kernels = torch.backends.cpu.get_cpu_capability()
    assert provenance.machine(cpuinfo) == f"Test CPU 9000, 3 CPUs, torch kernels {kernels}"
    # without a model name (no such file, or an ARM cpuinfo): the platform's processor name
    named = provenance.machine(tmp_path / "absent")
    assert named.endswith(f", 3 CPUs, torch kernels {kernels}") and "Test CPU" not in named


def test_versions_are_those_of_the_running_libraries() -> None:
    recorded = provenance.versions()
    assert recorded["torch"] == torch.__version__ and recorded["numpy"] == np.__version__
    assert recorded["rapid_utils"] == rapid_utils.__version__
    assert {"torchvision", "safetensors"} <= set(recorded)


def test_git_commit_is_head_in_a_checkout_and_none_without_git(monkeypatch) -> None:
    package = Path(rapid_utils.__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the package is not in a git checkout here")
    assert provenance.git_commit() == head

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.git_commit() is None
