"""ASAP XML reading (real and hostile files), writing, label maps."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import shapely
from lxml import etree
from shapely.geometry import MultiPoint, MultiPolygon, Point, Polygon, box

from wsi_tools.annotations import (
    DEFAULT_LABEL_MAP,
    Annotation,
    LabelMap,
    label_annotations,
    load_label_map,
    read_asap_xml,
    summarize,
    write_asap_xml,
)
from wsi_tools.errors import AnnotationError, ConfigError


def asap(annotations: str, groups: str = "") -> str:
    return (
        '<?xml version="1.0"?>\n<ASAP_Annotations>\n<Annotations>\n'
        f"{annotations}\n</Annotations>\n<AnnotationGroups>\n{groups}\n</AnnotationGroups>\n</ASAP_Annotations>\n"
    )


def annotation_xml(
    name: str, points: list[tuple[object, object]], kind: str = "Polygon", group: str = "None", orders=None
) -> str:
    orders = list(range(len(points))) if orders is None else orders
    coords = "".join(
        f'<Coordinate Order="{order}" X="{x}" Y="{y}" />'
        for order, (x, y) in zip(orders, points, strict=True)
    )
    return (
        f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">'
        f"<Coordinates>{coords}</Coordinates></Annotation>"
    )


def group_xml(name: str, parent: str = "None", color: str = "#FF0000") -> str:
    return f'<Group Name="{name}" PartOfGroup="{parent}" Color="{color}"><Attributes /></Group>'


def write(tmp_path: Path, text: str, name: str = "a.xml", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


SQUARE = [(0, 0), (100, 0), (100, 100), (0, 100)]


# --------------------------------------------------------------------------- real files


def test_camelyon17_has_three_tumor_polygons(real_data: Path) -> None:
    aset = read_asap_xml(real_data / "camelyon17-patient_004_node_4.xml")
    assert len(aset.annotations) == 3
    assert {a.group for a in aset.annotations} == {"Tumor"}
    assert all(a.type == "polygon" and isinstance(a.geometry, Polygon) for a in aset.annotations)
    assert all(a.geometry.is_valid and a.area > 0 for a in aset.annotations)
    assert aset.groups["Tumor"].color == "#FF0000" and aset.groups["Tumor"].parent is None
    assert aset.warnings == []
    first = aset.annotations[0].geometry
    assert first.exterior.coords[0] == pytest.approx((12711.2998, 88778.1016))


def test_camelyon16_self_intersection_is_repaired_and_reported(real_data: Path) -> None:
    path = real_data / "camelyon16-tumor_001.xml"
    aset = read_asap_xml(path)
    assert len(aset.annotations) == 2
    assert all(a.geometry.is_valid for a in aset.annotations)
    repairs = [w for w in aset.warnings if "make_valid" in w]
    assert len(repairs) == 1 and "'Annotation 1'" in repairs[0] and "Self-intersection" in repairs[0]
    # The repair keeps the outlined area: compare with a raster-free reference, the buffer(0) fix.
    raw = etree.parse(str(path)).getroot().findall("Annotations/Annotation")[1]
    vertices = sorted(
        (int(c.get("Order")), float(c.get("X")), float(c.get("Y"))) for c in raw.iter("Coordinate")
    )
    reference = Polygon([(x, y) for _, x, y in vertices])
    assert not reference.is_valid
    assert aset.annotations[1].area == pytest.approx(reference.buffer(0).area, rel=1e-3)


# --------------------------------------------------------------------------- hostile XML

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<ASAP_Annotations><Annotations>
<Annotation Name="&lol9;" Type="Polygon" PartOfGroup="None"><Coordinates>
<Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="1" Y="0" /><Coordinate Order="2" X="1" Y="1" />
</Coordinates></Annotation></Annotations></ASAP_Annotations>
"""


@pytest.mark.timeout(20)  # a guard against a hang, not a speed target
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_entity_bomb_is_refused_without_expansion(tmp_path: Path, encoding: str) -> None:
    text = (
        BILLION_LAUGHS
        if encoding == "utf-8"
        else BILLION_LAUGHS.replace('"1.0"?>', '"1.0" encoding="UTF-16"?>')
    )
    path = write(tmp_path, text, "bomb.xml", encoding)
    started = time.perf_counter()
    with pytest.raises(AnnotationError, match="entities") as caught:
        read_asap_xml(path)
    elapsed = time.perf_counter() - started
    assert str(path) in str(caught.value)
    # An expanded bomb would take seconds and gigabytes; record what it took.
    print(f"bomb ({encoding}) refused in {elapsed * 1000:.1f} ms")


