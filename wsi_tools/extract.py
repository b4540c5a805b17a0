"""Hard and weak patch sets from one slide into the patch store.

**Hard set** (``set="hard"``, needs an ASAP XML): every labelled annotation
gives one window of ``patch_size`` px at ``target_mpp``, centred on the
centre of the annotation's bounding box and shifted to stay inside the slide
(:func:`geometry.centred_window`). With ``cover=True`` a region whose
bounding box is larger than one window is tiled instead: a grid of windows
at a step of one window, centred on the bounding box (the overhang split
evenly on both sides), each shifted inside the slide, keeping the windows
whose interior meets the region. Then, in this order:

- a window of an annotation that lies wholly outside the slide is dropped
  (``dropped_outside_slide``);
- a *negative* window whose interior meets any positive annotation (area or
  point) is dropped (``dropped_neg_touches_pos``); positive windows may hold
  several positive areas;
- a window whose interior meets an exclusion area of the label map is
  dropped (``dropped_excluded``); ``label_annotations`` has already cut those
  areas out of the regions themselves;
- a window identical to an earlier one with the same label is dropped
  (``dropped_duplicate``).

Rows follow the annotation file's order. No tissue filter: the annotations
are the ground truth; each patch's tissue fraction is still recorded.

**Weak set** (``set="weak"``): every patch is labelled 0. The non-overlapping
grid of :func:`geometry.grid_origins` (origin (0, 0), step one window),
windows with tissue fraction >= ``min_tissue`` (``dropped_low_tissue``; the
tissue mask of :func:`tissue.detect_tissue` at ``TISSUE_MPP`` = 16 µm/px),
then a random ``fraction`` of them (``dropped_fraction``) drawn with an RNG
seeded from ``(seed, slide_id)`` only, so the same seed gives the same
patches whatever the worker count or order. Rows are in row-major order.
With annotations given, exclusion areas drop windows as above.

Pixels are read in spans of horizontally adjacent windows, so each JPEG tile
is decoded once; a span is at most ``SPAN_WINDOWS`` windows and
``SPAN_BYTES`` of level pixels (one window if it alone is larger), so memory stays
bounded whatever the slide's size. Each window is cut from the span exactly
as :meth:`Slide.read_region` would read it (same level, rounding and
``INTER_AREA`` shrink), so the pixels equal per-window reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import shapely
from shapely.geometry import box

from wsi_tools import __version__
from wsi_tools.errors import AnnotationError, ConfigError
from wsi_tools.geometry import ReadPlan, TilingConfig, centred_window, grid_origins, row_spans
from wsi_tools.options import (
    at_least,
    between,
    one_of,
    option,
    positive,
    proper_fraction,
    unit_interval,
    validate,
)
from wsi_tools.provenance import now_iso
from wsi_tools.slide import READER_CHOICES
from wsi_tools.store import COMPRESSIONS, PatchStore, encode_patch, sanitize_slide_id

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from wsi_tools.annotations import Annotation, AnnotationSet, LabeledAnnotations
    from wsi_tools.slide import Slide
    from wsi_tools.tissue import TissueMask

SETS = ("hard", "weak")
# Tissue for the weak-set filter at 16 µm/px (the coarse end of 8-16): a 512 px window at
# 2.0 µm/px is still 64 x 64 mask px, and the mask work is a quarter of that at 8 µm/px.
TISSUE_MPP = 16.0
SPAN_WINDOWS = 16  # windows per read, so that tiles shared by neighbours are decoded once
SPAN_BYTES = 64 * 2**20  # level pixels per read: bounds memory when a plan shrinks a lot


def _below_one(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


@dataclass(frozen=True)
class ExtractionConfig:
    """What to extract; defaults follow the paper (512 px at ×5 = 2.0 µm/px)."""

    set: str = option(
        help="hard (annotation crops) | weak (a seeded share of the tissue grid)", check=one_of(*SETS)
    )
    target_mpp: float = option(2.0, "target µm/px of the patches (2.0 = ×5)", check=positive)
    patch_size: int = option(512, "patch side in px at the target resolution", check=at_least(8))
    fraction: float = option(
        1 / 3, "weak set: seeded share of the tissue windows kept, e.g. 0.25 or 1/3", check=proper_fraction
    )
    seed: int = option(0, "weak set: seed of the fraction (with the slide id)", check=between(0, 2**32 - 1))
    min_tissue: float = option(0.5, "weak set: least tissue share of a window", check=unit_interval)
    cover: bool = option(False, "hard set: tile a region larger than one window instead of one centred crop")
    label_map: str | None = option(
        None,
        "label map YAML mapping annotation groups to labels, or a name in configs/labels; "
        "none: lymphatic_invasion (LI_positive/LI+/positive -> 1, LI_negative/LI-/negative -> 0)",
    )
    ignore_unknown_groups: bool = option(
        False, "skip annotation groups the label map does not name, instead of failing the slide"
    )
    backend: str = option(
        "auto",
        "slide reader: auto tries tiffslide for .svs/.tif/.tiff, then OpenSlide, and takes the one that sees more pyramid levels",
        check=one_of(*READER_CHOICES),
    )
    slide_mpp: float | None = option(
        None, "level-0 µm/px for a slide without MPP, or to override it", check=positive
    )
    tolerance: float = option(
        0.05, "relative mpp difference within which a pyramid level is read as is", check=_below_one
    )
    threads: int = option(
        2, "threads that each read and encode a span of windows", check=at_least(1), output=False
    )
    compression: str = option(
        "fast",
        "patch zstd: fast (negative level, Huffman literals) or compact (level 1: 1-7% smaller, "
        "encoding ~40% slower)",
        check=one_of(*COMPRESSIONS),
    )

    def __post_init__(self) -> None:
        validate(self)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SlideResult:
    slide_id: str
    status: str  # "complete" or "skipped"
    n_patches: int
    counts: dict[str, int]
    seconds: float
    store_path: Path
    qc_path: Path | None = None


@dataclass
class Windows:
    """Chosen windows: level-0 top-left origins (row order = store order)."""

    origins: np.ndarray  # (N, 2) int64
    labels: np.ndarray  # (N,) int8
    tissue_fraction: np.ndarray  # (N,) float32
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.origins)


# --------------------------------------------------------------------------- choosing windows


def slide_rng(seed: int, slide_id: str) -> np.random.Generator:
    """An RNG that depends on the seed and the slide id only (not on order or workers)."""
    slide_key = int.from_bytes(hashlib.sha256(slide_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, slide_key]))


def choose_fraction(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``round(fraction * n)`` of ``range(n)`` (all of them at 1)."""
    keep = min(n, math.floor(fraction * n + 0.5))
    if keep >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=keep, replace=False))


