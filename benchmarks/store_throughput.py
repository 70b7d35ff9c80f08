"""Packed store vs GeoTIFFs: packing speed and size, decoding samples/s, BYOL training, memory.

All in one run, on embedded corpora generated here (in --workdir, kept for reruns):
1. Packing throughput (sites/s, dask threads) and size, fast and archive layouts, vs GeoTIFF size.
2. Decoding samples/s, one date ("random") and two dates ("pair") per sample, in the main
   process and with 1 and 2 DataLoader workers: GeoTIFF files vs the fast and archive stores,
   the same samples (a seeded sampler), through the Datasets training uses; "raw" hands uint16
   (the GPU path: normalised on the device). Each worker's first batch is not timed. A
   "no-read" Dataset hands batches of the same shape without reading anything: the most a
   DataLoader moves between processes here, so the ceiling of any reader with workers.
3. BYOL training samples/s at 64 px views (ResNet-18, CPU, one loader worker) from the store vs
   from the GeoTIFFs, with the share of step time spent waiting for data.
4. Peak memory (ru_maxrss of a fresh process) of one `train.pretrain` epoch from the store at
   1x and 4x the number of sites.
Ratios compare numbers measured in the same run. Prints a table and writes JSON (atomically).
A script, not a test: ``python benchmarks/store_throughput.py --help``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from rapid_utils import byol, datasets, models, study, train
from rapid_utils.corpus import store
from rapid_utils.corpus.synthetic import generate_corpus
from rapid_utils.io import write_json_atomic
from rapid_utils.train import pretraining, runtime


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=48, help="sites of the 200 px corpus")
    parser.add_argument("--size", type=int, default=200, help="chip side of the decode corpus")
    parser.add_argument("--samples", type=int, default=960, help="samples per decode timing")
    parser.add_argument("--train-steps", type=int, default=6, help="timed BYOL steps per reader")
    parser.add_argument("--memory-sites", type=int, default=64,
                        help="sites of the 1x memory corpus (64 px); 4x is four times that")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir())
                        / "rapid-store-bench", help="corpora and stores (kept for reruns)")
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/store_throughput.json"))
    return parser.parse_args(argv)


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob(pattern) if f.is_file())


def pack_timed(corpus: Path, out: Path, layout_name: str) -> dict:
    """Pack afresh (an existing store is removed first) and time it."""
    if out.exists():
        shutil.rmtree(out)
    report = store.pack(corpus, out, layout_name=layout_name, scheduler="threads", workers=2,
                        progress=False)
    return {"layout": layout_name, "sites": report.packed, "seconds": report.seconds,
            "sites_per_s": report.packed / report.seconds,
            "bytes": folder_bytes(out / store.REFLECTANCE)}


class NoReading(Dataset):
    """Uninitialised raw batches shaped like a store Dataset's: DataLoader transport alone."""

    def __init__(self, like: datasets.PackedStoreDataset, dates: int) -> None:
        self.length, self.dates, self.chip = len(like), dates, like.store.shape[2:]

    def __len__(self) -> int:
        return self.length

    def __getitems__(self, items: list[int]) -> dict:
        images = torch.empty((self.dates, len(items), *self.chip), dtype=torch.uint16)
        return {"image": images[0], "label": torch.zeros(len(items), dtype=torch.long)} | (
            {"image2": images[1]} if self.dates == 2 else {})