def test_external_entity_is_never_read(tmp_path: Path) -> None:
    secret = write(tmp_path, "TOP-SECRET", "secret.txt")
    text = BILLION_LAUGHS.split("<!DOCTYPE")[0] + (
        f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
        + asap(annotation_xml("&xxe;", SQUARE)).split("\n", 1)[1]
    )
    path = write(tmp_path, text, "xxe.xml")
    with pytest.raises(AnnotationError, match="DOCTYPE") as caught:
        read_asap_xml(path)
    assert "TOP-SECRET" not in str(caught.value)


def test_doctype_without_entities_is_read(tmp_path: Path) -> None:
    text = asap(annotation_xml("a", SQUARE)).replace(
        "<ASAP_Annotations>", "<!DOCTYPE ASAP_Annotations>\n<ASAP_Annotations>", 1
    )
    assert len(read_asap_xml(write(tmp_path, text)).annotations) == 1


def test_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    text = asap(annotation_xml("a", SQUARE)).replace("</Annotations>", "</Annotation>", 1)
    path = write(tmp_path, text, "broken.xml")
    with pytest.raises(AnnotationError, match=r"malformed XML at line \d+") as caught:
        read_asap_xml(path)
    assert str(path) in str(caught.value)
    line = int(str(caught.value).split("at line ")[1].split(":")[0])
    assert "</Annotation>" in text.splitlines()[line - 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "malformed XML at line 1"),
        ("<svg><rect/></svg>", "not an ASAP annotation file"),
    ],
)
def test_not_asap_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(AnnotationError, match=message):
        read_asap_xml(path)


def test_empty_asap_file_reads_with_a_warning(tmp_path: Path) -> None:
    aset = read_asap_xml(write(tmp_path, "<ASAP_Annotations><Annotations/></ASAP_Annotations>"))
    assert aset.annotations == [] and aset.groups == {}
    assert aset.warnings == ["the file holds no Annotation elements"]


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="no such annotation file") as caught:
        read_asap_xml(tmp_path / "nope.xml")
    assert "nope.xml" in str(caught.value)


@pytest.mark.parametrize(
    ("coordinate", "message"),
    [
        ('<Coordinate Order="3" Y="4" />', "has no X attribute"),
        ('<Coordinate Order="3" X="abc" Y="4" />', "X='abc', which is not a number"),
        ('<Coordinate Order="3" X="nan" Y="4" />', "must be finite"),
    ],
)
def test_bad_coordinates_name_the_line(tmp_path: Path, coordinate: str, message: str) -> None:
    text = asap(annotation_xml("a", SQUARE[:3]).replace("</Coordinates>", coordinate + "</Coordinates>"))
    with pytest.raises(AnnotationError, match=message) as caught:
        read_asap_xml(write(tmp_path, text))
    assert "annotation 'a'" in str(caught.value) and "line" in str(caught.value)


def test_vertices_follow_order_not_file_order(tmp_path: Path) -> None:
    shuffled = [(100, 100), (0, 0), (0, 100), (100, 0)]
    orders = [2, 0, 3, 1]
    aset = read_asap_xml(write(tmp_path, asap(annotation_xml("s", shuffled, orders=orders))))
    polygon = aset.annotations[0].geometry
    assert list(polygon.exterior.coords)[:-1] == [(0, 0), (100, 0), (100, 100), (0, 100)]
    assert polygon.is_valid and polygon.area == 10000
    assert aset.warnings == []


def test_decimal_commas_are_accepted(tmp_path: Path) -> None:
    points = [("0,5", "1,25"), ("10,5", "1,25"), ("10,5", "11,75"), ("0,5", "11,75")]
    aset = read_asap_xml(write(tmp_path, asap(annotation_xml("c", points))))
    assert aset.annotations[0].geometry.bounds == (0.5, 1.25, 10.5, 11.75)
    assert aset.annotations[0].area == pytest.approx(105.0)


