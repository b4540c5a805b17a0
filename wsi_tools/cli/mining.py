"""``wsi-tools mine``, ``run``, ``ablate`` and ``demo``: the hard negative mining method.

Torch, zarr and the pipelines are imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import sys

from wsi_tools.cli._common import add_command, add_print_config, print_config
from wsi_tools.options import add_flags

MINE_DESCRIPTION = """\
Steps 2-3 of the method for a trained weak model: its false positives
(label-0 patches of its own training split scored >= --threshold; --fp-source
val or train+val instead; the test split never), then for each the --alpha
nearest weak-set patches by exact kNN on the model's 512-d features. Hits
shared by several false positives are kept once (best distance); patches
already in training and slides of the validation or test split are never
mined. Writes DIR/mined.csv (query_slide_id,query_x,query_y,slide_id,x,y,
distance,rank; for cosine, distance = 1 - similarity), DIR/false_positives.csv
and the weak-set feature cache DIR/embeddings-<key>.zarr (reused by the next
run with the same checkpoint and store).
"""

RUN_DESCRIPTION = """\
The four-step pipeline of Lee et al. (2024), per seed: (1) weak model,
(2) its false positives, (3) mining in the weak set, (4) strong model with
the same recipe, splits and initial weights, trained on the training patches
plus the mined ones. Both models are scored on the same untouched test split.
Writes OUT/report.md and report.json (Table 2: mean ± SD over seeds of AUROC,
AUPRC, F1, sensitivity and specificity for weak, strong and relative delta;
false positives and mined patches per seed), and per seed
OUT/seed_<s>/{weak,strong}/ (the trainer's run folders), mining/, tsne.png,
gradcam.png and mined_gallery.png.
"""

ABLATE_DESCRIPTION = """\
Ablations in the form of the paper's Tables 3-5, each over seeds, gathered in
OUT/report.md and report.json: the alpha sweep, L2 vs cosine (the weak model
of a seed is trained once and reused by every alpha/metric condition), a
limited dataset (a fraction of the training patches) and imbalance (a
fraction of the training positives), each with its own weak and strong model.
"""

DEMO_DESCRIPTION = """\
The whole method on a synthetic cohort, on the CPU: generates small Aperio
SVS slides with ASAP XML annotations (lymphatic invasion: tumour-cell
clusters in thin-walled lymphatics; negatives: empty vessels and vessels with
red cells; weak slides without LI but with mimics: red-cell vessels and glands
with retraction spaces), extracts them with the batch engine into a patch
store, runs the four-step pipeline with configs/demo.yaml and prints the
weak vs strong table (plus false positives on 2 held-out weak slides).
About 4 minutes on 2 idle cores; see docs/mining.md for measured results.
"""

SET_HELP = (
    "override a config key, value read as YAML; dotted keys reach into sections; repeatable, "
    "e.g. --set seeds=[0] --set train.epochs=2 --set mining.alpha=10"
)


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    add_print_config(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mine``, ``run``, ``ablate`` and ``demo``."""

    mine = add_command(
        subparsers, "mine", "false positives + kNN mining for a trained weak model", MINE_DESCRIPTION
    )
    mine.add_argument("--checkpoint", required=True, metavar="CKPT", help="the weak model (best.pt of a run)")
    mine.add_argument("--store", required=True, metavar="STORE", help="the patch store it was trained from")
    mine.add_argument(
        "--out", required=True, metavar="DIR", help="folder for mined.csv and the feature cache"
    )
    from wsi_tools.mining.mine import MiningConfig

    add_flags(mine, MiningConfig, ("threshold", "fp_source", "alpha", "metric", "knn_backend"))
    mine.add_argument(
        "--exclude-slide",
        action="append",
        default=[],
        metavar="SLIDE_ID",
        help="a weak slide to keep out of the mining pool, e.g. one held out for evaluation (repeatable; default none)",
    )
    add_flags(mine, MiningConfig, ("batch_size", "num_workers", "device"))
    mine.add_argument("--no-progress", action="store_true", help="no progress bars (default: on a terminal)")
    add_print_config(mine)
    mine.set_defaults(func=run_mine)

    run = add_command(
        subparsers, "run", "the four-step hard negative mining pipeline over seeds", RUN_DESCRIPTION
    )
    run.add_argument("--config", metavar="YAML", help="pipeline config (default configs/hnm.yaml)")
    run.add_argument(
        "--store", metavar="STORE", help="patch store with hard and weak sets (default: config's)"
    )
    run.add_argument("--out", metavar="DIR", help="output folder (default: config's)")
    _add_set(run)
    run.set_defaults(func=run_run)

    ablate = add_command(
        subparsers, "ablate", "alpha, metric, dataset-size and imbalance ablations", ABLATE_DESCRIPTION
    )
    ablate.add_argument("--config", metavar="YAML", help="ablation config (default configs/ablation.yaml)")
    ablate.add_argument("--store", metavar="STORE", help="patch store (default: config's)")
    ablate.add_argument("--out", metavar="DIR", help="output folder (default: config's)")
    ablate.add_argument(
        "--only",
        action="append",
        choices=("alpha", "metric", "limited", "imbalance"),
        default=None,
        help="run only these studies (repeatable; default: every study enabled in the config)",
    )
    _add_set(ablate)
    ablate.set_defaults(func=run_ablate)

    demo = add_command(
        subparsers,
        "demo",
        "the whole method on a generated synthetic cohort (CPU, minutes)",
        DEMO_DESCRIPTION,
    )
    demo.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    demo.add_argument("--config", metavar="YAML", help="demo config (default configs/demo.yaml)")
    demo.add_argument(
        "--workers",
        type=int,
        default=None,
        help="batch extraction worker processes (default: the config's, 2)",
    )
    _add_set(demo)
    demo.set_defaults(func=run_demo)


def run_mine(args: argparse.Namespace) -> int:
    from wsi_tools.mining.mine import MiningConfig, run_mining
    from wsi_tools.options import from_mapping, given_flags, to_plain
    from wsi_tools.train.checkpoint import read_checkpoint

    flags = given_flags(args, MiningConfig)
    if "threshold" not in flags:  # the model's own decision threshold
        flags["threshold"] = float(read_checkpoint(args.checkpoint)["config"].get("threshold", 0.1))
    config: MiningConfig = from_mapping(
        MiningConfig, {**flags, "progress": not args.no_progress}, "command line"
    )
    if args.print_config:
        return print_config(to_plain(config))
    result = run_mining(args.checkpoint, args.store, args.out, config, exclude_slides=args.exclude_slide)
    fps = result.false_positives
    print(
        f"{len(fps.table)} false positive(s) among {fps.n_candidates} {config.fp_source} negatives "
        f"(threshold {config.threshold}); {len(result.mined)} weak patch(es) mined from {result.weak_pool_size} "
        f"(alpha {config.alpha}, {config.metric}); features {'reused from' if result.cache_reused else 'cached in'} "
        f"{result.cache_path}"
    )
    print(f"mined list: {result.csv_path}")
    return 0


def run_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wsi_tools.pipelines.hnm import load_hnm_config, run_pipeline

    config = load_hnm_config(args.config, args.overrides)
    if args.print_config:
        return print_config(config.to_dict())
    run_pipeline(config, args.store, args.out)
    print((Path(args.out or config.out) / "report.md").read_text())
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wsi_tools.pipelines.ablation import load_ablation_config, run_ablation

    config = load_ablation_config(args.config, args.overrides)
    if args.print_config:
        return print_config(config.to_dict())
    run_ablation(config, args.store, args.out, only=args.only)
    print((Path(args.out or config.hnm.out) / "report.md").read_text())
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from wsi_tools.pipelines import demo

    config = demo.load_demo_config(args.config, args.overrides)
    if args.print_config:
        return print_config(config.to_dict())
    result = demo.run_demo(config, args.out, workers=args.workers)
    print(result.summary)
    sys.stdout.flush()
    return 0
