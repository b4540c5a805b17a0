"""The tiffslide backend: TIFF-based slides, with the fast tile decoder where the layout allows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsi_tools.slide._protocol import WHITE, as_rgb, bilinear_shift, level0_location
from wsi_tools.slide._tile_decoder import TileDecoder


class TiffSlideBackend:
    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self._slide = tiffslide.TiffSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._slide.properties.items() if v is not None}
        self.fallback: str | None = None
        self.chosen_because: str | None = None
        try:
            self._tiles: TileDecoder | None = TileDecoder(path, self._slide, self.level_dimensions)
        except Exception as error:  # an unusual layout: tiffslide reads it, more slowly
            self._tiles = None
            self.fallback = (
                f"fast tile decoder unavailable ({type(error).__name__}: {error}); "
                "tiffslide decodes every tile (same pixels, slower)"
            )

    def _location(self, lx: int, downsample: float) -> int:
        # tiffslide maps a level-0 location to int(location / downsample): find
        # the integer location that lands exactly on level pixel lx.
        location = level0_location(lx, downsample)
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
        out[: y1 - ly, : x1 - lx] = as_rgb(pixels)
        return out

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        # Sample where OpenSlide would: at the integer level-0 location nearest
        # to lx, which at a non-integer downsample is a fraction of a pixel off.
        pos_x = level0_location(lx, downsample) / downsample
        pos_y = level0_location(ly, downsample) / downsample
        if abs(pos_x - lx) < 1e-6 and abs(pos_y - ly) < 1e-6:
            return self._read_whole_pixels(level, lx, ly, width, height)
        x0, y0 = math.floor(pos_x), math.floor(pos_y)
        block = self._read_whole_pixels(level, x0, y0, width + 1, height + 1)
        return bilinear_shift(block, pos_x - x0, pos_y - y0)

    def read_windows(
        self, level: int, lxs: Sequence[int], ly: int, width: int, height: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Boxes at whole level pixels, wholly inside the level, straight from
        the tiles; None when this level or box needs the general path."""
        if self._tiles is None or not self._tiles.handles(level):
            return None
        downsample = self.level_downsamples[level]
        level_width, level_height = self.level_dimensions[level]
        exact = all(abs(level0_location(v, downsample) / downsample - v) < 1e-6 for v in (*lxs, ly))
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
