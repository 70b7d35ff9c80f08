"""The `rapid-utils` command: generate the embedded corpus or example chips, download EuroSAT,
pack a corpus, run the notebook batch, train, export pretrained weights, show a profile.

`pretrain` and `finetune` run the training loops without a notebook, e.g. on a cluster under
`torchrun`: with `--profile` exactly as the batch's notebooks 03 and 04 would (same settings,
same files, so `reproduce --figures-only` draws their results), or with every field of their
config dataclass as an option (`--batch-size 4096`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from rapid_utils import (
    distributed,
    docs,
    download,
    models,
    notebook_batch,
    paths,
    results,
    study,
    train,
)
from rapid_utils.corpus import layout, store
from rapid_utils.corpus.reader import CorpusError
from rapid_utils.corpus.synthetic import generate_corpus
from rapid_utils.corpus.synthetic_chips import generate_example_chips
from rapid_utils.profile import Profile, ProfileError, load_profile
from rapid_utils.progress import gist


class UsageError(ValueError):
    """Options that cannot go together, or a missing one."""


def _synth(args: argparse.Namespace) -> int:
    dates = args.dates if args.dates in ("monthly", "all") else args.dates.split(",")
    generate_corpus(args.out, n_sites=args.n_sites, seed=args.seed, size=args.size,
                    dates=dates, workers=args.workers, dtype=args.dtype)
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
    runs = notebook_batch.reproduce(args.profile, tuple(args.extra), force=args.force,
                           figures_only=args.figures_only)
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


def _show_profile(args: argparse.Namespace) -> int:
    settings = load_profile(args.name, tuple(args.extra))
    print(yaml.safe_dump(settings.to_dict(), sort_keys=False, allow_unicode=True), end="")
    return 0


def _docs(args: argparse.Namespace) -> int:
    index = docs.build_docs(args.profile)
    logging.info("documentation: %s", index)
    if args.publish:
        copies = docs.publish_docs(args.profile, args.publish)
        size = sum(page.stat().st_size for page in copies) / 1e6
        logging.info("published %d pages (%.1f MB) to %s", len(copies), size, args.publish)
    return 0


def _add_config_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One option per field of a training config dataclass; a field left out keeps its
    default (absent from the parsed options, so that `--profile` can refuse the given ones)."""
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        shown = {"default": argparse.SUPPRESS, "help": f"default: {field.default}"}
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **shown)
        elif field.default is None:
            parser.add_argument(flag, **shown)
        else:
            parser.add_argument(flag, type=type(field.default), **shown)


# The study options' defaults (the Profile's; the split seed is its `seed`'s default), and the
# init without --init (FinetuneConfig's): read from their one home, not copied.
_PROFILE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Profile)}
OPTION_DEFAULTS = {name: _PROFILE_DEFAULTS[name] for name in ("store", "split_by", "stats_sites")}
OPTION_DEFAULTS |= {"split_seed": 0, "init": train.FinetuneConfig.init}
STUDY_OPTIONS = ("corpus", "runs", "split_by", "split_seed", "stats_sites")


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    chosen = parser.add_argument_group(
        "from a profile", "every training setting as `rapid-utils reproduce --profile` gives "
        "it to notebooks 03 and 04, so that the batch reuses what this writes; the options "
        "that set them are then refused (--threads aside)")
    chosen.add_argument("--profile", default=None, help="params/{profile}.yaml")
    chosen.add_argument("--extra", action="append", default=[],
                        help="another YAML file overriding profile values (repeatable; give the "
                        "batch the same files)")
    given = parser.add_argument_group("settings, without --profile")
    given.add_argument("--corpus", default=argparse.SUPPRESS,
                       help="corpus root (real or embedded), or a chips spec YAML file")
    given.add_argument("--runs", default=argparse.SUPPRESS,
                       help="runs folder: band_stats.json, byol/ checkpoints, results/")
    given.add_argument("--split-by", default=argparse.SUPPRESS, choices=("site", "tile"),
                       help="default: site")
    given.add_argument("--split-seed", type=int, default=argparse.SUPPRESS,
                       help="seed of the train/val/test split (default 0); keep it fixed "
                       "across runs")
    given.add_argument("--stats-sites", type=int, default=argparse.SUPPRESS,
                       help="training sites for band statistics when band_stats.json is "
                       "missing (default 256)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process; 0: the cores no other process is busy "
                        "on (default: the profile's threads, else 0)")


