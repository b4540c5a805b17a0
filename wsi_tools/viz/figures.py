"""Pictures of the mining pipeline: t-SNE, Grad-CAM and the mined-patch gallery.

Everything is written as PNG on matplotlib's Agg canvas (no pyplot state, no backend switched\non import, no display).
Images are uint8 RGB (H, W, 3) patches as stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import torch

# Patch categories of the t-SNE, in drawing order (mined on top).
CATEGORY_COLORS: dict[str, str] = {
    "TN": "#9ecae1",
    "FN": "#fdae6b",
    "TP": "#d62728",
    "FP": "#2ca02c",
    "mined": "#6a3d9a",
}


def _subplots(n_rows: int, n_cols: int, *, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure on its own Agg canvas and a 2-d array of its axes."""
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, np.asarray(figure.subplots(n_rows, n_cols, squeeze=False))


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _save_image_grid(figure: Figure, axes: np.ndarray, path: str | Path, empty_message: str | None) -> Path:
    """Hide the axes of an image grid, say why it is empty if it is, and save it."""
    for axis in axes.ravel():
        axis.axis("off")
    if empty_message:
        axes[0, 0].text(0.5, 0.5, empty_message, ha="center", va="center")
    return _save(figure, path)


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of (N, D) features (perplexity kept below N)."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(features, dtype=np.float32)
    )


def choose_rows(categories: ArrayLike, max_points: int, seed: int = 0) -> np.ndarray:
    """Rows to show when there are too many: every FP and mined patch (then TP)
    first, a seeded random sample of the rest."""
    kinds = np.asarray(categories, dtype=object)
    rows = np.arange(len(kinds))
    if len(rows) <= max_points:
        return rows
    order = {"FP": 0, "mined": 1, "TP": 2}
    rare = np.asarray(
        sorted(rows[np.isin(kinds, list(order))].tolist(), key=lambda r: order[str(kinds[r])]), dtype=np.int64
    )
    rare = rare[:max_points]
    common = np.setdiff1d(rows, rare)
    room = min(max_points - len(rare), len(common))
    sample = np.random.default_rng(seed).choice(common, room, replace=False) if room > 0 else np.empty(0, int)
    return np.sort(np.concatenate([rare, np.asarray(sample, dtype=int)]))


