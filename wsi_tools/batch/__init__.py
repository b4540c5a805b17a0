"""Manifests and Dask distributed batches: a slide archive into one patch store.

``manifest.py`` reads and builds manifests, ``settings.py`` merges the
extraction config with CLI flags, ``engine.py`` runs the slides on Dask (one
task each, in ``isolate.py`` child processes), ``report.py`` writes what
happened. The engine imports Dask, so it is loaded only on first use.
"""

from __future__ import annotations

from typing import Any

from wsi_tools.batch.manifest import Manifest, ManifestEntry, build_manifest, read_manifest

__all__ = ["BatchOptions", "Manifest", "ManifestEntry", "build_manifest", "read_manifest", "run_batch"]


def __getattr__(name: str) -> Any:
    if name in ("BatchOptions", "run_batch"):
        from wsi_tools.batch import engine

        return getattr(engine, name)
    raise AttributeError(name)
