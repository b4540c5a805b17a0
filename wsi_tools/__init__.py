"""wsi-tools: Aperio WSIs and annotations to a zarr patch store, training and hard negative mining.

The public API is the names in ``__all__``; each loads its module on first use, so
``import wsi_tools`` stays fast and needs neither torch nor dask until a name that
uses them is touched. Anything not listed here is internal and may change.

    import wsi_tools as wt

    with wt.open_slide("slide.svs") as slide:            # reading at a physical resolution
        patch, plan = slide.read(0, 0, 512, target_mpp=2.0)
    wt.extract_slide("slide.svs", "store.zarr", wt.ExtractionConfig(set="weak"))
    result = wt.train(wt.load_config("configs/train.yaml"), "store.zarr", "runs/weak")
    mined = wt.run_mining(result.best_checkpoint, "store.zarr", "runs/mine", wt.MiningConfig())
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from wsi_tools.errors import (  # noqa: E402
    AnnotationError,
    ConfigError,
    MissingMppError,
    ModelError,
    SlideReadError,
    SplitLeakError,
    StoreError,
    UnsupportedSlideError,
    WsiToolsError,
)

# name -> module that defines it
_LAZY: dict[str, str] = {
    # slides, tissue, annotations
    "open_slide": "wsi_tools.slide",
    "Slide": "wsi_tools.slide",
    "check_slide": "wsi_tools.slide",
    "SlideCheck": "wsi_tools.slide",
    "detect_tissue": "wsi_tools.tissue",
    "TissueMask": "wsi_tools.tissue",
    "Annotation": "wsi_tools.annotations",
    "read_asap_xml": "wsi_tools.annotations",
    "read_annotations": "wsi_tools.annotations",
    "read_qupath_geojson": "wsi_tools.annotations",
    "write_asap_xml": "wsi_tools.annotations",
    "load_label_map": "wsi_tools.annotations",
    "label_annotations": "wsi_tools.annotations",
    # the store, extraction, export, batch
    "PatchStore": "wsi_tools.store",
    "ExtractionConfig": "wsi_tools.extract",
    "extract_slide": "wsi_tools.extract",
    "export_png": "wsi_tools.export",
    "import_png": "wsi_tools.export",
    "read_manifest": "wsi_tools.batch.manifest",
    "build_manifest": "wsi_tools.batch.manifest",
    "run_batch": "wsi_tools.batch.engine",
    "load_settings": "wsi_tools.batch.settings",
    # training, evaluation, prediction, embedding
    "TrainConfig": "wsi_tools.train.config",
    "load_config": "wsi_tools.train.config",
    "train": "wsi_tools.train.trainer",
    "evaluate": "wsi_tools.train.evaluation",
    "predict": "wsi_tools.train.inference",
    "embed_patches": "wsi_tools.train.inference",
    "load_model": "wsi_tools.train.inference",
    "compute_metrics": "wsi_tools.train.metrics",
    # whole slides
    "PredictConfig": "wsi_tools.predict",
    "Predictor": "wsi_tools.predict",
    # mining and the pipeline
    "MiningConfig": "wsi_tools.mining.mine",
    "run_mining": "wsi_tools.mining.mine",
    "knn_search": "wsi_tools.mining.knn",
    "HnmConfig": "wsi_tools.pipelines.hnm",
    "load_hnm_config": "wsi_tools.pipelines.hnm",
    "run_pipeline": "wsi_tools.pipelines.hnm",
}

__all__ = [
    "__version__",
    "AnnotationError",
    "ConfigError",
    "MissingMppError",
    "ModelError",
    "SlideReadError",
    "SplitLeakError",
    "StoreError",
    "UnsupportedSlideError",
    "WsiToolsError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_tools' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