def test_nested_groups_keep_their_chain_and_cycles_are_cut(tmp_path: Path) -> None:
    groups = (
        group_xml("vessel 1", "LI_positive")
        + group_xml("LI_positive", "lesions", "#00FF00")
        + group_xml("lesions")
        + group_xml("loop a", "loop b")
        + group_xml("loop b", "loop a")
    )
    annotations = (
        annotation_xml("v", SQUARE, group="vessel 1")
        + annotation_xml("w", SQUARE, group="loop a")
        + annotation_xml("u", SQUARE, group="undeclared")
        + annotation_xml("n", SQUARE)
    )
    aset = read_asap_xml(write(tmp_path, asap(annotations, groups)))
    chains = {a.name: a.group_chain for a in aset.annotations}
    assert chains == {
        "v": ("vessel 1", "LI_positive", "lesions"),
        "w": ("loop a", "loop b"),
        "u": ("undeclared",),
        "n": (),
    }
    assert aset.annotations[3].group is None
    assert aset.groups["LI_positive"].color == "#00FF00" and aset.groups["vessel 1"].parent == "LI_positive"
    assert not aset.groups["undeclared"].declared
    assert any("cycle" in w and "loop a" in w for w in aset.warnings)


def test_self_intersecting_polygon_is_repaired(tmp_path: Path) -> None:
    bowtie = [(0, 0), (100, 100), (100, 0), (0, 100)]
    aset = read_asap_xml(write(tmp_path, asap(annotation_xml("bowtie", bowtie))))
    geometry = aset.annotations[0].geometry
    assert isinstance(geometry, MultiPolygon) and geometry.is_valid
    assert len(geometry.geoms) == 2 and geometry.area == pytest.approx(5000)
    assert any("'bowtie'" in w and "make_valid" in w and "2 part(s)" in w for w in aset.warnings)


def test_a_long_group_chain_and_a_big_cycle_read_in_linear_time(tmp_path: Path) -> None:
    """4,000 nested groups took minutes (the time was cubic in the chain), and a
    1,000-group cycle gave 1,000 warnings of 1,000 names each."""
    chain = "".join(group_xml(f"g{i}", f"g{i + 1}" if i < 3999 else "None") for i in range(4000))
    cycle = "".join(group_xml(f"c{i}", f"c{(i + 1) % 1000}") for i in range(1000))
    annotations = annotation_xml("deep", SQUARE, group="g0") + annotation_xml("loop", SQUARE, group="c0")
    started = time.perf_counter()
    aset = read_asap_xml(write(tmp_path, asap(annotations, chain + cycle)))
    assert time.perf_counter() - started < 5
    deep, loop = aset.annotations
    assert deep.group_chain[:3] == ("g0", "g1", "g2") and len(deep.group_chain) == 64
    assert len(loop.group_chain) == 64  # cut at the depth limit, not at 1,000 names
    assert len(aset.warnings) == 1 and "deeper than 64" in aset.warnings[0]
    assert len(aset.warnings[0]) < 300


def test_a_small_cycle_is_one_short_warning(tmp_path: Path) -> None:
    groups = "".join(group_xml(f"c{i}", f"c{(i + 1) % 10}") for i in range(10))
    annotations = "".join(annotation_xml(f"a{i}", SQUARE, group=f"c{i}") for i in range(10))
    aset = read_asap_xml(write(tmp_path, asap(annotations, groups)))
    assert all(len(a.group_chain) == 10 for a in aset.annotations)
    (warning,) = aset.warnings
    assert "10 group(s) form a cycle" in warning and "and 7 more" in warning


def _random_polygon(n: int, seed: int) -> list[tuple[float, float]]:
    import random

    rng = random.Random(seed)
    return [(round(rng.uniform(0, 10_000), 1), round(rng.uniform(0, 10_000), 1)) for _ in range(n)]


