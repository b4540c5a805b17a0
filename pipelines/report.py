"""Weak vs strong tables in the form of the paper's Table 2: mean ± SD over seeds."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TABLE_METRICS = ("auroc", "auprc", "f1", "sensitivity", "specificity")
METRIC_TITLES = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "f1": "F1",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
}


# Per-seed counts a run record carries, averaged in the reports.
RUN_COUNT_KEYS = (
    "n_false_positives",
    "n_mined",
    "weak_test_fp",
    "strong_test_fp",
    "holdout_n",
    "holdout_fp_weak",
    "holdout_fp_strong",
)


def metric_value(metrics: Mapping[str, Any], name: str) -> float | None:
    """A metric of the trainer's ``metrics.json`` (``{"value": v, "ci95": ...}`` or a bare number)."""
    entry = metrics.get(name)
    value = entry.get("value") if isinstance(entry, Mapping) else entry
    return None if value is None or not math.isfinite(float(value)) else float(value)


def relative_delta(weak: float | None, strong: float | None) -> float | None:
    """(strong - weak) / weak in percent; None when undefined."""
    if weak is None or strong is None or weak == 0:
        return None
    return 100.0 * (strong - weak) / weak


def mean_sd(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample SD (ddof=1; 0 for one value) of the defined values."""
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(kept):
        return {"mean": None, "sd": None, "n": 0}
    sd = float(kept.std(ddof=1)) if len(kept) > 1 else 0.0
    return {"mean": float(kept.mean()), "sd": sd, "n": int(len(kept))}


def format_mean_sd(
    summary: Mapping[str, Any], digits: int = 3, suffix: str = "", signed: bool = False
) -> str:
    if summary.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"{summary['mean']:{sign}.{digits}f}{suffix} ± {summary['sd']:.{digits}f}{suffix}"


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Table 2 of a list of per-seed records ``{"weak": metrics, "strong": metrics, ...}``."""
    table: dict[str, Any] = {}
    for name in TABLE_METRICS:
        weak = [metric_value(run["weak"], name) for run in runs]
        strong = [metric_value(run["strong"], name) for run in runs]
        table[name] = {
            "weak": mean_sd(weak),
            "strong": mean_sd(strong),
            "relative_delta_pct": mean_sd([relative_delta(w, s) for w, s in zip(weak, strong, strict=True)]),
        }
    counts = {key: mean_sd([run.get(key) for run in runs]) for key in RUN_COUNT_KEYS}
    return {"metrics": table, "counts": counts, "n_seeds": len(runs)}


def table2_markdown(summary: Mapping[str, Any], title: str = "Weak vs strong (test split)") -> str:
    lines = [
        f"### {title}",
        "",
        f"Mean ± SD over {summary['n_seeds']} seed(s); relative Δ = (strong − weak) / weak, per seed.",
        "",
        "| Metric | Weak | Strong | Relative Δ |",
        "|---|---|---|---|",
    ]
    for name in TABLE_METRICS:
        row = summary["metrics"][name]
        lines.append(
            f"| {METRIC_TITLES[name]} | {format_mean_sd(row['weak'])} | {format_mean_sd(row['strong'])} | "
            f"{format_mean_sd(row['relative_delta_pct'], 1, '%', signed=True)} |"
        )
    return "\n".join(lines)


def seeds_markdown(runs: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| Seed | #FPs (weak, training split) | #mined | Test FPs weak | Test FPs strong | "
        "Specificity weak | Specificity strong | Held-out weak-slide FPs weak | … strong |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        weak_spec = metric_value(run["weak"], "specificity")
        strong_spec = metric_value(run["strong"], "specificity")
        lines.append(
            f"| {run['seed']} | {run['n_false_positives']} | {run['n_mined']} | {run['weak_test_fp']} | "
            f"{run['strong_test_fp']} | {_fmt(weak_spec)} | {_fmt(strong_spec)} | "
            f"{_holdout(run, 'holdout_fp_weak')} | {_holdout(run, 'holdout_fp_strong')} |"
        )
    return "\n".join(lines)


def _holdout(run: Mapping[str, Any], key: str) -> str:
    if not run.get("holdout_n"):
        return "–"
    return f"{run[key]}/{run['holdout_n']}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def read_test_rows(run_dir: str | Path) -> list[tuple[str, int, int, int, float]]:
    """``(slide_id, x, y, label, prob)`` of the test rows of a run's ``predictions.csv``."""
    with (Path(run_dir) / "predictions.csv").open(newline="") as handle:
        return [
            (row["slide_id"], int(row["x"]), int(row["y"]), int(row["label"]), float(row["prob"]))
            for row in csv.DictReader(handle)
            if row["split"] == "test"
        ]
