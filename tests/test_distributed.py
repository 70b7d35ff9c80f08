"""Data-parallel training as under torchrun: two CPU processes (Gloo) on a tiny corpus."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rapid_utils import (
    byol,
    cli,
    datasets,
    distributed,
    models,
    notebook_batch,
    paths,
    splits,
    train,
)
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.synthetic import generate_corpus

WORLD_SIZE = 2
DATES = ["2018-01-03", "2018-07-02"]
PRETRAIN = dict(arch="resnet18", epochs=2, batch_size=8, base_lr=0.5, warmup_epochs=0,
                image_size=16, hidden_dim=32, projection_dim=16, knn_k=3)
FINETUNE = dict(arch="resnet18", epochs=1, batch_size=8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_torchrun(rank: int, port: int) -> None:
    """The environment torchrun gives process `rank` of a one-node job."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


class _RecordedBYOL(byol.BYOL):
    """`byol.BYOL` that keeps its instances and their initial weights, for one test process."""

    built: list[_RecordedBYOL] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initial = {name: p.detach().clone() for name, p in self.named_parameters()}
        self.built.append(self)


def _worker(rank: int, port: int, root: str, out: str) -> None:
    """One torchrun-like process: the environment torchrun sets, then both training loops."""
    _as_torchrun(rank, port)
    torch.set_num_threads(1)
    byol.BYOL = _RecordedBYOL  # this spawned process only: keep each rank's replica
    index = build_index(root, progress=False)
    split = splits.assign_splits(index, seed=0)
    train_index, val_index = index[split == "train"], index[split == "val"]
    stats = datasets.compute_band_stats(root, train_index, progress=False)
    history = train.pretrain(train.PretrainConfig(**PRETRAIN), root, train_index, val_index,
                             stats, Path(out) / "byol", progress=False)
    (replica,) = _RecordedBYOL.built
    final = {name: p.detach() for name, p in replica.named_parameters()}
    torch.save({"initial": replica.initial, "final": final}, Path(out) / f"rank{rank}_weights.pt")
    results = train.finetune(
        train.FinetuneConfig(**FINETUNE, init=f"byol:{Path(out) / 'byol' / 'checkpoint.pt'}"),
        root, train_index, val_index, val_index, stats, Path(out) / "results.json",
        progress=False,
    )
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"history": history,
                                                             "results": results,
                                                             "n_val": len(val_index)}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_in_step_and_rank0_writes(tmp_path: Path) -> None:
    root = generate_corpus(tmp_path / "c", n_sites=40, seed=4, size=16, dates=DATES, workers=1,
                           progress=False)
    out = tmp_path / "out"
    mp.spawn(_worker, args=(_free_port(), str(root), str(out)), nprocs=WORLD_SIZE, join=True)

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    weights = [torch.load(out / f"rank{r}_weights.pt", weights_only=True)
               for r in range(WORLD_SIZE)]
    # Each rank trained on its own shard and views, so the replicas agree only if DDP averaged
    # the gradients (online weights) and every rank took the same EMA steps (target weights).
    first, second = (w["final"] for w in weights)
    initial = weights[0]["initial"]
    assert first.keys() == second.keys() and any(k.startswith("target_") for k in first)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    for part in ("encoder.", "projector.", "predictor.", "target_encoder.", "target_projector."):
        assert any(not torch.equal(first[k], initial[k]) for k in first if k.startswith(part)), (
            f"{part} did not move: equal replicas would prove nothing")
    assert "knn_accuracy" in ranks[0]["history"][-1]  # guards run on rank 0 only
    assert "knn_accuracy" not in ranks[1]["history"][-1]
    assert ranks[0]["results"] == ranks[1]["results"]  # every rank returns rank 0's file
    assert ranks[0]["results"]["parameters"]["world_size"] == WORLD_SIZE
    # each rank classified its shard; the results hold every validation site once, in order
    final = ranks[0]["results"]["final"]["val"]
    assert final["n"] == ranks[0]["n_val"]
    assert sum(map(sum, final["confusion_matrix"])) == final["n"]
    assert len(list(out.glob("**/*.tmp"))) == 0  # atomic writes left nothing behind

    checkpoint = torch.load(out / "byol" / train.CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["epoch"] == 2
    for name, tensor in first.items():  # the recorded replica is the one rank 0 saved
        assert torch.equal(tensor, checkpoint["byol"][name]), name
    # the encoder key stays loadable by the model factory
    encoder = models.build_model("resnet18", 4, 0, f"byol:{out / 'byol' / 'checkpoint.pt'}")
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, checkpoint[models.BYOL_ENCODER_KEY][name])


def _unreadable_worker(rank: int, port: int, out: str) -> None:
    """Rank 1 alone meets bad samples: 3 of its 100 reads fail, none of rank 0's 100."""
    _as_torchrun(rank, port)
    log = train.UnreadableLog(context=distributed.setup())
    failures = [f"site_{k}: truncated" for k in range(3)] if rank == 1 else []
    log.note({"label": [0] * 100, "unreadable": failures + [""] * (100 - len(failures))})
    try:
        log.check()
        outcome = "went on"
    except Exception as error:  # noqa: BLE001  the test reads what each rank raised
        outcome = str(error)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(
        {"outcome": outcome, "reasons": log.reasons}))
    dist.destroy_process_group()


