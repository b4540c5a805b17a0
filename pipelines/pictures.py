"""The pictures of one seed of the pipeline (t-SNE, Grad-CAM, mined gallery, and the
weak and strong models' heatmaps of the held-out weak slides side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsi_tools.viz import figures


def _coords_lookup(store: Any, slide_id: str, cache: dict[str, dict[tuple[int, int], int]]) -> dict:
    if slide_id not in cache:
        coords = np.asarray(store.coords(slide_id))
        cache[slide_id] = {(int(x), int(y)): i for i, (x, y) in enumerate(coords)}
    return cache[slide_id]


def _images(store: Any, refs: list[tuple[str, int]]) -> list[np.ndarray]:
    return [np.asarray(store.images(slide_id)[int(index)]) for slide_id, index in refs]


def tsne_figure(
    store_path: Path,
    store: Any,
    weak: Any,
    strong: Any,
    mining: Any,
    recipe: Any,
    figure_config: Any,
    path: Path,
    caption: str = "",
) -> Path:
    """Training patches of the weak model (TP/FN/TN/FP by its scores) and the
    mined weak patches, embedded by both models."""
    from wsi_tools.mining.mine import training_table
    from wsi_tools.train.checkpoint import read_checkpoint
    from wsi_tools.train.inference import embed_patches, load_model, predict

    weak_model, _ = load_model(weak.best_checkpoint)
    strong_model, _ = load_model(strong.best_checkpoint)
    training = training_table(store, read_checkpoint(weak.best_checkpoint), recipe)
    fp_keys = mining.false_positives.table.keys()
    refs = training.refs
    categories = np.empty(len(refs), dtype=object)
    negatives = training.labels == 0
    categories[negatives] = [
        "FP" if (ref.slide_id, ref.index) in fp_keys else "TN"
        for ref, neg in zip(refs, negatives, strict=True)
        if neg
    ]
    positive_rows = np.nonzero(~negatives)[0]
    if len(positive_rows):
        positive_probs = predict(weak_model, store_path, [refs[i] for i in positive_rows], recipe.batch_size)
        categories[positive_rows] = np.where(positive_probs >= recipe.threshold, "TP", "FN")
    refs = refs + mining.mined_refs
    categories = np.concatenate([categories, np.full(len(mining.mined_refs), "mined", dtype=object)])
    rows = figures.choose_rows(categories, figure_config.tsne_points)
    chosen = [refs[i] for i in rows]
    embeddings = {
        "weak": embed_patches(weak_model, store_path, chosen, recipe.batch_size),
        "strong": embed_patches(strong_model, store_path, chosen, recipe.batch_size),
    }
    title = _title(
        caption, "training-split patches, labelled by the weak model's scores, and the mined patches"
    )
    return figures.plot_tsne(embeddings, categories[rows], path, max_points=len(rows), title=title)


def gradcam_figure(
    store: Any,
    weak: Any,
    strong: Any,
    mining: Any,
    recipe: Any,
    figure_config: Any,
    path: Path,
    caption: str = "",
) -> Path:
    """False positives and true positives of the weak model with the Grad-CAM
    of both models: test-split false positives first, topped up with the
    training false positives that were mined from, then test true positives
    (a picture only: the test split never feeds training)."""
    import torch

    from wsi_tools.pipelines.report import read_test_rows
    from wsi_tools.train.augment import BatchTransform
    from wsi_tools.train.inference import load_model

    rows = read_test_rows(weak.run_dir)
    threshold = recipe.threshold
    n = figure_config.gradcam_patches
    false_pos = sorted((r for r in rows if r[3] == 0 and r[4] >= threshold), key=lambda r: -r[4])[:n]
    true_pos = sorted((r for r in rows if r[3] == 1 and r[4] >= threshold), key=lambda r: -r[4])[:n]
    fps = mining.false_positives
    train_fp = [
        (
            str(fps.table.slide_ids[q]),
            int(fps.table.coords[q, 0]),
            int(fps.table.coords[q, 1]),
            0,
            float(fps.probs[q]),
        )
        for q in np.argsort(-fps.probs)[: n - len(false_pos)]
    ]
    picked = (
        [("test FP", r) for r in false_pos]
        + [("train FP", r) for r in train_fp]
        + [("test TP", r) for r in true_pos]
    )
    lookups: dict[str, dict[tuple[int, int], int]] = {}
    refs = [(r[0], _coords_lookup(store, r[0], lookups)[(r[1], r[2])]) for _, r in picked]
    images = _images(store, refs)
    cams: dict[str, list[np.ndarray]] = {}
    probabilities: dict[str, list[float]] = {}
    if images:
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        for name, run in (("weak", weak), ("strong", strong)):
            model, _ = load_model(run.best_checkpoint)
            x = BatchTransform(model.input_size, augment=False)(batch)
            cams[name] = list(figures.grad_cam(model, x))
            with torch.no_grad():
                probabilities[name] = torch.sigmoid(model(x)).tolist()
    titles = [f"{kind} {r[0]}" for kind, r in picked]
    title = _title(
        caption, "Grad-CAM (layer4) of the weak and strong models on the weak model's FPs and test TPs"
    )
    return figures.plot_gradcam_grid(images, cams, probabilities, titles, path, title)


def seed_figures(
    store_path: Path,
    weak: Any,
    strong: Any,
    mining: Any,
    recipe: Any,
    figure_config: Any,
    out_dir: Path,
    suffix: str = "",
    metric: str = "l2",
    caption: str = "",
) -> dict[str, str]:
    """Write ``tsne.png``, ``gradcam.png`` and ``mined_gallery.png`` for one seed;
    ``caption`` (e.g. "seed 0") starts each picture's title."""
    from wsi_tools.train.data import open_store

    store = open_store(store_path)
    return {
        "tsne": str(
            tsne_figure(
                store_path,
                store,
                weak,
                strong,
                mining,
                recipe,
                figure_config,
                out_dir / f"tsne{suffix}.png",
                caption,
            )
        ),
        "gradcam": str(
            gradcam_figure(
                store, weak, strong, mining, recipe, figure_config, out_dir / f"gradcam{suffix}.png", caption
            )
        ),
        "mined_gallery": str(
            gallery_figure(
                store, mining, figure_config, metric, out_dir / f"mined_gallery{suffix}.png", caption
            )
        ),
    }