def test_polygon_repair_is_bounded(tmp_path: Path) -> None:
    """A 2,000-vertex scribble hung make_valid; 20,000 ended in std::bad_alloc."""
    for n in (2_000, 20_000):
        started = time.perf_counter()
        with pytest.raises(
            AnnotationError, match=r"a\.xml: annotation 'scribble'.*cross each other more than"
        ):
            read_asap_xml(write(tmp_path, asap(annotation_xml("scribble", _random_polygon(n, n)))))
        assert time.perf_counter() - started < 10
    with pytest.raises(AnnotationError, match="limited to 20000 vertices"):
        read_asap_xml(write(tmp_path, asap(annotation_xml("huge", _random_polygon(20_001, 1)))))
    # Between the bounds, the structure method repairs it in well under a second.
    started = time.perf_counter()
    aset = read_asap_xml(write(tmp_path, asap(annotation_xml("tangle", _random_polygon(60, 3)))))
    assert time.perf_counter() - started < 5
    geometry = aset.annotations[0].geometry
    assert geometry.is_valid and geometry.area > 0
    assert any("structure method" in w for w in aset.warnings)


def test_coordinates_beyond_any_slide_are_refused(tmp_path: Path) -> None:
    """1e308 made areas inf and `annotations --json` print Infinity (invalid JSON)."""
    points = [(0, 0), ("1e308", 0), ("1e308", "1e308"), (0, "1e308")]
    with pytest.raises(AnnotationError, match="X='1e308', beyond any slide"):
        read_asap_xml(write(tmp_path, asap(annotation_xml("far", points))))


def test_every_asap_type(tmp_path: Path) -> None:
    annotations = "".join(
        [
            annotation_xml("poly", SQUARE, "Polygon"),
            annotation_xml("spline", [(0, 0), (50, -20), (100, 0), (50, 80)], "Spline"),
            annotation_xml("rect", [(10, 10), (30, 10), (30, 40), (10, 40)], "Rectangle"),
            annotation_xml("rect2", [(10, 10), (30, 40)], "Rectangle"),
            annotation_xml("dot", [(5, 6)], "Dot"),
            annotation_xml("points", [(1, 2), (3, 4), (5, 6)], "PointSet"),
            annotation_xml("ruler", [(0, 0), (10, 0)], "Measurement"),
            annotation_xml("nothing", [(0, 0)], "None"),
            annotation_xml("weird", SQUARE, "Ellipse"),
        ]
    )
    aset = read_asap_xml(write(tmp_path, asap(annotations)))
    by_name = {a.name: a for a in aset.annotations}
    assert list(by_name) == ["poly", "spline", "rect", "rect2", "dot", "points"]
    assert [a.type for a in aset.annotations] == [
        "polygon",
        "spline",
        "rectangle",
        "rectangle",
        "dot",
        "pointset",
    ]
    # Spline: control points are the vertices, no interpolation.
    assert list(by_name["spline"].geometry.exterior.coords)[:-1] == [(0, 0), (50, -20), (100, 0), (50, 80)]
    assert by_name["rect"].area == 600 and by_name["rect2"].geometry.equals(box(10, 10, 30, 40))
    assert by_name["dot"].geometry.equals(Point(5, 6))
    assert isinstance(by_name["points"].geometry, MultiPoint) and len(by_name["points"].geometry.geoms) == 3
    skipped = "\n".join(aset.warnings)
    assert "'ruler'" in skipped and "Measurement" in skipped
    assert "'nothing'" in skipped and "type None" in skipped
    assert "'weird'" in skipped and "unknown type 'Ellipse'" in skipped


def test_degenerate_annotations_are_reported_and_dropped(tmp_path: Path) -> None:
    annotations = "".join(
        [
            annotation_xml("two", [(0, 0), (5, 5)]),
            annotation_xml("repeated", [(0, 0), (5, 5), (0, 0), (5, 5)]),
            annotation_xml("line", [(0, 0), (5, 5), (10, 10)]),
            annotation_xml("empty", []),
            annotation_xml("ok", SQUARE),
        ]
    )
    aset = read_asap_xml(write(tmp_path, asap(annotations)))
    assert [a.name for a in aset.annotations] == ["ok"]
    text = "\n".join(aset.warnings)
    for name in ("two", "repeated", "line", "empty"):
        assert f"'{name}'" in text
    assert "zero area" in text and "2 distinct vertices" in text and "no coordinates" in text


