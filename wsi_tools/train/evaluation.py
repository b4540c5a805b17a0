"""Scoring splits and reporting their metrics: ``predictions.csv``, ``metrics.json``, curves.

:func:`report` is the end of every training run and the whole of ``wsi-tools
evaluate``; :func:`evaluate` scores one split of a checkpoint's own slide splits.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_tools.errors import ConfigError, StoreError
from wsi_tools.train.checkpoint import check_store_fingerprint, read_checkpoint
from wsi_tools.train.config import SPLIT_NAMES, TrainConfig
from wsi_tools.train.data import PatchTable, open_store
from wsi_tools.train.inference import inference_runtime, load_model, prepare_model, probabilities, score_table
from wsi_tools.train.metrics import compute_metrics, slide_scores
from wsi_tools.train.model import PatchClassifier
from wsi_tools.train.plots import plot_pr, plot_roc
from wsi_tools.train.runtime import Runtime
from wsi_tools.train.tables import split_table


def write_predictions_csv(scored: Mapping[str, tuple[PatchTable, np.ndarray]], path: Path) -> None:
    """``slide_id,x,y,label,prob,split`` for every scored patch."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["slide_id", "x", "y", "label", "prob", "split"])
        for name, (table, probs) in scored.items():
            for s, (x, y), label, prob in zip(
                table.slide_ids, table.coords, table.labels, probs, strict=True
            ):
                writer.writerow([s, int(x), int(y), int(label), f"{prob:.6g}", name])


def split_metrics(table: PatchTable, probs: np.ndarray, config: TrainConfig) -> dict[str, Any]:
    """Patch-level metrics, and slide-level ones on the maximum patch probability per slide."""
    _, slide_labels, slide_probs = slide_scores(table.slide_ids, table.labels, probs)
    return {
        "patch": compute_metrics(table.labels, probs, config.threshold, config.bootstrap, config.seed),
        "slide": compute_metrics(slide_labels, slide_probs, config.threshold, config.bootstrap, config.seed),
    }


def report(
    model: PatchClassifier,
    store_path: Path,
    tables: Mapping[str, PatchTable],
    out_dir: Path,
    config: TrainConfig,
    runtime: Runtime,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``tables`` (split name -> patches), write ``predictions.csv``, ``roc.png``, ``pr.png``
    and return the metrics dict (not yet written).

    The top-level metrics are those of the test split (or the last non-empty
    split given): ``auroc``, ``auprc``, ``f1``, ``sensitivity``,
    ``specificity``, ``log_loss`` each as ``{"value", "ci95": [lo, hi]}``,
    ``threshold``, ``n``, ``n_positive``, ``confusion``, ``bootstrap``; then
    ``split``, ``slide_level`` (the same metrics on the maximum patch
    probability per slide) and ``splits`` (patch and slide metrics of every
    split scored).
    """
    scored: dict[str, tuple[PatchTable, np.ndarray]] = {}
    for name, table in tables.items():
        if len(table):
            logits = score_table(
                model,
                store_path,
                table,
                config.batch_size,
                runtime,
                num_workers=config.num_workers,
                progress=progress,
                desc=f"scoring {name}",
            )
            scored[name] = (table, probabilities(logits))
    write_predictions_csv(scored, out_dir / "predictions.csv")
    if not scored:
        return {"split": None, "note": "no validation or test patches to score"}
    per_split = {name: split_metrics(table, probs, config) for name, (table, probs) in scored.items()}
    primary = "test" if "test" in scored else list(scored)[-1]
    table, probs = scored[primary]
    _, slide_labels, slide_probs = slide_scores(table.slide_ids, table.labels, probs)
    curves = {"patch": (table.labels, probs), "slide (max patch)": (slide_labels, slide_probs)}
    which = f"ResNet18, seed {config.seed}, {primary} split"
    plot_roc(curves, out_dir / "roc.png", title=f"ROC - {which}", threshold=config.threshold)
    plot_pr(curves, out_dir / "pr.png", title=f"Precision-recall - {which}", threshold=config.threshold)
    return {
        **per_split[primary]["patch"],
        "split": primary,
        "slide_level": per_split[primary]["slide"],
        "splits": per_split,
    }


def evaluate(
    checkpoint: str | Path,
    store_path: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    *,
    batch_size: int | None = None,
    device: str | None = None,
    threshold: float | None = None,
    bootstrap: int | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score one split of the checkpoint's own slide splits and write ``predictions.csv``,
    ``metrics.json``, ``roc.png`` and ``pr.png`` into ``out_dir``
    (default ``<checkpoint folder>/eval-<split>``). Returns the metrics dict."""
    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r}: use one of {', '.join(SPLIT_NAMES)}")
    state = read_checkpoint(checkpoint)
    model, config = load_model(checkpoint)
    config = config.replace(
        batch_size=batch_size or config.batch_size,
        threshold=config.threshold if threshold is None else threshold,
        bootstrap=config.bootstrap if bootstrap is None else bootstrap,
        num_workers=num_workers,
    )
    runtime = inference_runtime(device or config.device)
    store = open_store(store_path)
    check_store_fingerprint(state, store, checkpoint, store_path, refuse=False)
    splits = dict(state["splits"])
    missing = sorted(s for s, v in splits.items() if v == split and s not in set(store.slide_ids()))
    if missing:
        raise StoreError(
            f"{store_path}: the {split} split of {checkpoint} names slides missing from the store: "
            f"{', '.join(missing[:5])}; evaluate on the store the model was trained from"
        )
    table = split_table(store, splits, split)
    if not len(table):
        raise ConfigError(f"{checkpoint}: the {split} split has no patches in {store_path}")
    out = Path(out_dir) if out_dir else Path(checkpoint).parent / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    metrics = report(
        prepare_model(model, runtime),
        Path(store_path),
        {split: table},
        out,
        config,
        runtime,
        progress=progress,
    )
    metrics["checkpoint"] = str(checkpoint)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
