"""The :class:`Slide`: one slide read at a physical resolution, whichever backend serves it."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings as warnings_module
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsi_tools.errors import ConfigError, MissingMppError, SlideReadError
from wsi_tools.geometry import DEFAULT_MPP_TOLERANCE, ReadPlan, SlideSpec, plan_read
from wsi_tools.slide._metadata import (
    Metadata,
    checked_override,
    file_fingerprint,
    implausible_size,
    mpp_outside_plausible,
)
from wsi_tools.slide._protocol import WHITE, SlideBackend
from wsi_tools.slide._registry import open_backend
from wsi_tools.slide._tiff_check import tiff_layout

APPMAG_MPP_RTOL = 0.25  # AppMag 20 says ~0.5 µm/px; beyond 25% off, one of them is wrong
ANISOTROPY_RTOL = 0.02  # x and y mpp differing more than this make square patches impossible
PIXEL_CHECK_MAX = 2**20  # check_readable decodes a whole level up to this size
MAX_THUMBNAIL_PIXELS = 2**26  # 192 MiB of RGB; a 100k x 100k px slide at 16 µm/px is 10 Mpx
THUMBNAIL_BAND_PIXELS = 16 * 2**20  # level pixels decoded at once while building a thumbnail

MPP_FIX = "pass the level-0 resolution with --slide-mpp X on the CLI or mpp=X in the API (µm/px)"


class Slide:
    """An open slide. Use :func:`open_slide` to make one; close it (or use
    ``with``) to release the file handle."""

    def __init__(
        self,
        path: str | Path,
        backend: str = "auto",
        mpp: float | None = None,
        require_mpp: bool = True,
    ) -> None:
        self.path = Path(path)
        self._requested_backend = backend
        self._mpp_override = checked_override(self.path, mpp)
        self._require_mpp = require_mpp
        self._lock = threading.Lock()
        reader = open_backend(self.path, backend)
        single_file = tiff_layout(self.path) is not None
        problem = implausible_size(
            reader.level_dimensions[0], self.path.stat().st_size if single_file else None
        )
        if problem:
            reader.close()
            raise SlideReadError(f"{self.path}: {problem}")
        self._reader: SlideBackend | None = reader
        self._reader_pid = os.getpid()
        self._meta = Metadata.from_backend(reader)
        self.warnings: list[str] = []
        self._mpp_problem: str | None = None
        # Once per slide: a re-opened handle (another worker) takes the same path silently.
        self.reader_fallback = reader.fallback
        self.backend_choice = reader.chosen_because
        if reader.fallback:
            self._warn(f"{self.path}: {reader.fallback}")
        try:
            self._check_mpp()
        except MissingMppError:
            self.close()
            raise

    # ---- state and lifetime

    def _check_mpp(self) -> None:
        native = self._meta.native_mpp
        if self._mpp_override is None:
            if native is None:
                self._mpp_problem = f"{self.path}: the slide records no microns-per-pixel (MPP); {MPP_FIX}"
            elif abs(native[0] - native[1]) > ANISOTROPY_RTOL * min(native):
                self._mpp_problem = (
                    f"{self.path}: x and y resolution differ ({native[0]:g} vs {native[1]:g} µm/px, "
                    f"more than {ANISOTROPY_RTOL:.0%}); square patches need one value: {MPP_FIX}"
                )
            elif implausible := mpp_outside_plausible(native[0]):
                self._mpp_problem = f"{self.path}: the slide records {implausible}; {MPP_FIX}"
            if self._mpp_problem:
                if self._require_mpp:
                    raise MissingMppError(self._mpp_problem)
                if native is not None:
                    self._warn(self._mpp_problem)
        mpp = self.mpp
        objective = self._meta.objective_power
        if mpp is not None and objective is not None:
            expected = 10.0 / objective
            if abs(mpp[0] / expected - 1) > APPMAG_MPP_RTOL:
                self._warn(
                    f"{self.path}: AppMag {objective:g} implies about {expected:g} µm/px but the "
                    f"resolution in use is {mpp[0]:g} µm/px; the MPP is used (to use another, {MPP_FIX})"
                )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings_module.warn(message, UserWarning, stacklevel=4)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for transient in ("_reader", "_reader_pid", "_lock"):
            state.pop(transient, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._reader = None  # re-opened on first read, in the process that reads
        self._reader_pid = os.getpid()

    def _handle(self) -> SlideBackend:
        with self._lock:
            if self._reader is None or self._reader_pid != os.getpid():
                # After a fork the inherited handle is dropped, never used or closed here.
                reader = open_backend(self.path, self._meta.backend)
                self._reader, self._reader_pid = reader, os.getpid()
            return self._reader

    def _forget_handle(self, failed: SlideBackend) -> None:
        """Stop using a handle that failed. It is not closed here: another
        thread may still be reading with it; the backend closes it when the
        last reference goes."""
        with self._lock:
            if self._reader is failed:
                self._reader = None

    def close(self) -> None:
        """Release the file handle (a later read re-opens it). Do not close a
        slide that other threads are still reading."""
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None and self._reader_pid == os.getpid():
            with contextlib.suppress(Exception):  # a handle in error may refuse to close
                reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, backend={self.backend!r}, mpp={self.mpp})"

    # ---- metadata

    @property
    def backend(self) -> str:
        return self._meta.backend

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._meta.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._meta.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._meta.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._meta.level_downsamples

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Level-0 µm/px as (x, y): the override if given, else the slide's own."""
        if self._mpp_override is not None:
            return (self._mpp_override, self._mpp_override)
        return self._meta.native_mpp

    @property
    def mpp_source(self) -> str | None:
        if self._mpp_override is not None:
            return "override"
        return "slide" if self._meta.native_mpp else None

    @property
    def objective_power(self) -> float | None:
        return self._meta.objective_power

    @property
    def vendor(self) -> str | None:
        return self._meta.vendor

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._meta.properties)

    @cached_property
    def fingerprint(self) -> str:
        return file_fingerprint(self.path)

    @property
    def spec(self) -> SlideSpec:
        """Geometry for the grid maths; raises MissingMppError without a usable MPP."""
        if self._mpp_override is None and self._mpp_problem:
            raise MissingMppError(self._mpp_problem)
        mpp = self.mpp
        assert mpp is not None  # guaranteed by _mpp_problem being unset
        return SlideSpec(
            level_dimensions=self.level_dimensions,
            level_downsamples=self.level_downsamples,
            mpp=(mpp[0] + mpp[1]) / 2,
        )

    def plan(self, target_mpp: float, tolerance: float = DEFAULT_MPP_TOLERANCE) -> ReadPlan:
        spec = self.spec
        try:
            return plan_read(spec, target_mpp, tolerance)
        except ValueError as error:
            raise ConfigError(
                f"{self.path}: {error}; choose a target of at least {spec.mpp:g} µm/px"
            ) from error

    # ---- pixels

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB of ``level``, top-left at level-0 (x, y),
        width and height in level pixels; white outside the slide."""
        if not 0 <= level < self.level_count:
            raise ConfigError(f"{self.path}: level {level} does not exist (the slide has {self.level_count})")
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise ConfigError(f"{self.path}: read size must be positive, got {width}x{height}")
        downsample = self.level_downsamples[level]
        level_width, level_height = self.level_dimensions[level]
        lx, ly = int(round(x / downsample)), int(round(y / downsample))
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, level_width), min(ly + height, level_height)
        if x1 <= x0 or y1 <= y0:
            return np.full((height, width, 3), WHITE, np.uint8)
        with self._reading(level, x, y, width, height) as reader:
            pixels = reader.read(level, x0, y0, x1 - x0, y1 - y0)
        if (x0, y0, x1, y1) == (lx, ly, lx + width, ly + height):
            return np.ascontiguousarray(pixels)  # wholly inside: no white canvas needed
        out = np.full((height, width, 3), WHITE, np.uint8)
        out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = pixels
        return out

    @contextlib.contextmanager
    def _reading(self, level: int, x: int, y: int, width: int, height: int) -> Iterator[SlideBackend]:
        """The backend handle, with its failures turned into SlideReadError."""
        reader = self._handle()
        try:
            yield reader
        except MemoryError:
            raise
        except Exception as error:
            # OpenSlide marks its handle unusable after an error: the next read opens a fresh one.
            self._forget_handle(reader)
            raise SlideReadError(
                f"{self.path}: cannot read level {level} region x={x} y={y} {width}x{height} "
                f"({self.backend}: {type(error).__name__}: {error}); the file is damaged there, "
                "skip this region or re-export the slide"
            ) from error

    def read_level_windows(
        self, level: int, xs: Sequence[int], y: int, width: int, height: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``(k, height, width, 3)``: ``read_level(level, x, y, width, height)`` for
        each level-0 x in ``xs`` (ascending), decoding each tile once; into
        ``out`` (C-contiguous, that shape, uint8) if given, e.g. a reused buffer.

        Boxes on one row that share tiles (a span of neighbouring windows) are
        read in one pass; where the backend has no direct tile access, one
        covering read is cut into the boxes.
        """
        if not 0 <= level < self.level_count:
            raise ConfigError(f"{self.path}: level {level} does not exist (the slide has {self.level_count})")
        shape = (len(xs), int(height), int(width), 3)
        if out is not None and (out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}")
        if len(xs) == 0:
            return np.empty(shape, np.uint8) if out is None else out
        downsample = self.level_downsamples[level]
        lxs = [int(round(x / downsample)) for x in xs]
        ly = int(round(y / downsample))
        if any(b < a for a, b in zip(lxs, lxs[1:], strict=False)):
            raise ConfigError(f"{self.path}: window x positions must be ascending")
        with self._reading(level, int(xs[0]), y, lxs[-1] - lxs[0] + width, height) as reader:
            direct = reader.read_windows(level, lxs, ly, int(width), int(height), out)
        if direct is not None:
            return direct
        block = self.read_level(level, int(xs[0]), y, lxs[-1] - lxs[0] + width, height)
        if out is None:
            out = np.empty(shape, np.uint8)
        for k, lx in enumerate(lxs):
            out[k] = block[:, lx - lxs[0] : lx - lxs[0] + width]
        return out

    def read_region(
        self,
        x: int,
        y: int,
        width: int,
        height: int,
        target_mpp: float,
        tolerance: float = DEFAULT_MPP_TOLERANCE,
    ) -> tuple[np.ndarray, ReadPlan]:
        """``(height, width, 3)`` uint8 RGB at ``target_mpp``, top-left at level-0 (x, y).

        Served from the level ``plan_read`` picks: as is within tolerance, else
        its covering area shrunk with ``cv2.INTER_AREA``.
        """
        plan = self.plan(target_mpp, tolerance)
        if not plan.resampled:
            return self.read_level(plan.level, x, y, width, height), plan
        level_width = max(1, round(width * plan.resample_scale))
        level_height = max(1, round(height * plan.resample_scale))
        block = self.read_level(plan.level, x, y, level_width, level_height)
        return cv2.resize(block, (width, height), interpolation=cv2.INTER_AREA), plan

    def read(
        self, x: int, y: int, size: int, target_mpp: float, tolerance: float = DEFAULT_MPP_TOLERANCE
    ) -> tuple[np.ndarray, ReadPlan]:
        """A square ``size`` x ``size`` patch at ``target_mpp``."""
        return self.read_region(x, y, size, size, target_mpp, tolerance)

    def thumbnail(self, target_mpp: float) -> tuple[np.ndarray, float]:
        """The whole slide at about ``target_mpp`` (never finer than level 0) and
        the level-0 px per thumbnail px."""
        spec = self.spec
        width0, height0 = self.dimensions
        # Never more than MAX_THUMBNAIL_PIXELS, whatever size the slide claims.
        bounded = spec.mpp * math.sqrt(width0 * height0 / MAX_THUMBNAIL_PIXELS)
        target = max(float(target_mpp), spec.mpp, bounded)
        plan = plan_read(spec, target, DEFAULT_MPP_TOLERANCE)
        level_width, level_height = self.level_dimensions[plan.level]
        if not plan.resampled:
            image = self.read_level(plan.level, 0, 0, level_width, level_height)
            return image, width0 / level_width
        scale = target / spec.mpp
        out_width = max(1, round(width0 / scale))
        out_height = max(1, round(height0 / scale))
        factor = level_width // out_width
        if factor > 1 and (level_width, level_height) == (out_width * factor, out_height * factor):
            with self._reading(plan.level, 0, 0, level_width, level_height) as reader:
                shrunk = reader.shrink_level(plan.level, factor)
            if shrunk is not None:
                return shrunk, width0 / out_width
        image = np.empty((out_height, out_width, 3), np.uint8)
        # Decode in horizontal bands so a slide without a small level never sits in memory.
        rows_per_band = max(1, int(THUMBNAIL_BAND_PIXELS / level_width / (level_height / out_height)))
        downsample = plan.level_downsample
        for row0 in range(0, out_height, rows_per_band):
            row1 = min(out_height, row0 + rows_per_band)
            y0 = round(row0 * level_height / out_height)
            y1 = max(y0 + 1, round(row1 * level_height / out_height))
            band = self.read_level(plan.level, 0, round(y0 * downsample), level_width, y1 - y0)
            image[row0:row1] = cv2.resize(band, (out_width, row1 - row0), interpolation=cv2.INTER_AREA)
        return image, width0 / out_width

    def check_readable(self, max_pixels: int = PIXEL_CHECK_MAX) -> None:
        """Decode the coarsest level (its centre when it is large): a quick
        SlideReadError for a damaged file before any long job starts."""
        level = self.level_count - 1
        width, height = self.level_dimensions[level]
        if width * height > max_pixels:
            downsample = self.level_downsamples[level]
            box_width, box_height = min(width, 512), min(height, 512)
            x, y = round((width - box_width) / 2 * downsample), round((height - box_height) / 2 * downsample)
            self.read_level(level, x, y, box_width, box_height)
        else:
            self.read_level(level, 0, 0, width, height)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (what ``wsi-tools info --json`` prints)."""
        mpp = self.mpp
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "levels": [
                {
                    "level": level,
                    "width": width,
                    "height": height,
                    "downsample": downsample,
                    "mpp": None if mpp is None else round(mpp[0] * downsample, 6),
                }
                for level, ((width, height), downsample) in enumerate(
                    zip(self.level_dimensions, self.level_downsamples, strict=True)
                )
            ],
            "mpp": None if mpp is None else {"x": mpp[0], "y": mpp[1]},
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "fingerprint": self.fingerprint,
            "file_size": self.path.stat().st_size,
            "reader_fallback": self.reader_fallback,
            "backend_choice": self.backend_choice,
            "warnings": list(self.warnings),
        }


def open_slide(
    path: str | Path,
    backend: str = "auto",
    mpp: float | None = None,
    require_mpp: bool = True,
) -> Slide:
    """Open a slide.

    ``backend="auto"`` tries tiffslide first for .svs/.tif/.tiff and falls back
    to OpenSlide. ``mpp`` overrides the slide's level-0 µm/px. With
    ``require_mpp`` a slide without a usable MPP raises MissingMppError naming
    the file and the fix; an unopenable file raises UnsupportedSlideError.
    """
    return Slide(path, backend=backend, mpp=mpp, require_mpp=require_mpp)
