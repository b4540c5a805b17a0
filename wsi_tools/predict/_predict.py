"""A trained patch classifier applied to whole slides in a sliding window.

For each slide: windows of the checkpoint's patch size at its resolution, every
``stride`` px over the tissue; read span by span (tiles shared by neighbouring
windows decoded once) by reader threads while the model scores full batches;
averaged into a probability map at stride resolution. The slide scores are the
maximum window probability (Kanavati et al.'s rule), the mean of the top k and
the number of windows at or above the threshold.

Each slide's outputs are written under a temporary name and renamed into
``OUT/<slide_id>/`` when complete, so an interrupted run leaves no half slide; a
rerun skips slides already predicted with the same checkpoint and settings and
refuses, naming the keys, those predicted with others.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_tools import __version__
from wsi_tools.errors import ConfigError
from wsi_tools.geometry import DEFAULT_MPP_TOLERANCE, row_spans
from wsi_tools.options import output_keys
from wsi_tools.predict._config import PredictConfig
from wsi_tools.predict._grid import ProbabilityMap, SlidingGrid, sliding_grid
from wsi_tools.predict._regions import Region, positive_regions
from wsi_tools.provenance import code_version, now_iso
from wsi_tools.store import sanitize_slide_id

SLIDE_FILE = "slide.json"
TISSUE_MPP = 16.0  # as extraction: the mask the windows' tissue share is measured on
HEATMAP_MPP = 8.0
HEATMAP_MAX_PX = 2000
SPAN_WINDOWS = 16
POSITIVE_GROUP = "predicted positive"
HOLE_GROUP = "predicted positive (hole)"
POSITIVE_COLOUR = "#E6194B"
SLIDE_COLUMNS = (
    "slide_id",
    "score_max",
    "score_topk",
    "n_tiles",
    "n_positive",
    "threshold",
    "status",
    "slide_path",
)


@dataclass(frozen=True)
class PixelSettings:
    """How windows are cut and fed to the network: what the model was trained on."""

    target_mpp: float
    patch_size: int
    tolerance: float
    input_size: int


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one slide that are scored: on the tissue, in grid (row-major) order."""

    plan: Any  # the slide's ReadPlan at the model's resolution
    grid: SlidingGrid
    tissue: Any  # the TissueMask the fractions were measured on
    rows: np.ndarray
    cols: np.ndarray
    origins: np.ndarray  # (N, 2) level-0 top-left x, y
    fractions: np.ndarray  # tissue share of each window

    def __len__(self) -> int:
        return len(self.origins)


@dataclass
class SlidePrediction:
    slide_id: str
    slide_path: str
    status: str  # "complete" | "skipped"
    out_dir: Path
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    gradcam: dict[str, Any] | None = None  # regions, windows, stride, seconds (with --gradcam)
    gradcam_slide: dict[str, Any] | None = None  # windows, stride, seconds (--gradcam-whole-slide)


def pixel_settings(
    pixels: dict[str, Any], input_size: int, config: PredictConfig, checkpoint: Path
) -> PixelSettings:
    """The checkpoint's recorded resolution and patch size, or the flags that stand in for them."""
    target = config.target_mpp or pixels.get("target_mpp")
    patch = config.patch_size or pixels.get("patch_size")
    missing = [flag for flag, value in (("--mpp UM", target), ("--patch-size PX", patch)) if value is None]
    if missing or target is None or patch is None:
        raise ConfigError(
            f"{checkpoint}: the checkpoint does not record the resolution and patch size it was trained "
            f"on (made by an older wsi-tools, or from a store that does not record them); pass "
            f"{' and '.join(missing)} as the training store was extracted"
        )
    tolerance = config.tolerance if config.tolerance is not None else pixels.get("tolerance")
    return PixelSettings(
        float(target),
        int(patch),
        float(DEFAULT_MPP_TOLERANCE if tolerance is None else tolerance),
        input_size,
    )


