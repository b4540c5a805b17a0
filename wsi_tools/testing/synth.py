"""Synthetic Aperio SVS slides for tests, benchmarks and the demo.

An Aperio ImageDescription on the first page plus ``metadata=None`` makes
OpenSlide and tiffslide see an Aperio slide. Pyramid levels are made from
level 0 with ``cv2.INTER_AREA``, as a scanner does, so reads served from a
lower level agree with a level-0 read resized the same way.

Large slides are streamed tile by tile from a *content function*
``content(x0, y0, width, height, downsample) -> (height, width, 3) uint8``
that draws any level-0 region at any downsample, so a 40k x 30k slide never
sits in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile

ContentFn = Callable[[int, int, int, int, float], np.ndarray]
EncodedTilesFn = Callable[[float, tuple[int, int]], Iterator[bytes] | None]

BACKGROUND = 242  # the light grey-white of glass on an Aperio scan


def aperio_description(
    width: int,
    height: int,
    tile: int,
    mpp: float | None,
    app_mag: float | None,
    quality: int,
    level_size: tuple[int, int] | None = None,
) -> str:
    """An ImageDescription in the form Aperio's ScanScope writes."""
    head = f"Aperio Image Library v12.0.15 \r\n{width}x{height} ({tile}x{tile}) JPEG/RGB Q={quality}"
    if level_size is not None:
        head = f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> {level_size[0]}x{level_size[1]} - "
    fields = ["ScanScope ID = SS0000", "Filename = synthetic", "Date = 01/01/26"]
    if app_mag is not None:
        fields.append(f"AppMag = {app_mag:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:.4f}")
    return "|".join([head, *fields])


