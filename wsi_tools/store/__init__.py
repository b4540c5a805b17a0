"""The zarr v3 patch store: one group per slide, written crash-safely.

Layout and codecs are documented in ``docs/store.md``. The store is a
directory on a local or shared POSIX filesystem: a slide is written under
``slides/.tmp-<id>-<uuid>`` and made visible by renaming that directory to
``slides/<id>``, so a reader never sees a half-written slide. Image shards
are encoded and written by :mod:`wsi_tools.patch_codec`; the zarr.json
metadata and the small arrays' chunks are written here too, exactly as
zarr-python writes them, so plain ``zarr.open_group`` reads all (tested).

The package: ``_format`` (names, the slide id rule, zarr.json documents),
``_codec`` and ``_zstd`` (one patch chunk, encoded and checked), ``_reader``
(random access), ``_writer`` (one slide, crash-safely), ``_verify`` and
``_store`` (:class:`PatchStore`).
"""

from wsi_tools.store._codec import COMPRESSIONS, ChunkError, decode_patch, encode_patch
from wsi_tools.store._format import exchange_paths, sanitize_slide_id
from wsi_tools.store._reader import PatchReader
from wsi_tools.store._store import PatchStore
from wsi_tools.store._verify import VerifyReport
from wsi_tools.store._writer import SlideWriter

__all__ = [
    "COMPRESSIONS",
    "ChunkError",
    "PatchReader",
    "PatchStore",
    "SlideWriter",
    "VerifyReport",
    "decode_patch",
    "encode_patch",
    "exchange_paths",
    "sanitize_slide_id",
]
