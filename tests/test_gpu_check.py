"""benchmarks/gpu_check.py: its CPU path runs and passes, and its loss check can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch):
    """The script as a module (it imports byol_throughput from its own folder)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    return gpu_check


@pytest.mark.parametrize("losses, why", [
    ([4.0, float("nan"), 3.0], "not finite"),
    ([4.0, float("inf")], "not finite"),
    ([1.0, 0.8, 1.0], "did not fall"),
    ([1.0, 0.9, 1.2], "did not fall"),
    ([1.0], "need two"),
])
def test_loss_check_fails(gpu_check, losses: list[float], why: str) -> None:
    problems = gpu_check.loss_problems("pretrain", losses)
    assert len(problems) == 1 and why in problems[0] and problems[0].startswith("pretrain")


def test_loss_check_passes_a_falling_loss(gpu_check) -> None:
    assert gpu_check.loss_problems("finetune", [1.7, 1.9, 0.7]) == []


def test_failed_check_exits_1_naming_it(gpu_check, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Training and timing faked: a rising and a non-finite loss make `main` return 1."""
    monkeypatch.setenv("RAPID_HOME", str(tmp_path))  # main sets it; restored after the test
    monkeypatch.setattr(gpu_check.distributed, "set_threads", lambda threads: 1)
    config = gpu_check.train.PretrainConfig(arch="resnet18", image_size=16)
    losses = {"pretrain": [4.0, 4.1], "finetune": [1.0, float("nan")]}
    monkeypatch.setattr(gpu_check, "train_profile", lambda epochs: (config, losses))
    monkeypatch.setattr(gpu_check, "throughput", lambda device, size, batch_size, warmup, iters: {
        "batch_size": batch_size, "median_step_s": 1.0, "samples_per_s": float(batch_size),
        "first_loss": 4.0, "peak_memory_growth_mib": None, "step_s": [1.0]})
    assert gpu_check.main(["--out", str(tmp_path / "gpu_check.json")]) == 1
    captured = capsys.readouterr()
    assert "pretrain: loss did not fall" in captured.err
    assert "finetune: loss not finite" in captured.err
    assert "FAIL" in captured.out


@pytest.mark.skipif(torch.cuda.is_available(), reason="would run the whole GPU check")
def test_require_cuda_stops_without_a_gpu(gpu_check) -> None:
    with pytest.raises(SystemExit, match="sees no GPU"):
        gpu_check.main(["--require-cuda"])


def test_cpu_path_passes(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--epochs", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=os.environ | {"CUDA_VISIBLE_DEVICES": ""},  # the CPU path on a GPU machine too
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gpu_check passed on cpu" in done.stdout
    written = json.loads(out.read_text())
    assert written["problems"] == [] and written["device"] == "cpu"
    assert set(written["losses_per_epoch"]) == {"pretrain", "finetune"}
    assert all(len(v) == 3 for v in written["losses_per_epoch"].values())
    assert [row["batch_size"] for row in written["throughput"]["rows"]] == [4, 8]
    assert all(row["samples_per_s"] > 0 for row in written["throughput"]["rows"])