class Predictor:
    """A checkpoint ready to score slides (load once, predict many)."""

    def __init__(self, checkpoint: str | Path, config: PredictConfig | None = None) -> None:
        import torch

        from wsi_tools.slide import file_fingerprint
        from wsi_tools.train.augment import BatchTransform
        from wsi_tools.train.checkpoint import load_checkpoint, load_weights
        from wsi_tools.train.inference import inference_runtime, prepare_model
        from wsi_tools.train.model import PatchClassifier

        self.config = config or PredictConfig()
        self.checkpoint = Path(checkpoint)
        record = load_checkpoint(self.checkpoint)
        train_config = record.train_config(str(self.checkpoint))
        self.pixels = pixel_settings(record.pixels, train_config.input_size, self.config, self.checkpoint)
        self.threshold = float(
            self.config.threshold if self.config.threshold is not None else train_config.threshold
        )
        stride = window_stride(self.pixels.patch_size, self.config.stride, self.config.overlap)
        self.stride = stride
        if self.config.gradcam_whole_slide and self.pixels.patch_size % self.config.gradcam_stride:
            raise ConfigError(
                f"--gradcam-stride {self.config.gradcam_stride} must divide the patch size "
                f"{self.pixels.patch_size} for --gradcam-whole-slide (e.g. {self.pixels.patch_size // 8})"
            )
        self.runtime = inference_runtime(self.config.device, channels_last_on_cpu=True)
        model = PatchClassifier(train_config.input_size)
        load_weights(model, record.model, self.checkpoint)
        self.model = prepare_model(model, self.runtime)
        self.transform = BatchTransform(train_config.input_size, augment=False).to(self.runtime.device)
        self.checkpoint_fingerprint = file_fingerprint(self.checkpoint)
        self.model_name = f"{self.checkpoint.parent.name}/{self.checkpoint.name}"
        self._torch = torch

    def settings(self) -> dict[str, Any]:
        """What a slide's outputs depend on: a rerun with other values is not the same output."""
        chosen = {key: getattr(self.config, key) for key in output_keys(PredictConfig)}
        return {
            **chosen,
            "stride": self.stride,
            "threshold": self.threshold,
            **asdict(self.pixels),
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
        }

    # ------------------------------------------------------------------ scoring

    def score(self, patches: np.ndarray) -> np.ndarray:
        """Positive probabilities (B,) float64 of uint8 RGB patches (B, P, P, 3)."""
        from wsi_tools.train.data import resize_batch
        from wsi_tools.train.inference import to_device

        torch = self._torch
        with torch.no_grad():
            batch = resize_batch(patches, None if self.runtime.cuda else self.pixels.input_size)
            if self.runtime.cuda:
                batch = batch.pin_memory()
            x = to_device(batch, self.runtime, self.transform)
            with self.runtime.autocast():
                logits = self.model(x)
            return torch.sigmoid(logits.double()).cpu().numpy().reshape(-1)

    def gradcam(self, patches: np.ndarray, per_image: bool = True) -> np.ndarray:
        """Grad-CAM maps (B, h, w) of uint8 RGB patches (B, P, P, 3), in batches: each in
        [0, 1], or raw (``per_image=False``, see :func:`~wsi_tools.viz.figures.grad_cam`)."""
        from wsi_tools.train.data import resize_batch
        from wsi_tools.train.inference import to_device, unwrap
        from wsi_tools.viz.figures import grad_cam

        model = unwrap(self.model)
        layer = getattr(model.backbone, self.gradcam_layer)
        maps = []
        for start in range(0, len(patches), self.config.batch_size):
            batch = resize_batch(patches[start : start + self.config.batch_size], self.pixels.input_size)
            x = to_device(batch, self.runtime, self.transform)
            maps.append(grad_cam(model, x.float(), layer, per_image=per_image))
        return np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32)

    @property
    def gradcam_layer(self) -> str:
        """The last ResNet block whose maps are at least 4 x 4 (layer4 from a 128 px
        input on): a 1 x 1 map has no "where", and min-max scaling would make it 0."""
        for name, reduction in (("layer4", 32), ("layer3", 16), ("layer2", 8)):
            if self.pixels.input_size // reduction >= 4:
                return name
        return "layer1"

    def plan_windows(self, slide: Any, stride: int | None = None, tissue: Any = None) -> WindowPlan:
        """The windows of ``slide`` (an open :class:`~wsi_tools.slide.Slide`) that are
        scored: every ``stride`` px (default: the prediction's) on ``tissue`` (default:
        detected now)."""
        from wsi_tools.tissue import detect_tissue

        plan = slide.plan(self.pixels.target_mpp, self.pixels.tolerance)
        extent = plan.level0_extent(self.pixels.patch_size)
        grid = sliding_grid(slide.dimensions, extent, self.pixels.patch_size // (stride or self.stride))
        tissue = tissue if tissue is not None else detect_tissue(slide, target_mpp=TISSUE_MPP)
        rows, cols = grid.window_index()
        origins = grid.origins(rows, cols)
        fractions = tissue.fractions(origins, extent) if len(origins) else np.zeros(0)
        keep = fractions >= self.config.tissue_min
        return WindowPlan(plan, grid, tissue, rows[keep], cols[keep], origins[keep], fractions[keep])

    def read_batches(self, slide: Any, windows: WindowPlan) -> Iterator[tuple[int, np.ndarray]]:
        """(first window index, uint8 patches) in full batches of the windows, in order,
        read ahead by the reader threads while the caller scores the last batch."""
        from wsi_tools.extract import read_windows

        size, origins, plan = self.pixels.patch_size, windows.origins, windows.plan
        spans = list(row_spans(origins, windows.grid.extent, SPAN_WINDOWS))
        pending: list[np.ndarray] = []
        pending_start, pending_count = 0, 0
        with ThreadPoolExecutor(self.config.threads, thread_name_prefix="predict-read") as pool:
            queue: deque[Future[np.ndarray]] = deque()
            jobs = iter(spans)
            for span in jobs:
                queue.append(pool.submit(read_windows, slide, origins[span], size, plan))
                if len(queue) >= 2 * self.config.threads:
                    break
            while queue:
                patches = queue.popleft().result()
                next_span = next(jobs, None)
                if next_span is not None:
                    queue.append(pool.submit(read_windows, slide, origins[next_span], size, plan))
                pending.append(patches)
                pending_count += len(patches)
                while pending_count >= self.config.batch_size:
                    stacked = np.concatenate(pending)
                    batch, rest = stacked[: self.config.batch_size], stacked[self.config.batch_size :]
                    yield pending_start, batch
                    pending_start += len(batch)
                    pending, pending_count = ([rest] if len(rest) else []), len(rest)
        if pending_count:
            yield pending_start, np.concatenate(pending)

    # ------------------------------------------------------------------ one slide

    def predict_slide(
        self,
        slide_path: str | Path,
        out: str | Path,
        *,
        slide_id: str | None = None,
        slide_mpp: float | None = None,
        overwrite: bool = False,
    ) -> SlidePrediction:
        """Score one slide and write its outputs to ``out/<slide_id>/`` (see the module docstring)."""
        from tqdm import tqdm

        from wsi_tools.slide import open_slide

        started = time.perf_counter()
        slide_path = Path(slide_path)
        slide_id = sanitize_slide_id(slide_id if slide_id is not None else slide_path.stem)
        out = Path(out)
        final = out / slide_id
        settings = self.settings()
        done = _previous(final, settings, overwrite)
        if done is not None:
            return SlidePrediction(slide_id, str(slide_path), "skipped", final, done.get("scores", {}))
        mpp = slide_mpp if slide_mpp is not None else self.config.slide_mpp
        with open_slide(slide_path, backend=self.config.backend, mpp=mpp) as slide:
            windows = self.plan_windows(slide)
            plan, grid, tissue, origins = windows.plan, windows.grid, windows.tissue, windows.origins
            notes = list(slide.warnings)
            if not len(windows):
                notes.append(
                    f"{slide_path}: no window has a tissue share of at least {self.config.tissue_min:g}, so "
                    "nothing was scored and the slide scores 0; check the heatmap's tissue outline, or "
                    "lower --tissue-min"
                )
                warnings.warn(notes[-1], stacklevel=2)
            extent, fractions = grid.extent, windows.fractions
            probabilities = np.zeros(len(origins), np.float64)
            show = self.config.progress and _terminal()
            with tqdm(
                total=len(origins), desc=slide_id[:24], unit="window", disable=not show, leave=False
            ) as bar:
                for start, patches in self.read_batches(slide, windows):
                    probabilities[start : start + len(patches)] = self.score(patches)
                    bar.update(len(patches))
            probability_map = ProbabilityMap(grid)
            probability_map.add(windows.rows, windows.cols, probabilities)
            mean_map = probability_map.mean()
            regions = positive_regions(mean_map, grid, self.threshold)
            thumbnail, downsample = slide.thumbnail(_heatmap_mpp(slide))
            scores = slide_scores(probabilities, self.threshold, self.config.top_k)
            record: dict[str, Any] = {
                "slide_id": slide_id,
                "slide_path": str(slide_path.resolve()),
                "slide_fingerprint": slide.fingerprint,
                "slide_dimensions": list(slide.dimensions),
                "slide_mpp": slide.spec.mpp,
                "level": plan.level,
                "effective_mpp": plan.effective_mpp,
                "scores": scores,
                "n_regions": len(regions),
                "settings": settings,
                "checkpoint": str(self.checkpoint.resolve()),
                "map": grid.geometry(),
                "warnings": notes,
                "tool_version": __version__,
                "code_version": code_version(),
                "finished": now_iso(),
            }
            prediction_seconds = time.perf_counter() - started  # what a Grad-CAM's cost is compared with
            temporary = out / f".tmp-{slide_id}-{uuid.uuid4().hex[:12]}"
            temporary.mkdir(parents=True)
            try:
                if self.config.gradcam:  # first, so that slide.json records its cost
                    record["gradcam"] = self._gradcam(
                        temporary, slide, plan, origins, probabilities, extent, record
                    )
                if self.config.gradcam_whole_slide:
                    record["gradcam_slide"] = self._gradcam_slide(
                        temporary, slide, windows, record, thumbnail, downsample, show, prediction_seconds
                    )  # fmt: skip
                self._write(temporary, record, origins, fractions, probabilities, mean_map, grid, regions)
                self._heatmap(
                    temporary, record, thumbnail, downsample, mean_map, grid, regions, tissue.polygon
                )
                _swap_in(temporary, final)
            except BaseException:
                shutil.rmtree(temporary, ignore_errors=True)
                raise
        return SlidePrediction(
            slide_id,
            str(slide_path),
            "complete",
            final,
            scores,
            time.perf_counter() - started,
            record.get("gradcam"),
            record.get("gradcam_slide"),
        )

    def _gradcam(
        self,
        folder: Path,
        slide: Any,
        plan: Any,
        origins: np.ndarray,
        probabilities: np.ndarray,
        extent: float,
        record: dict[str, Any],
    ) -> dict[str, Any]:
        """gradcam.png and gradcam.npz for the top-scoring regions; what it cost."""
        from wsi_tools.predict._gradcam import region_gradcam, top_region_centres
        from wsi_tools.viz.figures import plot_gradcam_regions

        started = time.perf_counter()
        stride = min(self.config.gradcam_stride, self.pixels.patch_size)
        centres = top_region_centres(origins, probabilities, 2 * extent, self.config.gradcam_regions)
        regions = [
            region_gradcam(self, slide, plan, origins[index], extent, probability, stride)
            for index, probability in centres
        ]
        np.savez_compressed(
            folder / "gradcam.npz",
            cams=np.stack([r.cam for r in regions]).astype(np.float16) if regions else np.zeros((0, 1, 1)),
            origins=np.array([r.origin for r in regions], np.int64).reshape(-1, 2),
            extent_level0=np.array([r.extent for r in regions], np.float64),
            probabilities=np.array([r.probability for r in regions], np.float64),
        )
        plot_gradcam_regions(
            [r.image for r in regions],
            [r.cam for r in regions],
            [f"x {r.origin[0]}, y {r.origin[1]}: p={r.probability:.2f}" for r in regions],
            folder / "gradcam.png",
            f"{record['slide_id']} - Grad-CAM ({self.gradcam_layer}) of the top {len(regions)} region(s) "
            f"- {self.model_name}",
        )
        return {
            "layer": self.gradcam_layer,
            "regions": len(regions),
            "windows": sum(r.windows for r in regions),
            "stride": stride,
            "seconds": round(time.perf_counter() - started, 2),
        }

    def _gradcam_slide(
        self,
        folder: Path,
        slide: Any,
        windows: WindowPlan,
        record: dict[str, Any],
        thumbnail: np.ndarray,
        downsample: float,
        progress: bool,
        prediction_seconds: float,
    ) -> dict[str, Any]:
        """gradcam_slide.npy/.json/.png: Grad-CAM over every tissue window; what it cost."""
        from wsi_tools.predict._gradcam import SLIDE_CAM_PERCENTILE, whole_slide_gradcam
        from wsi_tools.viz.heatmap import render_heatmap

        started = time.perf_counter()
        stride = self.config.gradcam_stride
        cam_windows = self.plan_windows(slide, stride=stride, tissue=windows.tissue)
        cam_map, scale = whole_slide_gradcam(
            self, slide, cam_windows, progress, f"Grad-CAM {record['slide_id'][:15]}"
        )
        values = (
            f"Grad-CAM ({self.gradcam_layer}) of the windows covering each cell, averaged, divided by "
            f"its {SLIDE_CAM_PERCENTILE:g}th percentile over the slide (scale) and clipped to 1; NaN: none"
        )
        _save_map(folder, "gradcam_slide", cam_map, cam_windows.grid, values=values, scale=scale)
        seconds = time.perf_counter() - started
        render_heatmap(
            thumbnail,
            downsample,
            cam_map,
            cam_windows.grid.step,
            folder / "gradcam_slide.png",
            title=f"{record['slide_id']}  ·  Grad-CAM ({self.gradcam_layer}) of {len(cam_windows)} windows every "
            f"{stride} px\nmodel {self.model_name}  ·  {self.pixels.patch_size} px at {self.pixels.target_mpp:g} µm/px",
            mpp=record["slide_mpp"],
            threshold=None,
            tissue=windows.tissue.polygon,
            label=f"Grad-CAM ({self.gradcam_layer})",
        )
        return {
            "layer": self.gradcam_layer,
            "windows": len(cam_windows),
            "stride": stride,
            "seconds": round(seconds, 2),
            "times_prediction": round(seconds / max(prediction_seconds, 1e-9), 1),
        }

    def _write(
        self,
        folder: Path,
        record: dict[str, Any],
        origins: np.ndarray,
        fractions: np.ndarray,
        probabilities: np.ndarray,
        mean_map: np.ndarray,
        grid: SlidingGrid,
        regions: Sequence[Region],
    ) -> None:
        from wsi_tools.annotations import write_asap_xml, write_qupath_geojson

        with (folder / "tiles.csv").open("w", newline="") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["x", "y", "prob", "tissue_fraction"])
            for (x, y), probability, fraction in zip(origins.tolist(), probabilities, fractions, strict=True):
                writer.writerow([x, y, f"{probability:.6f}", f"{fraction:.4f}"])
        _save_map(
            folder, "probability", mean_map, grid,
            values="mean probability of the windows covering each cell; NaN: none scored",
        )  # fmt: skip
        mpp = record["slide_mpp"]
        annotations, holes = region_annotations(regions)
        write_asap_xml(
            [*annotations, *holes],
            folder / "predictions.xml",
            {POSITIVE_GROUP: POSITIVE_COLOUR, HOLE_GROUP: "#FFFFFF"},
        )
        geojson = [
            _with_holes(annotation, region) for annotation, region in zip(annotations, regions, strict=True)
        ]
        write_qupath_geojson(
            geojson, folder / "predictions.geojson", [region.measurements(mpp) for region in regions]
        )
        (folder / SLIDE_FILE).write_text(json.dumps(record, indent=1, default=str))

    def _heatmap(
        self,
        folder: Path,
        record: dict[str, Any],
        thumbnail: np.ndarray,
        downsample: float,
        mean_map: np.ndarray,
        grid: SlidingGrid,
        regions: Sequence[Region],
        tissue: Any,
    ) -> None:
        from wsi_tools.viz.heatmap import render_heatmap

        scores = record["scores"]
        title = (
            f"{record['slide_id']}  ·  score {scores['score_max']:.3f} (max), {scores['score_topk']:.3f} "
            f"(top {self.config.top_k})  ·  {scores['n_positive']}/{scores['n_tiles']} windows ≥ {self.threshold:g}"
            f"\nmodel {self.model_name}  ·  {self.pixels.patch_size} px at {self.pixels.target_mpp:g} µm/px, "
            f"stride {self.stride}"
        )
        render_heatmap(
            thumbnail,
            downsample,
            mean_map,
            grid.step,
            folder / "heatmap.png",
            title=title,
            mpp=record["slide_mpp"],
            threshold=self.threshold,
            tissue=tissue,
            regions=[region.geometry for region in regions],
        )


