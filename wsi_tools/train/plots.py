"""ROC, precision-recall and loss curves as PNG (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

Curve = tuple[np.ndarray, np.ndarray]  # (labels, probs)


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(5, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    return path


def _operating_point(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(1 - specificity, sensitivity, precision) of ``probs >= threshold``."""
    predicted = np.asarray(probs) >= threshold
    positive = np.asarray(labels) == 1
    tp, fp = int((predicted & positive).sum()), int((predicted & ~positive).sum())
    sensitivity = tp / max(int(positive.sum()), 1)
    fpr = fp / max(int((~positive).sum()), 1)
    precision = tp / (tp + fp) if tp + fp else 1.0
    return fpr, sensitivity, precision


def plot_roc(
    curves: Mapping[str, Curve], path: str | Path, title: str = "ROC", threshold: float | None = None
) -> Path:
    """One ROC line per named (labels, probs) pair that has both classes; the
    decision threshold marked on each when given."""
    figure, axes = _figure()
    for name, (labels, probs) in curves.items():
        if len(set(np.asarray(labels).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probs)
        (line,) = axes.plot(fpr, tpr, label=f"{name} (AUROC {auc(fpr, tpr):.3f})")
        if threshold is not None:
            x, y, _ = _operating_point(np.asarray(labels), np.asarray(probs), threshold)
            axes.plot([x], [y], "o", color=line.get_color(), markersize=6)
            axes.annotate(f"t={threshold:g}", (x, y), textcoords="offset points", xytext=(6, -12), fontsize=7)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, Path(path))


def plot_pr(
    curves: Mapping[str, Curve],
    path: str | Path,
    title: str = "Precision-recall",
    threshold: float | None = None,
) -> Path:
    """Precision-recall of the positive class, with its prevalence as the chance line
    and the decision threshold marked when given."""
    figure, axes = _figure()
    for name, (labels, probs) in curves.items():
        labels = np.asarray(labels)
        if len(set(labels.tolist())) < 2:
            continue
        precision, recall, _ = precision_recall_curve(labels, probs, pos_label=1)
        ap = average_precision_score(labels, probs, pos_label=1)
        (line,) = axes.step(recall, precision, where="post", label=f"{name} (AUPRC {ap:.3f})")
        axes.axhline(labels.mean(), color=line.get_color(), linestyle=":", linewidth=1)
        if threshold is not None:
            _, sensitivity, point_precision = _operating_point(labels, np.asarray(probs), threshold)
            axes.plot([sensitivity], [point_precision], "o", color=line.get_color(), markersize=6)
            axes.annotate(
                f"t={threshold:g}", (sensitivity, point_precision), textcoords="offset points",
                xytext=(6, 4), fontsize=7,
            )  # fmt: skip
    axes.set(xlabel="recall (sensitivity)", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower left", fontsize=8)
    return _save(figure, Path(path))


def plot_loss(
    history: Sequence[Mapping[str, float]], path: str | Path, best_epoch: int | None = None
) -> Path:
    """Training and validation loss per epoch; the best epoch is marked."""
    figure, axes = _figure()
    epochs = [row["epoch"] for row in history]
    axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    val = [row.get("val_loss") for row in history]
    if any(v is not None for v in val):
        axes.plot(epochs, [np.nan if v is None else v for v in val], marker="o", label="validation")
    if best_epoch is not None:
        axes.axvline(
            best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})"
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(xlabel="epoch", ylabel="BCE loss", title="Training curve")
    axes.legend(fontsize=8)
    return _save(figure, Path(path))