def plot_tsne(
    embeddings: Mapping[str, np.ndarray],
    categories: Sequence[str],
    path: str | Path,
    *,
    max_points: int = 2000,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """One t-SNE panel per model (e.g. weak, strong), side by side, the same
    patches in each, coloured by category (TP, TN, FP, FN, mined)."""
    kinds = np.asarray(categories, dtype=object)
    rows = choose_rows(kinds, max_points, seed)
    figure, axes = _subplots(1, len(embeddings), figsize=(6 * len(embeddings), 5.5))
    for axis, (name, features) in zip(axes[0], embeddings.items(), strict=True):
        points = tsne_2d(np.asarray(features)[rows], seed=seed)
        for category, color in CATEGORY_COLORS.items():
            chosen = kinds[rows] == category
            if chosen.any():
                size = 10 if category in ("TN", "FN") else 18
                axis.scatter(
                    points[chosen, 0],
                    points[chosen, 1],
                    s=size,
                    c=color,
                    label=f"{category} ({int(chosen.sum())})",
                    alpha=0.8,
                    linewidths=0,
                )
        axis.set_title(f"{name} model embeddings (t-SNE)")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(loc="best", fontsize=8, markerscale=1.5)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def grad_cam(
    model: torch.nn.Module,
    batch: torch.Tensor,
    target_layer: torch.nn.Module | None = None,
    *,
    per_image: bool = True,
) -> np.ndarray:
    """Grad-CAM maps (B, h, w) for the positive logit of a single-logit model,
    from forward/backward hooks on ``target_layer`` (default
    ``model.backbone.layer4``: 7 x 7 at a 224 px input, 2 x 2 at 64 px).
    ``batch`` is the normalised input. ``per_image``: each map min-max scaled to
    [0, 1] (where, not how much; a flat map gets zeros); otherwise the raw ReLU
    maps, comparable between images (a whole slide scales them once)."""
    import torch

    layer: torch.nn.Module = target_layer if target_layer is not None else getattr(model, "backbone").layer4  # noqa: B009
    saved: dict[str, torch.Tensor] = {}

    def keep_activation(_module, _inputs, output):
        saved["activation"] = output

    def keep_gradient(_module, _grad_input, grad_output):
        saved["gradient"] = grad_output[0]

    handles = [layer.register_forward_hook(keep_activation), layer.register_full_backward_hook(keep_gradient)]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = batch.detach().clone().requires_grad_(True)
            logits = model(x).reshape(len(x))
            model.zero_grad(set_to_none=True)
            logits.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    activation, gradient = saved["activation"].detach(), saved["gradient"].detach()
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # one weight per channel
    cam = torch.relu((weights * activation).sum(dim=1))
    if not per_image:
        return cam.float().cpu().numpy()
    # Min-max per image, as usual for Grad-CAM: the map shows where, not how much.
    low = cam.flatten(1).amin(dim=1)[:, None, None]
    high = cam.flatten(1).amax(dim=1)[:, None, None]
    return ((cam - low) / (high - low).clamp_min(1e-12)).float().cpu().numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A heat map (jet) over an RGB uint8 image; ``cam`` of any size, in [0, 1]."""
    import cv2

    heat = cv2.resize(
        cam.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR
    )
    colored = (matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colored * alpha).clip(0, 255).astype(np.uint8)


def plot_gradcam_grid(
    images: Sequence[np.ndarray],
    cams: Mapping[str, Sequence[np.ndarray]],
    probabilities: Mapping[str, Sequence[float]],
    row_titles: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Rows of patches: the patch, then one Grad-CAM overlay per model with its
    probability; one colour bar for all."""
    n_rows, n_cols = len(images), 1 + len(cams)
    figure, axes = _subplots(max(n_rows, 1), n_cols, figsize=(2.3 * n_cols + 0.8, 2.3 * max(n_rows, 1)))
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(row_titles[row], fontsize=8)
        for col, (name, maps) in enumerate(cams.items(), start=1):
            axes[row, col].imshow(overlay(image, maps[row]))
            axes[row, col].set_title(f"{name}: p={probabilities[name][row]:.2f}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    _gradcam_colour_bar(figure, axes)
    return _save_image_grid(figure, axes, path, empty_message=None if len(images) else "no patches to show")


def _gradcam_colour_bar(figure: Figure, axes: np.ndarray) -> None:
    """The colour bar of the overlays (jet, per-patch min-max Grad-CAM)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = figure.colorbar(
        ScalarMappable(Normalize(0, 1), cmap="jet"), ax=axes.ravel().tolist(), fraction=0.03, pad=0.02
    )
    bar.set_label("Grad-CAM (per window, min-max scaled)", fontsize=8)


def plot_gradcam_regions(
    images: Sequence[np.ndarray],
    cams: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    title: str,
) -> Path:
    """Each region: the tissue, then its Grad-CAM overlay; one colour bar for all."""
    n = max(len(images), 1)
    columns = min(n, 4)
    rows = -(-n // columns)
    figure, axes = _subplots(2 * rows, columns, figsize=(2.6 * columns + 0.8, 5.2 * rows))
    for index, (image, cam) in enumerate(zip(images, cams, strict=True)):
        row, column = 2 * (index // columns), index % columns
        axes[row, column].imshow(image)
        axes[row, column].set_title(titles[index], fontsize=7)
        axes[row + 1, column].imshow(overlay(image, cam))
    figure.suptitle(title, fontsize=9)
    _gradcam_colour_bar(figure, axes)
    return _save_image_grid(figure, axes, path, empty_message=None if len(images) else "no windows scored")


def plot_side_by_side(
    images: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, title: str
) -> Path:
    """Pictures in one row with a title each (e.g. two models' heatmaps of one slide)."""
    width = sum(image.shape[1] / image.shape[0] for image in images) * 6.0
    figure, axes = _subplots(1, max(len(images), 1), figsize=(max(width, 6.0), 6.6))
    for axis, image, caption in zip(axes[0], images, titles, strict=False):
        axis.imshow(image)
        axis.set_title(caption, fontsize=9)
    figure.suptitle(title, fontsize=10)
    return _save_image_grid(figure, axes, path, empty_message=None if len(images) else "nothing to show")


def plot_mined_gallery(
    queries: Sequence[np.ndarray],
    query_titles: Sequence[str],
    hits: Sequence[Sequence[np.ndarray]],
    hit_distances: Sequence[Sequence[float]],
    path: str | Path,
    hit_places: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
) -> Path:
    """One row per false positive: the query patch, then its nearest weak-set
    hits with their distances (and, given ``hit_places``, slide id and level-0
    coordinates under each)."""
    n_rows = max(len(queries), 1)
    n_cols = 1 + max((len(row) for row in hits), default=0)
    figure, axes = _subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.4 * n_rows))
    for row, query in enumerate(queries):
        axes[row, 0].imshow(query)
        axes[row, 0].set_title(query_titles[row], fontsize=7, color="#2ca02c")
        for col, (image, distance) in enumerate(zip(hits[row], hit_distances[row], strict=True), start=1):
            axes[row, col].imshow(image)
            place = f"\n{hit_places[row][col - 1]}" if hit_places is not None else ""
            axes[row, col].set_title(f"d={distance:.2f}{place}", fontsize=6)
    if title:
        figure.suptitle(title, fontsize=9)
    return _save_image_grid(figure, axes, path, empty_message=None if len(queries) else "no false positives")