def _boxes(origins: np.ndarray, extent: float) -> np.ndarray:
    origins = np.asarray(origins, np.float64).reshape(-1, 2)
    return shapely.box(origins[:, 0], origins[:, 1], origins[:, 0] + extent, origins[:, 1] + extent)


def interiors_meet(origins: np.ndarray, extent: float, geometry: BaseGeometry | None) -> np.ndarray:
    """Per window: does the geometry reach its interior (touching its edge does not count)?"""
    if geometry is None or geometry.is_empty or len(origins) == 0:
        return np.zeros(len(origins), bool)
    boxes = _boxes(origins, extent)
    shapely.prepare(geometry)
    return shapely.intersects(boxes, geometry) & ~shapely.touches(boxes, geometry)


def weak_windows(
    spec_origins: np.ndarray,
    extent: float,
    tissue: TissueMask,
    config: ExtractionConfig,
    slide_id: str,
    excluded: BaseGeometry | None = None,
) -> Windows:
    """The weak-set rule on the grid origins (row-major)."""
    counts = {"grid_windows": len(spec_origins)}
    fractions = tissue.fractions(spec_origins, extent).astype(np.float32)
    enough = fractions >= config.min_tissue
    counts["dropped_low_tissue"] = int((~enough).sum())
    origins, fractions = spec_origins[enough], fractions[enough]
    outside_exclusion = ~interiors_meet(origins, extent, excluded)
    counts["dropped_excluded"] = int((~outside_exclusion).sum())
    origins, fractions = origins[outside_exclusion], fractions[outside_exclusion]
    chosen = choose_fraction(len(origins), config.fraction, slide_rng(config.seed, slide_id))
    counts["dropped_fraction"] = len(origins) - len(chosen)
    origins, fractions = origins[chosen], fractions[chosen]
    counts.update(kept=len(origins), positive=0, negative=len(origins))
    return Windows(origins.astype(np.int64), np.zeros(len(origins), np.int8), fractions, counts)


