"""Zenodo-style PNG datasets out of and into the patch store.

Layout (as the paper's public dataset; x, y are level-0 top-left pixels)::

    DIR/hard_labeled_dataset/{pos|neg}_{slide_id}_{x}-{y}.png
    DIR/weakly_labeled_dataset/{slide_id}_{x}-{y}.png
    DIR/metadata.csv            file, slide, x, y, label, set, mpp, patch_size

Slide ids may contain underscores, so a name is parsed from the right: the
last ``_`` token is ``x-y``, the rest (after ``pos_``/``neg_``) the slide id.
Import accepts ``.png``, ``.jpg``/``.jpeg`` and RGBA or grey images (alpha is
composited over white, grey is repeated, 16-bit is scaled to 8-bit).
"""

from __future__ import annotations

import csv
import re
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from wsi_tools.errors import ConfigError
from wsi_tools.store import PatchStore, sanitize_slide_id

HARD_DIR = "hard_labeled_dataset"
WEAK_DIR = "weakly_labeled_dataset"
METADATA = "metadata.csv"
METADATA_COLUMNS = ("file", "slide", "x", "y", "label", "set", "mpp", "patch_size")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_PNG_LEVEL = 6  # zlib's default, what most tools write; 1 is 4x faster and 5-15 % larger
HARD_NAME = re.compile(r"^(?P<kind>pos|neg)_(?P<slide>.+)_(?P<x>\d+)-(?P<y>\d+)$")
WEAK_NAME = re.compile(r"^(?P<slide>.+)_(?P<x>\d+)-(?P<y>\d+)$")
IMPORT_BATCH = 64


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    n_files: int
    n_slides: int
    bytes_written: int
    seconds: float


@dataclass(frozen=True)
class ImportedSlide:
    slide_id: str
    set: str
    status: str  # "complete" or "skipped"
    n_patches: int


@dataclass
class ImportResult:
    store_path: Path
    slides: list[ImportedSlide]
    n_files: int
    skipped_files: list[str] = field(default_factory=list)  # names that do not parse
    seconds: float = 0.0


def patch_file_name(set_name: str, slide_id: str, x: int, y: int, label: int, suffix: str = ".png") -> str:
    """The dataset-relative path of one patch."""
    if set_name == "hard":
        return f"{HARD_DIR}/{'pos' if label > 0 else 'neg'}_{slide_id}_{x}-{y}{suffix}"
    return f"{WEAK_DIR}/{slide_id}_{x}-{y}{suffix}"


def _write_png(path: Path, patch: np.ndarray, level: int) -> int:
    ok, data = cv2.imencode(
        ".png", cv2.cvtColor(patch, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, level]
    )
    if not ok:
        raise ConfigError(f"{path}: PNG encoding failed")
    path.write_bytes(data.tobytes())
    return len(data)


