"""ASAP XML annotations in and out, and label maps.

Reading (:func:`read_asap_xml`)
    The XML is parsed with a hardened lxml parser: no entity resolution, no
    network, no DTD loading, no huge trees. A DOCTYPE that declares entities
    is refused before anything is expanded (the "billion laughs" bomb fails in
    milliseconds). Malformed XML raises :class:`AnnotationError` naming the
    file and line.

    Geometry is in level-0 pixels, as ASAP writes it. Per ASAP type:

    * ``Polygon``: the vertices in ``Order`` order (not file order).
    * ``Spline``: ASAP draws a curve through its control points; here **the
      control points are used as the polygon's vertices** (no interpolation),
      so curved edges become straight segments between the clicked points.
    * ``Rectangle``: its 4 corners as a polygon (2 corners: their box).
    * ``Dot``: a shapely ``Point``; ``PointSet``: a ``MultiPoint``.
    * ``None`` and ``Measurement``: skipped with a warning (no region).

    Coordinates may use a decimal comma ("12,5"), as ASAP writes under some
    locales. Invalid polygons (self-intersections) are repaired with
    ``shapely.make_valid``, keeping only the polygonal parts, and the repair is
    recorded as a warning naming the annotation. Annotations with fewer than 3
    distinct vertices or zero area are dropped with a warning; with the slide's
    size given, annotations outside the slide are reported.

Groups
    ``PartOfGroup`` on an annotation names its group; ``PartOfGroup`` on a
    ``Group`` inside ``AnnotationGroups`` names the parent group. Each
    annotation keeps its ``group_chain`` (own group, parent, grandparent...);
    cycles are cut and reported.

Label maps (:func:`load_label_map`, :func:`label_annotations`)
    YAML with ``labels:`` (group name -> integer label) and an optional
    ``exclude:`` (groups whose areas are cut out of every labelled area).
    Matching is case-insensitive and follows the group chain: the first group
    of the chain that the map names decides. Groups the map does not know
    raise an error listing them all unless ``ignore_unknown=True``.

Writing (:func:`write_asap_xml`)
    ASAP-compatible XML with every group used declared (colours, parents) and
    ``Order`` on every coordinate. ASAP has no holes: a polygon's holes are
    dropped with a ``UserWarning``; a multi-polygon becomes one annotation per
    part.

Reading QuPath GeoJSON (:func:`read_qupath_geojson`)
    See that module: annotations with their classification as the group,
    polygons with holes, points; detections and unclassified objects skipped
    with a warning. :func:`read_annotations` picks the reader by content.

The package: ``_model`` (the data), ``_formats`` (which reader), ``_asap_reader``,
``_geojson_reader``, ``_geometry_checks`` (shared checks and repairs),
``_asap_writer``, ``_geojson_writer``, ``_label_maps`` and ``_summary``.
"""

from wsi_tools.annotations._asap_reader import read_asap_xml
from wsi_tools.annotations._asap_writer import write_asap_xml
from wsi_tools.annotations._formats import ANNOTATION_SUFFIXES, annotation_format, read_annotations
from wsi_tools.annotations._geojson_reader import read_qupath_geojson
from wsi_tools.annotations._geojson_writer import write_qupath_geojson
from wsi_tools.annotations._label_maps import (
    available_label_maps,
    label_annotations,
    load_label_map,
    resolve_label_map_path,
)
from wsi_tools.annotations._model import (
    ANNOTATION_TYPES,
    DEFAULT_LABEL_MAP,
    LABEL_MAP_DIR,
    LABEL_RANGE,
    UNGROUPED,
    Annotation,
    AnnotationGroup,
    AnnotationSet,
    GroupMatch,
    LabeledAnnotations,
    LabelMap,
    polygonal_part,
    polygonal_union,
)
from wsi_tools.annotations._summary import summarize

__all__ = [
    "ANNOTATION_SUFFIXES",
    "annotation_format",
    "read_annotations",
    "read_qupath_geojson",
    "ANNOTATION_TYPES",
    "DEFAULT_LABEL_MAP",
    "LABEL_MAP_DIR",
    "LABEL_RANGE",
    "UNGROUPED",
    "Annotation",
    "AnnotationGroup",
    "AnnotationSet",
    "GroupMatch",
    "LabelMap",
    "LabeledAnnotations",
    "available_label_maps",
    "label_annotations",
    "load_label_map",
    "polygonal_part",
    "polygonal_union",
    "read_asap_xml",
    "resolve_label_map_path",
    "summarize",
    "write_asap_xml",
    "write_qupath_geojson",
]