def _region_windows(
    geometry: BaseGeometry, extent: float, dimensions: tuple[int, int], cover: bool
) -> list[tuple[int, int]]:
    min_x, min_y, max_x, max_y = geometry.bounds
    centre = ((min_x + max_x) / 2, (min_y + max_y) / 2)
    n_cols = max(1, math.ceil((max_x - min_x) / extent - 1e-9))
    n_rows = max(1, math.ceil((max_y - min_y) / extent - 1e-9))
    if not cover or (n_cols == 1 and n_rows == 1):
        return [centred_window(centre, extent, dimensions)]
    origins = []
    for row in range(n_rows):
        for col in range(n_cols):
            window_centre = (
                centre[0] + (col - (n_cols - 1) / 2) * extent,
                centre[1] + (row - (n_rows - 1) / 2) * extent,
            )
            origins.append(centred_window(window_centre, extent, dimensions))
    origins = list(dict.fromkeys(origins))  # the shift inside the slide can make twins
    meets = interiors_meet(np.array(origins), extent, geometry)
    return [origin for origin, keep in zip(origins, meets, strict=True) if keep]


def hard_windows(
    labeled: LabeledAnnotations,
    extent: float,
    dimensions: tuple[int, int],
    tissue: TissueMask,
    cover: bool = False,
) -> Windows:
    """The hard-set rules (module docstring) on labelled annotations, in file order."""
    counts = {
        "annotations": len(labeled.labeled),
        "dropped_outside_slide": 0,
        "dropped_neg_touches_pos": 0,
        "dropped_excluded": 0,
        "dropped_duplicate": 0,
    }
    slide_box = box(0, 0, *dimensions)
    positives = [a.geometry for a in labeled.positives if not a.geometry.is_empty]
    positive_union = shapely.union_all(positives) if positives else None
    excluded = labeled.excluded_geometry
    chosen: list[tuple[int, int, int]] = []
    seen: set[tuple[int, int, int]] = set()
    for annotation in labeled.labeled:
        label = int(annotation.label or 0)
        if annotation.geometry.is_empty or not annotation.geometry.intersects(slide_box):
            counts["dropped_outside_slide"] += 1
            continue
        origins = np.array(_region_windows(annotation.geometry, extent, dimensions, cover), np.int64)
        keep = np.ones(len(origins), bool)
        if label == 0:
            touches = interiors_meet(origins, extent, positive_union)
            counts["dropped_neg_touches_pos"] += int(touches.sum())
            keep &= ~touches
        in_exclusion = interiors_meet(origins, extent, excluded) & keep
        counts["dropped_excluded"] += int(in_exclusion.sum())
        keep &= ~in_exclusion
        for x, y in origins[keep]:
            key = (int(x), int(y), label)
            if key in seen:
                counts["dropped_duplicate"] += 1
                continue
            seen.add(key)
            chosen.append(key)
    origins = np.array([(x, y) for x, y, _ in chosen], np.int64).reshape(-1, 2)
    labels = np.array([label for _, _, label in chosen], np.int8)
    fractions = (
        tissue.fractions(origins, extent).astype(np.float32) if len(origins) else np.zeros(0, np.float32)
    )
    counts.update(kept=len(origins), positive=int((labels > 0).sum()), negative=int((labels == 0).sum()))
    return Windows(origins, labels, fractions, counts)