def test_annotations_outside_the_slide_are_reported(tmp_path: Path) -> None:
    annotations = (
        annotation_xml("inside", SQUARE)
        + annotation_xml("across", [(900, 900), (1100, 900), (1100, 1100), (900, 1100)])
        + annotation_xml("beyond", [(2000, 2000), (2100, 2000), (2100, 2100)])
    )
    path = write(tmp_path, asap(annotations))
    aset = read_asap_xml(path, slide_dimensions=(1000, 1000))
    assert len(aset.annotations) == 3  # reported, not dropped
    assert len(aset.warnings) == 2
    assert any("'across' extends beyond the slide (1000x1000" in w for w in aset.warnings)
    assert any("'beyond' lies entirely outside the slide" in w for w in aset.warnings)
    assert read_asap_xml(path).warnings == []


# --------------------------------------------------------------------------- label maps


def labelled_file(tmp_path: Path) -> Path:
    groups = group_xml("vessel 1", "LI_Positive") + group_xml("LI_Positive") + group_xml("Negative", "li+")
    annotations = (
        annotation_xml("pos", SQUARE, group="vessel 1")
        + annotation_xml("neg", [(200, 0), (300, 0), (300, 100), (200, 100)], group="Negative")
        + annotation_xml("li-", [(400, 0), (500, 0), (500, 100)], group="li-")
        + annotation_xml("hole", [(25, 25), (75, 25), (75, 75), (25, 75)], group="Artefact")
        + annotation_xml("gone", [(410, 0), (420, 0), (420, 5)], group="neg inside artefact")
        + annotation_xml("blob", [(390, -10), (510, -10), (510, 110), (390, 110)], group="Artefact")
        + annotation_xml("dot", [(50, 50)], "Dot", group="LI+")
        + annotation_xml("dot2", [(150, 50)], "Dot", group="LI+")
    )
    return write(tmp_path, asap(annotations, groups + group_xml("neg inside artefact", "LI_NEGATIVE")))


def test_default_label_map() -> None:
    label_map = load_label_map()
    assert label_map.source == str(DEFAULT_LABEL_MAP)
    assert {name: label_map.match((name,)).label for name in ("LI_positive", "li+", "POSITIVE")} == {
        "LI_positive": 1,
        "li+": 1,
        "POSITIVE": 1,
    }
    assert {label_map.match((name,)).label for name in ("LI_negative", "LI-", "Negative")} == {0}
    assert label_map.match(("Tumor",)) is None and label_map.exclude == frozenset()


def test_labels_follow_the_group_chain_and_exclusion_is_cut_out(tmp_path: Path) -> None:
    aset = read_asap_xml(labelled_file(tmp_path))
    label_map = LabelMap(
        labels={**load_label_map().labels}, exclude=frozenset({"artefact"}), source="test map"
    )
    labeled = label_annotations(aset, label_map)
    labels = {a.name: a.label for a in labeled.labeled}
    # vessel 1 -> LI_Positive (parent); Negative is itself in the map, so its parent li+ does not count.
    assert labels == {"pos": 1, "neg": 0, "dot2": 1}
    assert [a.name for a in labeled.positives] == ["pos", "dot2"]
    assert [a.name for a in labeled.negatives] == ["neg"]
    assert [a.name for a in labeled.excluded] == ["hole", "blob"]
    assert labeled.excluded_geometry.area == pytest.approx(2500 + 120 * 120)
    pos = next(a for a in labeled.labeled if a.name == "pos")
    assert pos.area == pytest.approx(10000 - 2500) and pos.geometry.is_valid
    assert not pos.geometry.intersects(box(26, 26, 74, 74))
    dropped = "\n".join(labeled.warnings)
    assert "'li-' lies entirely in excluded areas" in dropped and "'gone'" in dropped
    assert "'dot' lies entirely in excluded areas" in dropped  # a point inside an excluded area
    assert labeled.positive_region.area == pytest.approx(7500)
    assert labeled.unknown_groups == []


