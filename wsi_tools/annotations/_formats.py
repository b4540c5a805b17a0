"""Which reader an annotation file needs, chosen by its content (then its suffix):
ASAP XML starts with ``<``, GeoJSON with ``{`` or ``[``."""

from __future__ import annotations

from pathlib import Path

from wsi_tools.annotations._model import AnnotationSet
from wsi_tools.errors import AnnotationError

ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
_BOMS = {b"\xef\xbb\xbf": "utf-8", b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}


def annotation_format(path: Path) -> str:
    """``"asap"`` or ``"geojson"``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(256)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such annotation file; check the path") from None
    except OSError as error:
        raise AnnotationError(f"{path}: cannot read the annotation file ({error.strerror})") from None
    encoding = "utf-8"
    for bom, name in _BOMS.items():
        if head.startswith(bom):
            head, encoding = head[len(bom) :], name
            break
    first = head.decode(encoding, errors="ignore").lstrip()[:1]
    if first == "<":
        return "asap"
    if first in ("{", "["):
        return "geojson"
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return "asap"
    if suffix in (".geojson", ".json"):
        return "geojson"
    raise AnnotationError(
        f"{path}: neither ASAP XML nor GeoJSON (it starts with {head[:16]!r}); give an ASAP XML "
        "or a QuPath GeoJSON export"
    )


def read_annotations(path: str | Path, slide_dimensions: tuple[int, int] | None = None) -> AnnotationSet:
    """An ASAP XML or a QuPath GeoJSON file, whichever its content is."""
    from wsi_tools.annotations._asap_reader import read_asap_xml
    from wsi_tools.annotations._geojson_reader import read_qupath_geojson

    path = Path(path)
    reader = read_asap_xml if annotation_format(path) == "asap" else read_qupath_geojson
    return reader(path, slide_dimensions=slide_dimensions)
