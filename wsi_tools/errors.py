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


SHOWN_PROBLEMS = 20


def problem_list(problems: list[str], source: str, shown: int = SHOWN_PROBLEMS) -> str:
    """The first ``shown`` problems, then how many more and the file holding them all
    (a manifest with 100,000 bad rows must not print 100,000 lines)."""
    listing = "; ".join(problems[:shown])
    if len(problems) <= shown:
        return listing
    import os
    import tempfile

    handle, name = tempfile.mkstemp(prefix="wsi-tools-problems-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
        out.write(f"# {len(problems)} problem(s) of {source}\n" + "\n".join(problems) + "\n")
    return f"{listing}; and {len(problems) - shown} more, all listed in {name}"