def test_unknown_groups_are_all_listed(tmp_path: Path) -> None:
    annotations = (
        annotation_xml("a", SQUARE, group="Tumor")
        + annotation_xml("b", SQUARE, group="Stroma")
        + annotation_xml("c", SQUARE, group="LI+")
        + annotation_xml("d", SQUARE)
    )
    path = write(tmp_path, asap(annotations))
    aset = read_asap_xml(path)
    with pytest.raises(AnnotationError) as caught:
        label_annotations(aset, load_label_map())
    message = str(caught.value)
    assert (
        str(path) in message and "'Tumor'" in message and "'Stroma'" in message and "'<no group>'" in message
    )
    assert "3 annotation(s)" in message and "ignore" in message
    labeled = label_annotations(aset, load_label_map(), ignore_unknown=True)
    assert [a.name for a in labeled.labeled] == ["c"]
    assert [a.name for a in labeled.unlabelled] == ["a", "b", "d"]
    assert labeled.unknown_groups == ["<no group>", "Stroma", "Tumor"]


def test_named_label_map_and_summary(real_data: Path) -> None:
    aset = read_asap_xml(real_data / "camelyon17-patient_004_node_4.xml")
    label_map = load_label_map("camelyon")
    assert label_map.match(("_2",)).excluded
    summary = summarize(aset, label_annotations(aset, label_map))
    total = sum(a.area for a in aset.annotations)
    assert summary["groups"]["Tumor"]["count"] == 3 and summary["groups"]["Tumor"][
        "area_px2"
    ] == pytest.approx(total)
    assert summary["labels"]["1"]["count"] == 3 and summary["labels"]["1"]["area_px2"] == pytest.approx(total)
    assert summary["unlabelled"]["count"] == 0 and summary["unknown_groups"] == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("exclude: [a]\n", "needs a `labels:` mapping"),
        ("labels: {}\n", "needs a `labels:` mapping"),
        ("labels: [a, b]\n", "needs a `labels:` mapping"),
        ("labels: {a: one}\n", "label of group 'a' must be an integer, got 'one'"),
        ("labels: {a: 1.5}\n", "must be an integer"),
        ("labels: {a: true}\n", "must be an integer"),
        ("labels: {a: 300}\n", "outside 0..127"),
        ("labels: {1: 1}\n", "is not text; quote it"),
        ("labels: {a: 1}\nexlude: [b]\n", "unknown keys exlude"),
        ("labels: {a: 1}\nexclude: b\n", "must be a list"),
        ("labels: {a: 1, A: 0}\n", "labels 1 and 0"),
        ("labels: {a: 1}\nexclude: [A]\n", "both labelled and excluded"),
        ("labels: {a: 1\n  b: [\n", "invalid YAML at line"),
    ],
)
def test_bad_label_maps_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path, content, "map.yaml")
    with pytest.raises(ConfigError, match=message) as caught:
        load_label_map(path)
    assert str(path) in str(caught.value)


