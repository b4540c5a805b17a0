"""A preflight for an archive: is a slide file sound before hours of work start?"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_tools.errors import WsiToolsError
from wsi_tools.slide._tiff_check import plain_tiff_layout, strict_tile_problem, tile_position

DEFAULT_TILES_PER_LEVEL = 256
REGION_PX = 512  # the box read per sample on formats whose tiles cannot be reached directly


@dataclass(frozen=True)
class SlideCheck:
    """The outcome of :func:`check_slide`: ``problems`` empty means sound as far as
    the file can tell (a bit flip that leaves a valid JPEG stream cannot be seen)."""

    path: str
    levels: int = 0
    tiles_checked: int = 0
    tiles_total: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> str:
        """The first problem, and how many more there are ('' when sound)."""
        if not self.problems:
            return ""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{self.problems[0]}{more}"

    def line(self) -> str:
        levels = f"{self.levels} level{'s' if self.levels != 1 else ''}"
        what = f"{levels}, {self.tiles_checked} of {self.tiles_total} tiles decoded"
        if self.ok:
            return f"ok       {self.path}: {what}"
        opened = f"; {what}" if self.levels else ""
        return f"DAMAGED  {self.path}: {self.first_problem}{opened}"


def _sample(total: int, tiles: int | None, seed: int) -> np.ndarray:
    """Which tile indices to decode: all, or ``tiles`` of them, always including the
    first and the last (where a truncation or a bad copy shows first)."""
    if tiles is None or tiles >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    picked = rng.choice(total, size=max(tiles - 2, 0), replace=False) if tiles > 2 else np.array([], int)
    return np.unique(np.concatenate([[0, total - 1], picked]).astype(int))[:tiles]


def check_slide(
    path: str | Path, tiles: int | None = DEFAULT_TILES_PER_LEVEL, backend: str = "auto", seed: int = 0
) -> SlideCheck:
    """Open the slide (which checks a TIFF's structure: directories and tile
    bytes inside the file) and decode ``tiles`` tiles of every level (None: all)
    strictly, decoder warnings counting as damage. Never raises for a damaged
    slide: the problems are in the result."""
    from wsi_tools.slide._slide import open_slide

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MPP and AppMag warnings are info's business
            slide = open_slide(path, backend=backend, require_mpp=False)
    except WsiToolsError as error:
        return SlideCheck(str(path), problems=[str(error).removeprefix(f"{path}: ")])
    with slide:
        levels = slide.level_count
        if plain_tiff_layout(path) is not None:
            checked, total, problems = _check_tiff_tiles(path, tiles, seed)
        else:
            checked, total, problems = _check_regions(slide, tiles, seed)
    return SlideCheck(str(path), levels, checked, total, problems)


def _check_tiff_tiles(path: Path, tiles: int | None, seed: int) -> tuple[int, int, list[str]]:
    import tifffile

    checked = total = 0
    problems: list[str] = []
    with tifffile.TiffFile(path) as tif, open(path, "rb") as handle, ThreadPoolExecutor() as pool:

        def problem_of(page: Any, index: int) -> str | None:
            count = int(page.databytecounts[index])
            if count == 0:
                return None  # an empty tile reads as the fill value in every reader
            data = os.pread(handle.fileno(), count, int(page.dataoffsets[index]))
            return strict_tile_problem(page, index, data)

        for page_number, page in enumerate(_image_pages(tif)):
            indices = _sample(len(page.dataoffsets), tiles, seed + page_number)
            total += len(page.dataoffsets)
            checked += len(indices)
            found = pool.map(problem_of, [page] * len(indices), [int(i) for i in indices])
            for index, problem in zip(indices, found, strict=True):
                if problem:
                    problems.append(f"TIFF page {page_number}, {_tile_name(page, int(index))}: {problem}")
    return checked, total, problems


def _tile_name(page: Any, index: int) -> str:
    if not page.is_tiled:
        return f"strip {index}"
    return f"tile {index} ({tile_position(page, index)})"


def _image_pages(tif: Any) -> Iterator[Any]:
    """Every page with pixel data: the pyramid, the thumbnail, label and macro."""
    for page in tif.pages:
        if getattr(page, "dataoffsets", None) is not None and len(page.dataoffsets):
            yield page


def _check_regions(slide: Any, tiles: int | None, seed: int) -> tuple[int, int, list[str]]:
    """Formats OpenSlide reads but tifffile does not: read boxes of every level."""
    from wsi_tools.errors import SlideReadError

    checked = total = 0
    problems: list[str] = []
    for level, (width, height) in enumerate(slide.level_dimensions):
        across, down = -(-width // REGION_PX), -(-height // REGION_PX)
        total += across * down
        downsample = slide.level_downsamples[level]
        for index in _sample(across * down, tiles, seed + level):
            column, row = divmod(int(index), down)
            x, y = round(column * REGION_PX * downsample), round(row * REGION_PX * downsample)
            checked += 1
            try:
                slide.read_level(level, x, y, REGION_PX, REGION_PX)
            except SlideReadError as error:
                problems.append(f"level {level} box at x={x} y={y}: {error}")
    return checked, total, problems
