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

The package: ``_protocol`` (the :class:`SlideBackend` protocol every reader
meets), one backend per file (``_openslide``, ``_tiffslide``, with
``_tile_decoder``, the fast path under tiffslide), ``_registry`` (which
backend opens which file), ``_metadata`` (MPP and vendor from the
properties, the file fingerprint), ``_slide`` (:class:`Slide`), ``_tiff_check``
(what a TIFF's structure and tiles tell about damage) and ``_check``
(:func:`check_slide`, the preflight behind ``wsi-tools check``).
"""

from wsi_tools.slide._check import SlideCheck, check_slide
from wsi_tools.slide._metadata import file_fingerprint
from wsi_tools.slide._protocol import SlideBackend
from wsi_tools.slide._registry import BACKENDS, READER_CHOICES, SLIDE_SUFFIXES, TIFF_SUFFIXES, open_backend
from wsi_tools.slide._slide import MPP_FIX, Slide, open_slide

__all__ = [
    "BACKENDS",
    "MPP_FIX",
    "READER_CHOICES",
    "SLIDE_SUFFIXES",
    "TIFF_SUFFIXES",
    "Slide",
    "SlideBackend",
    "SlideCheck",
    "check_slide",
    "file_fingerprint",
    "open_backend",
    "open_slide",
]