def test_missing_label_map_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lymphatic_invasion") as caught:
        load_label_map(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(caught.value)


# --------------------------------------------------------------------------- writing


def vertices(geometry) -> list[list[tuple[float, float]]]:
    return [
        list(part.exterior.coords) if part.geom_type == "Polygon" else list(part.coords)
        for part in shapely.get_parts(geometry)
    ]


def test_round_trip_keeps_geometry_types_and_groups(tmp_path: Path) -> None:
    groups = group_xml("vessel", "LI_positive", "#123456") + group_xml("LI_positive", "None", "#ABCDEF")
    annotations = "".join(
        [
            annotation_xml("poly", [(0.1, 0.2), (1e5 + 0.123456789, 3), (7, 88888.5)], group="vessel"),
            annotation_xml("spline", [(0, 0), (50, -20), (100, 0), (50, 80)], "Spline", group="LI_positive"),
            annotation_xml("rect", [(10, 10), (30, 10), (30, 40), (10, 40)], "Rectangle"),
            annotation_xml("dot", [(5.5, 6.25)], "Dot", group="vessel"),
            annotation_xml("points", [(1, 2), (3, 4)], "PointSet", group="free"),
        ]
    )
    original = read_asap_xml(write(tmp_path, asap(annotations, groups)))
    out = write_asap_xml(original.annotations, tmp_path / "out" / "round.xml", groups=original.group_colors())
    again = read_asap_xml(out)
    assert again.warnings == []
    assert len(again.annotations) == len(original.annotations)
    for before, after in zip(original.annotations, again.annotations, strict=True):
        assert (after.name, after.type, after.group, after.group_chain) == (
            before.name,
            before.type,
            before.group,
            before.group_chain,
        )
        assert vertices(after.geometry) == vertices(before.geometry)  # exact floats
        assert after.area == before.area
    assert again.groups["vessel"].color == "#123456" and again.groups["LI_positive"].color == "#ABCDEF"
    assert all(group.declared for group in again.groups.values())
    # The file itself: every group used is declared, coordinates carry Order.
    root = etree.parse(str(out)).getroot()
    declared = {g.get("Name") for g in root.iterfind("AnnotationGroups/Group")}
    used = {a.get("PartOfGroup") for a in root.iterfind("Annotations/Annotation")} - {"None"}
    assert used <= declared and declared == {"vessel", "LI_positive", "free"}
    assert all(c.get("Order") is not None for c in root.iter("Coordinate"))
    assert all(a.get("Color") for a in root.iter("Annotation")) and all(
        g.get("Color") for g in root.iter("Group")
    )


def test_round_trip_of_real_file_keeps_area(real_data: Path, tmp_path: Path) -> None:
    original = read_asap_xml(real_data / "camelyon16-tumor_001.xml")
    again = read_asap_xml(write_asap_xml(original.annotations, tmp_path / "c16.xml"))
    assert again.warnings == []  # the repaired polygon is written valid
    assert [a.area for a in again.annotations] == [a.area for a in original.annotations]
    assert all(a.geometry.equals(b.geometry) for a, b in zip(original, again, strict=True))


def test_write_splits_multipolygons_and_warns_about_holes(tmp_path: Path) -> None:
    two = MultiPolygon([box(0, 0, 10, 10), box(20, 0, 30, 10)])
    holed = box(0, 0, 100, 100).difference(box(40, 40, 60, 60))
    annotations = [
        Annotation("two", "polygon", "g", ("g",), two),
        Annotation("holed", "polygon", None, (), holed),
    ]
    with pytest.warns(UserWarning, match="'holed' has holes"):
        out = write_asap_xml(annotations, tmp_path / "w.xml")
    again = read_asap_xml(out)
    assert [a.name for a in again.annotations] == ["two part 1", "two part 2", "holed"]
    assert shapely.union_all([a.geometry for a in again.annotations[:2]]).equals(two)
    assert again.annotations[2].area == 10000


def test_write_refuses_what_asap_cannot_hold(tmp_path: Path) -> None:
    line = Annotation("line", "polygon", None, (), shapely.LineString([(0, 0), (1, 1)]))
    with pytest.raises(AnnotationError, match="LineString"):
        write_asap_xml([line], tmp_path / "x.xml")
    named_none = Annotation("a", "polygon", "None", ("None",), box(0, 0, 1, 1))
    with pytest.raises(AnnotationError, match="rename it"):
        write_asap_xml([named_none], tmp_path / "y.xml")
    assert not (tmp_path / "x.xml").exists() and not (tmp_path / "y.xml").exists()


def test_declared_extra_groups_are_written(tmp_path: Path) -> None:
    annotations = [Annotation("a", "dot", "LI+", ("LI+",), Point(1, 1), color="#000000")]
    out = write_asap_xml(annotations, tmp_path / "g.xml", groups={"LI-": "#00FF00"})
    again = read_asap_xml(out)
    assert set(again.groups) == {"LI+", "LI-"} and again.groups["LI-"].color == "#00FF00"
    assert again.annotations[0].color == "#000000"
    assert math.isclose(again.annotations[0].geometry.x, 1.0)


def test_written_annotations_get_the_permissions_of_any_new_file(tmp_path: Path) -> None:
    """A run's XML and GeoJSON are read by colleagues and viewers: not private (0600) files."""
    import os

    from wsi_tools.annotations import Annotation, write_qupath_geojson

    region = Annotation("r", "Polygon", "tumor", ("tumor",), box(0, 0, 10, 10), "#FF0000")
    previous = os.umask(0o022)
    try:
        paths = [write_asap_xml([region], tmp_path / "a.xml"), tmp_path / "a.geojson"]
        write_qupath_geojson([region], paths[1])
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    assert {path.stat().st_mode & 0o777 for path in [*paths, tmp_path / "plain.txt"]} == {0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson", "a.xml", "plain.txt"]  # no temporaries
