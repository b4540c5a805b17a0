"""``wsi-tools train`` and ``wsi-tools evaluate``.

Torch is imported inside the handlers only, so ``wsi-tools --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from wsi_tools.cli._common import add_command, add_print_config, print_config
from wsi_tools.options import load_layered
from wsi_tools.train.config import TrainConfig, describe_keys, load_config

if TYPE_CHECKING:
    from wsi_tools.train.data import PatchRef

TRAIN_DESCRIPTION = """\
Train the ResNet18 patch classifier from a patch store (the weak model of
Lee et al. 2024; the mining pipeline reuses it for the strong model).

Slides of the sets in train_sets are split by slide into train/val/test,
seeded and stratified by slide label (6:2:2); the split is saved as
splits.csv. Training: BCEWithLogitsLoss, Adam, cosine annealing stepped per
batch, the checkpoint with the lowest validation loss kept as best.pt. The
run folder then gets predictions.csv (val and test patches), metrics.json
(test split, bootstrap 95% CIs, slide level from the max patch), roc.png,
pr.png and loss.png.

Several GPUs: torchrun --nproc_per_node=N -m wsi_tools train ... (DDP; rank 0 writes).
"""

TRAIN_EPILOG = "config keys (override any with --set key=value):\n"

EVALUATE_DESCRIPTION = """\
Score one split of a trained model's own slide splits (from the checkpoint)
and write predictions.csv, metrics.json (AUROC, AUPRC of the positive class,
F1 of the positive class, sensitivity, specificity at the threshold, log loss,
each with a bootstrap 95% CI, plus slide-level metrics), roc.png and pr.png.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate``."""
    parser = subparsers.add_parser(
        "train",
        help="train the patch classifier from a patch store",
        description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EPILOG + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="training config (default: built-in defaults, the same as configs/train.yaml)",
    )
    parser.add_argument("--store", metavar="STORE", help="patch store (default: the config's store)")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder to write (default: the config's out)")
    parser.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue from a checkpoint (last.pt); without --config its own config is used (default: off)",
    )
    parser.add_argument(
        "--mined",
        metavar="CSV",
        help="mined.csv from `wsi-tools mine`: its weak patches join the training split as negatives "
        "(step 4, the strong model); needs the weak run's splits, --set splits_file=RUN/splits.csv "
        "(default: none)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, value read as YAML; repeatable, e.g. --set epochs=2 --set input_size=64",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)"
    )
    add_print_config(parser)
    parser.set_defaults(func=run_train)

    evaluate = add_command(
        subparsers, "evaluate", "score a trained model on one split of its slides", EVALUATE_DESCRIPTION
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT", help="best.pt or last.pt of a run")
    evaluate.add_argument(
        "--store", required=True, metavar="STORE", help="the patch store the model was trained from"
    )
    evaluate.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split to score (default: test)"
    )
    evaluate.add_argument(
        "--out", metavar="DIR", help="output folder (default: <checkpoint folder>/eval-<split>)"
    )
    evaluate.add_argument(
        "--threshold", type=float, help="decision threshold (default: the training config's, 0.1)"
    )
    evaluate.add_argument(
        "--bootstrap", type=int, help="bootstrap resamples for the CIs (default: the training config's, 1000)"
    )
    evaluate.add_argument("--batch-size", type=int, help="patches per batch (default: the training config's)")
    evaluate.add_argument(
        "--device", help="auto | cpu | cuda | cuda:N (default: the training config's, auto)"
    )
    evaluate.add_argument("--workers", type=int, default=2, help="loader worker processes (default: 2)")
    evaluate.add_argument(
        "--json", action="store_true", help="print the metrics as JSON (default: a short table)"
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=run_evaluate)


def _summary(metrics: dict) -> str:
    if not metrics.get("split"):
        return metrics.get("note", "no metrics")

    def fmt(entry: dict) -> str:
        value, (low, high) = entry["value"], entry["ci95"]
        if value is None:
            return "n/a"
        return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")

    names = ("auroc", "auprc", "f1", "sensitivity", "specificity", "log_loss")
    lines = [
        f"{metrics['split']} split, threshold {metrics['threshold']}: {metrics['n']} patches ({metrics['n_positive']} positive)"
    ]
    lines += [f"  patch {name:<12} {fmt(metrics[name])}" for name in names]
    slide = metrics.get("slide_level")
    if slide:
        lines += [f"  slide {name:<12} {fmt(slide[name])}" for name in names]
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    from wsi_tools.train.checkpoint import read_checkpoint
    from wsi_tools.train.trainer import train

    if args.resume and not args.config:
        # Continue with the checkpoint's own recipe, plus any --set.
        recipe = (f"{args.resume} (config)", read_checkpoint(args.resume)["config"])
        config = load_layered(None, args.overrides, TrainConfig.from_mapping, base=recipe)
    else:
        config = load_config(args.config, args.overrides)
    if args.print_config:
        return print_config(config.to_dict())
    mined = _mined_negatives(args.mined, config, args.store) if args.mined else []
    result = train(
        config,
        args.store,
        args.out,
        resume=args.resume,
        extra_train_negatives=mined,
        progress=False if args.no_progress else None,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(_summary(result.metrics))
        print(f"run folder: {result.run_dir}  best checkpoint: {result.best_checkpoint}")
    return 0


def _mined_negatives(csv_path: str, config: TrainConfig, store_arg: str | None) -> list[PatchRef]:
    """The mined patches of ``csv_path``, checked against the splits they will train with."""
    from wsi_tools.config_file import required_path
    from wsi_tools.errors import ConfigError
    from wsi_tools.mining.mine import check_mined_against_splits, read_mined_csv
    from wsi_tools.train.data import open_store
    from wsi_tools.train.splits import read_splits_csv

    if not config.splits_file:
        raise ConfigError(
            f"--mined {csv_path}: train the strong model on the weak model's splits, or the false positives "
            "it was mined for may sit in this run's test split: add --set splits_file=WEAK_RUN/splits.csv"
        )
    store = open_store(
        required_path(
            store_arg, getattr(config, "store", None), flag="--store STORE", key="store", what="store"
        )
    )
    mined = read_mined_csv(csv_path, store)
    check_mined_against_splits(mined, read_splits_csv(config.splits_file), csv_path)
    return list(mined.refs)


def run_evaluate(args: argparse.Namespace) -> int:
    from wsi_tools.train.evaluation import evaluate

    metrics = evaluate(
        args.checkpoint,
        args.store,
        args.split,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        threshold=args.threshold,
        bootstrap=args.bootstrap,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    if args.json:
        json.dump(metrics, sys.stdout, indent=2)
        print()
    else:
        print(_summary(metrics))
    return 0
