"""The checks behind the README's "What we found": why BYOL does not beat scratch on `quick`.

Not part of the batch; each check reads the quick corpus and its BYOL checkpoint (run
`make reproduce` first) and prints a table. Slow on a laptop CPU (minutes per fine-tuning run).

    python experiments/byol_checks.py finetune --init random --fraction 0.01 --seeds 0-9
    python experiments/byol_checks.py finetune --init byol --fraction 1 --lr 3e-4
    python experiments/byol_checks.py finetune --init byol --fraction 0.01 --linear-probe
    python experiments/byol_checks.py pretrain --name views64 --image-size 64 --epochs 10
    python experiments/byol_checks.py probe --dates 0 6

`finetune` writes results under runs/quick-checks/<name>/ (never over the batch's results);
`pretrain` trains a BYOL variant there (then `finetune --init byol --checkpoint ...`);
`probe` fits a logistic regression on frozen features of one date per site, for 1/10/100 %
label subsets (drawn as fine-tuning draws them): BYOL encoders against a random-init encoder
and per-band mean and standard deviation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from rapid_utils import models, paths, splits, train
from rapid_utils.datasets import open_dataset
from rapid_utils.study import Study, load_study

QUICK = "quick"


def seed_list(text: str) -> list[int]:
    """"0-9" or "0,3,5" as a list of seeds."""
    if "-" in text:
        first, last = map(int, text.split("-"))
        return list(range(first, last + 1))
    return [int(seed) for seed in text.split(",")]


def quick_study() -> Study:
    corpus = paths.synthetic_corpus_dir(QUICK)
    if not corpus.is_dir():
        sys.exit(f"no quick corpus at {corpus}: run `make reproduce` first")
    return load_study(corpus, paths.runs_dir(QUICK))


def quick_checkpoint() -> Path:
    return paths.byol_run_dir(paths.runs_dir(QUICK), "augment", 0) / paths.CHECKPOINT_FILE


def run_finetune(args: argparse.Namespace) -> None:
    study = quick_study()
    checkpoint = args.checkpoint or quick_checkpoint()
    init = f"byol:{checkpoint}" if args.init == "byol" else args.init
    name = args.name or f"{args.init}_lr{args.lr:g}{'_linear' if args.linear_probe else ''}"
    rows = []
    for seed in seed_list(args.seeds):
        config = train.FinetuneConfig(
            arch="resnet18", init=init, label_fraction=args.fraction, epochs=10, batch_size=32,
            lr=args.lr, seed=seed, linear_probe=args.linear_probe, min_samples_per_epoch=512,
        )
        out = paths.runs_dir(f"{QUICK}-checks") / name / train.results_name(config)
        result = train.finetune(config, study.corpus, study.sites("train"), study.sites("val"),
                                study.sites("test"), study.band_stats, out, progress=False)
        rows.append({"seed": seed, "test_accuracy": 100 * result["per_epoch"]["test_accuracy"][-1]})
        print(f"{name} fraction {args.fraction:g} seed {seed}: {rows[-1]['test_accuracy']:.1f} %",
              flush=True)
    table = pd.DataFrame(rows).set_index("seed")
    print(table.round(1).to_string())
    print(f"mean {table['test_accuracy'].mean():.1f} ± {table['test_accuracy'].std():.1f} %")


def run_pretrain(args: argparse.Namespace) -> None:
    study = quick_study()
    config = train.PretrainConfig(
        arch="resnet18", epochs=args.epochs, batch_size=32, base_lr=1.0, lars_trust=0.02,
        image_size=args.image_size, positives=args.positives, colour_jitter=args.colour_jitter,
        hidden_dim=1024, projection_dim=128, knn_sites=500,
    )
    out = paths.runs_dir(f"{QUICK}-checks") / "byol" / args.name
    train.pretrain(config, study.corpus, study.pretraining_sites(), study.sites("val"),
                   study.band_stats, out, progress=True)
    print(f"checkpoint: {out / paths.CHECKPOINT_FILE}")


def images_at(study: Study, split: str, positions: list[int]
              ) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Normalised images (N, P, 4, H, W) of a split's sites at date `positions`, their labels
    and the dates; each site's series is read once for all positions."""
    dataset = open_dataset(study.corpus, study.sites(split), study.band_stats, "all")
    items = [dataset[i] for i in range(len(dataset))]
    return (torch.stack([item["image"][positions] for item in items]),
            np.array([int(item["label"]) for item in items]),
            [items[0]["date"][position] for position in positions])