def _tiles_from_array(image: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    height, width = image.shape[:2]
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.full((tile, tile, 3), BACKGROUND, np.uint8)
            part = image[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def _tiles_from_content(
    content: ContentFn, size: tuple[int, int], downsample: float, tile: int
) -> Iterator[np.ndarray]:
    width, height = size
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = content(int(x * downsample), int(y * downsample), tile, tile, downsample)
            yield np.ascontiguousarray(block, dtype=np.uint8)


def write_aperio_svs(
    path: str | Path,
    level0: np.ndarray | None = None,
    *,
    content: ContentFn | None = None,
    size: tuple[int, int] | None = None,
    mpp: float | None = 0.5,
    app_mag: float | None = 20,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 90,
    encoded: EncodedTilesFn | None = None,
) -> Path:
    """Write a tiled, JPEG-compressed Aperio-like SVS pyramid.

    Give either ``level0`` (an RGB array; levels are INTER_AREA reductions of
    it) or ``content`` with ``size`` = level-0 (width, height) for a streamed
    slide. ``mpp=None`` writes a slide without MPP, like some TCGA crops.
    ``encoded(downsample, level_size)`` may give a level's tiles as JPEG bytes
    (:func:`banked_tiles`), or None to draw it from ``content``.
    """
    path = Path(path)
    if (level0 is None) == (content is None):
        raise ValueError("give exactly one of level0 or content")
    if level0 is not None:
        height, width = level0.shape[:2]
    else:
        if size is None:
            raise ValueError("content needs size=(width, height)")
        width, height = size
    if downsamples[0] != 1:
        raise ValueError("the first downsample must be 1")
    bigtiff = width * height * 3 > 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for index, downsample in enumerate(downsamples):
            level_size = (max(1, width // downsample), max(1, height // downsample))
            if level0 is not None:
                image = (
                    level0
                    if downsample == 1
                    else cv2.resize(level0, level_size, interpolation=cv2.INTER_AREA)
                )
                tiles: Iterator[np.ndarray] | Iterator[bytes] = _tiles_from_array(image, tile)
            elif content is not None:
                banked = encoded(downsample, level_size) if encoded is not None else None
                tiles = (
                    banked
                    if banked is not None
                    else _tiles_from_content(content, level_size, downsample, tile)
                )
            else:
                raise ValueError("give level0 or content")
            description = aperio_description(
                width,
                height,
                tile,
                mpp,
                app_mag,
                quality,
                level_size=None if index == 0 else level_size,
            )
            tif.write(
                tiles,
                shape=(level_size[1], level_size[0], 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                description=description,
                metadata=None,
                subfiletype=0,
            )
            if index == 0:
                _write_thumbnail(tif, level0, content, (width, height), mpp, app_mag, quality)
    return path


def _write_thumbnail(
    tif: tifffile.TiffWriter,
    level0: np.ndarray | None,
    content: ContentFn | None,
    size: tuple[int, int],
    mpp: float | None,
    app_mag: float | None,
    quality: int,
) -> None:
    """Page 1 of a real SVS is a small stripped thumbnail; readers rely on it."""
    width, height = size
    scale = max(width, height) / 768
    thumb_size = (max(1, round(width / scale)), max(1, round(height / scale)))
    if level0 is not None:
        thumb = cv2.resize(level0, thumb_size, interpolation=cv2.INTER_AREA)
    elif content is not None:
        thumb = content(0, 0, thumb_size[0], thumb_size[1], scale)
    else:
        raise ValueError("give level0 or content")
    description = aperio_description(width, height, 0, mpp, app_mag, quality, level_size=thumb_size)
    tif.write(
        thumb,
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": quality},
        rowsperstrip=16,
        description=description,
        metadata=None,
        subfiletype=0,
    )


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: random values on a coarse grid, resized up."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def synthetic_tissue(width: int, height: int, seed: int = 0, tissue_fraction: float = 0.5) -> np.ndarray:
    """An H&E-like RGB image: pink stroma with purple nuclei on a white background.

    About ``tissue_fraction`` of the area is tissue, in smooth blobs.
    """
    rng = np.random.default_rng(seed)
    blob = _value_noise(rng, (height, width), 6)
    tissue = blob > np.quantile(blob, 1 - tissue_fraction)
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    stroma = np.array([225, 160, 200], np.float32)
    texture = _value_noise(rng, (height, width), max(8, width // 24))[..., None]
    pink = (stroma * (0.85 + 0.25 * texture)).clip(0, 255)
    image[tissue] = pink[tissue].astype(np.uint8)
    # Nuclei: small dark purple discs inside tissue.
    n_nuclei = int(tissue.sum() / 400)
    ys, xs = np.nonzero(tissue)
    if len(xs):
        picks = rng.integers(0, len(xs), n_nuclei)
        for x, y in zip(xs[picks], ys[picks], strict=True):
            radius = int(rng.integers(2, 5))
            cv2.circle(image, (int(x), int(y)), radius, (90, 50, 140), -1)
    return image


def tissue_content(seed: int = 0, blob_px: int = 6000, sparsity: float = 0.1) -> ContentFn:
    """A content function for large streamed slides: tissue blobs of about
    ``blob_px`` level-0 px with textured stroma, drawn consistently at any
    downsample from the level-0 coordinates alone. ``sparsity`` in [-1.5, 1.5]
    thins the blobs: 0.1 covers about 44 % of the slide, 1.0 about 5 % (islands
    like biopsy fragments)."""
    rng = np.random.default_rng(seed)
    phases = rng.random(6) * 2 * np.pi

    def content(x0: int, y0: int, width: int, height: int, downsample: float) -> np.ndarray:
        xs = x0 + (np.arange(width, dtype=np.float32) + 0.5) * downsample
        ys = y0 + (np.arange(height, dtype=np.float32) + 0.5) * downsample
        gx, gy = np.meshgrid(xs, ys)
        k = 2 * np.pi / blob_px
        field = np.sin(gx * k + phases[0]) * np.sin(gy * k * 0.8 + phases[1]) + 0.5 * np.sin(
            (gx + gy) * k * 0.5 + phases[2]
        )
        tissue = field > sparsity
        fine = 2 * np.pi / 40.0
        texture = 0.5 + 0.25 * np.sin(gx * fine + phases[3]) * np.sin(gy * fine * 1.3 + phases[4])
        texture += 0.25 * np.sin((gx - gy) * fine * 0.7 + phases[5])
        image = np.full((height, width, 3), BACKGROUND, np.uint8)
        stroma = np.array([225, 160, 200], np.float32) * (0.8 + 0.3 * texture[..., None])
        nuclei = texture > 0.9
        stroma[nuclei] = (90, 50, 140)
        image[tissue] = stroma[tissue].clip(0, 255).astype(np.uint8)
        return image

    return content


def banked_tiles(
    content: ContentFn, *, tile: int = 256, quality: int = 90, bank: int = 16, seed: int = 0
) -> Callable[[float, tuple[int, int]], Iterator[bytes]]:
    """Fast tiles for very large slides (100k x 100k px is ~150k tiles a level): each
    tile is glass or one of ``bank`` tissue tiles, drawn once per level and JPEG
    encoded once; a tile is tissue where ``content`` has tissue at its centre, so
    the layout agrees with the levels drawn from ``content``. The tissue tiles are
    ``content`` drawn at that level's scale at ``bank`` random tissue places (a
    blob's edge included where one falls there)."""

    def level_tiles(downsample: float, level_size: tuple[int, int]) -> Iterator[bytes]:
        width, height = level_size
        columns, rows = -(-width // tile), -(-height // tile)
        span = tile * downsample  # level-0 px of one tile
        centres = content(0, 0, columns, rows, span)  # one pixel per tile, at its centre
        is_tissue = (centres != BACKGROUND).any(axis=2)
        rng = np.random.default_rng(seed)
        found = np.argwhere(is_tissue)
        picks = found[rng.integers(0, len(found), bank)] if len(found) else np.zeros((0, 2), np.int64)
        drawn = [content(int(c * span), int(r * span), tile, tile, downsample) for r, c in picks]
        blocks = [np.full((tile, tile, 3), BACKGROUND, np.uint8), *drawn]
        encoded = _encode_tiles(blocks, tile, quality)
        choice = (
            rng.integers(1, len(encoded), is_tissue.shape) if len(encoded) > 1 else np.zeros(is_tissue.shape)
        )
        for row in range(rows):
            for column in range(columns):
                yield encoded[int(choice[row, column]) if is_tissue[row, column] else 0]

    return level_tiles


def _encode_tiles(blocks: Sequence[np.ndarray], tile: int, quality: int) -> list[bytes]:
    """Each block's JPEG bytes exactly as tifffile encodes a tile of ``write_aperio_svs``."""
    import io

    buffer = io.BytesIO()
    strip = np.concatenate(blocks, axis=1)
    tifffile.imwrite(
        buffer,
        strip,
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": quality},
    )
    buffer.seek(0)
    with tifffile.TiffFile(buffer) as tif:
        page = tif.pages.first
        data = buffer.getvalue()
        return [
            data[offset : offset + count]
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)
        ]
