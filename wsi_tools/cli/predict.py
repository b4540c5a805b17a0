"""``wsi-tools predict``: a trained model applied to whole slides."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_tools.cli._common import add_command, add_print_config, print_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from wsi_tools.predict import CohortSlide, PredictConfig, Predictor, SlidePrediction

EXIT_SOME_FAILED = 3

DESCRIPTION = """\
Apply a trained patch classifier (best.pt of `wsi-tools train` or of a `run`
seed) to whole slides in a sliding window, as Kanavati et al. did: windows of
the checkpoint's patch size at its resolution, every --stride px (default half
a patch) over the tissue, scored in batches while reader threads read ahead.

Per slide, in OUT/<slide_id>/:
  tiles.csv            x,y,prob,tissue_fraction of every scored window (level-0 top-left)
  probability.npy      the map at stride resolution (overlapping windows averaged),
  probability.json     with its level-0 geometry
  heatmap.png          the thumbnail with the map, colour bar, tissue outline, scale bar
  predictions.xml      regions at or above the threshold, merged polygons (ASAP; holes
                       in their own group)
  predictions.geojson  the same for QuPath (annotations with classification and
                       measurements: mean and max probability, area)
  slide.json           scores, settings and provenance
  gradcam.png, .npz    with --gradcam: Grad-CAM (layer4) of the top-scoring regions, each
                       two patches wide, windows every --gradcam-stride px averaged
  gradcam_slide.png    with --gradcam-whole-slide: Grad-CAM of every tissue window every
  gradcam_slide.npy    --gradcam-stride px, averaged into cells of that stride (its map
                       and .json geometry; costly: its time is printed)
and OUT/slides.csv: slide_id, score_max (the slide score: the highest window),
score_topk (mean of the top k), n_tiles, n_positive, status.

