"""What a slide's properties say: level-0 MPP, objective power, vendor; and the file fingerprint."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from wsi_tools.errors import ConfigError
from wsi_tools.slide._protocol import SlideBackend

# Hashed at each end of the file (TIFF header and first IFDs; label and macro images).
FINGERPRINT_CHUNK = 2**20


def _prefixed(backend: SlideBackend, key: str) -> str | None:
    """A property in the backend's own namespace (``openslide.mpp-x``, ``tiffslide.mpp-x``)."""
    return backend.properties.get(f"{backend.name}.{key}")


def float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class Metadata:
    backend: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    native_mpp: tuple[float, float] | None
    objective_power: float | None
    vendor: str | None

    @classmethod
    def from_backend(cls, reader: SlideBackend) -> Metadata:
        mpp_x = float_or_none(_prefixed(reader, "mpp-x"))
        mpp_y = float_or_none(_prefixed(reader, "mpp-y"))
        native_mpp = (mpp_x, mpp_y) if mpp_x and mpp_y else None
        objective = float_or_none(_prefixed(reader, "objective-power"))
        if objective is None:
            objective = float_or_none(reader.properties.get("aperio.AppMag"))
        vendor = _prefixed(reader, "vendor")
        return cls(
            backend=reader.name,
            level_dimensions=reader.level_dimensions,
            level_downsamples=reader.level_downsamples,
            properties=dict(reader.properties),
            native_mpp=native_mpp,
            objective_power=objective,
            vendor=vendor if vendor and vendor != "None" else None,
        )


# µm/px a slide scan can have: an oil objective at ×100 (~0.1) to a macro photo (~20).
# Outside it the value is a unit error (nm, cm, pixels per µm), and reading at a
# physical resolution would allocate absurd regions or keep no patch.
PLAUSIBLE_MPP = (0.05, 50.0)


def mpp_outside_plausible(mpp: float) -> str | None:
    low, high = PLAUSIBLE_MPP
    if low <= mpp <= high:
        return None
    return f"{mpp:g} µm/px is outside the plausible range of a slide scan ({low:g} to {high:g} µm/px; a unit error?)"


# Level 0 of the largest glass slide (75 x 25 mm) at 0.25 µm/px is ~3e10 px.
DEFAULT_MAX_SLIDE_PIXELS = 10**11
MAX_PIXELS_VARIABLE = "WSI_TOOLS_MAX_SLIDE_PIXELS"
# A JPEG tile of blank glass is ~0.01 byte/px and tissue ~0.1-1; scanners that
# leave background tiles out (sparse TIFF) stay above 1e-4 with any tissue at all.
MIN_BYTES_PER_PIXEL = 1e-4


def max_slide_pixels() -> int:
    text = os.environ.get(MAX_PIXELS_VARIABLE)
    if not text:
        return DEFAULT_MAX_SLIDE_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise ConfigError(f"{MAX_PIXELS_VARIABLE}={text!r} is not a number of pixels") from None
    if value < 1:
        raise ConfigError(f"{MAX_PIXELS_VARIABLE}={text!r} must be a positive number of pixels")
    return value


def implausible_size(dimensions: tuple[int, int], file_bytes: int | None) -> str | None:
    """Why a slide's claimed level-0 size cannot be real (a decompression bomb, a
    damaged directory), or None. ``file_bytes``: the size of a single-file format,
    None where the pixels live in other files (MRXS, VMS)."""
    width, height = dimensions
    pixels = width * height
    limit = max_slide_pixels()
    if pixels > limit:
        return (
            f"claims {width} x {height} px at level 0 ({pixels:.2g} px), more than the limit of {limit:.2g} "
            f"px (larger than any glass slide); set {MAX_PIXELS_VARIABLE} to raise it"
        )
    if file_bytes is not None and pixels > 10**8 and file_bytes / pixels < MIN_BYTES_PER_PIXEL:
        return (
            f"claims {width} x {height} px at level 0 in a file of {file_bytes / 2**20:.1f} MiB "
            f"({file_bytes / pixels:.1e} bytes per px; real scans have at least {MIN_BYTES_PER_PIXEL:g}): "
            "a decompression bomb or a damaged directory"
        )
    return None


def checked_override(path: Path, mpp: float | None) -> float | None:
    if mpp is None:
        return None
    if not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"{path}: slide mpp override must be a positive number of µm/px, got {mpp!r}")
    problem = mpp_outside_plausible(float(mpp))
    if problem:
        raise ConfigError(f"{path}: the slide mpp override {problem}; pass the level-0 µm/px")
    return float(mpp)


def file_fingerprint(path: Path) -> str:
    """``"{size}-{sha256}"`` of the first and last MiB: cheap and stable."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= 2 * FINGERPRINT_CHUNK:
            digest.update(handle.read())
        else:
            digest.update(handle.read(FINGERPRINT_CHUNK))
            handle.seek(size - FINGERPRINT_CHUNK)
            digest.update(handle.read(FINGERPRINT_CHUNK))
    return f"{size}-{digest.hexdigest()}"
