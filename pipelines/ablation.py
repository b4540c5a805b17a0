"""Ablations in the form of the paper's Tables 3-5, gathered in one table.

* **alpha** sweep (5, 10, 20, 50, 100) and **metric** (L2 vs cosine): per seed
  the weak model is trained once and reused; only mining (cheap, the weak-set
  features are cached) and the strong model are redone per condition. The
  condition shared by both studies (the default alpha with L2) runs once.
* **limited** dataset: a seeded fraction (10, 30, 50, 70%) of the training
  patches (the trainer's ``train_fraction``), weak and strong per condition.
* **imbalance**: a seeded fraction of the training positives
  (``positive_fraction``), weak and strong per condition.

Every condition runs over the seeds of the pipeline config. ``OUT/report.md``
and ``report.json`` hold one row per condition (mean ± SD over seeds of each
metric for weak and strong, the relative delta, false positives and mined
patches).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wsi_tools.config_file import deep_merge, packaged_config, read_yaml_mapping, required_path
from wsi_tools.errors import ConfigError
from wsi_tools.mining.knn import METRICS
from wsi_tools.mining.mine import MiningConfig
from wsi_tools.options import Overrides, load_beside
from wsi_tools.pipelines.hnm import HnmConfig, log, parse_hnm_config, run_seed
from wsi_tools.pipelines.report import (
    METRIC_TITLES,
    RUN_COUNT_KEYS,
    TABLE_METRICS,
    format_mean_sd,
    summarize_runs,
)
from wsi_tools.provenance import code_version, compute_environment, now_iso

DEFAULT_CONFIG = packaged_config("ablation.yaml")
STUDIES = ("alpha", "metric", "limited", "imbalance")
DEFAULT_VALUES: dict[str, tuple[Any, ...]] = {
    "alpha": (5, 10, 20, 50, 100),
    "metric": ("l2", "cosine"),
    "limited": (0.1, 0.3, 0.5, 0.7),
    "imbalance": (0.1, 0.3, 0.5, 0.7),
}


@dataclass(frozen=True)
class AblationConfig:
    hnm: HnmConfig
    studies: dict[str, tuple[Any, ...]] = field(default_factory=lambda: dict(DEFAULT_VALUES))

    def to_dict(self) -> dict[str, Any]:
        """The effective config: the pipeline's keys (recipe expanded) and the studies."""
        return {
            **self.hnm.to_dict(),
            "studies": {name: list(values) for name, values in self.studies.items()},
        }


def _parse_ablation(mapping: Mapping[str, Any], source: str, base_dir: Path) -> AblationConfig:
    mapping = dict(mapping)
    studies_mapping = mapping.pop("studies", None) or {}
    if not isinstance(studies_mapping, Mapping):
        raise ConfigError(f"{source}: 'studies' must be a section of study: [values] lines")
    base_name = mapping.pop("pipeline", None)
    base: dict[str, Any] = {}
    pipeline_dir = base_dir
    if base_name:
        base_path = base_dir / str(base_name)
        base = read_yaml_mapping(base_path)
        pipeline_dir = base_path.parent
    hnm = parse_hnm_config(deep_merge(base, mapping), source, pipeline_dir)
    unknown = sorted(set(studies_mapping) - set(STUDIES))
    if unknown:
        raise ConfigError(f"{source}: unknown stud(ies) {', '.join(unknown)}; known: {', '.join(STUDIES)}")
    studies: dict[str, tuple[Any, ...]] = {}
    for name in STUDIES:
        values = studies_mapping.get(name, list(DEFAULT_VALUES[name]))
        if values is None or values is False:
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: studies.{name} must be a non-empty list or null (skip)")
        studies[name] = tuple(values)
    for value in studies.get("limited", ()) + studies.get("imbalance", ()):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < float(value) <= 1:
            raise ConfigError(f"{source}: limited/imbalance fractions must be in (0, 1], got {value!r}")
    for value in studies.get("alpha", ()):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{source}: studies.alpha values must be whole numbers >= 1, got {value!r}")
    for value in studies.get("metric", ()):
        if value not in METRICS:
            raise ConfigError(
                f"{source}: studies.metric values must be among {', '.join(METRICS)}, got {value!r}"
            )
    return AblationConfig(hnm=hnm, studies=studies)


def load_ablation_config(path: str | Path | None = None, overrides: Overrides = ()) -> AblationConfig:
    """``configs/ablation.yaml``: ``pipeline`` (a pipeline config, relative to
    this file), ``studies`` (study -> values, or null to skip) and any pipeline
    key (``seeds``, ``train``, ``mining``, ...) deep-merged over the pipeline config;
    then the overrides, deep-merged too."""
    return load_beside(path, overrides, _parse_ablation, DEFAULT_CONFIG)


def _conditions(config: AblationConfig, only: Sequence[str] | None) -> dict[str, tuple[Any, ...]]:
    chosen = {name: values for name, values in config.studies.items() if not only or name in only}
    return chosen


def _mining_variants(config: AblationConfig, studies: Mapping[str, Sequence[Any]]) -> dict[str, MiningConfig]:
    """Unique mining settings of the alpha and metric studies (shared weak model)."""
    base = config.hnm.mining
    variants: dict[str, MiningConfig] = {}
    for alpha in studies.get("alpha", ()):
        variant = dataclasses.replace(base, alpha=int(alpha))
        variants[f"alpha{variant.alpha}_{variant.metric}"] = variant
    for metric in studies.get("metric", ()):
        variant = dataclasses.replace(base, metric=str(metric))
        variants[f"alpha{variant.alpha}_{variant.metric}"] = variant
    return variants


