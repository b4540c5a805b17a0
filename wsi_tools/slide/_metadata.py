"""What a slide's properties say: level-0 MPP, objective power, vendor; and the file fingerprint."""

from __future__ import annotations

import hashlib
import math
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
