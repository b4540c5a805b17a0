"""A cohort to predict: the ``--manifest`` of ``wsi-tools predict``, and slide- and
patient-level evaluation when it gives labels (Kanavati et al.'s Table 1).

Manifest columns: ``slide_path`` (required; relative paths resolve against the
manifest's folder), and optionally ``slide_id``, ``slide_label`` (0 or 1),
``patient_id`` and ``mpp``. Other columns (a batch manifest's ``set``,
``annotation_path``, ``split``) are ignored, so one file can serve both.

A patient's score is the maximum over its slides and its label the maximum of
theirs: a patient is positive when any of their slides is.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_tools.batch.manifest import parse_mpp, resolve_listed_path
from wsi_tools.errors import ConfigError, problem_list
from wsi_tools.store import sanitize_slide_id

MANIFEST_COLUMNS = ("slide_path", "slide_id", "slide_label", "patient_id", "mpp")
EVALUATED = ("auroc", "log_loss", "sensitivity", "specificity")


@dataclass(frozen=True)
class CohortSlide:
    """One manifest row, validated; ``slide_path`` absolute."""

    line: int
    slide_path: Path
    slide_id: str
    slide_label: int | None = None
    patient_id: str | None = None
    mpp: float | None = None


def read_cohort(path: str | Path) -> list[CohortSlide]:
    """The manifest's rows; every problem is reported at once, with its line."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise ConfigError(f"{path}: manifest not found; give a CSV with a slide_path column") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{path}: not a readable CSV manifest ({error})") from None
    if "slide_path" not in header:
        raise ConfigError(
            f"{path}: the manifest needs a slide_path column (optional: {', '.join(MANIFEST_COLUMNS[1:])})"
        )
    problems: list[str] = []
    slides: list[CohortSlide] = []
    seen: dict[str, int] = {}
    for line, raw in rows:
        cell = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        slide, row_problems = _cohort_slide(line, cell, path.parent)
        if slide is not None and slide.slide_id in seen:
            row_problems.append(f"duplicate slide id {slide.slide_id!r} (line {seen[slide.slide_id]} has it)")
        if row_problems:
            problems += [f"line {line}: {problem}" for problem in row_problems]
        elif slide is not None:
            seen[slide.slide_id] = line
            slides.append(slide)
    if problems:
        raise ConfigError(
            f"{path}: {len(problems)} problem(s) in the manifest, nothing was predicted: "
            f"{problem_list(problems, str(path))}"
        )
    if not slides:
        raise ConfigError(f"{path}: the manifest has no slide rows")
    return slides


def _cohort_slide(line: int, cell: Mapping[str, str], base: Path) -> tuple[CohortSlide | None, list[str]]:
    problems: list[str] = []
    if not cell.get("slide_path"):
        return None, ["slide_path is empty"]
    slide_path = resolve_listed_path(cell["slide_path"], base)  # as a batch manifest's paths
    if not slide_path.is_file():
        problems.append(f"slide file not found: {slide_path}")
    label: int | None = None
    if cell.get("slide_label"):
        if cell["slide_label"] in ("0", "1"):
            label = int(cell["slide_label"])
        else:
            problems.append(f"slide_label {cell['slide_label']!r} must be 0 or 1 (or empty)")
    mpp: float | None = None
    if cell.get("mpp"):
        try:
            mpp = parse_mpp(cell["mpp"])
        except ValueError:
            problems.append(f"bad mpp {cell['mpp']!r} (a positive number of µm/px, e.g. 0.25)")
    try:
        slide_id = sanitize_slide_id(cell.get("slide_id") or slide_path.stem)
    except ConfigError as error:
        problems.append(f"bad slide_id: {error}")
        slide_id = ""
    slide = CohortSlide(line, slide_path, slide_id, label, cell.get("patient_id") or None, mpp)
    return (None if problems else slide), problems


def patient_scores(slides: Sequence[CohortSlide], scores: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per patient with a scored slide: the maximum score and label over its slides."""
    patients: dict[str, dict[str, Any]] = {}
    for slide in slides:
        if slide.patient_id is None or slide.slide_id not in scores:
            continue
        row = patients.setdefault(
            slide.patient_id,
            {"patient_id": slide.patient_id, "score_max": -math.inf, "n_slides": 0, "labels": []},
        )
        row["score_max"] = max(row["score_max"], float(scores[slide.slide_id]))
        row["n_slides"] += 1
        if slide.slide_label is not None:
            row["labels"].append(slide.slide_label)
    table = []
    for row in patients.values():
        labels = row.pop("labels")
        row["patient_label"] = max(labels) if labels else None
        table.append(row)
    return sorted(table, key=lambda row: row["patient_id"])


def write_patients_table(path: Path, patients: Sequence[Mapping[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["patient_id", "score_max", "n_slides", "patient_label"], lineterminator="\n"
        )
        writer.writeheader()
        for row in patients:
            writer.writerow(
                {**row, "patient_label": "" if row["patient_label"] is None else row["patient_label"]}
            )
    return path


def evaluate_cohort(
    slides: Sequence[CohortSlide],
    scores: Mapping[str, float],
    threshold: float,
    out: Path,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    title: str = "",
) -> dict[str, Any] | None:
    """``slide_metrics.json`` and ``slide_roc.png`` (with patients where the manifest
    names them) when labelled slides were scored; None when no slide has a label."""
    from wsi_tools.train.metrics import compute_metrics
    from wsi_tools.train.plots import plot_roc

    labelled = [s for s in slides if s.slide_label is not None and s.slide_id in scores]
    if not labelled:
        return None
    levels: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "slide": (
            np.array([s.slide_label for s in labelled], np.int64),
            np.array([scores[s.slide_id] for s in labelled], np.float64),
        )
    }
    patients = [p for p in patient_scores(slides, scores) if p["patient_label"] is not None]
    if patients:
        levels["patient"] = (
            np.array([p["patient_label"] for p in patients], np.int64),
            np.array([p["score_max"] for p in patients], np.float64),
        )
    report: dict[str, Any] = {"threshold": threshold, "score": "score_max (the highest window probability)"}
    for level, (labels, probs) in levels.items():
        metrics = compute_metrics(labels, probs, threshold, n_bootstrap=n_bootstrap, seed=seed)
        report[level] = {
            name: metrics[name] for name in (*EVALUATED, "n", "n_positive", "confusion", "bootstrap")
        }
    plot_roc(
        {f"{level}s (n={len(labels)})": (labels, probs) for level, (labels, probs) in levels.items()},
        out / "slide_roc.png",
        title=f"Slide-level ROC{' - ' + title if title else ''}",
        threshold=threshold,
    )
    (out / "slide_metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def metrics_lines(report: Mapping[str, Any]) -> list[str]:
    """``slide  AUROC 0.912 [0.85, 0.96]  log loss ...`` per level, for the terminal."""

    def shown(entry: Mapping[str, Any]) -> str:
        value, (low, high) = entry["value"], entry["ci95"]
        if value is None:
            return "n/a"
        return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")

    lines = []
    for level in ("slide", "patient"):
        if level in report:
            entry = report[level]
            lines.append(
                f"{level}s (n={entry['n']}, {entry['n_positive']} positive): "
                + "  ".join(f"{name.replace('_', ' ')} {shown(entry[name])}" for name in EVALUATED)
                + f"  at threshold {report['threshold']:g}"
            )
    return lines
