"""Training the patch classifier from the zarr store (issue 5).

Public API (re-exported lazily, so ``import wsi_tools.train.config`` needs no torch):

- :class:`TrainConfig`, :func:`load_config` (``config.py``);
- :class:`PatchRef`, :class:`PatchTable`, :class:`PatchDataset`, :func:`select_patches`
  (``data.py``);
- :func:`train` -> :class:`TrainResult`, :func:`build_splits` (``trainer.py``, the
  orchestration); :func:`train_one_epoch`, :func:`bce_step` (``loop.py``, the epoch loop
  with the sampler and the step as parameters);
- :class:`Checkpoint`, :func:`read_checkpoint`, :func:`load_checkpoint` (``checkpoint.py``);
- :func:`load_model`, :func:`predict`, :func:`embed_patches`, :func:`score_patches`
  (``inference.py``, one scoring function for logits and embeddings);
- :func:`evaluate` and the run report (``evaluation.py``);
- :func:`split_table`, :func:`training_table` (``tables.py``, shared with the miner);
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
    "load_model": "inference",
    "predict": "inference",
    "embed_patches": "inference",
    "score_patches": "inference",
    "evaluate": "evaluation",
    "read_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "Checkpoint": "checkpoint",
    "build_splits": "trainer",
    "split_table": "tables",
    "training_table": "tables",
    "train_one_epoch": "loop",
    "bce_step": "loop",
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
