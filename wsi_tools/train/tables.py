"""The patch tables of a run: one split's patches, and the one training table.

The trainer and the miner both call :func:`training_table`, so the miner sees
exactly the patches a checkpoint's model was trained on (its training split,
subsampled the same way, plus the extra negatives it was given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsi_tools.errors import ConfigError
from wsi_tools.train.config import TrainConfig
from wsi_tools.train.data import PatchRef, PatchTable, select_patches, subsample, table_from_refs
from wsi_tools.train.splits import assert_disjoint


def split_table(store: Any, splits: Mapping[str, str], split: str) -> PatchTable:
    """Every patch of the slides assigned to ``split``; labels other than 0 and 1 are refused
    (the store keeps 0..127, training and mining are binary)."""
    table = select_patches(store, [s for s, v in splits.items() if v == split])
    other = np.nonzero((table.labels != 0) & (table.labels != 1))[0]
    if len(other):
        slide_id = str(table.slide_ids[other[0]])
        params = store.slide_attrs(slide_id).get("params") or {}
        label_map = params.get("label_map") or "the default label map (lymphatic_invasion)"
        raise ConfigError(
            f"slide {slide_id!r} has patches labelled {sorted({int(v) for v in table.labels[other]})}, from "
            f"{label_map}; training and mining are binary (0 = negative, 1 = positive): map the groups "
            "to 0 and 1 in the label map and extract again"
        )
    return table


@dataclass(frozen=True)
class TrainingTable:
    table: PatchTable  # what the model trains on, split patches first
    extra: PatchTable  # the extra negatives kept (not already in the split's patches)


def training_table(
    store: Any,
    splits: Mapping[str, str],
    config: TrainConfig,
    extra_refs: Sequence[PatchRef | tuple[str, int]] = (),
) -> TrainingTable:
    """The training split subsampled by ``train_fraction``/``positive_fraction`` (seeded),
    plus ``extra_refs`` as label-0 patches (mined negatives). Extras from validation or
    test slides raise :class:`SplitLeakError`; extras already in the split are kept once."""
    split_part = subsample(
        split_table(store, splits, "train"), config.train_fraction, config.positive_fraction, config.seed
    )
    extra = table_from_refs(store, list(extra_refs), label=0)
    if not len(extra):
        return TrainingTable(split_part, extra)
    assert_disjoint(
        {
            "extra training negatives": set(extra.slide_ids.tolist()),
            "val": [s for s, v in splits.items() if v == "val"],
            "test": [s for s, v in splits.items() if v == "test"],
        }
    )
    known = split_part.keys()
    extra = extra.take(
        [
            row
            for row, (slide_id, index) in enumerate(zip(extra.slide_ids, extra.indices, strict=True))
            if (str(slide_id), int(index)) not in known
        ]
    )
    return TrainingTable(PatchTable.concat([split_part, extra]), extra)
