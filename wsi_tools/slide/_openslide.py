"""The OpenSlide backend: every format OpenSlide reads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsi_tools.slide._protocol import WHITE, level0_location


class OpenSlideBackend:
    name = "openslide"
    fallback: str | None = None
    chosen_because: str | None = None

    def __init__(self, path: Path) -> None:
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._slide.properties.items()}

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (level0_location(lx, downsample), level0_location(ly, downsample))
        rgba = np.asarray(self._slide.read_region(location, level, (width, height)))
        # OpenSlide returns premultiplied RGBA: composite over white (C + 255 - A).
        rgb = rgba[..., :3].astype(np.int16) + (WHITE - rgba[..., 3:4].astype(np.int16))
        return np.clip(rgb, 0, WHITE).astype(np.uint8)

    def close(self) -> None:
        self._slide.close()

    def read_windows(
        self, level: int, lxs: Sequence[int], ly: int, width: int, height: int, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        return None

    def shrink_level(self, level: int, factor: int) -> np.ndarray | None:
        return None
