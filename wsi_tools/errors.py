"""The toolkit's exception hierarchy.

Every error a user can cause derives from :class:`WsiToolsError`. Its message
names the file at fault and, where there is one, the fix. The CLI turns these
into a one-line message and exit status 2.
"""

from __future__ import annotations


class WsiToolsError(Exception):
    """Base class of every error raised on bad input."""


class UnsupportedSlideError(WsiToolsError):
    """The file cannot be opened as a slide (not a TIFF, unknown format, ...)."""


class MissingMppError(UnsupportedSlideError):
    """The slide has no usable microns-per-pixel; pass ``mpp=`` or ``--slide-mpp``."""


class SlideReadError(WsiToolsError):
    """Pixels could not be read (corrupt tile). The slide stays usable."""


class AnnotationError(WsiToolsError):
    """An annotation file is malformed, hostile, or uses unknown groups."""


class StoreError(WsiToolsError):
    """The patch store is missing, damaged, or incompatible."""


class ConfigError(WsiToolsError):
    """A configuration file, manifest or argument is invalid."""


class ModelError(WsiToolsError):
    """A checkpoint or a model's numbers cannot be trusted: weights that fail their
    checksum, non-finite weights, or a non-finite loss or output."""


class SplitLeakError(ConfigError):
    """A rule that keeps evaluation honest would be broken: a slide in two splits, or a
    validation or test patch trained on, mined, or used as a false-positive query.
    Raised, never asserted, so that it holds under ``python -O``."""