# --------------------------------------------------------------------------- reading pixels


class _Scratch(threading.local):
    """Reusable pixel buffers of one reading thread, by role (level pixels of a
    resampled span; a span's patches while they are encoded)."""

    def get(self, role: str, shape: tuple[int, int, int, int]) -> np.ndarray:
        buffers: dict[str, np.ndarray] = self.__dict__.setdefault("buffers", {})
        buffer = buffers.get(role)
        if buffer is None or buffer.shape[1:] != shape[1:] or len(buffer) < shape[0]:
            buffer = buffers[role] = np.empty(shape, np.uint8)
        return buffer[: shape[0]]


_scratch = _Scratch()


def read_windows(
    slide: Slide, origins: np.ndarray, size: int, plan: ReadPlan, out: np.ndarray | None = None
) -> np.ndarray:
    """(k, size, size, 3) patches of windows on one row, from a single level read
    (into ``out`` when given: C-contiguous, that shape).

    Every window is cut as ``Slide.read_region`` reads it: level-0 x mapped to
    ``round(x / downsample)`` level px, ``round(size * resample_scale)`` level
    px wide, shrunk with INTER_AREA when the plan resamples.
    """
    level_size = size if not plan.resampled else max(1, round(size * plan.resample_scale))
    xs = [int(x) for x in origins[:, 0]]
    if not plan.resampled:  # the windows are the patches
        return slide.read_level_windows(plan.level, xs, int(origins[0, 1]), level_size, level_size, out=out)
    # Level pixels are shrunk at once: a buffer reused per thread spares the page
    # faults of a fresh allocation per span (tens of MB at x40).
    level = _scratch.get("level", (len(xs), level_size, level_size, 3))
    blocks = slide.read_level_windows(plan.level, xs, int(origins[0, 1]), level_size, level_size, out=level)
    patches = np.empty((len(origins), size, size, 3), np.uint8) if out is None else out
    for row, block in enumerate(blocks):
        cv2.resize(block, (size, size), dst=patches[row], interpolation=cv2.INTER_AREA)
    return patches


# --------------------------------------------------------------------------- one slide


def _annotation_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _refuse_annotations_for_another_slide(
    counts: Mapping[str, int], slide_path: Path, annotation_path: Path, dimensions: tuple[int, int]
) -> None:
    """Most annotations outside the slide: the XML was drawn on another slide (or
    at another level's scale), and extracting the few left would hide that."""
    total, outside = counts.get("annotations", 0), counts.get("dropped_outside_slide", 0)
    if total and outside * 2 > total:
        raise AnnotationError(
            f"{annotation_path}: {outside} of {total} labelled annotations lie outside the slide "
            f"{slide_path} ({dimensions[0]}x{dimensions[1]} px at level 0); is it the annotation file "
            "of another slide? Check the manifest's pairing (coordinates must be level-0 px)"
        )


def why_empty(counts: Mapping[str, int]) -> str:
    """Why a slide kept no patch, from its counts: the largest drop reasons first."""
    if counts.get("grid_windows") == 0:
        return "the slide is smaller than one window at this resolution and patch size"
    if counts.get("annotations") == 0:
        return "the annotation file has no labelled annotation"
    dropped = sorted(
        (
            (value, key.removeprefix("dropped_"))
            for key, value in counts.items()
            if key.startswith("dropped_") and value
        ),
        reverse=True,
    )
    return (
        "dropped: " + ", ".join(f"{reason} {value}" for value, reason in dropped) if dropped else "no window"
    )


def stored_slide_id(slide_id: str | None, slide_path: Path) -> str:
    """The id a slide is stored under; a warning when it is not the one given."""
    given = slide_id if slide_id is not None else slide_path.stem
    stored = sanitize_slide_id(given)
    if slide_id is not None and stored != given:
        warnings.warn(
            f"slide id {given!r} is stored as {stored!r} (path separators, '..' and leading dots "
            "are not allowed in a slide id)",
            UserWarning,
            stacklevel=3,
        )
    return stored


