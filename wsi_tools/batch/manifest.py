"""Batch manifests: one CSV row per slide, validated as a whole before any work.

Columns (header required): ``slide_path`` and ``set`` (``hard`` | ``weak``)
always; ``annotation_path`` for ``hard`` rows; optional ``slide_id`` (default:
the file stem), ``mpp`` (µm/px override for slides without MPP) and ``split``
(``train`` | ``val`` | ``test``). Relative paths resolve against the manifest's
folder. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsi_tools.errors import ConfigError, WsiToolsError, problem_list
from wsi_tools.slide import SLIDE_SUFFIXES

COLUMNS = ("slide_path", "set", "annotation_path", "slide_id", "mpp", "split")
REQUIRED_COLUMNS = ("slide_path", "set")
SETS = ("hard", "weak")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestEntry:
    """One validated manifest row; paths are absolute."""

    line: int  # line number in the CSV file (the header is line 1)
    slide_path: Path
    set: str
    annotation_path: Path | None
    slide_id: str
    mpp: float | None = None
    split: str | None = None


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: tuple[ManifestEntry, ...]

    def splits(self) -> dict[str, str]:
        """slide_id -> split for the rows that name one (the trainer lets these win)."""
        return {entry.slide_id: entry.split for entry in self.entries if entry.split}


def _sanitize(slide_id: str) -> str:
    from wsi_tools.store import sanitize_slide_id  # the store owns the id rules

    return sanitize_slide_id(slide_id)


def resolve_listed_path(text: str, base: Path) -> Path:
    """A path from a manifest cell, relative to the manifest's folder ``base``."""
    # abspath folds "../" without resolving symlinks (the archive may be a link farm).
    return Path(os.path.abspath(base / os.path.expanduser(text)))


def parse_mpp(text: str) -> float:
    """A manifest's mpp cell: a positive finite number (ValueError otherwise)."""
    value = float(text)  # ValueError on junk
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def _check_row(row: dict[str | None, object], base: Path) -> tuple[list[str], dict[str, object]]:
    """Problems of one row and its parsed fields (fields may be partial when problems)."""
    problems: list[str] = []
    if row.get(None):
        problems.append(f"more fields than the header has columns: {row[None]!r}")
    cell = {key: str(row.get(key) or "").strip() for key in COLUMNS}
    fields: dict[str, object] = {}

    slide_path: Path | None = None
    if not cell["slide_path"]:
        problems.append("slide_path is empty")
    else:
        slide_path = resolve_listed_path(cell["slide_path"], base)
        if not slide_path.is_file():
            problems.append(f"slide file not found: {slide_path}")
    fields["slide_path"] = slide_path

    set_name = cell["set"].lower()
    if set_name not in SETS:
        problems.append(f"unknown set {cell['set']!r} (use hard or weak)")
    fields["set"] = set_name

    annotation_path: Path | None = None
    if cell["annotation_path"]:
        annotation_path = resolve_listed_path(cell["annotation_path"], base)
        if not annotation_path.is_file():
            problems.append(f"annotation file not found: {annotation_path}")
    elif set_name == "hard":
        problems.append("set hard needs an annotation_path (the ASAP XML of the slide)")
    fields["annotation_path"] = annotation_path

    fields["mpp"] = None
    if cell["mpp"]:
        try:
            fields["mpp"] = parse_mpp(cell["mpp"])
        except ValueError:
            problems.append(f"bad mpp {cell['mpp']!r} (a positive number of µm/px, e.g. 0.25)")

    split = cell["split"].lower() or None
    if split is not None and split not in SPLITS:
        problems.append(f"unknown split {cell['split']!r} (use train, val or test, or leave it empty)")
    fields["split"] = split

    raw_id = cell["slide_id"] or (slide_path.stem if slide_path is not None else "")
    fields["slide_id"] = None
    if raw_id:
        try:
            fields["slide_id"] = _sanitize(raw_id)
        except WsiToolsError as error:
            problems.append(f"bad slide_id {raw_id!r}: {error}")
    return problems, fields


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; every problem is reported in one ConfigError."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(
            f"{path}: manifest not found; build one with `wsi-tools manifest DIR --out {path.name}`"
        )
    records = _read_records(path)
    if not records:
        raise ConfigError(f"{path}: the manifest is empty; it needs a header line: {','.join(COLUMNS)}")
    header_line, header = records[0]
    header = [name.strip().lower() for name in header]
    _check_header(path, header_line, header)
    problems: list[str] = []
    entries: list[ManifestEntry] = []
    first_line_of_id: dict[str, tuple[int, str]] = {}
    for line, cells in records[1:]:
        if not any(cell.strip() for cell in cells):
            continue  # a blank row
        row: dict[str | None, object] = dict(zip(header, cells, strict=False))
        if len(cells) > len(header):
            row[None] = cells[len(header) :]
        row_problems, fields = _check_row(row, path.parent)
        slide_id = fields["slide_id"]
        if isinstance(slide_id, str):
            # Case-folded: a store on a case-insensitive share must not merge two slides.
            seen = first_line_of_id.get(slide_id.casefold())
            if seen is not None:
                row_problems.append(f"duplicate slide id {slide_id!r} (line {seen[0]} has {seen[1]!r})")
            else:
                first_line_of_id[slide_id.casefold()] = (line, slide_id)
        if row_problems:
            problems.extend(f"line {line}: {problem}" for problem in row_problems)
        else:
            entries.append(ManifestEntry(line=line, **fields))  # type: ignore[arg-type]
    if problems:
        raise ConfigError(
            f"{path}: {len(problems)} problem(s) in the manifest, nothing was processed: "
            f"{problem_list(problems, str(path))}. Fix these rows (relative paths resolve against the "
            "manifest's folder) and run again."
        )
    if not entries:
        raise ConfigError(f"{path}: the manifest has no slide rows; add one row per slide under the header")
    return Manifest(path=path, entries=tuple(entries))


