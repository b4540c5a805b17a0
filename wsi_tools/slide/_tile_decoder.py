"""Tiled RGB levels decoded straight from the file: the fast path under tiffslide."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsi_tools.slide._tiff_check import check_tile_bytes, tile_position


class TileDecoder:
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
        count = int(page.databytecounts[index])
        data = os.pread(fd, count, page.dataoffsets[index]) if count else None
        problem = "it has no bytes" if data is None else check_tile_bytes(data, count, int(page.compression))
        if problem is None:
            tile = decode(data, index, jpegtables=page.jpegtables)[0]
            problem = None if tile is not None else "it did not decode"
        if problem is not None:
            raise ValueError(
                f"tile {index} of level {level} ({tile_position(page, index)}) is damaged: {problem}"
            )
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