@torch.no_grad()
def encode(encoder: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    return torch.cat([encoder(images[i:i + 128]) for i in range(0, len(images), 128)]).numpy()


def run_probe(args: argparse.Namespace) -> None:
    study = quick_study()
    torch.manual_seed(0)
    encoders = {"random init": models.build_model("resnet18", 4, 0, "random").eval()}
    for checkpoint in args.checkpoints or [quick_checkpoint()]:
        encoders[Path(checkpoint).parent.name] = models.build_model(
            "resnet18", 4, 0, f"byol:{checkpoint}").eval()
    train_sites = study.sites("train")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))  # refit
    rows = []
    train_series, train_y, dates = images_at(study, "train", args.dates)
    test_series, test_y, _ = images_at(study, "test", args.dates)
    for k, date in enumerate(dates):
        train_x, test_x = train_series[:, k], test_series[:, k]
        features = {"band mean+std": tuple(
            torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1).numpy()
            for x in (train_x, test_x))}
        features |= {name: (encode(enc, train_x), encode(enc, test_x))
                     for name, enc in encoders.items()}
        for fraction in (0.01, 0.1, 1.0):
            for name, (train_f, test_f) in features.items():
                scores = []
                for seed in range(args.subsets if fraction < 1 else 1):
                    chosen = splits.label_fraction(train_sites, fraction, seed)["sample_id"]
                    mask = train_sites["sample_id"].isin(chosen).to_numpy()
                    probe.fit(train_f[mask], train_y[mask])
                    scores.append(100 * probe.score(test_f, test_y))
                rows.append({"date": date, "labels": f"{fraction:.0%}", "features": name,
                             "test_accuracy": np.mean(scores), "std": np.std(scores)})
                print(f"{date} {fraction:>5.0%} {name:<24} {rows[-1]['test_accuracy']:5.1f} "
                      f"± {rows[-1]['std']:.1f} %", flush=True)
    print(pd.DataFrame(rows).round(1).to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    finetune = commands.add_parser("finetune", help="fine-tune seeds, print test accuracy")
    finetune.add_argument("--init", choices=["random", "byol"], default="byol")
    finetune.add_argument("--checkpoint", type=Path, help="BYOL checkpoint (default: quick's)")
    finetune.add_argument("--fraction", type=float, default=1.0)
    finetune.add_argument("--seeds", default="0-2", help='"0-9" or "0,3,5"')
    finetune.add_argument("--lr", type=float, default=1e-3)
    finetune.add_argument("--linear-probe", action="store_true")
    finetune.add_argument("--name", help="results subfolder (default from the options)")
    pretrain = commands.add_parser("pretrain", help="a BYOL variant of quick's pretraining")
    pretrain.add_argument("--name", required=True)
    pretrain.add_argument("--image-size", type=int, default=32)
    pretrain.add_argument("--epochs", type=int, default=30)
    pretrain.add_argument("--colour-jitter", type=float, default=0.4)
    pretrain.add_argument("--positives", default="augment")
    probe = commands.add_parser("probe", help="label efficiency of frozen features")
    probe.add_argument("--checkpoints", nargs="*", type=Path, help="default: quick's BYOL")
    probe.add_argument("--dates", nargs="+", type=int, default=[0, 6],
                       help="date positions of the series (0: first month)")
    probe.add_argument("--subsets", type=int, default=5, help="label subsets per fraction")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    {"finetune": run_finetune, "pretrain": run_pretrain, "probe": run_probe}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