def changes_since_extraction(
    attrs: Mapping[str, Any], slide_path: Path, annotation_path: str | Path | None, config: ExtractionConfig
) -> list[str]:
    """What differs between a complete slide's provenance and extracting ``slide_path``
    now: the slide file, the annotation file, or a setting that changes the output.
    Empty when a rerun may skip it. Slides written before a field was recorded are
    compared on the fields they have."""
    from wsi_tools.options import output_keys
    from wsi_tools.slide import file_fingerprint

    changed: list[str] = []
    stored_fingerprint = attrs.get("fingerprint")
    if stored_fingerprint and file_fingerprint(slide_path) != stored_fingerprint:
        changed.append(
            f"the slide file: {slide_path} is not the file it was extracted from "
            f"({attrs.get('source')}, fingerprint {str(stored_fingerprint)[:24]}...)"
        )
    stored_annotations = attrs.get("annotations")
    if annotation_path is not None and "annotations_sha256" in attrs:
        annotation_path = Path(annotation_path)
        recorded = attrs.get("annotations_sha256")
        if recorded is None:
            changed.append(f"the annotations: it was extracted without any, now {annotation_path}")
        elif annotation_path.is_file() and _annotation_digest(annotation_path) != recorded:
            changed.append(
                f"the annotation file: {annotation_path} differs from the one it was extracted with "
                f"({stored_annotations}, sha256 {recorded}...)"
            )
    elif annotation_path is None and stored_annotations:
        changed.append(f"the annotations: it was extracted with {stored_annotations}, now none")
    stored = attrs.get("params") or {}
    now = config.as_dict()
    changed += [
        f"{key} {stored[key]!r} (now {now[key]!r})"
        for key in output_keys(ExtractionConfig)
        if key in stored and key in now and stored[key] != now[key]
    ]
    return changed


def already_extracted_message(store_path: Path, slide_id: str, changed: Sequence[str]) -> str:
    return (
        f"{store_path}: slide {slide_id!r} is already in the store, extracted from other inputs: "
        f"{'; '.join(changed)}. Pass --overwrite to replace it, or give this slide another id "
        "(--slide-id, or the manifest's slide_id column)"
    )


def _load_annotations(
    annotation_path: Path, config: ExtractionConfig, dimensions: tuple[int, int]
) -> tuple[AnnotationSet, LabeledAnnotations]:
    from wsi_tools.annotations import label_annotations, load_label_map, read_annotations

    label_map = load_label_map(config.label_map)
    annotations = read_annotations(annotation_path, slide_dimensions=dimensions)
    labeled = label_annotations(annotations, label_map, ignore_unknown=config.ignore_unknown_groups)
    return annotations, labeled