def decode_rate(dataset, samples: int, workers: int, batch_size: int = 16) -> float:
    """Samples/s through a DataLoader over a seeded sample; each worker's first batch (start-up:
    imports, opening the store) is not timed."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=samples,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=datasets.keep_batch,
                        generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    for _ in range(max(1, workers)):
        next(iterator)
    start, count = time.perf_counter(), 0
    for batch in iterator:
        count += len(batch["label"])
    return count / (time.perf_counter() - start)


def byol_rate(dataset, steps: int, batch_size: int = 32, image_size: int = 64) -> dict:
    """BYOL steps from `dataset` (one loader worker): samples/s and share of time waiting."""
    torch.manual_seed(0)
    encoder = models.build_model("resnet18", 4, 0, "random")
    model = byol.BYOL(encoder, models.feature_dim(encoder), 512, 128)
    optimizer = byol.LARS(byol.parameter_groups(model, 1.5e-6), lr=0.05, momentum=0.9)
    config = train.PretrainConfig(arch="resnet18", image_size=image_size)
    views_rng = torch.Generator().manual_seed(0)
    loader = runtime.make_loader(dataset, batch_size, 0, shuffle=True, num_workers=1,
                                  drop_last=True, samples_per_epoch=batch_size * (steps + 2))
    iterator = iter(loader)
    waits, totals = [], []
    for step in range(steps + 2):
        start = time.perf_counter()
        batch = next(iterator)
        waited = time.perf_counter() - start
        view1, view2 = pretraining._byol_views(batch, config, views_rng, torch.device("cpu"),
                                               dataset)
        loss = model(view1, view2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(0.99)
        if step >= 2:  # two warm-up steps: worker start-up, first allocations
            waits.append(waited)
            totals.append(time.perf_counter() - start)
    return {"samples_per_s": batch_size * len(totals) / sum(totals),
            "wait_share": sum(waits) / sum(totals), "batch_size": batch_size,
            "image_size": image_size, "steps": len(totals)}


def _pretrain_epoch(corpus: str, runs: str) -> dict:
    """One BYOL epoch from `corpus` in a fresh process; report its peak RSS."""
    torch.set_num_threads(2)
    data = study.load_study(corpus, runs, stats_sites=32)
    config = train.PretrainConfig(arch="resnet18", epochs=1, batch_size=32, image_size=32,
                                  warmup_epochs=0, hidden_dim=256, projection_dim=64,
                                  knn_sites=64, num_workers=1)
    start = time.perf_counter()
    train.pretrain(config, data.corpus, data.sites("train"), data.sites("val"), data.band_stats,
                   Path(runs) / "byol", progress=False)
    return {"train_sites": int((data.split == "train").sum()),
            "seconds": time.perf_counter() - start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peak_memory(corpus_store: Path, runs: Path) -> dict:
    """Peak RSS of `_pretrain_epoch` in a fresh process (DataLoader workers not counted)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_pretrain_epoch, str(corpus_store), str(runs)).result()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    print(f"corpora and stores in {work}", flush=True)
    corpus = generate_corpus(work / f"corpus-{args.sites}x{args.size}", n_sites=args.sites,
                             seed=0, size=args.size, workers=2, progress=False)

    print("packing ...", flush=True)
    packing = [pack_timed(corpus, work / f"{name}.zarr", name) for name in store.LAYOUTS]
    geotiff_bytes = folder_bytes(corpus / "imagery", "PF-SR/*.tif")

    print("decoding ...", flush=True)
    data = study.load_study(corpus, work / "runs", stats_sites=32)
    readers = {"geotiff": corpus, "store-fast": work / "fast.zarr",
               "store-archive": work / "archive.zarr", "store-fast-raw": work / "fast.zarr"}
    decode = []
    for sampling, dates in (("random", 1), ("pair", 2)):
        for workers in (0, 1, 2):  # 0: in the main process, no worker IPC
            row = {"dates": dates, "workers": workers}
            for name, root in readers.items():
                # raw: uint16 items, normalised later on the batch's device (the GPU path)
                dataset = datasets.open_dataset(root, data.index, data.band_stats, sampling,
                                                raw=name.endswith("raw"))
                row[name] = decode_rate(dataset, args.samples, workers)
            row["no-read"] = decode_rate(NoReading(dataset, dates), args.samples, workers)
            decode.append(row)
            print(f"  {dates} date(s), {workers} worker(s): "
                  + ", ".join(f"{k} {row[k]:.0f}/s" for k in [*readers, "no-read"]), flush=True)

    print("BYOL steps ...", flush=True)
    training = {}
    for name in ("geotiff", "store-fast"):
        dataset = datasets.open_dataset(readers[name], data.sites("train"), data.band_stats,
                                        "random")
        training[name] = byol_rate(dataset, args.train_steps)

    print("peak memory of a pretraining epoch ...", flush=True)
    memory = []
    for factor in (1, 4):
        small = generate_corpus(work / f"corpus-{args.memory_sites * factor}x64",
                                n_sites=args.memory_sites * factor, seed=1, size=64, workers=2,
                                progress=False)
        out = work / f"memory-{factor}x.zarr"
        store.pack(small, out, scheduler="threads", workers=2, progress=False)
        runs = work / f"runs-memory-{factor}x"
        shutil.rmtree(runs, ignore_errors=True)
        memory.append({"factor": factor, "sites": args.memory_sites * factor,
                       **peak_memory(out, runs)})

    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
               "python": platform.python_version(), "torch": torch.__version__,
               "date": dt.date.today().isoformat()}
    print(f"\n{args.sites} sites x 24 monthly dates x 4 bands x {args.size} px; "
          f"{machine['cpu_count']} cores; warm page cache")
    print(f"{'':<16}{'bytes':>14}{'x GeoTIFF':>10}{'pack sites/s':>14}")
    print(f"{'GeoTIFF (PF-SR)':<16}{geotiff_bytes:>14,}{1:>10.2f}{'':>14}")
    for row in packing:
        print(f"{'store ' + row['layout']:<16}{row['bytes']:>14,}"
              f"{row['bytes'] / geotiff_bytes:>10.2f}{row['sites_per_s']:>14.1f}")
    columns = [*readers, "no-read"]
    print(f"\n{'dates':>5}{'workers':>8}" + "".join(f"{k + ' /s':>20}" for k in columns)
          + f"{'fast/GeoTIFF':>14}{'raw/GeoTIFF':>13}{'archive/GeoTIFF':>17}"
          + f"{'no-read/GeoTIFF':>17}")
    for row in decode:
        print(f"{row['dates']:>5}{row['workers']:>8}"
              + "".join(f"{row[k]:>20.0f}" for k in columns)
              + f"{row['store-fast'] / row['geotiff']:>14.1f}"
              + f"{row['store-fast-raw'] / row['geotiff']:>13.1f}"
              + f"{row['store-archive'] / row['geotiff']:>17.1f}"
              + f"{row['no-read'] / row['geotiff']:>17.1f}")
    print("\nBYOL training, ResNet-18, batch 32, 64 px views, 1 loader worker, CPU")
    for name, row in training.items():
        print(f"  {name:<12}{row['samples_per_s']:>8.1f} samples/s, data wait "
              f"{row['wait_share']:.1%} of step time")
    print(f"  store / GeoTIFF: "
          f"{training['store-fast']['samples_per_s'] / training['geotiff']['samples_per_s']:.2f}")
    print("\nPeak RSS of one pretraining epoch from the store (fresh process, 64 px, batch 32)")
    for row in memory:
        print(f"  {row['factor']}x: {row['sites']} sites ({row['train_sites']} train), "
              f"{row['peak_rss_mib']:.0f} MiB, {row['seconds']:.0f} s")

    write_json_atomic(args.out, {
        "benchmark": "store_throughput", "machine": machine, "sites": args.sites,
        "size": args.size, "geotiff_bytes": geotiff_bytes, "packing": packing,
        "decode_samples_per_s": decode, "byol_training": training, "peak_memory": memory,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
