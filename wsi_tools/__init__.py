"""wsi-tools: Aperio WSIs and ASAP XML to a zarr patch store, training and hard negative mining."""

from __future__ import annotations

__version__ = "0.1.0"

from wsi_tools.errors import (  # noqa: E402
    AnnotationError,
    ConfigError,
    MissingMppError,
    SlideReadError,
    StoreError,
    UnsupportedSlideError,
    WsiToolsError,
)

__all__ = [
    "__version__",
    "AnnotationError",
    "ConfigError",
    "MissingMppError",
    "SlideReadError",
    "StoreError",
    "UnsupportedSlideError",
    "WsiToolsError",
]