def gallery_figure(
    store: Any, mining: Any, figure_config: Any, metric: str, path: Path, caption: str = ""
) -> Path:
    """The highest-scoring false positives, each with its nearest weak patches."""
    fps = mining.false_positives
    order = np.argsort(-fps.probs)[: figure_config.gallery_queries]
    queries = _images(store, [(fps.table.slide_ids[q], fps.table.indices[q]) for q in order])
    titles = [
        f"FP p={fps.probs[q]:.2f}\n{fps.table.slide_ids[q]}\nx {fps.table.coords[q][0]}, y {fps.table.coords[q][1]}"
        for q in order
    ]
    hits, distances, places = [], [], []
    for q in order:
        rows = mining.neighbours.indices[q, : figure_config.gallery_hits]
        rows = rows[rows >= 0]
        values = mining.neighbours.distances[q, : len(rows)]
        distances.append(list(1.0 - values if metric == "cosine" else values))
        hits.append(_images(store, [(mining.pool.slide_ids[r], mining.pool.indices[r]) for r in rows]))
        places.append(
            [
                f"{mining.pool.slide_ids[r]}\nx {mining.pool.coords[r][0]}, y {mining.pool.coords[r][1]}"
                for r in rows
            ]
        )
    title = _title(
        caption,
        f"the weak model's top training FPs (left) and the weak-slide patches mined for them (d: {metric} distance)",
    )
    return figures.plot_mined_gallery(queries, titles, hits, distances, path, places, title)


def _title(caption: str, what: str) -> str:
    return f"{caption}: {what}" if caption else what


def holdout_heatmaps(
    store_path: Path,
    slide_ids: list[str],
    weak_checkpoint: Path,
    strong_checkpoint: Path,
    out_dir: Path,
    config: Any = None,
) -> dict[str, str]:
    """``heatmaps_<slide>.png`` per slide: both models applied to the whole slide
    (``wsi-tools predict``), side by side. On a held-out weak slide (a slide-level
    negative never mined) every window at or above the threshold is a false
    positive, so the ones mining removes show as a picture; test slides show the
    annotated tissue. Slides whose file is gone or changed are left out with a note."""
    from wsi_tools.export import read_rgb
    from wsi_tools.predict import PredictConfig, Predictor
    from wsi_tools.slide import file_fingerprint
    from wsi_tools.store import PatchStore

    store = PatchStore(store_path)
    usable = []
    for slide_id in slide_ids:
        attrs = store.slide_attrs(slide_id)
        source = Path(str(attrs.get("source") or ""))
        if source.is_file() and file_fingerprint(source) == attrs.get("fingerprint"):
            usable.append((slide_id, source, attrs))
        else:
            print(f"note: no heatmaps for {slide_id}: its slide file ({source}) is gone or changed")
    if not usable:
        return {}
    config = config or PredictConfig(progress=False)  # windows as the checkpoints were trained
    predictors = {"weak": Predictor(weak_checkpoint, config), "strong": Predictor(strong_checkpoint, config)}
    pictures = {}
    for slide_id, source, attrs in usable:
        images, titles = [], []
        weak_set = attrs.get("set") == "weak"
        for name, predictor in predictors.items():
            result = predictor.predict_slide(
                source, out_dir / "predict" / name, slide_id=slide_id, slide_mpp=attrs.get("mpp_override")
            )
            scores = result.scores
            images.append(read_rgb(result.out_dir / "heatmap.png"))
            titles.append(
                f"{name} model\n{scores['n_positive']} of {scores['n_tiles']} windows >= {predictor.threshold:g}"
                + (" (all false positives)" if weak_set else "")
                + f"\nslide score {scores['score_max']:.2f}"
            )
        what = "held-out weak slide (never mined)" if weak_set else "test slide (annotated)"
        pictures[slide_id] = str(
            figures.plot_side_by_side(
                images,
                titles,
                out_dir / f"heatmaps_{slide_id}.png",
                f"{what} {slide_id}: weak vs strong model",
            )
        )
    return pictures
