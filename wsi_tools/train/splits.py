"""Slide-level train/val/test splits: seeded, stratified by slide label, leak-checked.

Pure functions over ``{slide_id: slide_label}`` plus the ``splits.csv`` format
(``slide_id,split``). A slide is positive when it has any positive patch.
Slides given a split up front (a splits CSV, a manifest ``split`` column)
keep it; the others are split by ratio within each label.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from wsi_tools.errors import ConfigError, SplitLeakError
from wsi_tools.train.config import SPLIT_NAMES, TrainConfig


def _largest_remainder(n: int, ratios: Sequence[float]) -> list[int]:
    """Integer counts summing to ``n`` in proportion to ``ratios``; every split with a
    positive ratio gets at least one item when ``n`` allows, so small cohorts still
    have both classes in validation and test."""
    total = float(sum(ratios))
    ideal = [n * r / total for r in ratios]
    counts = [math.floor(x) for x in ideal]
    order = sorted(range(len(ratios)), key=lambda i: ideal[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, r in enumerate(ratios) if r > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(wanted, key=lambda j: counts[j] - ideal[j] if counts[j] > 1 else -math.inf)
                counts[donor] -= 1
                counts[i] += 1
    return counts


def make_splits(
    slide_labels: Mapping[str, int],
    ratios: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign each slide to train/val/test.

    ``fixed`` slides keep their split; the rest are shuffled with ``seed`` within
    each slide label and cut by ``ratios`` (largest remainder). The result is the
    same for the same inputs whatever the order of ``slide_labels``.
    """
    fixed = dict(fixed or {})
    for slide_id, split in fixed.items():
        if split not in SPLIT_NAMES:
            raise ConfigError(
                f"slide {slide_id!r}: unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}"
            )
    assignment = {slide_id: fixed[slide_id] for slide_id in slide_labels if slide_id in fixed}
    rng = np.random.default_rng(seed)
    for label in sorted({int(v) for v in slide_labels.values()}):
        free = sorted(s for s, v in slide_labels.items() if int(v) == label and s not in fixed)
        order = [free[i] for i in rng.permutation(len(free))]
        start = 0
        for split, count in zip(SPLIT_NAMES, _largest_remainder(len(order), ratios), strict=True):
            for slide_id in order[start : start + count]:
                assignment[slide_id] = split
            start += count
    return assignment


def empty_split_message(
    store_path: Path | str, splits: Mapping[str, str], empty: Sequence[str], config: TrainConfig
) -> str:
    """Why a run would mean nothing: validation chooses the best epoch and test gives
    the metrics, so neither may be empty; says how many slides the ratios need."""
    per_split = {name: sum(split == name for split in splits.values()) for name in SPLIT_NAMES}
    ratios = [float(r) for r in config.split_ratios]
    needed = sum(1 for r in ratios if r > 0)
    return (
        f"{store_path}: the {' and '.join(empty)} split(s) hold no patch (slides: "
        + ", ".join(f"{name} {count}" for name, count in per_split.items())
        + f"; split_ratios {ratios}): validation chooses best.pt and test gives the metrics. "
        f"Each split needs at least one slide, so the training sets need at least {needed} slides "
        "(per slide label, to have both classes in each); add slides, give a slide_id,split CSV "
        "(--set splits_file=CSV), or train anyway with --set allow_empty_splits=true "
        "(train.allow_empty_splits in a run config)"
    )


def check_no_leak(assignments: Iterable[tuple[str, str]], source: str = "splits") -> dict[str, str]:
    """Collapse ``(slide_id, split)`` pairs into a mapping; a slide in two splits raises."""
    result: dict[str, str] = {}
    for slide_id, split in assignments:
        if split not in SPLIT_NAMES:
            raise ConfigError(
                f"{source}: slide {slide_id!r} has unknown split {split!r}; use train, val or test"
            )
        previous = result.setdefault(slide_id, split)
        if previous != split:
            raise ConfigError(
                f"{source}: slide {slide_id!r} is in both {previous!r} and {split!r}; "
                "a slide must be in exactly one split (patches of one slide are correlated)"
            )
    return result


def assert_disjoint(groups: Mapping[str, Iterable[str]]) -> None:
    """Raise if any slide id occurs in more than one of the named groups of slide ids."""
    seen: dict[str, str] = {}
    for name, slide_ids in groups.items():
        for slide_id in set(slide_ids):
            if slide_id in seen:
                raise SplitLeakError(
                    f"split leak: slide {slide_id!r} is in both {seen[slide_id]!r} and {name!r}"
                )
            seen[slide_id] = name


def write_splits_csv(splits: Mapping[str, str], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["slide_id", "split"])
        for slide_id in sorted(splits, key=lambda s: (SPLIT_NAMES.index(splits[s]), s)):
            writer.writerow([slide_id, splits[slide_id]])
    return path


def read_splits_csv(path: str | Path) -> dict[str, str]:
    """``slide_id,split`` rows, or a batch manifest (``slide_path`` and optional ``slide_id``,
    ``split``): rows with an empty split are left to the ratio split."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: splits file not found; give a CSV with columns slide_id,split")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if "split" not in columns or not columns & {"slide_id", "slide_path"}:
            raise ConfigError(
                f"{path}: expected a header with slide_id,split (or a manifest with slide_path and split)"
            )
        pairs = []
        for row in reader:
            split = (row.get("split") or "").strip()
            if not split:
                continue
            slide_id = (row.get("slide_id") or "").strip() or _manifest_slide_id(row.get("slide_path") or "")
            pairs.append((slide_id, split))
    return check_no_leak(pairs, str(path))


def _manifest_slide_id(slide_path: str) -> str:
    """The batch engine's default slide id: the sanitised file stem."""
    from wsi_tools.store import sanitize_slide_id

    return sanitize_slide_id(Path(slide_path.strip()).stem)
