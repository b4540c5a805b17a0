"""QuPath GeoJSON in: wherever an ASAP XML is accepted, chosen by content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box

from wsi_tools.annotations import (
    Annotation,
    annotation_format,
    label_annotations,
    load_label_map,
    read_annotations,
    read_asap_xml,
    write_asap_xml,
    write_qupath_geojson,
)
from wsi_tools.cli import main
from wsi_tools.errors import AnnotationError
from wsi_tools.store import PatchStore


def feature(
    geometry: dict, classification: object = None, object_type: str = "annotation", **extra: object
) -> dict:
    properties: dict = {"objectType": object_type, **extra}
    if classification is not None:
        properties["classification"] = classification
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def square(x: float, y: float, size: float) -> list[list[float]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]


def write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_a_qupath_export_reads_with_holes_points_and_skips(tmp_path: Path) -> None:
    tumour = {"name": "Tumor", "color": [200, 0, 0]}
    document = {
        "type": "FeatureCollection",
        "features": [
            feature({"type": "Polygon", "coordinates": [square(0, 0, 100), square(25, 25, 50)]}, tumour),
            feature(
                {"type": "MultiPolygon", "coordinates": [[square(200, 0, 10)], [square(300, 0, 20)]]},
                {"name": "Stroma", "colorRGB": -16744448},  # QuPath <= 0.3 packs the colour
            ),
            feature({"type": "Point", "coordinates": [5, 5]}, "Tumor"),  # a string classification
            feature({"type": "Polygon", "coordinates": [square(0, 0, 10)]}, tumour, object_type="detection"),
            feature({"type": "Polygon", "coordinates": [square(0, 0, 10)]}),  # unclassified
            feature({"type": "LineString", "coordinates": [[0, 0], [10, 10]]}, tumour),
            feature({"type": "Polygon", "coordinates": [square(400, 0, 10)]}, None, name="Necrosis"),
        ],
    }
    aset = read_annotations(write(tmp_path / "export.geojson", document))
    by_group: dict[str, list[Annotation]] = {}
    for annotation in aset.annotations:
        by_group.setdefault(str(annotation.group), []).append(annotation)
    assert by_group["Tumor"][0].area == pytest.approx(100 * 100 - 50 * 50)  # the hole is kept
    assert by_group["Tumor"][0].color == "#C80000" and by_group["Tumor"][1].type == "dot"
    assert by_group["Stroma"][0].area == pytest.approx(100 + 400) and by_group["Stroma"][0].color == "#008000"
    assert by_group["Necrosis"][0].area == pytest.approx(100)
    warnings = " | ".join(aset.warnings)
    assert "skipped 1 detection(s), 1 unclassified annotation(s)" in warnings
    assert "LineString has no area" in warnings and "its name 'Necrosis' is used as the class" in warnings


def test_camelyon_xml_to_geojson_and_back_keeps_the_areas_per_label(real_data: Path, tmp_path: Path) -> None:
    label_map = load_label_map("camelyon")
    for name in ("camelyon16-tumor_001.xml", "camelyon17-patient_004_node_4.xml"):
        original = read_asap_xml(real_data / name)
        geojson = write_qupath_geojson(original.annotations, tmp_path / f"{name}.geojson")
        back = read_annotations(geojson)
        assert len(back.annotations) == len(original.annotations)
        before = label_annotations(original, label_map)
        after = label_annotations(back, label_map)
        for label in {a.label for a in before.labeled}:
            area = sum(a.area for a in before.labeled if a.label == label)
            assert sum(a.area for a in after.labeled if a.label == label) == pytest.approx(area, rel=1e-9)


def test_the_reader_is_chosen_by_content_not_suffix(real_data: Path, tmp_path: Path) -> None:
    xml_named_json = shutil.copy(real_data / "camelyon17-patient_004_node_4.xml", tmp_path / "a.json")
    geojson_named_xml = write(
        tmp_path / "b.xml", [feature({"type": "Point", "coordinates": [1, 2]}, "Tumor")]
    )
    assert annotation_format(Path(xml_named_json)) == "asap"
    assert annotation_format(geojson_named_xml) == "geojson"
    assert len(read_annotations(xml_named_json).annotations) == 3
    assert read_annotations(geojson_named_xml).annotations[0].type == "dot"
    (tmp_path / "c.txt").write_text("hello")
    with pytest.raises(AnnotationError, match="neither ASAP XML nor GeoJSON"):
        read_annotations(tmp_path / "c.txt")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "FeatureCollection", "features": [', "malformed GeoJSON at line 1, column 44"),
        (
            '{"type": "Feature", "geometry": {"type": "Point", "coordinates": [NaN, 1]}, "properties": {}}',
            "NaN",
        ),
        ('{"type": "Topology"}', "not a GeoJSON Feature or FeatureCollection"),
        ('[{"type": "Feature", "properties": {"classification": "T"}}]', "feature 0: no geometry"),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1e308, 0], [0, 1e308], [0, 0]]]},'
            ' "properties": {"classification": "T"}}]',
            "beyond any slide",
        ),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": 7}, "properties": {"classification": "T"}}]',
            "invalid Polygon geometry",
        ),
    ],
)
def test_bad_geojson_is_one_line_naming_the_file(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(text, encoding="utf-8")
    assert main(["annotations", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.geojson" in err and message in err, err


def test_invalid_polygons_are_repaired_and_big_files_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}
    aset = read_annotations(write(tmp_path / "bowtie.geojson", [feature(bowtie, "Tumor")]))
    assert aset.annotations[0].geometry.is_valid and aset.annotations[0].area == pytest.approx(5000)
    assert any("repaired with make_valid" in w for w in aset.warnings)
    import wsi_tools.annotations._geojson_reader as reader

    monkeypatch.setattr(reader, "MAX_GEOJSON_BYTES", 100)
    with pytest.raises(AnnotationError, match="bowtie.geojson: .* MiB is more than"):
        read_annotations(tmp_path / "bowtie.geojson")


def test_extract_from_geojson_equals_extract_from_the_same_xml(slide_x20: Path, tmp_path: Path) -> None:
    regions = [
        Annotation("pos", "polygon", "LI_positive", ("LI_positive",), box(1000, 1000, 1200, 1150)),
        Annotation("neg", "polygon", "LI_negative", ("LI_negative",), box(2400, 300, 2500, 400)),
    ]
    xml = write_asap_xml(regions, tmp_path / "case.xml")
    geojson = write_qupath_geojson(regions, tmp_path / "case.geojson")
    for source, store in ((xml, "x.zarr"), (geojson, "g.zarr")):
        args = ["extract", str(slide_x20), "--out", str(tmp_path / store), "--set", "hard"]
        assert main([*args, "--annotations", str(source), "--patch-size", "64"]) == 0
    from_xml, from_geojson = PatchStore(tmp_path / "x.zarr"), PatchStore(tmp_path / "g.zarr")
    assert np.array_equal(from_xml.coords("x20"), from_geojson.coords("x20"))
    assert np.array_equal(from_xml.labels("x20"), from_geojson.labels("x20"))