def export_png(
    store_path: str | Path,
    out_dir: str | Path,
    *,
    slide_ids: Sequence[str] | None = None,
    png_level: int = DEFAULT_PNG_LEVEL,
    threads: int = 2,
    progress: bool = False,
) -> ExportResult:
    """Write every complete slide of the store as PNG files plus ``metadata.csv``."""
    from tqdm import tqdm

    started = time.perf_counter()
    if not 0 <= png_level <= 9:
        raise ConfigError(f"PNG compression level must be 0-9, got {png_level}")
    store = PatchStore(store_path)
    chosen = list(slide_ids) if slide_ids is not None else store.slide_ids()
    missing = sorted(set(chosen) - set(store.slide_ids()))
    if missing:
        raise ConfigError(f"{store.path}: no complete slide named {', '.join(missing)}")
    for slide_id in chosen:  # before any file is written
        store.check_small_arrays(slide_id)
    out_dir = Path(out_dir)
    for sub in (HARD_DIR, WEAK_DIR):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    total = sum(store.n_patches(slide_id) for slide_id in chosen)
    rows: list[dict[str, object]] = []
    written = 0
    with (
        ThreadPoolExecutor(max(1, threads)) as pool,
        tqdm(total=total, desc="export", unit="png", disable=not progress) as bar,
    ):
        for slide_id in chosen:
            attrs = store.slide_attrs(slide_id)
            set_name = attrs.get("set", "weak")
            mpp = attrs.get("effective_mpp", attrs.get("target_mpp"))
            coords, labels = store.coords(slide_id), store.labels(slide_id)
            reader = store.reader(slide_id)
            for start in range(0, len(coords), IMPORT_BATCH):
                stop = min(len(coords), start + IMPORT_BATCH)
                patches = reader.read_many(range(start, stop))
                names = [
                    patch_file_name(set_name, slide_id, int(x), int(y), int(label))
                    for (x, y), label in zip(coords[start:stop], labels[start:stop], strict=True)
                ]
                paths = [out_dir / name for name in names]
                sizes = pool.map(_write_png, paths, patches, [png_level] * len(paths))
                written += sum(sizes)
                for name, (x, y), label in zip(names, coords[start:stop], labels[start:stop], strict=True):
                    rows.append(
                        {
                            "file": name,
                            "slide": slide_id,
                            "x": int(x),
                            "y": int(y),
                            "label": int(label),
                            "set": set_name,
                            "mpp": mpp,
                            "patch_size": reader.patch_size,
                        }
                    )
                bar.update(stop - start)
    with open(out_dir / METADATA, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return ExportResult(out_dir, len(rows), len(chosen), written, time.perf_counter() - started)


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _PatchFile:
    path: Path
    set: str
    slide: str
    x: int
    y: int
    label: int


def parse_patch_name(path: Path) -> _PatchFile | None:
    """A file of the layout, or None when its name does not follow it."""
    set_name = "hard" if path.parent.name == HARD_DIR else "weak"
    match = (HARD_NAME if set_name == "hard" else WEAK_NAME).match(path.stem)
    if match is None:
        return None
    label = 1 if set_name == "hard" and match["kind"] == "pos" else 0
    return _PatchFile(path, set_name, match["slide"], int(match["x"]), int(match["y"]), label)


def read_rgb(path: Path, out: np.ndarray | None = None) -> np.ndarray:
    """Any PNG/JPEG as (H, W, 3) uint8 RGB (into ``out`` if given, of that shape)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ConfigError(f"{path}: not a readable PNG or JPEG image; remove or replace it")
    if image.dtype == np.uint16:
        image = (np.asarray(image, np.uint16) >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ConfigError(f"{path}: unsupported pixel type {image.dtype}; convert it to 8-bit RGB")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB, dst=out)
    if image.shape[2] == 4:
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        blended = image[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        image = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB, dst=out)


def _metadata_mpp(source: Path) -> dict[str, float]:
    """file -> mpp from an existing metadata.csv (our exports carry it)."""
    table = source / METADATA
    if not table.exists():
        return {}
    with open(table, newline="", encoding="utf-8") as handle:
        out = {}
        for row in csv.DictReader(handle):
            try:
                out[Path(row["file"]).with_suffix("").as_posix()] = float(row["mpp"])
            except (KeyError, TypeError, ValueError):
                continue
        return out


def _scan(source: Path) -> tuple[list[_PatchFile], list[str]]:
    files: list[_PatchFile] = []
    skipped: list[str] = []
    for sub in (HARD_DIR, WEAK_DIR):
        folder = source / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            parsed = parse_patch_name(path)
            if parsed is None:
                skipped.append(f"{sub}/{path.name}")
            else:
                files.append(parsed)
    return files, skipped


def _batches(items: list[_PatchFile], size: int) -> Iterator[tuple[int, list[_PatchFile]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def import_png(
    source_dir: str | Path,
    store_path: str | Path,
    *,
    mpp: float | None = None,
    overwrite: bool = False,
    threads: int = 2,
    progress: bool = False,
) -> ImportResult:
    """Read a Zenodo-style PNG/JPEG dataset into the store, one group per slide
    and set. ``mpp`` (µm/px of the patches) is recorded when given, else taken
    from ``metadata.csv`` if present. A slide id found in both sets gets
    ``_weak`` appended in its weak group."""
    from tqdm import tqdm

    from wsi_tools.provenance import now_iso

    started = time.perf_counter()
    source = Path(source_dir)
    if not source.is_dir():
        raise ConfigError(f"{source}: no such directory; give the folder holding {HARD_DIR}/ and {WEAK_DIR}/")
    files, skipped = _scan(source)
    if not files:
        raise ConfigError(
            f"{source}: no patch images named like {HARD_DIR}/pos_<slide>_<x>-<y>.png or "
            f"{WEAK_DIR}/<slide>_<x>-<y>.png" + (f" ({len(skipped)} names did not parse)" if skipped else "")
        )
    groups: dict[tuple[str, str], list[_PatchFile]] = defaultdict(list)
    for item in files:
        groups[(item.set, item.slide)].append(item)
    hard_slides = {slide for set_name, slide in groups if set_name == "hard"}
    known_mpp = _metadata_mpp(source)
    store = PatchStore(store_path, mode="a")
    slides: list[ImportedSlide] = []
    with (
        ThreadPoolExecutor(max(1, threads)) as pool,
        tqdm(total=len(files), desc="import", unit="file", disable=not progress) as bar,
    ):
        for (set_name, slide), items in sorted(groups.items()):
            items.sort(key=lambda item: (item.y, item.x, -item.label))
            name = slide + ("_weak" if set_name == "weak" and slide in hard_slides else "")
            slide_id = sanitize_slide_id(name)
            if store.is_complete(slide_id) and not overwrite:
                slides.append(ImportedSlide(slide_id, set_name, "skipped", store.n_patches(slide_id)))
                bar.update(len(items))
                continue
            first = read_rgb(items[0].path)
            size = first.shape[0]
            mpps = {known_mpp.get(f"{item.path.parent.name}/{item.path.stem}") for item in items}
            patch_mpp = mpp if mpp is not None else (mpps.pop() if len(mpps) == 1 else None)
            attrs = {
                "set": set_name,
                "source": str(source.resolve()),
                "imported_from": "png",
                "target_mpp": patch_mpp,
                "effective_mpp": patch_mpp,
                "patch_size": size,
                "started": now_iso(),
            }
            with store.begin_slide(
                slide_id, len(items), size, attrs, overwrite=True, threads=threads
            ) as writer:
                for start, batch in _batches(items, IMPORT_BATCH):
                    images = np.stack(list(pool.map(_read_checked, batch, [size] * len(batch))))
                    writer.write(
                        start,
                        images,
                        np.array([(item.x, item.y) for item in batch], np.int64),
                        np.array([item.label for item in batch], np.int8),
                        np.full(len(batch), np.nan, np.float32),  # unknown without the slide
                    )
                    bar.update(len(batch))
                labels = np.array([item.label for item in items])
                counts = {
                    "kept": len(items),
                    "positive": int((labels > 0).sum()),
                    "negative": int((labels == 0).sum()),
                }
                writer.commit({"counts": counts})
            slides.append(ImportedSlide(slide_id, set_name, "complete", len(items)))
    return ImportResult(store.path, slides, len(files), skipped, time.perf_counter() - started)


def _read_checked(item: _PatchFile, size: int) -> np.ndarray:
    image = read_rgb(item.path)
    if image.shape[:2] != (size, size):
        raise ConfigError(
            f"{item.path}: {image.shape[1]}x{image.shape[0]} px, but the other patches of slide "
            f"{item.slide!r} are {size}x{size}; all patches of a slide must be square and of one size"
        )
    return image