def _option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as options, in notebook 03's and 04's parameter names."""
    missing = [f"--{name}" for name in ("corpus", "runs") if not hasattr(args, name)]
    if missing:
        raise UsageError(f"give --profile, or --corpus and --runs ({' and '.join(missing)} "
                         "missing)")
    if args.extra or getattr(args, "scenario", None):
        raise UsageError("--extra and --scenario choose within a profile: give --profile too")
    return OPTION_DEFAULTS | vars(args) | {"corpus_dir": args.corpus, "runs_dir": args.runs}


def _profile_jobs(args: argparse.Namespace, notebook: str,
                  settings: tuple[str, ...]) -> list[notebook_batch.Job]:
    """The batch's jobs of `notebook` for `--profile`, refusing the `settings` options.

    The profile's corpus is resolved (the embedded corpus generated) by the first process
    alone, then by the others, which find it ready: torchrun starts several.
    """
    refused = [f"--{name.replace('_', '-')}" for name in settings if hasattr(args, name)]
    if refused:
        raise UsageError(
            f"{', '.join(refused)} cannot be combined with --profile, which sets every training "
            "setting as the batch does: change them in a YAML file given with --extra (and to "
            "`rapid-utils reproduce` too), or leave out --profile")
    values = notebook_batch.load_profile(args.profile, tuple(args.extra))
    context = distributed.setup()
    corpus = notebook_batch.resolve_corpus(args.profile, values) if context.is_main else None
    distributed.barrier(context)
    corpus = corpus or notebook_batch.resolve_corpus(args.profile, values)
    return [job for job in notebook_batch.plan_jobs(args.profile, values, corpus)
            if job.notebook == notebook]


def _set_threads(args: argparse.Namespace, values: dict[str, Any]) -> None:
    distributed.set_threads(int(values.get("threads") or 0) if args.threads is None
                            else args.threads)


def _pretrain(args: argparse.Namespace) -> int:
    if args.profile:
        settings = (*STUDY_OPTIONS, *(f.name for f in dataclasses.fields(train.PretrainConfig)))
        (job,) = _profile_jobs(args, "03_byol_pretraining", settings)
        values = notebook_batch.notebook_values(job.notebook, job.parameters)
    else:
        values = _option_values(args)
    _set_threads(args, values)
    config = study.pretrain_config(values)
    arguments = study.study_arguments(values)
    data = study.load_study(*arguments)
    out_dir = paths.byol_run_dir(arguments[1], config.positives, config.seed)
    history = train.pretrain(config, data.corpus, data.pretraining_sites(), data.sites("val"),
                             data.band_stats, out_dir, split_fingerprint=data.split_fingerprint,
                             guard_index=data.sites("train"))
    logging.info("pretrained %d epochs -> %s", len(history), out_dir / train.CHECKPOINT_FILE)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    if args.profile:
        settings = (*STUDY_OPTIONS, "positives", "byol_seed", "byol_checkpoint",
                    *(f.name for f in dataclasses.fields(train.FinetuneConfig)
                      if f.name != "seed"))  # --seed picks one of the profile's seeds
        planned = _profile_jobs(args, "04_finetuning", settings)
        seed = getattr(args, "seed", None)
        jobs = [job for job in planned if args.scenario in (None, job.scenario)
                and seed in (None, job.parameters["seed"])]
        if not jobs:
            raise ProfileError(
                f"profile {args.profile!r} plans no fine-tuning run of scenario "
                f"{args.scenario or 'any'} with seed {'any' if seed is None else seed}; its "
                f"scenarios: {list(dict.fromkeys(job.scenario for job in planned))}, seeds: "
                f"{sorted({job.parameters['seed'] for job in planned})}")
        chosen = [notebook_batch.notebook_values(job.notebook, job.parameters) for job in jobs]
    else:
        chosen = [_option_values(args)]
    _set_threads(args, chosen[0])
    arguments = study.study_arguments(chosen[0])  # one study: the batch's jobs share it
    data = study.load_study(*arguments)
    skipped = []
    for values in chosen:
        config = study.finetune_config(values, arguments[1])
        results_path = paths.results_dir(arguments[1]) / train.results_name(config)
        try:
            # as the batch does, a stale result of the profile is replaced
            written = train.finetune(
                config, data.corpus, data.sites("train"), data.sites("val"), data.sites("test"),
                data.band_stats, results_path, force=args.force,
                replace_stale=bool(args.profile), class_names=data.class_names,
                model_dir=paths.model_dir(arguments[1], results_path))
        except models.WeightsUnavailableError as error:
            if not args.profile:
                raise
            skipped.append(results_path.name)
            logging.warning("skipped %s: %s", results_path.name, gist(str(error)))
            continue
        logging.info("test accuracy %.3f -> %s", written["final"]["test"]["accuracy"],
                     results_path)
    if skipped:
        logging.warning("%d of %d runs skipped (their initial weights are missing): %s",
                        len(skipped), len(chosen), ", ".join(skipped))
    return 1 if skipped else 0


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
    synth.add_argument("--dtype", choices=("int16", "uint16"), default="int16",
                       help="PF-SR encoding: int16 with a -32768 nodata tag (the real form) "
                            "or uint16 without nodata")
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
    retrain = reproduce.add_mutually_exclusive_group()
    retrain.add_argument("--force", action="store_true",
                         help="rerun fine-tuning even where a complete results file exists")
    retrain.add_argument("--figures-only", action="store_true",
                         help="train nothing: draw the figures (notebook 05) from the profile's "
                         "fine-tuning results, made earlier or elsewhere (torchrun); an error "
                         "names any that is missing or stale")
    reproduce.set_defaults(func=_reproduce)

    show = commands.add_parser(
        "profile", help="show a profile's settings",
        description="Print a profile's every setting as YAML: its file, updated by each --extra "
        "file, with the defaults of the keys it leaves out (rapid_utils.profile.Profile).")
    show.add_argument("action", choices=("show",))
    show.add_argument("name", help="params/{name}.yaml")
    show.add_argument("--extra", action="append", default=[],
                      help="another YAML file overriding profile values (repeatable)")
    show.set_defaults(func=_show_profile)

    render = commands.add_parser("docs", help="render a profile's executed notebooks to HTML")
    render.add_argument("--profile", default="quick")
    render.add_argument("--publish", type=Path, default=None,
                        help="also copy the pages a reader needs (one fine-tuning run) here")
    render.set_defaults(func=_docs)

    pretrain = commands.add_parser("pretrain", help="BYOL pretraining (torchrun-ready)")
    _add_study_options(pretrain)
    _add_config_options(pretrain, train.PretrainConfig)
    pretrain.set_defaults(func=_pretrain)

    finetune = commands.add_parser("finetune", help="fine-tune and write a results file")
    _add_study_options(finetune)
    _add_config_options(finetune, train.FinetuneConfig)
    finetune.add_argument("--positives", default=argparse.SUPPRESS,
                          help="with --init byol: which pretraining run's checkpoint to use "
                          "(default: augment)")
    finetune.add_argument("--byol-seed", type=int, default=argparse.SUPPRESS,
                          help="with --init byol: the seed of that pretraining run (default 0)")
    finetune.add_argument("--byol-checkpoint", default=argparse.SUPPRESS,
                          help="with --init byol: a checkpoint path instead of the default")
    finetune.add_argument("--scenario", default=None, choices=list(results.SCENARIO_BY_KEY),
                          help="with --profile: this scenario only (default: all the profile's); "
                          "--seed likewise picks one of its seeds")
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
        with distributed.process_group():  # torchrun's group, joined by the command, is left
            return args.func(args)
    except (ProfileError, UsageError, notebook_batch.CorpusCheckError,
            notebook_batch.MissingResultsError, CorpusError, FileExistsError, FileNotFoundError,
            models.WeightsUnavailableError) as error:  # expected: the message says it all
        logging.error("error: %s", error)
        return 2
    except ValueError as error:  # a bad value deeper down: where it came from matters
        logging.error("error: %s", error, exc_info=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
