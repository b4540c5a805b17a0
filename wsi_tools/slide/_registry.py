"""Which backend opens which file: tiffslide first for TIFF-based slides, OpenSlide for the rest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wsi_tools.errors import ConfigError, UnsupportedSlideError
from wsi_tools.slide._openslide import OpenSlideBackend
from wsi_tools.slide._protocol import SlideBackend
from wsi_tools.slide._tiff_check import check_tiff_structure
from wsi_tools.slide._tiffslide import TiffSlideBackend

BACKENDS: tuple[str, ...] = ("openslide", "tiffslide")
READER_CHOICES = ("auto", *BACKENDS)  # what a config or flag may name: auto picks by suffix
TIFF_SUFFIXES = frozenset({".svs", ".tif", ".tiff"})
# Every single-file or index-file format OpenSlide reads (a manifest collects these).
SLIDE_SUFFIXES = TIFF_SUFFIXES | {".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi"}

_FACTORIES: dict[str, Callable[[Path], SlideBackend]] = {
    "openslide": OpenSlideBackend,
    "tiffslide": TiffSlideBackend,
}


def backend_order(path: Path, backend: str) -> tuple[str, ...]:
    if backend == "auto":
        # tiffslide is faster for TIFF-based formats; OpenSlide knows the others.
        if path.suffix.lower() in TIFF_SUFFIXES:
            return ("tiffslide", "openslide")
        return ("openslide", "tiffslide")
    if backend not in _FACTORIES:
        raise ConfigError(f"unknown slide backend {backend!r} for {path}: use auto, openslide or tiffslide")
    return (backend,)


def open_backend(path: Path, backend: str) -> SlideBackend:
    if not path.is_file():
        raise UnsupportedSlideError(f"{path}: no such slide file; check the path")
    check_tiff_structure(path)  # a truncated TIFF is refused here, whichever backend reads it
    failures: list[str] = []
    opened: list[SlideBackend] = []
    for name in backend_order(path, backend):
        try:
            reader = _FACTORIES[name](path)
        except Exception as error:  # each backend has its own exception zoo
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        if not reader.level_dimensions or min(reader.level_dimensions[0]) <= 0:
            reader.close()
            failures.append(f"{name}: no image levels")
            continue
        opened.append(reader)
    if opened:
        return _fullest_pyramid(opened)
    raise UnsupportedSlideError(
        f"{path}: cannot be opened as a slide ({'; '.join(failures)}); "
        "give an Aperio SVS or another format OpenSlide reads"
    )


def _fullest_pyramid(readers: list[SlideBackend]) -> SlideBackend:
    """The reader that sees the most pyramid levels, the first on a tie; the others
    are closed. The backends disagree on some writers' TIFFs (reduced-resolution
    pages, SubIFD pyramids): the pixels stay right either way, but a reader that
    misses the small levels reads level 0 and shrinks it, up to 64x the work."""
    chosen = max(readers, key=lambda reader: len(reader.level_dimensions))
    for reader in readers:
        if reader is not chosen:
            if len(reader.level_dimensions) < len(chosen.level_dimensions):
                chosen.chosen_because = (
                    f"{chosen.name} is used: it sees {len(chosen.level_dimensions)} pyramid level(s), "
                    f"{reader.name} only {len(reader.level_dimensions)}"
                )
            reader.close()
    return chosen


# --------------------------------------------------------------------------- metadata