def window_stride(patch_size: int, stride: int | None, overlap: float | None) -> int:
    """The step between windows in px at the model's resolution: ``stride``, or
    ``patch x (1 - overlap)``, or half a patch; it must divide the patch, so that
    every map cell is covered by the same number of windows."""
    if stride is None and overlap is not None:
        stride = max(1, round(patch_size * (1 - overlap)))
        given = f"--overlap {overlap:g} (a stride of {stride} px)"
    else:
        stride = stride if stride is not None else patch_size // 2
        given = f"--stride {stride}"
    if patch_size % stride:
        divisors = [d for d in range(1, patch_size + 1) if patch_size % d == 0]
        shares = ", ".join(f"{1 - d / patch_size:.3g}" for d in divisors[-4:][::-1])
        raise ConfigError(
            f"{given} must divide the patch size {patch_size} (e.g. --stride {patch_size // 2} for half a "
            f"patch; overlaps that fit: {shares})"
        )
    return int(stride)


def _save_map(folder: Path, name: str, cells: np.ndarray, grid: SlidingGrid, **description: object) -> None:
    """``name.npy`` and ``name.json``: a map at cell resolution and its level-0 geometry."""
    np.save(folder / f"{name}.npy", cells)
    (folder / f"{name}.json").write_text(json.dumps({**grid.geometry(), **description}, indent=1))


