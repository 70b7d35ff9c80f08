"""The `rapid-utils` command: generate the embedded corpus or example chips, download EuroSAT,
pack a corpus, run the notebook batch, train, export pretrained weights.

`pretrain` and `finetune` run the training loops without a notebook, e.g. on a cluster under
`torchrun`; every field of their config dataclass is an option (`--batch-size 4096`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from rapid_utils import batch, distributed, docs, download, models, paths, study, train
from rapid_utils.corpus import layout, store
from rapid_utils.corpus.reader import CorpusError
from rapid_utils.corpus.synthetic import generate_corpus
from rapid_utils.corpus.synthetic_chips import generate_example_chips


def _synth(args: argparse.Namespace) -> int:
    dates = args.dates if args.dates in ("monthly", "all") else args.dates.split(",")
    generate_corpus(args.out, n_sites=args.n_sites, seed=args.seed, size=args.size,
                    dates=dates, workers=args.workers)
    return 0


def _pack(args: argparse.Namespace) -> int:
    dates = args.dates if args.dates in ("monthly", "all") else args.dates.split(",")
    report = store.pack(args.corpus, args.out, dates=dates, size=args.size,
                        layout_name=args.layout, scheduler=args.scheduler, workers=args.workers,
                        address=args.address, verify=not args.no_verify)
    logging.info("%s: %d sites packed, %d reused, %d repacked, %d skipped in %.0f s",
                 report.store, report.packed, report.reused, report.repacked,
                 len(report.skipped), report.seconds)
    for row in report.skipped.itertuples():
        logging.warning("skipped %s: %s", row.sample_id, row.reason)
    return 0


def _example_chips(args: argparse.Namespace) -> int:
    root = generate_example_chips(args.out, per_class=args.per_class,
                                  n_unlabelled=args.unlabelled, size=args.size, seed=args.seed,
                                  classes=args.classes)
    logging.info("example chips in %s (13 bands, EuroSAT order: Blue, Green, Red, NIR are "
                 "bands 2, 3, 4, 8; unlabelled chips in %s)", root, root / "unlabelled")
    return 0


def _download(args: argparse.Namespace) -> int:
    try:
        download.download_eurosat(args.out, url=args.url, md5=args.md5, sha256=args.sha256)
    except download.DownloadError as error:
        logging.error("error: %s", error)
        return 2
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    runs = batch.reproduce(args.profile, tuple(args.extra), force=args.force)
    counts = {status: sum(r.status == status for r in runs)
              for status in ("done", "reused", "skipped", "failed")}
    logging.info("%d jobs in %.0f s: %s", len(runs), time.perf_counter() - start,
                 ", ".join(f"{n} {status}" for status, n in counts.items()))
    for run in runs:
        if run.status == "skipped":
            logging.warning("skipped: %s: %s", run.name, run.error.splitlines()[0])
    for run in runs:
        if run.status == "failed":
            logging.error("failed: %s (%s); the executed notebook is kept at %s",
                          run.name, run.error, run.output)
    return 1 if counts["failed"] else 0


def _docs(args: argparse.Namespace) -> int:
    index = docs.build_docs(args.profile)
    logging.info("documentation: %s", index)
    return 0


def _add_config_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One option per field of a training config dataclass, with its default."""
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif field.default is None:
            parser.add_argument(flag, default=None)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)


def _config(args: argparse.Namespace, config_class: type):
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True,
                        help="corpus root (real or embedded), or a chips spec YAML file")
    parser.add_argument("--runs", required=True,
                        help="runs folder: band_stats.json, byol/ checkpoints, results/")
    parser.add_argument("--split-by", default="site", choices=("site", "tile"))
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the train/val/test split; keep it fixed across runs")
    parser.add_argument("--stats-sites", type=int, default=256,
                        help="training sites for band statistics when band_stats.json is missing")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process; 0: the cores no other process is busy on")


