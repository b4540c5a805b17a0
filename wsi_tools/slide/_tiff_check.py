"""What a TIFF-based slide's structure and tiles can tell about damage.

TIFF has no checksum, so a bit flip that leaves a valid JPEG stream cannot be
seen. Everything else can, and is a read error rather than grey or zero
pixels:

- on open (:func:`check_tiff_structure`, every backend, cheap): the chain of
  IFDs ends inside the file, and every tile's bytes (offset plus byte count)
  lie inside it. A truncated file fails here; without this tiffslide quietly
  shows the levels before the cut and reads past the end as blank tiles;
- on every tile the fast decoder reads (:func:`check_tile_bytes`): the bytes
  were all read, and a JPEG tile starts with SOI and ends with EOI;
- in ``wsi-tools check`` (:func:`strict_tile_problem`): each checked tile is
  decoded by libjpeg-turbo with its warnings (premature end of data, corrupt
  Huffman data, extraneous bytes) raised as errors, which the decoders under
  tiffslide and OpenSlide pass over in silence.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from wsi_tools.errors import SlideReadError

TIFF_HEADERS = {
    b"II*\x00": ("<", False),
    b"MM\x00*": (">", False),
    b"II+\x00": ("<", True),
    b"MM\x00+": (">", True),
}
JPEG_COMPRESSION = 7
MAX_IFDS = 100_000  # a real slide has a handful; a cycle or garbage chain stops here
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
FIX = "the file is truncated or damaged: copy it again from the scanner or archive"


def tiff_layout(path: Path) -> tuple[str, bool] | None:
    """(byte order, BigTIFF) for a classic or Big TIFF, None for anything else."""
    with open(path, "rb") as handle:
        return TIFF_HEADERS.get(handle.read(4))


def plain_tiff_layout(path: Path) -> tuple[str, bool] | None:
    """:func:`tiff_layout` of a TIFF whose offsets mean what they say; None also
    for NDPI, whose 64-bit offset extension rides on a classic TIFF header."""
    return tiff_layout(path) if path.suffix.lower() != ".ndpi" else None


def tile_position(page: Any, index: int) -> str:
    """``column c, row r`` of tile ``index`` in a tiled tifffile ``page``."""
    across = -(-page.imagewidth // page.tilewidth)
    return f"column {index % across}, row {index // across}"


def check_tiff_structure(path: Path) -> None:
    """SlideReadError unless the IFD chain and every tile's bytes lie inside the file.

    Files that are not plain TIFF (NDPI's 64-bit offset extension, MRXS, ...)
    are left to their backend."""
    layout = plain_tiff_layout(path)
    if layout is None:
        return
    size = path.stat().st_size
    _check_ifd_chain(path, size, *layout)
    _check_tile_tables(path, size)


def _check_ifd_chain(path: Path, size: int, order: str, big: bool) -> None:
    offset_format, count_format, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    offset_size, count_size = struct.calcsize(offset_format), struct.calcsize(count_format)
    with open(path, "rb") as handle:
        handle.seek(8 if big else 4)
        (offset,) = struct.unpack(order + offset_format, handle.read(offset_size))
        seen: set[int] = set()
        number = 0
        while offset:
            if offset in seen or number >= MAX_IFDS:
                raise SlideReadError(f"{path}: the chain of TIFF directories loops (at byte {offset}); {FIX}")
            if offset + count_size > size:
                raise SlideReadError(
                    f"{path}: TIFF directory {number} starts at byte {offset}, beyond the end of the "
                    f"file ({size} bytes); {FIX}"
                )
            seen.add(offset)
            handle.seek(offset)
            (entries,) = struct.unpack(order + count_format, handle.read(count_size))
            end = offset + count_size + entries * entry_size + offset_size
            if end > size:
                raise SlideReadError(
                    f"{path}: TIFF directory {number} ({entries} entries) runs past the end of the file "
                    f"(byte {end} of {size}); {FIX}"
                )
            handle.seek(end - offset_size)
            (offset,) = struct.unpack(order + offset_format, handle.read(offset_size))
            number += 1


def _check_tile_tables(path: Path, size: int) -> None:
    import numpy as np
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for number, page in enumerate(tif.pages):
                offsets = np.asarray(getattr(page, "dataoffsets", ()), dtype=np.int64)
                counts = np.asarray(getattr(page, "databytecounts", ()), dtype=np.int64)
                if offsets.shape != counts.shape:
                    raise SlideReadError(
                        f"{path}: TIFF directory {number} lists {len(offsets)} tile offsets but "
                        f"{len(counts)} byte counts; {FIX}"
                    )
                ends = offsets + counts
                beyond = np.flatnonzero((counts > 0) & ((ends > size) | (offsets < 0)))
                if len(beyond):
                    first = int(beyond[0])
                    raise SlideReadError(
                        f"{path}: TIFF directory {number}: tile {first}'s bytes {int(offsets[first])}-"
                        f"{int(ends[first])} lie beyond the end of the file ({size} bytes; {len(beyond)} "
                        f"of {len(offsets)} tiles); {FIX}"
                    )
    except SlideReadError:
        raise
    except Exception as error:  # tifffile raises many kinds on a garbled directory
        raise SlideReadError(
            f"{path}: unreadable TIFF structure ({type(error).__name__}: {error}); {FIX}"
        ) from None


def check_tile_bytes(data: bytes, expected: int, compression: int) -> str | None:
    """Why a tile's raw bytes are damaged, or None: a short read, or a JPEG
    stream without its start or end marker (a truncated or zeroed tile)."""
    if len(data) != expected:
        return f"only {len(data)} of its {expected} bytes could be read"
    if compression == JPEG_COMPRESSION:
        if not data.startswith(SOI):
            return "its JPEG stream does not start with a start-of-image marker"
        if not data.rstrip(b"\x00").endswith(EOI):
            return "its JPEG stream has no end-of-image marker (cut short)"
    return None


def strict_tile_problem(page: Any, index: int, data: bytes) -> str | None:
    """Why tile ``index`` of a tifffile ``page`` is damaged, or None.

    JPEG tiles are decoded by libjpeg-turbo with warnings raised (the colours
    of that decode are not used: only whether the stream is sound). Tiles
    that this strict decoder does not support, and other compressions, are
    decoded as tiffslide decodes them, any error counting as damage."""
    problem = check_tile_bytes(data, int(page.databytecounts[index]), int(page.compression))
    if problem:
        return problem
    if page.compression == JPEG_COMPRESSION:
        import simplejpeg

        tables = page.jpegtables
        stream = tables[:-2] + data[2:] if tables else data
        try:
            simplejpeg.decode_jpeg(stream, strict=True)
            return None
        except ValueError as error:
            try:
                simplejpeg.decode_jpeg(stream, strict=False)
            except ValueError:
                pass  # not a warning but a stream this decoder cannot do: try tiffslide's below
            else:
                return f"JPEG data is corrupt ({error})"
    try:
        tile = page.decode(data, index, jpegtables=page.jpegtables)[0]
    except Exception as error:
        return f"does not decode ({type(error).__name__}: {error})"
    return None if tile is not None else "does not decode"