Slides already predicted into OUT with the same checkpoint and settings are
skipped; with other settings they are refused (--overwrite predicts again). A
slide that fails (corrupt, no MPP: give --slide-mpp) is reported and the others
go on. With --workers N (or --scheduler) the slides run on Dask as in batch:
one task per slide, the model loaded once per worker. OUT/report.json (and
report.md, to read) and OUT/failures.json say what happened to every slide; a
progress bar over the slides shows on a terminal. On a machine with several
GPUs the slides are spread over them, one worker per GPU. Exit status: 0 all done,
3 some slides failed, 2 bad arguments.
"""

FLAGS = (
    "stride",
    "overlap",
    "threshold",
    "tissue_min",
    "top_k",
    "patch_size",
    "tolerance",
    "slide_mpp",
    "backend",
)
GRADCAM_FLAGS = ("gradcam", "gradcam_regions", "gradcam_stride", "gradcam_whole_slide")
RUNTIME_FLAGS = ("batch_size", "threads", "device")


def register(subparsers: argparse._SubParsersAction) -> None:
    from wsi_tools.options import add_flags
    from wsi_tools.predict import PredictConfig

    parser = add_command(
        subparsers, "predict", "apply a trained model to whole slides: heatmaps, scores, regions", DESCRIPTION
    )
    parser.add_argument("slides", nargs="*", metavar="SLIDE", help="whole-slide images (or give --manifest)")
    parser.add_argument(
        "--manifest",
        type=Path,
        metavar="CSV",
        help="slides to predict: slide_path, and optionally slide_id, slide_label (0/1: slide- and "
        "patient-level ROC AUC and log loss with bootstrap CIs), patient_id, mpp (default: none)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the CIs (default: 1000)",
    )
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="predict the slides on a local Dask cluster of N worker processes, one task per slide, as "
        "batch does (default: in this process; on a machine with several GPUs, one worker per GPU)",
    )
    cluster.add_argument(
        "--scheduler", metavar="ADDR", help="tcp://host:port of an existing Dask cluster (default: none)"
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="best.pt of a training run")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)"
    )
    settings = parser.add_argument_group(
        "window settings (defaults from the checkpoint where it records them)"
    )
    add_flags(settings, PredictConfig, ("target_mpp",), flags={"target_mpp": "--mpp"})
    add_flags(settings, PredictConfig, FLAGS)
    add_flags(
        parser.add_argument_group("Grad-CAM: of the top-scoring regions, or of the whole slide"),
        PredictConfig,
        GRADCAM_FLAGS,
    )
    add_flags(parser.add_argument_group("runtime"), PredictConfig, RUNTIME_FLAGS)
    parser.add_argument("--overwrite", action="store_true", help="predict again slides already in OUT")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (they show on a terminal)"
    )
    add_print_config(parser)
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from wsi_tools.batch.engine import SlideProgress
    from wsi_tools.options import from_mapping, given_flags, to_plain
    from wsi_tools.predict import PredictConfig, Predictor, write_slides_table  # noqa: F811

    flags = given_flags(args, PredictConfig, ("target_mpp", *FLAGS, *GRADCAM_FLAGS, *RUNTIME_FLAGS))
    config: PredictConfig = from_mapping(
        PredictConfig, {**flags, "progress": not args.no_progress}, "command line"
    )
    if args.print_config:
        return print_config(to_plain(config))
    if args.workers is not None and args.workers < 1:
        from wsi_tools.errors import ConfigError

        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    cohort = _cohort(args)
    # Loaded here even for a cluster: a bad checkpoint stops the run before any task.
    predictor = Predictor(args.checkpoint, config)
    args.out.mkdir(parents=True, exist_ok=True)
    predictions: list[SlidePrediction] = []
    failures: list[dict[str, str]] = []
    gpus = _gpus_to_spread_over(config, predictor, args, len(cohort))
    if gpus:
        args.workers = gpus
        print(f"wsi-tools predict: {gpus} GPUs: one worker per GPU (--device cuda:0 for one GPU)")
    progress = SlideProgress(len(cohort), 0, 0, config.progress, "predict", "windows")

    def record(entry: CohortSlide, result: SlidePrediction | dict[str, str]) -> None:
        if isinstance(result, dict):
            failures.append({"slide_id": entry.slide_id, "slide_path": str(entry.slide_path), **result})
            progress.bar.write(
                f"wsi-tools predict: {entry.slide_path}: failed: {result['error']}", sys.stderr
            )
            progress.record(failed=True)
            return
        predictions.append(result)
        progress.bar.write(_prediction_lines(result, predictor.threshold), sys.stdout)
        fresh = result.status == "complete"
        progress.record(failed=False, items=int(result.scores.get("n_tiles", 0)) if fresh else 0)

    started = time.perf_counter()
    try:
        _predict_all(args, cohort, config, predictor, record)
    finally:
        progress.close()
    _write_report(args, predictions, failures, time.perf_counter() - started)
    labels = {
        e.slide_id: {"slide_label": e.slide_label, "patient_id": e.patient_id}
        for e in cohort
        if e.slide_label is not None or e.patient_id is not None
    }
    table = write_slides_table(args.out, predictions, predictor.threshold, labels)
    print(f"{len(predictions)} slide(s) done, {len(failures)} failed; scores: {table}")
    _evaluate(args, cohort, predictions, predictor.threshold)
    return EXIT_SOME_FAILED if failures else 0


def _gpus_to_spread_over(
    config: PredictConfig, predictor: Predictor, args: argparse.Namespace, slides: int
) -> int:
    """The number of GPUs to give a worker each (0: run in this process): all of them
    when the device was left to auto or cuda, there are several, and so are the slides."""
    import torch

    from wsi_tools.predict._cluster import spreads_over_gpus

    if args.workers or args.scheduler or not predictor.runtime.cuda or slides < 2:
        return 0
    count = torch.cuda.device_count()
    return count if spreads_over_gpus(config.device, count) else 0


def _predict_all(
    args: argparse.Namespace,
    cohort: list[CohortSlide],
    config: PredictConfig,
    predictor: Predictor,
    record: Callable[[CohortSlide, SlidePrediction | dict[str, str]], None],
) -> None:
    """Every slide of the cohort, in this process or as Dask tasks, each passed to ``record``."""
    from wsi_tools.errors import WsiToolsError

    if args.workers or args.scheduler:
        from wsi_tools.predict._cluster import predict_on_cluster

        predict_on_cluster(
            cohort, args.checkpoint, config, args.out, overwrite=args.overwrite,
            workers=args.workers, scheduler=args.scheduler, on_result=record,
        )  # fmt: skip
        return
    for entry in cohort:
        try:
            result: SlidePrediction | dict[str, str] = predictor.predict_slide(
                entry.slide_path, args.out, slide_id=entry.slide_id, slide_mpp=entry.mpp,
                overwrite=args.overwrite,
            )  # fmt: skip
        except WsiToolsError as error:
            result = {"error": str(error), "error_type": type(error).__name__}
        record(entry, result)


def _prediction_lines(prediction: SlidePrediction, threshold: float) -> str:
    scores = prediction.scores
    verb = (
        "skipped (already predicted; --overwrite to redo)" if prediction.status == "skipped" else "predicted"
    )
    lines = [
        f"{prediction.slide_id}: {verb}: score {scores.get('score_max', 0):.3f} (max), "
        f"{scores.get('n_positive', 0)}/{scores.get('n_tiles', 0)} windows >= {threshold:g} "
        f"-> {prediction.out_dir}"
    ]
    if prediction.gradcam:
        cost = prediction.gradcam
        lines.append(
            f"  Grad-CAM: {cost['regions']} region(s), {cost['windows']} windows at stride {cost['stride']} px "
            f"in {cost['seconds']:.1f} s -> {prediction.out_dir / 'gradcam.png'}"
        )
    if prediction.gradcam_slide:
        cost = prediction.gradcam_slide
        lines.append(
            f"  whole-slide Grad-CAM: {cost['windows']} windows every {cost['stride']} px in "
            f"{cost['seconds']:.1f} s ({cost['times_prediction']:g}x the prediction's time) "
            f"-> {prediction.out_dir / 'gradcam_slide.png'}"
        )
    return "\n".join(lines)


def _write_report(
    args: argparse.Namespace,
    predictions: list[SlidePrediction],
    failures: list[dict[str, str]],
    seconds: float,
) -> None:
    """OUT/failures.json, OUT/report.json and report.md: what this run did with every slide."""
    from wsi_tools._atomic import write_atomically
    from wsi_tools.provenance import code_version, now_iso

    write_atomically(args.out / "failures.json", json.dumps(failures, indent=1))
    report = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "engine": f"dask ({args.scheduler or f'{args.workers} local worker(s)'})"
        if args.workers or args.scheduler
        else "in-process",
        "seconds": round(seconds, 1),
        "finished": now_iso(),
        "code_version": code_version(),
        "counts": {
            "predicted": sum(p.status == "complete" for p in predictions),
            "skipped": sum(p.status == "skipped" for p in predictions),
            "failed": len(failures),
        },
        "slides": [
            {"slide_id": p.slide_id, "status": p.status, "out_dir": str(p.out_dir), "scores": p.scores}
            for p in predictions
        ]
        + [{**failure, "status": "failed"} for failure in failures],
    }
    write_atomically(args.out / "report.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomically(args.out / "report.md", _report_markdown(report))


def _report_markdown(report: dict[str, Any]) -> str:
    """report.json as a page to read: failures first, then every slide by score."""
    from wsi_tools.batch.report import markdown_cell

    counts = report["counts"]
    lines = [
        "# wsi-tools predict",
        "",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- engine: {report['engine']}; {report['seconds']} s; finished {report['finished']} "
        f"({report['code_version']})",
        f"- {counts['predicted']} predicted, {counts['skipped']} skipped (done before), "
        f"{counts['failed']} failed",
        "",
        "| slide_id | status | score_max | score_topk | windows | positive | error |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    slides = sorted(
        report["slides"],
        key=lambda row: (row["status"] != "failed", -float(row.get("scores", {}).get("score_max", 0.0))),
    )
    for row in slides:
        scores = row.get("scores", {})
        numbers = [
            _score_text(scores.get(key)) for key in ("score_max", "score_topk", "n_tiles", "n_positive")
        ]
        error = f"{row.get('error_type', '')}: {row.get('error', '')}" if row["status"] == "failed" else ""
        cells = [markdown_cell(row["slide_id"]), row["status"], *numbers, markdown_cell(error)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _score_text(value: object) -> str:
    return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _cohort(args: argparse.Namespace) -> list[CohortSlide]:
    from wsi_tools.errors import ConfigError
    from wsi_tools.predict import CohortSlide, read_cohort  # noqa: F811 - the runtime import
    from wsi_tools.store import sanitize_slide_id

    if args.manifest and args.slides:
        raise ConfigError("give slides or --manifest CSV, not both")
    if args.manifest:
        return read_cohort(args.manifest)
    if not args.slides:
        raise ConfigError("no slides: give SLIDE... or --manifest CSV")
    return [CohortSlide(0, Path(s), sanitize_slide_id(Path(s).stem)) for s in args.slides]


def _evaluate(
    args: argparse.Namespace, cohort: list[CohortSlide], predictions: list[SlidePrediction], threshold: float
) -> None:
    from wsi_tools.predict import evaluate_cohort, metrics_lines, patient_scores, write_patients_table

    scores = {p.slide_id: float(p.scores["score_max"]) for p in predictions if "score_max" in p.scores}
    patients = patient_scores(cohort, scores)
    if patients:
        print(f"patients: {write_patients_table(args.out / 'patients.csv', patients)}")
    report = evaluate_cohort(
        cohort,
        scores,
        threshold,
        args.out,
        n_bootstrap=args.bootstrap,
        title="/".join(Path(args.checkpoint).resolve().parts[-2:]),
    )
    if report is not None:
        print("\n".join(metrics_lines(report)))
        print(f"slide-level metrics: {args.out / 'slide_metrics.json'}, ROC: {args.out / 'slide_roc.png'}")