def _pretrain(args: argparse.Namespace) -> int:
    distributed.set_threads(args.threads)
    config = _config(args, train.PretrainConfig)
    data = study.load_study(args.corpus, args.runs, args.split_by, args.split_seed,
                            args.stats_sites)
    out_dir = paths.byol_run_dir(Path(args.runs), config.positives, config.seed)
    history = train.pretrain(config, data.corpus, data.pretraining_sites(), data.sites("val"),
                             data.band_stats, out_dir, split_fingerprint=data.split_fingerprint)
    logging.info("pretrained %d epochs -> %s", len(history), out_dir / train.CHECKPOINT_FILE)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    distributed.set_threads(args.threads)
    args.init = study.resolve_init(args.init, args.runs, args.positives, args.byol_seed,
                                   args.byol_checkpoint)
    config = _config(args, train.FinetuneConfig)
    data = study.load_study(args.corpus, args.runs, args.split_by, args.split_seed,
                            args.stats_sites)
    results_path = paths.results_dir(Path(args.runs)) / train.results_name(config)
    results = train.finetune(config, data.corpus, data.sites("train"), data.sites("val"),
                             data.sites("test"), data.band_stats, results_path, force=args.force,
                             class_names=data.class_names,
                             model_dir=paths.model_dir(Path(args.runs), results_path))
    logging.info("test accuracy %.3f -> %s", results["final"]["test"]["accuracy"], results_path)
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        description = models.export_encoder(args.checkpoint, args.out)
    except models.WeightsUnavailableError as error:
        logging.error("error: %s", error)
        return 2
    logging.info("encoder of %s -> %s (%s, %s, %s)", args.checkpoint, description.parent,
                 models.EXPORT_WEIGHTS, description.name, models.EXPORT_CARD)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `rapid-utils`."""
    parser = argparse.ArgumentParser(prog="rapid-utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the embedded synthetic corpus")
    synth.add_argument("--out", required=True, help="output folder (new or empty)")
    synth.add_argument("--n-sites", type=int, default=1000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=layout.SITE_SIZE_PX,
                       help="patch size in 3 m pixels (200 = the real 600 m site)")
    synth.add_argument("--dates", default="monthly",
                       help="'monthly' (24), 'all' (146) or comma-separated YYYY-MM-DD")
    synth.add_argument("--workers", type=int, default=2, help="worker processes")
    synth.set_defaults(func=_synth)

    pack = commands.add_parser(
        "pack", help="pack a corpus into one chunked store for fast training reads",
        description="Pack a GeoTIFF corpus into a Zarr store (STORE.zarr, a folder or an fsspec "
        "URL). Rerunning resumes an interrupted pack (verifying what is there) and appends "
        "sites new to the corpus. Pass the store as --corpus to pretrain/finetune.")
    pack.add_argument("--corpus", required=True, help="corpus root (real or embedded)")
    pack.add_argument("--out", required=True, help="the store, a name ending in .zarr")
    pack.add_argument("--dates", default="monthly",
                      help="'monthly', 'all' or comma-separated YYYY-MM-DD")
    pack.add_argument("--size", type=int, default=None,
                      help="chip side in px (default: the corpus's; larger rasters are "
                      "centre-cropped)")
    pack.add_argument("--layout", default="fast", choices=store.LAYOUTS,
                      help="fast: uncompressed, for training; archive: zstd, smaller")
    pack.add_argument("--scheduler", default="threads", choices=store.SCHEDULERS,
                      help="local dask scheduler")
    pack.add_argument("--workers", type=int, default=None, help="local dask workers")
    pack.add_argument("--address", default=None,
                      help="dask.distributed scheduler address (e.g. tcp://host:8786)")
    pack.add_argument("--no-verify", action="store_true",
                      help="on resume, trust samples marked packed instead of re-reading them")
    pack.set_defaults(func=_pack)

    example = commands.add_parser(
        "example-chips", help="write an example chips folder in EuroSAT's format")
    example.add_argument("--out", required=True, help="output folder (new or empty)")
    example.add_argument("--classes", type=int, default=10, help="classes (EuroSAT has 10)")
    example.add_argument("--per-class", type=int, default=40, help="labelled chips per class")
    example.add_argument("--unlabelled", type=int, default=100,
                         help="unlabelled chips (in OUT/unlabelled)")
    example.add_argument("--size", type=int, default=64, help="chip side in px")
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(func=_example_chips)

    fetch = commands.add_parser(
        "download", help="download EuroSAT-MS (27,000 labelled 13-band chips) as a chips folder",
        description="Download EuroSAT-MS from its publisher into OUT/EuroSATallBands.zip "
        "(an interrupted download resumes), verify its checksum and unpack it as "
        "OUT/eurosat-ms/<ClassName>/*.tif. The verified archive is kept (2 GB; delete it once "
        "unpacked if you like); a complete OUT/eurosat-ms is left as it is.")
    fetch.add_argument("dataset", choices=("eurosat",), help="the labelled chips to download")
    fetch.add_argument("--out", required=True, help="folder for the archive and eurosat-ms/")
    fetch.add_argument("--url", default=download.EUROSAT_URL,
                       help="the archive's address (a mirror); default: the publisher's")
    checksum = fetch.add_mutually_exclusive_group()
    checksum.add_argument("--md5", default=None,
                          help="expected MD5 of the archive (default: the publisher's)")
    checksum.add_argument("--sha256", default=None, help="expected SHA-256 instead of an MD5")
    fetch.set_defaults(func=_download)

    reproduce = commands.add_parser("reproduce", help="run the notebook batch of a profile")
    reproduce.add_argument("--profile", default="quick", help="params/{profile}.yaml")
    reproduce.add_argument("--extra", action="append", default=[],
                           help="another YAML file overriding profile values (repeatable)")
    reproduce.add_argument("--force", action="store_true",
                           help="rerun fine-tuning even where a complete results file exists")
    reproduce.set_defaults(func=_reproduce)

    render = commands.add_parser("docs", help="render a profile's executed notebooks to HTML")
    render.add_argument("--profile", default="quick")
    render.set_defaults(func=_docs)

    pretrain = commands.add_parser("pretrain", help="BYOL pretraining (torchrun-ready)")
    _add_study_options(pretrain)
    _add_config_options(pretrain, train.PretrainConfig)
    pretrain.set_defaults(func=_pretrain)

    finetune = commands.add_parser("finetune", help="fine-tune and write a results file")
    _add_study_options(finetune)
    _add_config_options(finetune, train.FinetuneConfig)
    finetune.add_argument("--positives", default="augment",
                          help="with --init byol: which pretraining run's checkpoint to use")
    finetune.add_argument("--byol-seed", type=int, default=0,
                          help="with --init byol: the seed of that pretraining run")
    finetune.add_argument("--byol-checkpoint", default="",
                          help="with --init byol: a checkpoint path instead of the default")
    finetune.add_argument("--force", action="store_true", help="retrain over a complete result")
    finetune.set_defaults(func=_finetune)

    export = commands.add_parser(
        "export", help="write a BYOL checkpoint's encoder as weights that describe themselves",
        description="Write the encoder of a BYOL checkpoint as OUT/encoder.safetensors, "
        "OUT/encoder.json (bands, scale, per-band mean and std, input size, ground sampling "
        "distance, provenance) and OUT/MODEL_CARD.md; rapid_utils.models.load_pretrained(OUT) "
        "reads them back.")
    export.add_argument("--checkpoint", required=True,
                        help="a BYOL checkpoint, e.g. runs/quick/byol/byol_augment_seed0/"
                        "checkpoint.pt")
    export.add_argument("--out", required=True, help="output folder (files in it are replaced)")
    export.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rapid-utils` console script."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # our one line per notebook suffices
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (batch.ProfileError, batch.CorpusCheckError, CorpusError, FileExistsError,
            FileNotFoundError, ValueError) as error:
        logging.error("error: %s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