def slide_scores(probabilities: np.ndarray, threshold: float, top_k: int) -> dict[str, float]:
    """score_max (the seed paper's slide score), score_topk, n_tiles and n_positive."""
    if len(probabilities) == 0:
        return {"score_max": 0.0, "score_topk": 0.0, "n_tiles": 0, "n_positive": 0}
    top = np.sort(probabilities)[::-1][:top_k]
    return {
        "score_max": float(probabilities.max()),
        "score_topk": float(top.mean()),
        "n_tiles": int(len(probabilities)),
        "n_positive": int((probabilities >= threshold).sum()),
    }


def region_annotations(regions: Sequence[Region]) -> tuple[list[Any], list[Any]]:
    """ASAP annotations: each region's outline, and its holes in their own group (ASAP has no holes)."""
    from shapely.geometry import Polygon

    from wsi_tools.annotations import Annotation

    outlines, holes = [], []
    for number, region in enumerate(regions, start=1):
        polygon = region.geometry
        outlines.append(
            Annotation(
                f"region {number}",
                "Polygon",
                POSITIVE_GROUP,
                (POSITIVE_GROUP,),
                Polygon(polygon.exterior),
                POSITIVE_COLOUR,
            )
        )
        for hole_number, ring in enumerate(polygon.interiors, start=1):
            holes.append(
                Annotation(
                    f"region {number} hole {hole_number}",
                    "Polygon",
                    HOLE_GROUP,
                    (HOLE_GROUP,),
                    Polygon(ring),
                    "#FFFFFF",
                )
            )
    return outlines, holes