def extract_slide(
    slide_path: str | Path,
    store_path: str | Path,
    config: ExtractionConfig,
    *,
    annotation_path: str | Path | None = None,
    slide_id: str | None = None,
    overwrite: bool = False,
    qc_dir: str | Path | None = None,
    progress: bool = False,
) -> SlideResult:
    """Extract one slide's hard or weak set into the store (see the module docstring).

    A complete slide already in the store is skipped unless ``overwrite``.
    Every input is checked (slide, MPP, annotations, label map, settings)
    before anything is written; a failure part-way leaves no complete group.
    """
    from tqdm import tqdm

    from wsi_tools.slide import open_slide
    from wsi_tools.tissue import detect_tissue

    started_clock = time.perf_counter()
    started = now_iso()
    slide_path = Path(slide_path)
    slide_id = stored_slide_id(slide_id, slide_path)
    if config.set == "hard" and annotation_path is None:
        raise ConfigError(f"{slide_path}: the hard set needs annotations; pass --annotations XML")
    # A new store is created only once every input has passed its checks: a bad slide,
    # MPP or annotation file leaves nothing on disk. An existing one is opened now, to skip.
    store = PatchStore(store_path, mode="a") if Path(store_path).exists() else None
    if store is not None and store.is_complete(slide_id) and not overwrite and slide_path.is_file():
        attrs = store.slide_attrs(slide_id)
        changed = changes_since_extraction(attrs, slide_path, annotation_path, config)
        if changed:
            raise ConfigError(already_extracted_message(store.path, slide_id, changed))
        store.remove_leftovers(slide_id)
        return SlideResult(
            slide_id,
            "skipped",
            int(attrs.get("n_patches", 0)),
            dict(attrs.get("counts", {})),
            time.perf_counter() - started_clock,
            store.path,
        )

    with open_slide(slide_path, backend=config.backend, mpp=config.slide_mpp) as slide:
        plan = slide.plan(config.target_mpp, config.tolerance)
        spec = slide.spec
        extent = plan.level0_extent(config.patch_size)
        annotations = labeled = None
        if annotation_path is not None:
            annotation_path = Path(annotation_path)
            annotations, labeled = _load_annotations(annotation_path, config, slide.dimensions)
        tissue = detect_tissue(slide, target_mpp=TISSUE_MPP)
        if config.set == "hard":
            assert labeled is not None and annotation_path is not None
            windows = hard_windows(labeled, extent, slide.dimensions, tissue, cover=config.cover)
            _refuse_annotations_for_another_slide(
                windows.counts, slide_path, annotation_path, slide.dimensions
            )
        else:
            tiling = TilingConfig(config.target_mpp, config.patch_size, config.tolerance)
            excluded = labeled.excluded_geometry if labeled is not None else None
            windows = weak_windows(grid_origins(spec, tiling), extent, tissue, config, slide_id, excluded)

        attrs = _provenance(slide, plan, extent, config, annotation_path, labeled, annotations, tissue)
        attrs["started"] = started
        new_store = store is None
        if store is None:
            store = PatchStore(store_path, mode="a")
        try:
            writer = store.begin_slide(
                slide_id,
                len(windows),
                config.patch_size,
                attrs,
                overwrite=True,
                compression=config.compression,
            )
            with (
                writer,
                tqdm(
                    total=len(windows), desc=slide_id[:24], unit="patch", disable=not progress, leave=False
                ) as bar,
            ):
                for span, chunks in _read_ahead(slide, windows.origins, extent, config, plan):
                    writer.write_encoded(
                        span.start,
                        chunks,
                        windows.origins[span],
                        windows.labels[span],
                        windows.tissue_fraction[span],
                    )
                    bar.update(len(chunks))
                writer.commit({"counts": windows.counts, "warnings": [*slide.warnings, *attrs["warnings"]]})
        except BaseException:
            if new_store:  # a failed first slide leaves no empty store behind
                store.remove_if_empty()
            raise

        qc_path = None
        if qc_dir is not None:
            qc_path = _render_qc(
                slide, Path(qc_dir) / f"{slide_id}.png", config.set, tissue, annotations, windows, extent
            )
    return SlideResult(
        slide_id,
        "complete",
        len(windows),
        dict(windows.counts),
        time.perf_counter() - started_clock,
        store.path,
        qc_path,
    )


def _read_and_encode(
    slide: Slide, origins: np.ndarray, config: ExtractionConfig, plan: ReadPlan
) -> list[bytes]:
    """The store chunks of one span's windows, encoded on the thread that
    decoded them (the pixels are still in that core's cache)."""
    size = config.patch_size
    patches = _scratch.get("patches", (len(origins), size, size, 3))  # encoded before the next span
    read_windows(slide, origins, size, plan, out=patches)
    return [encode_patch(patch, config.compression) for patch in patches]