def _read_records(path: Path) -> list[tuple[int, list[str]]]:
    """CSV records with the file line each starts on; ``#`` comment lines dropped."""
    records: list[tuple[int, list[str]]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            start = 1
            for cells in reader:
                if not (cells and cells[0].lstrip().startswith("#")):
                    records.append((start, cells))
                start = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(
            f"{path}: not a readable UTF-8 CSV file ({error}); save the manifest as CSV"
        ) from error
    return records


def _check_header(path: Path, line: int, header: Sequence[str]) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in COLUMNS]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown column(s) {', '.join(map(repr, unknown))}")
    if duplicated:
        problems.append(f"repeated column(s) {', '.join(duplicated)}")
    if problems:
        raise ConfigError(
            f"{path}: line {line} (header): {'; '.join(problems)}. "
            f"The header must name columns from: {', '.join(COLUMNS)} (slide_path and set required)"
        )


@dataclass(frozen=True)
class BuiltManifest:
    """What ``build_manifest`` wrote, and the slides it left out (with why)."""

    path: Path
    n_hard: int
    n_weak: int
    skipped: tuple[str, ...]


def _find_slides(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in SLIDE_SUFFIXES
    )


def _xml_beside(slide: Path) -> Path | None:
    """The annotation file of the same stem: ASAP XML, else QuPath GeoJSON."""
    from wsi_tools.annotations import ANNOTATION_SUFFIXES

    for suffix in ANNOTATION_SUFFIXES:
        for candidate in (slide.with_suffix(suffix), slide.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def _portable(path: Path, base: Path) -> str:
    """Relative to the manifest's folder when possible, so the archive can move."""
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive
        return str(path)


def _unique_ids(slides: Sequence[Path], roots: Sequence[Path]) -> dict[Path, str]:
    """Stems as ids; a stem seen twice gets its root folder name and subfolders
    folded in (``weak_p1``), and a counter if even that clashes."""
    stems = [_sanitize(path.stem) for path in slides]
    folded = [stem.casefold() for stem in stems]
    ids: dict[Path, str] = {}
    used: set[str] = set()
    for slide, stem in zip(slides, stems, strict=True):
        candidate = stem
        if folded.count(stem.casefold()) > 1:
            root = next(root for root in roots if slide.is_relative_to(root))
            candidate = _sanitize("_".join((root.name, *slide.relative_to(root).with_suffix("").parts)))
        unique, counter = candidate, 1
        while unique.casefold() in used:
            counter += 1
            unique = f"{candidate}-{counter}"
        used.add(unique.casefold())
        ids[slide] = unique
    return ids


def build_manifest(
    slide_dir: str | Path, out_path: str | Path, weak_dir: str | Path | None = None
) -> BuiltManifest:
    """Write a manifest for a folder of slides.

    A slide (any format OpenSlide or tiffslide reads: .svs, .tif, .ndpi, .mrxs, .scn, ...; searched recursively) with an XML of the same
    stem beside it is ``hard``; every slide under ``weak_dir`` is ``weak``;
    other slides are left out and listed in ``skipped``.
    """
    slide_dir = Path(slide_dir).expanduser().resolve()
    weak_root = Path(weak_dir).expanduser().resolve() if weak_dir is not None else None
    out_path = Path(out_path).expanduser().resolve()
    for folder, flag in ((slide_dir, "DIR"), (weak_root, "--weak-dir")):
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"{folder}: not a folder; give an existing folder as {flag}")
    weak = _find_slides(weak_root) if weak_root is not None else []
    rows: list[tuple[Path, str, Path | None]] = [(slide, "weak", None) for slide in weak]
    skipped: list[str] = []
    for slide in _find_slides(slide_dir):
        if weak_root is not None and slide.is_relative_to(weak_root):
            continue  # listed as weak already
        xml = _xml_beside(slide)
        if xml is None:
            skipped.append(
                f"{slide}: no {slide.stem}.xml or .geojson beside it (put weak-set slides under --weak-dir)"
            )
        else:
            rows.append((slide, "hard", xml))
    if not rows:
        raise ConfigError(
            f"{slide_dir}: no slides found ({', '.join(sorted(SLIDE_SUFFIXES))} with an annotation file of the same stem"
            + (", or any slide under --weak-dir)" if weak_root else "; pass --weak-dir for weak-set slides)")
        )
    rows.sort(key=lambda row: (row[1], str(row[0])))
    roots = [root for root in (weak_root, slide_dir) if root is not None]
    ids = _unique_ids([row[0] for row in rows], roots)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    base = out_path.parent
    with out_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for slide, set_name, xml in rows:
            annotation = _portable(xml, base) if xml is not None else ""
            writer.writerow([_portable(slide, base), set_name, annotation, ids[slide], "", ""])
    n_hard = sum(row[1] == "hard" for row in rows)
    return BuiltManifest(path=out_path, n_hard=n_hard, n_weak=len(rows) - n_hard, skipped=tuple(skipped))