def _study_rows(
    config: AblationConfig, studies: Mapping[str, Sequence[Any]], store: Path, out: Path
) -> list[dict[str, Any]]:
    """One row per condition of every study, each over every seed."""
    hnm = config.hnm
    rows: list[dict[str, Any]] = []

    # alpha and metric: one weak model per seed, every mining variant on it.
    variants = _mining_variants(config, studies)
    if variants:
        by_variant: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for seed in hnm.seeds:
            log(f"ablation alpha/metric, seed {seed}: {len(variants)} mining condition(s) on one weak model")
            for record in run_seed(
                hnm, store, out / "alpha_metric" / f"seed_{seed}", seed, mining_variants=variants
            ):
                by_variant[record["variant"]].append(record)
        for alpha in studies.get("alpha", ()):
            name = f"alpha{int(alpha)}_{hnm.mining.metric}"
            rows.append(_row("alpha", f"α = {int(alpha)}", by_variant[name]))
        for metric in studies.get("metric", ()):
            name = f"alpha{hnm.mining.alpha}_{metric}"
            rows.append(_row("metric", str(metric), by_variant[name]))

    # limited data and imbalance: a weak and a strong model per condition and seed.
    for study, key, label in (
        ("limited", "train_fraction", "{:.0%} of training data"),
        ("imbalance", "positive_fraction", "{:.0%} of positives"),
    ):
        for value in studies.get(study, ()):
            recipe = hnm.train.replace(**{key: float(value)})
            records = []
            for seed in hnm.seeds:
                log(f"ablation {study} {value}, seed {seed}")
                folder = out / study / f"{key}_{float(value):g}" / f"seed_{seed}"
                records.extend(run_seed(hnm, store, folder, seed, train_config=recipe))
            rows.append(_row(study, label.format(float(value)), records))

    return rows


def run_ablation(
    config: AblationConfig,
    store: str | Path | None = None,
    out: str | Path | None = None,
    *,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    hnm = config.hnm
    store = required_path(store, hnm.store, flag="--store STORE", key="store", what="store")
    out = required_path(out, hnm.out, flag="--out DIR", key="out", what="output folder")
    if not store.exists():
        raise ConfigError(f"{store}: patch store not found; extract one first (wsi-tools extract / batch)")
    out.mkdir(parents=True, exist_ok=True)
    studies = _conditions(config, only)
    (out / "config.yaml").write_text(
        yaml.safe_dump(
            {**hnm.to_dict(), "studies": {k: list(v) for k, v in studies.items()}}, sort_keys=False
        )
    )
    from wsi_tools.train.runtime import cpu_threads

    started = time.perf_counter()
    # One thread count for training, embedding and the kNN, as in the pipeline.
    with cpu_threads(hnm.train.cpu_threads):
        rows = _study_rows(config, studies, store, out)
        environment = compute_environment()
    seconds = time.perf_counter() - started
    report = {
        "seeds": list(hnm.seeds),
        "rows": rows,
        "seconds": round(seconds, 1),
        "code_version": code_version(),
        "finished": now_iso(),
        "environment": environment,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(ablation_markdown(rows, hnm, seconds))
    return report


def _row(study: str, condition: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    summary = summarize_runs(records)
    return {
        "study": study,
        "condition": condition,
        "summary": summary,
        "runs": [{k: r.get(k) for k in ("seed", "weak_run", "strong_run", *RUN_COUNT_KEYS)} for r in records],
    }


def ablation_markdown(rows: Sequence[Mapping[str, Any]], hnm: HnmConfig, seconds: float) -> str:
    header = ["Study", "Condition", "#FPs", "#mined"] + [
        METRIC_TITLES[m] + " weak → strong (Δ)" for m in TABLE_METRICS
    ]
    with_holdout = any(row["summary"]["counts"]["holdout_n"]["mean"] for row in rows)
    if with_holdout:
        header.append("Held-out weak-slide FPs weak → strong")
    lines = [
        "# Ablations: weak → strong",
        "",
        f"Mean ± SD over seeds {list(hnm.seeds)}; Δ = mean relative change (strong − weak) / weak. "
        f"Threshold {hnm.train.threshold}; default α = {hnm.mining.alpha}, metric {hnm.mining.metric}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        summary = row["summary"]
        cells = [
            row["study"],
            row["condition"],
            format_mean_sd(summary["counts"]["n_false_positives"], 1),
            format_mean_sd(summary["counts"]["n_mined"], 1),
        ]
        for metric in TABLE_METRICS:
            entry = summary["metrics"][metric]
            delta = entry["relative_delta_pct"]
            delta_text = "n/a" if delta["mean"] is None else f"{delta['mean']:+.1f}%"
            cells.append(
                f"{format_mean_sd(entry['weak'])} → {format_mean_sd(entry['strong'])} ({delta_text})"
            )
        if with_holdout:
            counts = summary["counts"]
            cells.append(
                f"{format_mean_sd(counts['holdout_fp_weak'], 1)} → {format_mean_sd(counts['holdout_fp_strong'], 1)}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Total time {seconds / 60:.1f} min.", ""]
    return "\n".join(lines)