def _with_holes(annotation: Any, region: Region) -> Any:
    import dataclasses

    return dataclasses.replace(annotation, geometry=region.geometry)


def _heatmap_mpp(slide: Any) -> float:
    """Fine enough for at least ~800 px on the long side, coarse enough for at most
    HEATMAP_MAX_PX (matplotlib holds several float copies of the picture: drawing a
    6250 px thumbnail of a 100k px slide raised predict's peak RSS from 1.4 to 4.6 GB),
    never finer than level 0."""
    spec = slide.spec
    long_side_um = spec.mpp * max(spec.dimensions)
    return max(spec.mpp, min(HEATMAP_MPP, long_side_um / 800), long_side_um / HEATMAP_MAX_PX)


def _terminal() -> bool:
    import sys

    return sys.stderr.isatty()


def _previous(final: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The record of a slide already predicted with ``settings`` (None: predict it)."""
    path = final / SLIDE_FILE
    if not path.is_file() or overwrite:
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # damaged: predicted again
    before = record.get("settings", {})
    changed = sorted(key for key in set(before) | set(settings) if before.get(key) != settings.get(key))
    if changed:
        details = ", ".join(f"{key} {before.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
        raise ConfigError(
            f"{final}: predicted before with other settings ({details}); "
            "give another --out, or --overwrite to predict it again"
        )
    return dict(record)


def _swap_in(temporary: Path, final: Path) -> None:
    from wsi_tools.store import exchange_paths

    if final.exists():
        if exchange_paths(temporary, final):
            shutil.rmtree(temporary, ignore_errors=True)
            return
        shutil.rmtree(final)
    os.rename(temporary, final)


def write_slides_table(
    out: str | Path,
    predictions: Sequence[SlidePrediction],
    threshold: float,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """``OUT/slides.csv``: one row per slide of the run; ``extra`` adds columns per
    slide id (a manifest's slide_label and patient_id)."""
    path = Path(out) / "slides.csv"
    extra = extra or {}
    extra_columns = list(dict.fromkeys(key for row in extra.values() for key in row))
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=[*SLIDE_COLUMNS, *extra_columns], lineterminator="\n")
        writer.writeheader()
        for prediction in predictions:
            writer.writerow(
                {
                    **{
                        key: "" if value is None else value
                        for key, value in extra.get(prediction.slide_id, {}).items()
                    },
                    "slide_id": prediction.slide_id,
                    "threshold": threshold,
                    "status": prediction.status,
                    "slide_path": prediction.slide_path,
                    **{
                        key: prediction.scores.get(key, "")
                        for key in ("score_max", "score_topk", "n_tiles", "n_positive")
                    },
                }
            )
    return path