def test_every_rank_stops_together_on_unreadable_samples(tmp_path: Path) -> None:
    """3 of 200 reads (1.5 %) failed: every process stops, not rank 1 alone (its 3 %), which
    would leave rank 0 waiting at the next collective step."""
    mp.spawn(_unreadable_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE,
             join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for rank in ranks:
        assert rank["outcome"].startswith("3 of 200 sample reads failed"), rank["outcome"]
        assert set(rank["reasons"]) == {"site_0", "site_1", "site_2"}  # rank 0 records them


def _cli_worker(rank: int, port: int, commands: list[list[str]]) -> None:
    """`torchrun -m rapid_utils.cli COMMAND` in process `rank`, for each command in turn."""
    _as_torchrun(rank, port)
    # joined here, so the commands share one group: `cli.main` leaves only a group it joined
    distributed.setup()
    for argv in commands:
        assert cli.main(argv) == 0, argv
        assert dist.is_initialized(), argv
    dist.destroy_process_group()


def test_torchrun_runs_of_a_profile_are_what_the_batch_draws(tmp_path: Path, monkeypatch,
                                                             caplog) -> None:
    """`pretrain|finetune --profile ci` in two Gloo processes write the files the batch would;
    `reproduce --figures-only` then reuses the results, trains nothing and draws the figures."""
    monkeypatch.setenv("RAPID_HOME", str(tmp_path))  # the spawned processes inherit it
    extra = tmp_path / "two.yaml"
    # 1 %: fewer sites than a batch per process, repeated to `min_samples_per_epoch` in both
    extra.write_text("scenarios: [scratch-100%, byol-1%]\n")
    figures_only = ["reproduce", "--profile", "ci", "--extra", str(extra), "--figures-only"]
    with caplog.at_level(logging.ERROR):
        assert cli.main(figures_only) == 2  # nothing to draw yet: each missing result named
    assert "2 of the 2 fine-tuning results of profile 'ci' are missing" in caplog.text
    assert "finetune_init-byol_frac-0.01_seed-0.json (byol-1%, seed 0): no results file" in (
        caplog.text)
    assert not paths.figures_dir("ci").exists()

    profile = ["--profile", "ci", "--extra", str(extra), "--threads", "1"]
    mp.spawn(_cli_worker, args=(_free_port(), [["pretrain", *profile], ["finetune", *profile]]),
             nprocs=WORLD_SIZE, join=True)
    results_dir = paths.results_dir(paths.runs_dir("ci"))
    written = {path.name: path.stat().st_mtime_ns for path in results_dir.glob("finetune_*")}
    assert sorted(written) == ["finetune_init-byol_frac-0.01_seed-0.json",
                               "finetune_init-random_frac-1_seed-0.json"]
    assert {json.loads((results_dir / name).read_text())["parameters"]["world_size"]
            for name in written} == {WORLD_SIZE}

    outcomes = notebook_batch.reproduce("ci", (extra,), figures_only=True)
    assert [(run.name, run.status) for run in outcomes] == [
        ("04_finetuning [scratch-100%, seed 0]", "reused"),
        ("04_finetuning [byol-1%, seed 0]", "reused"), ("05_figures", "done")]
    assert {path.name: path.stat().st_mtime_ns
            for path in results_dir.glob("finetune_*")} == written  # not trained again
    figures = paths.figures_dir("ci")
    for name in ("fig4_accuracy_per_epoch", "fig5_class_precision_recall"):
        assert (figures / f"{name}.png").stat().st_size > 10_000, name
    assert "byol-1%" in (figures / "results.md").read_text()


def _join_a_group_of_one() -> None:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


@pytest.mark.parametrize("outcome", [0, ValueError("a bad value")])
def test_cli_main_leaves_the_process_group_its_command_joined(outcome, monkeypatch) -> None:
    """Under torchrun a command joins the group (`distributed.setup`); `cli.main` leaves it
    when the command ends, by error or not."""

    def command(args) -> int:
        _join_a_group_of_one()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(cli, "_pretrain", command)
    assert cli.main(["pretrain"]) == (0 if outcome == 0 else 2)
    assert not dist.is_initialized()


def test_a_group_joined_before_the_block_is_kept() -> None:
    _join_a_group_of_one()
    try:
        with distributed.process_group():
            pass
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_single_process_context_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = distributed.setup()
    assert context == distributed.Context()
    assert context.is_main and not context.active
    assert distributed.device(context).type == ("cuda" if torch.cuda.is_available() else "cpu")
    distributed.barrier(context)  # a no-op, must not need a process group


def test_global_batch_must_divide_by_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "setup", lambda: distributed.Context(0, 3, 0))
    with pytest.raises(ValueError, match="batch_size 8 .* 3 processes"):
        train.pretrain(train.PretrainConfig(**PRETRAIN), "unused", None, None, None, "unused")


def test_set_threads_takes_a_number_or_the_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert distributed.set_threads(3) == 3 and torch.get_num_threads() == 3
        monkeypatch.setattr(distributed, "free_cores", lambda: 4)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on this node
        assert distributed.set_threads(0) == 2
        with pytest.raises(ValueError, match="threads must be 0"):
            distributed.set_threads(-1)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not Path("/proc/loadavg").is_file(), reason="needs Linux's /proc/loadavg")
def test_free_cores_leaves_out_a_busy_process() -> None:
    cores = len(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert 1 <= distributed.free_cores() <= max(1, cores - 1)
    finally:
        busy.kill()
        busy.wait()
