"""Patch- and slide-level metrics with scikit-learn, and seeded bootstrap CIs.

The traps this module avoids:

- AUPRC is ``average_precision_score`` of the positive class, not an average
  over both classes;
- F1 is ``f1_score(pos_label=1)`` at the threshold, not accuracy;
- a probability equal to the threshold counts as positive (``prob >= t``);
- a bootstrap resample with one class has no AUROC/AUPRC (or no sensitivity /
  specificity); such resamples are left out of that metric's CI, and counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)

METRIC_NAMES = ("auroc", "auprc", "f1", "sensitivity", "specificity", "log_loss")
PROB_EPS = 1e-7


def _all_metrics(y: np.ndarray, p: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """One pass of every metric (NaN where undefined); one confusion matrix for both rates."""
    both_classes = 0 < y.sum() < len(y)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "auroc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "auprc": float(average_precision_score(y, p, pos_label=1)) if both_classes else float("nan"),
        "f1": float(f1_score(y, pred, pos_label=1, labels=[0, 1], zero_division=0.0)),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "log_loss": float(log_loss(y, np.clip(p, PROB_EPS, 1 - PROB_EPS), labels=[0, 1])),
    }


def _clean(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def point_metrics(
    labels: Sequence[int], probs: Sequence[float], threshold: float = 0.1
) -> dict[str, float | None]:
    """Each metric once; ``None`` where it is undefined (e.g. AUROC with one class)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    pred = (p >= threshold).astype(np.int64)
    return {name: _clean(value) for name, value in _all_metrics(y, p, pred).items()}


def compute_metrics(
    labels: ArrayLike,
    probs: ArrayLike,
    threshold: float = 0.1,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """Metrics at ``threshold`` with bootstrap 95% CIs (percentile, ``n_bootstrap`` seeded resamples).

    Returns ``{"auroc": {"value": v, "ci95": [lo, hi]}, ..., "threshold": t,
    "n": N, "n_positive": P, "confusion": {...}, "bootstrap": {...}}``; a value or
    bound is ``None`` where undefined.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and probs must be 1-d of the same length, got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError("no predictions to score")
    pred = (p >= threshold).astype(np.int64)
    point = {name: _clean(value) for name, value in _all_metrics(y, p, pred).items()}
    samples: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(n_bootstrap):
                idx = rng.integers(0, len(y), len(y))
                for name, value in _all_metrics(y[idx], p[idx], pred[idx]).items():
                    if np.isfinite(value):
                        samples[name].append(value)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    result: dict[str, object] = {}
    for name in METRIC_NAMES:
        values = samples[name]
        ci = (
            [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
            if values
            else [None, None]
        )
        result[name] = {"value": point[name], "ci95": ci}
    result["threshold"] = float(threshold)
    result["n"] = int(len(y))
    result["n_positive"] = int(y.sum())
    result["confusion"] = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    result["bootstrap"] = {
        "resamples": int(n_bootstrap),
        "seed": int(seed),
        "valid": {name: len(samples[name]) for name in METRIC_NAMES},
    }
    return result


def slide_scores(
    slide_ids: ArrayLike, labels: ArrayLike, probs: ArrayLike
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per slide: label = any positive patch, score = the maximum patch probability."""
    ids = np.asarray(slide_ids, dtype=object)
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    order = sorted(set(ids.tolist()))
    slide_label = np.array([int(y[ids == s].max()) for s in order], dtype=np.int64)
    slide_prob = np.array([float(p[ids == s].max()) for s in order], dtype=np.float64)
    return order, slide_label, slide_prob