def _read_ahead(
    slide: Slide, origins: np.ndarray, extent: float, config: ExtractionConfig, plan: ReadPlan
) -> Iterator[tuple[slice, list[bytes]]]:
    """Spans and their encoded patches, in order; with ``threads > 1`` that many
    spans are read and encoded at once (decoding and zstd release the GIL)."""
    level_px = config.patch_size * max(1.0, plan.resample_scale)
    spans = row_spans(origins, extent, max(1, min(SPAN_WINDOWS, int(SPAN_BYTES // (3 * level_px**2)))))
    if config.threads <= 1:
        for span in spans:
            yield span, _read_and_encode(slide, origins[span], config, plan)
        return
    # The calling thread takes every n-th span itself: n threads in all, not n + 1
    # contending for the GIL and the cores.
    with ThreadPoolExecutor(config.threads - 1, thread_name_prefix="read") as pool:
        queue: deque[tuple[slice, Future[list[bytes]]]] = deque()
        for number, span in enumerate(spans):
            if number % config.threads == config.threads - 1:
                job: Future[list[bytes]] = Future()
                job.set_result(_read_and_encode(slide, origins[span], config, plan))
            else:
                job = pool.submit(_read_and_encode, slide, origins[span], config, plan)
            queue.append((span, job))
            while queue and (queue[0][1].done() or len(queue) > config.threads):
                done, future = queue.popleft()
                yield done, future.result()
        while queue:
            done, future = queue.popleft()
            yield done, future.result()


def _provenance(
    slide: Slide,
    plan: ReadPlan,
    extent: float,
    config: ExtractionConfig,
    annotation_path: Path | None,
    labeled: LabeledAnnotations | None,
    annotations: AnnotationSet | None,
    tissue: TissueMask,
) -> dict[str, Any]:
    warnings = list(annotations.warnings) if annotations is not None else []
    if labeled is not None:
        warnings += labeled.warnings
    provenance = {
        "set": config.set,
        "source": str(slide.path.resolve()),
        "annotations": str(annotation_path.resolve()) if annotation_path else None,
        "annotations_sha256": _annotation_digest(annotation_path) if annotation_path else None,
        "fingerprint": slide.fingerprint,
        "backend": slide.backend,
        "slide_dimensions": list(slide.dimensions),
        "mpp": list(slide.mpp) if slide.mpp else None,
        "mpp_override": config.slide_mpp,
        "objective_power": slide.objective_power,
        "target_mpp": config.target_mpp,
        "effective_mpp": plan.effective_mpp,
        "level": plan.level,
        "downsample": plan.level_downsample,
        "level_mpp": plan.level_mpp,
        "resample_scale": plan.resample_scale,
        "patch_size": config.patch_size,
        "patch_extent_level0": extent,
        "params": config.as_dict(),
        "label_map": labeled.label_map.as_dict() if labeled is not None else None,
        "unknown_groups": labeled.unknown_groups if labeled is not None else [],
        "tissue": {
            "mask_mpp": tissue.mpp,
            "threshold": tissue.threshold,
            "fraction_of_slide": tissue.fraction_of_slide,
        },
        "rng": "numpy default_rng(SeedSequence([seed, sha256(slide_id)[:8] little-endian]))",
        "tool_version": __version__,
        "warnings": warnings,
    }
    if slide.reader_fallback:  # only then, so that stores read the fast way keep their bytes
        provenance["reader_fallback"] = slide.reader_fallback
    if slide.backend_choice:
        provenance["backend_choice"] = slide.backend_choice
    return provenance


def _render_qc(
    slide: Slide,
    out_path: Path,
    set_name: str,
    tissue: TissueMask,
    annotations: AnnotationSet | None,
    windows: Windows,
    extent: float,
) -> Path:
    from wsi_tools.viz.qc import render_overview

    out_path.parent.mkdir(parents=True, exist_ok=True)
    kinds = ["weak" if set_name == "weak" else ("pos" if label > 0 else "neg") for label in windows.labels]
    boxes = [
        (int(x), int(y), float(extent), kind) for (x, y), kind in zip(windows.origins, kinds, strict=True)
    ]
    annotation_list: Sequence[Annotation] | None = (
        annotations.annotations if annotations is not None else None
    )
    return render_overview(slide, out_path, tissue=tissue, annotations=annotation_list, patches=boxes)
