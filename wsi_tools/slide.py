"""Reading whole-slide images at a physical resolution.

``open_slide`` wraps one of two backends, OpenSlide or tiffslide, behind one
:class:`Slide`. Every read returns uint8 RGB, white outside the slide, with
the :class:`~wsi_tools.geometry.ReadPlan` that says how it was served.

Level coordinates: a level-0 (x, y) snaps to the level pixel
``lx = round(x / downsample)``, handed to the backend as the integer level-0
location ``round(lx * downsample)`` (the only kind OpenSlide accepts). At an
integer downsample that is exactly pixel lx. At a non-integer one (TCGA's
2.0005) OpenSlide lands a fraction of a pixel off (at most 0.5 / downsample)
and interpolates bilinearly; the tiffslide reader samples the same position
the same way, so both backends return the same pixels.

Handles are opened lazily and per process: a Slide pickles as its path and
options and re-opens in a DataLoader or Dask worker, and a fork never shares
a file handle (its position is shared between processes).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import warnings as warnings_module
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsi_tools.errors import ConfigError, MissingMppError, SlideReadError, UnsupportedSlideError
from wsi_tools.geometry import DEFAULT_MPP_TOLERANCE, ReadPlan, SlideSpec, plan_read

BACKENDS: tuple[str, ...] = ("openslide", "tiffslide")
TIFF_SUFFIXES = frozenset({".svs", ".tif", ".tiff"})

APPMAG_MPP_RTOL = 0.25  # AppMag 20 says ~0.5 µm/px; beyond 25% off, one of them is wrong
ANISOTROPY_RTOL = 0.02  # x and y mpp differing more than this make square patches impossible
# Hashed at each end of the file (TIFF header and first IFDs; label and macro images).
FINGERPRINT_CHUNK = 2**20
WHITE = 255
PIXEL_CHECK_MAX = 2**20  # check_readable decodes a whole level up to this size
THUMBNAIL_BAND_PIXELS = 16 * 2**20  # level pixels decoded at once while building a thumbnail

MPP_FIX = "pass the level-0 resolution with --slide-mpp X on the CLI or mpp=X in the API (µm/px)"


# --------------------------------------------------------------------------- backends


class _Reader:
    """One open backend handle: metadata plus in-bounds level reads."""

    name: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 pixels of an in-bounds box given in level pixels."""
        raise NotImplementedError

    def read_windows(
        self, level: int, lxs: Sequence[int], ly: int, width: int, height: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Several boxes on one level row at once, or None where the backend has no faster way."""
        return None

    def shrink_level(self, level: int, factor: int) -> np.ndarray | None:
        """The whole level shrunk ``factor`` times with INTER_AREA, or None where
        the backend has no faster way than reading the level first."""
        return None

    def close(self) -> None:
        raise NotImplementedError

    def prefixed(self, key: str) -> str | None:
        return self.properties.get(f"{self.name}.{key}")


def _level0_location(lx: int, downsample: float) -> int:
    return int(round(lx * downsample))


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """Grey, RGB or RGBA (straight alpha, composited over white) to RGB uint8."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] == 4:
        alpha = pixels[..., 3:4].astype(np.float32) / WHITE
        pixels = np.rint(pixels[..., :3] * alpha + WHITE * (1 - alpha))
    if pixels.dtype == np.uint8:
        return pixels[..., :3]  # already RGB uint8: no clip, no copy
    return np.clip(pixels[..., :3], 0, WHITE).astype(np.uint8)


def _bilinear_shift(block: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """Resample ``block`` (one extra row and column) ``fx``, ``fy`` in [0, 1) px
    towards its end, bilinearly, as OpenSlide's painter does."""
    data = block.astype(np.float32)
    data = (1 - fx) * data[:, :-1] + fx * data[:, 1:]
    data = (1 - fy) * data[:-1] + fy * data[1:]
    return np.clip(np.rint(data), 0, WHITE).astype(np.uint8)


class _OpenSlideReader(_Reader):
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._slide.properties.items()}

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (_level0_location(lx, downsample), _level0_location(ly, downsample))
        rgba = np.asarray(self._slide.read_region(location, level, (width, height)))
        # OpenSlide returns premultiplied RGBA: composite over white (C + 255 - A).
        rgb = rgba[..., :3].astype(np.int16) + (WHITE - rgba[..., 3:4].astype(np.int16))
        return np.clip(rgb, 0, WHITE).astype(np.uint8)

    def close(self) -> None:
        self._slide.close()


class _TileDecoder:
    """Tiled RGB levels decoded tile by tile straight from the file.

    tiffslide reads through a zarr store (a chunk pipeline, an event loop and
    copies per tile); this reads each tile's bytes with ``os.pread`` (no shared
    file position, so threads can read at once) and decodes it with the very
    function tiffslide's store uses (``TiffPage.decode``), into one buffer.
    The pixels are therefore identical. Levels that are not plain tiled
    8-bit RGB (strips, planar, 4 samples, ...) are left to tiffslide (None).
    """

    def __init__(self, path: Path, slide: Any, level_dimensions: tuple[tuple[int, int], ...]) -> None:
        series = slide.ts_tifffile.series[int(slide.properties.get("tiffslide.series-index") or 0)]
        self.levels: list[Any | None] = []
        if series.axes == "YXS":
            for level, dimensions in zip(series.levels, level_dimensions, strict=False):
                self.levels.append(self._usable(level, dimensions))
        self._decoders = [None if page is None else page.decode for page in self.levels]
        self._fd: int | None = os.open(path, os.O_RDONLY) if any(self.levels) else None

    @staticmethod
    def _usable(level: Any, dimensions: tuple[int, int]) -> Any | None:
        if len(level.pages) != 1:
            return None
        page = level.keyframe
        plain = (
            page.is_tiled
            and page.tiledepth == 1
            and page.imagedepth == 1
            and page.planarconfig == 1  # contiguous samples
            and page.samplesperpixel == 3
            and page.bitspersample == 8
            and page.dtype == np.uint8
            and (page.imagewidth, page.imagelength) == tuple(dimensions)
        )
        return page if plain else None

    def handles(self, level: int) -> bool:
        return self._fd is not None and level < len(self.levels) and self.levels[level] is not None

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """Pixels of an in-bounds box of ``level`` (level px)."""
        return self.read_windows(level, [lx], ly, width, height)[0]

    def _tile(self, level: int, index: int) -> np.ndarray:
        """Tile ``index`` of ``level`` as (tile height, tile width, 3), padding included."""
        page, decode, fd = self.levels[level], self._decoders[level], self._fd
        assert page is not None and decode is not None and fd is not None
        count = page.databytecounts[index]
        data = os.pread(fd, count, page.dataoffsets[index]) if count else None
        tile = decode(data, index, jpegtables=page.jpegtables)[0]
        if tile is None:
            raise ValueError(f"tile {index} of level {level} did not decode")
        return tile.reshape(page.tilelength, page.tilewidth, 3)

    def read_windows(
        self, level: int, lxs: Sequence[int], ly: int, width: int, height: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """(k, height, width, 3): in-bounds boxes of ``level`` at level x ``lxs``
        (ascending), all at level y ``ly``, into ``out`` if given; a tile shared
        by boxes is decoded once."""
        page = self.levels[level]
        assert page is not None
        tile_width, tile_height = page.tilewidth, page.tilelength
        tiles_across = -(-page.imagewidth // tile_width)
        if out is None:
            out = np.empty((len(lxs), height, width, 3), np.uint8)
        for ty in range(ly // tile_height, (ly + height - 1) // tile_height + 1):
            top = ty * tile_height
            row0, row1 = max(ly, top), min(ly + height, top + tile_height)
            for tx in range(lxs[0] // tile_width, (lxs[-1] + width - 1) // tile_width + 1):
                left = tx * tile_width
                boxes = [(k, lx) for k, lx in enumerate(lxs) if lx < left + tile_width and left < lx + width]
                if not boxes:
                    continue  # a gap between boxes
                tile = self._tile(level, ty * tiles_across + tx)
                for k, lx in boxes:
                    col0, col1 = max(lx, left), min(lx + width, left + tile_width)
                    out[k, row0 - ly : row1 - ly, col0 - lx : col1 - lx] = tile[
                        row0 - top : row1 - top, col0 - left : col1 - left
                    ]
        return out

    def shrink_level(self, level: int, factor: int) -> np.ndarray | None:
        """The level shrunk ``factor`` times (INTER_AREA), tile by tile: at an
        integer factor that divides the tile size this is a box average that
        never crosses a tile edge, so the pixels equal shrinking the whole
        level, without holding it (a ×20 slide's 8 µm/px level is 15 MB)."""
        page = self.levels[level]
        assert page is not None
        tile_width, tile_height = page.tilewidth, page.tilelength
        width, height = page.imagewidth, page.imagelength
        if tile_width % factor or tile_height % factor or width % factor or height % factor:
            return None
        out = np.empty((height // factor, width // factor, 3), np.uint8)
        tiles_across = -(-width // tile_width)
        for ty in range(-(-height // tile_height)):
            rows = min(tile_height, height - ty * tile_height)
            for tx in range(tiles_across):
                cols = min(tile_width, width - tx * tile_width)
                tile = self._tile(level, ty * tiles_across + tx)[:rows, :cols]
                y0, x0 = ty * tile_height // factor, tx * tile_width // factor
                target = out[y0 : y0 + rows // factor, x0 : x0 + cols // factor]
                target[...] = cv2.resize(tile, (cols // factor, rows // factor), interpolation=cv2.INTER_AREA)
        return out

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        # A handle dropped after a read error is never closed explicitly (other
        # threads may still hold it); its descriptor goes with the last reference.
        with contextlib.suppress(Exception):
            self.close()


class _TiffSlideReader(_Reader):
    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self._slide = tiffslide.TiffSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._slide.properties.items() if v is not None}
        try:
            self._tiles: _TileDecoder | None = _TileDecoder(path, self._slide, self.level_dimensions)
        except Exception:  # an unusual layout: tiffslide reads it
            self._tiles = None

    def _location(self, lx: int, downsample: float) -> int:
        # tiffslide maps a level-0 location to int(location / downsample): find
        # the integer location that lands exactly on level pixel lx.
        location = _level0_location(lx, downsample)
        while int(location / downsample) < lx:
            location += 1
        while location > 0 and int(location / downsample) > lx:
            location -= 1
        return location

    def _read_whole_pixels(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """Level pixels [lx, lx + width) x [ly, ly + height), white beyond the level."""
        level_width, level_height = self.level_dimensions[level]
        x1, y1 = min(lx + width, level_width), min(ly + height, level_height)
        inside = lx >= 0 and ly >= 0 and x1 == lx + width and y1 == ly + height
        if inside and self._tiles is not None and self._tiles.handles(level):
            return self._tiles.read(level, lx, ly, width, height)
        out = np.full((height, width, 3), WHITE, np.uint8)
        if x1 <= lx or y1 <= ly:
            return out
        if self._tiles is not None and self._tiles.handles(level) and lx >= 0 and ly >= 0:
            out[: y1 - ly, : x1 - lx] = self._tiles.read(level, lx, ly, x1 - lx, y1 - ly)
            return out
        downsample = self.level_downsamples[level]
        location = (self._location(lx, downsample), self._location(ly, downsample))
        pixels = self._slide.read_region(location, level, (x1 - lx, y1 - ly), as_array=True, padding=True)
        out[: y1 - ly, : x1 - lx] = _as_rgb(pixels)
        return out

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        # Sample where OpenSlide would: at the integer level-0 location nearest
        # to lx, which at a non-integer downsample is a fraction of a pixel off.
        pos_x = _level0_location(lx, downsample) / downsample
        pos_y = _level0_location(ly, downsample) / downsample
        if abs(pos_x - lx) < 1e-6 and abs(pos_y - ly) < 1e-6:
            return self._read_whole_pixels(level, lx, ly, width, height)
        x0, y0 = math.floor(pos_x), math.floor(pos_y)
        block = self._read_whole_pixels(level, x0, y0, width + 1, height + 1)
        return _bilinear_shift(block, pos_x - x0, pos_y - y0)

    def read_windows(
        self, level: int, lxs: Sequence[int], ly: int, width: int, height: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Boxes at whole level pixels, wholly inside the level, straight from
        the tiles; None when this level or box needs the general path."""
        if self._tiles is None or not self._tiles.handles(level):
            return None
        downsample = self.level_downsamples[level]
        level_width, level_height = self.level_dimensions[level]
        exact = all(abs(_level0_location(v, downsample) / downsample - v) < 1e-6 for v in (*lxs, ly))
        inside = lxs[0] >= 0 and ly >= 0 and lxs[-1] + width <= level_width and ly + height <= level_height
        if not (exact and inside):
            return None
        return self._tiles.read_windows(level, lxs, ly, width, height, out)

    def shrink_level(self, level: int, factor: int) -> np.ndarray | None:
        if self._tiles is None or not self._tiles.handles(level):
            return None
        return self._tiles.shrink_level(level, factor)

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._slide.close()


_READERS: dict[str, Callable[[Path], _Reader]] = {
    "openslide": _OpenSlideReader,
    "tiffslide": _TiffSlideReader,
}


def _backend_order(path: Path, backend: str) -> tuple[str, ...]:
    if backend == "auto":
        # tiffslide is faster for TIFF-based formats; OpenSlide knows the others.
        if path.suffix.lower() in TIFF_SUFFIXES:
            return ("tiffslide", "openslide")
        return ("openslide", "tiffslide")
    if backend not in _READERS:
        raise ConfigError(f"unknown slide backend {backend!r} for {path}: use auto, openslide or tiffslide")
    return (backend,)


def _open_reader(path: Path, backend: str) -> _Reader:
    if not path.is_file():
        raise UnsupportedSlideError(f"{path}: no such slide file; check the path")
    failures: list[str] = []
    for name in _backend_order(path, backend):
        try:
            reader = _READERS[name](path)
        except Exception as error:  # each backend has its own exception zoo
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        if not reader.level_dimensions or min(reader.level_dimensions[0]) <= 0:
            reader.close()
            failures.append(f"{name}: no image levels")
            continue
        return reader
    raise UnsupportedSlideError(
        f"{path}: cannot be opened as a slide ({'; '.join(failures)}); "
        "give an Aperio SVS or another format OpenSlide reads"
    )


# --------------------------------------------------------------------------- metadata


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class _Metadata:
    backend: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    native_mpp: tuple[float, float] | None
    objective_power: float | None
    vendor: str | None

    @classmethod
    def from_reader(cls, reader: _Reader) -> _Metadata:
        mpp_x = _float_or_none(reader.prefixed("mpp-x"))
        mpp_y = _float_or_none(reader.prefixed("mpp-y"))
        native_mpp = (mpp_x, mpp_y) if mpp_x and mpp_y else None
        objective = _float_or_none(reader.prefixed("objective-power"))
        if objective is None:
            objective = _float_or_none(reader.properties.get("aperio.AppMag"))
        vendor = reader.prefixed("vendor")
        return cls(
            backend=reader.name,
            level_dimensions=reader.level_dimensions,
            level_downsamples=reader.level_downsamples,
            properties=dict(reader.properties),
            native_mpp=native_mpp,
            objective_power=objective,
            vendor=vendor if vendor and vendor != "None" else None,
        )


def _checked_override(path: Path, mpp: float | None) -> float | None:
    if mpp is None:
        return None
    if not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"{path}: slide mpp override must be a positive number of µm/px, got {mpp!r}")
    return float(mpp)


def file_fingerprint(path: Path) -> str:
    """``"{size}-{sha256}"`` of the first and last MiB: cheap and stable."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= 2 * FINGERPRINT_CHUNK:
            digest.update(handle.read())
        else:
            digest.update(handle.read(FINGERPRINT_CHUNK))
            handle.seek(size - FINGERPRINT_CHUNK)
            digest.update(handle.read(FINGERPRINT_CHUNK))
    return f"{size}-{digest.hexdigest()}"


# --------------------------------------------------------------------------- the slide


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
        self._mpp_override = _checked_override(self.path, mpp)
        self._require_mpp = require_mpp
        self._lock = threading.Lock()
        reader = _open_reader(self.path, backend)
        self._reader: _Reader | None = reader
        self._reader_pid = os.getpid()
        self._meta = _Metadata.from_reader(reader)
        self.warnings: list[str] = []
        self._mpp_problem: str | None = None
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
                    f"resolution in use is {mpp[0]:g} µm/px; the MPP is used (override with {MPP_FIX})"
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

    def _handle(self) -> _Reader:
        with self._lock:
            if self._reader is None or self._reader_pid != os.getpid():
                # After a fork the inherited handle is dropped, never used or closed here.
                reader = _open_reader(self.path, self._meta.backend)
                self._reader, self._reader_pid = reader, os.getpid()
            return self._reader

    def _forget_handle(self, failed: _Reader) -> None:
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
    def _reading(self, level: int, x: int, y: int, width: int, height: int) -> Iterator[_Reader]:
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
        target = max(float(target_mpp), spec.mpp)
        plan = plan_read(spec, target, DEFAULT_MPP_TOLERANCE)
        level_width, level_height = self.level_dimensions[plan.level]
        width0, height0 = self.dimensions
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
