"""``wsi-tools demo``: the whole method on a generated cohort, on the CPU.

1. a synthetic lymphatic-invasion cohort (:mod:`wsi_tools.testing.cohort`): Aperio
   SVS slides, ASAP XMLs and a batch manifest;
2. the same extraction as real data: the Dask batch engine over the manifest
   into a zarr patch store (or ``extract_slide`` per slide when the engine is
   unavailable);
3. the four-step pipeline (:mod:`pipelines.hnm`) with ``configs/demo.yaml``;
4. the weak vs strong table, printed and in ``OUT/hnm/report.md``.

A rerun reuses a cohort generated with the same settings and skips slides
already complete in the store; the pipeline itself runs again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_tools.config_file import packaged_config
from wsi_tools.errors import ConfigError
from wsi_tools.options import Overrides, from_mapping, load_beside
from wsi_tools.pipelines.hnm import HnmConfig, config_section, log, parse_hnm_config, run_pipeline
from wsi_tools.testing.cohort import Cohort, CohortConfig, generate_cohort

DEFAULT_CONFIG = packaged_config("demo.yaml")


@dataclass(frozen=True)
class DemoConfig:
    cohort: CohortConfig
    extraction: dict[str, Any]  # batch extraction settings (configs/extract.yaml keys)
    workers: int
    hnm: HnmConfig

    def to_dict(self) -> dict[str, Any]:
        """The effective config in the YAML's shape: cohort, extraction, workers, then the pipeline."""
        cohort = {
            key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(self.cohort).items()
        }
        return {
            "cohort": cohort,
            "extraction": dict(self.extraction),
            "workers": self.workers,
            **self.hnm.to_dict(),
        }


@dataclass(frozen=True)
class DemoResult:
    out: Path
    store: Path
    report: dict[str, Any]
    seconds: dict[str, float]
    summary: str


def _parse_demo(mapping: Mapping[str, Any], source: str, base_dir: Path) -> DemoConfig:
    mapping = dict(mapping)
    cohort_mapping = config_section(mapping, "cohort", source)
    extraction = config_section(mapping, "extraction", source)
    mapping.pop("cohort", None)
    mapping.pop("extraction", None)
    workers = mapping.pop("workers", 2)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"{source}: workers must be a positive integer, got {workers!r}")
    return DemoConfig(
        cohort=from_mapping(CohortConfig, cohort_mapping, source, "cohort"),
        extraction=extraction,
        workers=workers,
        hnm=parse_hnm_config(mapping, source, base_dir),
    )


def load_demo_config(path: str | Path | None = None, overrides: Overrides = ()) -> DemoConfig:
    """``configs/demo.yaml`` (or ``path``): the cohort, extraction and workers, plus the
    pipeline's keys; then the overrides, deep-merged."""
    return load_beside(path, overrides, _parse_demo, DEFAULT_CONFIG)


def _cohort(config: CohortConfig, folder: Path) -> Cohort:
    """Generate the cohort, or reuse one generated with the same settings."""
    stamp = folder / "cohort.json"
    wanted = json.dumps(dataclasses.asdict(config), sort_keys=True, default=list)
    if stamp.is_file() and stamp.read_text() == wanted:
        from wsi_tools.testing.cohort import cohort_from_folder

        return cohort_from_folder(folder, config)
    cohort = generate_cohort(folder, config)
    stamp.write_text(wanted)
    return cohort


def extract_cohort(
    cohort: Cohort, store: Path, extraction: Mapping[str, Any], workers: int
) -> dict[str, Any]:
    """The manifest into the store through the batch engine (as for real data)."""
    try:
        from wsi_tools.batch import BatchOptions, run_batch
        from wsi_tools.batch.settings import load_settings
    except ImportError:  # no batch engine in this installation: the per-slide extractor
        return _extract_per_slide(cohort, store, extraction)
    report = run_batch(
        cohort.manifest_path,
        store,
        load_settings(None, dict(extraction)),
        BatchOptions(workers=workers, progress=sys.stderr.isatty()),
    )
    if report.exit_code != 0:
        failed = "; ".join(f"{o.slide_id}: {o.error}" for o in report.failed())
        raise ConfigError(f"{cohort.manifest_path}: batch extraction failed for some slides ({failed})")
    return {"engine": "batch", **report.totals, "report": str(Path(report.run_dir) / "report.md")}


def _extract_per_slide(cohort: Cohort, store: Path, extraction: Mapping[str, Any]) -> dict[str, Any]:
    from wsi_tools.extract import ExtractionConfig, extract_slide

    counts: dict[str, Any] = {"engine": "extract_slide", "slides": 0, "patches": 0}
    for slide in cohort.slides:
        config = ExtractionConfig(set=slide.set, **dict(extraction))
        result = extract_slide(
            slide.slide_path, store, config, annotation_path=slide.annotation_path, slide_id=slide.slide_id
        )
        counts["slides"] += 1
        counts["patches"] += result.n_patches
    return counts


def _heatmap_pair_line(report: Mapping[str, Any]) -> list[str]:
    """Where to look first: one held-out weak slide, the weak and the strong model's heatmaps."""
    for run in report.get("runs", []):
        pairs = (run.get("figures") or {}).get("holdout_heatmaps") or {}
        held_out = set(run.get("holdout_slides") or [])
        for slide_id, path in pairs.items():
            if slide_id not in held_out:
                continue
            return [
                f"Look at {path}: the held-out weak slide {slide_id} (all negative, never mined) under the weak "
                "and the strong model; the windows the strong model no longer flags are what mining removed."
            ]
    return []


def run_demo(config: DemoConfig, out: str | Path = "demo_out", *, workers: int | None = None) -> DemoResult:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    log(f"demo: generating the synthetic cohort in {out / 'cohort'}")
    cohort = _cohort(config.cohort, out / "cohort")
    seconds["cohort"] = time.perf_counter() - started

    mark = time.perf_counter()
    store = out / "store.zarr"
    log(f"demo: extracting {len(cohort.slides)} slides into {store} with the batch engine")
    extraction = extract_cohort(cohort, store, config.extraction, workers or config.workers)
    seconds["extraction"] = time.perf_counter() - mark

    mark = time.perf_counter()
    log(f"demo: the four-step pipeline over seeds {list(config.hnm.seeds)} -> {out / 'hnm'}")
    report = run_pipeline(config.hnm, store, out / "hnm")
    seconds["pipeline"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started

    table = (out / "hnm" / "report.md").read_text()
    summary = "\n".join(
        [
            table,
            f"Cohort: {len(cohort.by_set('hard'))} hard slides "
            f"({sum(s.n_positive for s in cohort.slides)} LI-positive, "
            f"{sum(s.n_negative for s in cohort.slides)} negative regions), "
            f"{len(cohort.by_set('weak'))} weak slides; extraction: {extraction}.",
            "Times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
            f"Everything is in {out}: cohort/, store.zarr, hnm/report.md, hnm/seed_*/ (run folders, pictures).",
            *_heatmap_pair_line(report),
        ]
    )
    (out / "demo.json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "extraction": extraction,
                "report": str(out / "hnm" / "report.json"),
                "hnm": report,
            },
            indent=2,
            default=str,
        )
    )
    return DemoResult(out=out, store=store, report=report, seconds=seconds, summary=summary)
