"""Training the patch classifier from the zarr store (issue 5).

Public API (re-exported lazily, so ``import wsi_tools.train.config`` needs no torch):

- :class:`TrainConfig`, :func:`load_config` (``config.py``);
- :class:`PatchRef`, :class:`PatchTable`, :class:`PatchDataset`, :func:`select_patches`
  (``data.py``);
- :func:`train` -> :class:`TrainResult`, :func:`load_model`, :func:`predict`,
  :func:`embed_patches`, :func:`evaluate`, :func:`read_checkpoint`, :func:`build_splits`,
  :func:`split_table` (``trainer.py``);
- :func:`compute_metrics` (``metrics.py``), :func:`make_splits` (``splits.py``),
  :func:`build_model` / ``model.embed(x) -> (B, 512)`` (``model.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "load_config": "config",
    "PatchRef": "data",
    "PatchTable": "data",
    "PatchDataset": "data",
    "select_patches": "data",
    "TrainResult": "trainer",
    "train": "trainer",
    "load_model": "trainer",
    "predict": "trainer",
    "embed_patches": "trainer",
    "evaluate": "trainer",
    "read_checkpoint": "trainer",
    "build_splits": "trainer",
    "split_table": "trainer",
    "compute_metrics": "metrics",
    "make_splits": "splits",
    "read_splits_csv": "splits",
    "build_model": "model",
    "PatchClassifier": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_tools.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wsi_tools.train.{module}"), name)
