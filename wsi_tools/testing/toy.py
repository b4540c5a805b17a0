"""A tiny, separable patch store for tests and smoke runs of the trainer.

Patches look like H&E (pink textured stroma, purple nuclei, white gaps);
positives carry one large dark-purple blob, so a few epochs of a small model
separate them. Written through the store's own ``begin_slide/write/commit``,
like extraction does, without going through slides.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from wsi_tools.testing.synth import synthetic_tissue

# Training keys for a run of seconds on a toy store (tests and examples).
TOY_TRAIN_KEYS: dict[str, object] = {
    "epochs": 1,
    "input_size": 32,
    "batch_size": 16,
    "num_workers": 0,
    "bootstrap": 0,
    "augment": False,
    "progress": False,
}


def toy_patch(rng: np.random.Generator, size: int, positive: bool) -> np.ndarray:
    """One RGB uint8 (size, size, 3) patch; positives have a dark blob of ~1/4 the side."""
    seed = int(rng.integers(0, 2**31))
    patch = synthetic_tissue(size, size, seed=seed, tissue_fraction=float(rng.uniform(0.6, 0.95)))
    if positive:
        radius = int(rng.integers(size // 6, size // 4))
        centre = (int(rng.integers(radius, size - radius)), int(rng.integers(radius, size - radius)))
        cv2.circle(patch, centre, radius, (70, 30, 110), -1)
    return patch


def write_toy_store(
    store_path: str | Path,
    slides: Sequence[tuple[str, str, int, int]],
    patch_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``slides`` = ``(slide_id, set, n_patches, n_positive)`` into the store.

    Coordinates are a fake row-major grid; weak-set patches are all labelled 0.
    """
    from wsi_tools.store import PatchStore

    store = PatchStore(store_path, mode="a")
    for number, (slide_id, set_name, n_patches, n_positive) in enumerate(slides):
        rng = np.random.default_rng([seed, number])
        labels = np.zeros(n_patches, dtype=np.int8)
        labels[rng.choice(n_patches, n_positive, replace=False)] = 1
        images = np.stack([toy_patch(rng, patch_size, bool(label)) for label in labels])
        columns = 8
        coords = np.stack(
            [
                (np.arange(n_patches) % columns) * patch_size * 4,
                (np.arange(n_patches) // columns) * patch_size * 4,
            ],
            axis=1,
        ).astype(np.int64)
        attrs = {
            "set": set_name,
            "source": f"toy://{slide_id}",
            "fingerprint": f"toy-{seed}-{number}",
            "mpp": 0.5,
            "target_mpp": 2.0,
            "effective_mpp": 2.0,
            "patch_size": patch_size,
        }
        writer = store.begin_slide(slide_id, n_patches, patch_size, attrs)
        writer.write(0, images, coords, labels, np.ones(n_patches, dtype=np.float32))
        writer.commit({"counts": {"kept": n_patches, "positive": int(n_positive)}})
    return Path(store_path)
