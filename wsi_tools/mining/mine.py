"""Steps 2 and 3 of the method: false positives of the weak model, and their
nearest neighbours in the weak set (the mined hard negatives).

* False positives are label-0 patches of the hard set's training split (or
  ``val``, ``train+val``) that the weak model scores at or above the
  threshold. The test split is never read here.
* Weak-set features are computed once and cached (see ``embeddings``); the
  search is the exact, streamed kNN of ``knn``.
* Each false positive contributes its ``alpha`` nearest weak patches; a patch
  hit by several false positives is kept once, with its best distance.
  Patches already in training, and slides of the validation or test split,
  can never be mined.
* Mined patches are references ``(slide_id, index)`` into the weak set,
  written to ``mined.csv`` (``query_slide_id,query_x,query_y,slide_id,x,y,
  distance,rank``). For cosine, ``distance`` is ``1 - cosine similarity``.
"""

from __future__ import annotations

import csv
import warnings as python_warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_tools.errors import ConfigError, SplitLeakError
from wsi_tools.mining.knn import METRICS, KnnResult, knn_search
from wsi_tools.options import at_least, device_name, one_of, option, unit_interval, validate
from wsi_tools.train.data import PatchRef, PatchTable, select_patches

FP_SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val",),
    "train+val": ("train", "val"),
}
MINED_COLUMNS = ("query_slide_id", "query_x", "query_y", "slide_id", "x", "y", "distance", "rank")


def _check_fp_source(value: str) -> str | None:
    if value in FP_SOURCES:
        return None
    return f"must be one of {', '.join(FP_SOURCES)} (the test split is never mined)"


@dataclass(frozen=True)
class MiningConfig:
    """Steps 2-3 parameters (the paper's defaults)."""

    threshold: float = option(
        0.1, "a training negative the weak model scores >= threshold is a false positive", check=unit_interval
    )
    fp_source: str = option(
        "train",
        "where false positives come from: train | val | train+val (the test split never)",
        check=_check_fp_source,
    )
    alpha: int = option(20, "nearest weak-set patches per false positive (the paper: 20)", check=at_least(1))
    metric: str = option(
        "l2", "l2 (Euclidean distance) | cosine (most similar first)", check=one_of(*METRICS)
    )
    knn_backend: str = option(
        "torch",
        "torch (exact, chunked, GPU when present) | faiss (exact flat index; needs faiss installed)",
        check=one_of("torch", "faiss"),
        output=False,
    )
    batch_size: int = option(
        128, "patches per batch when scoring and embedding", check=at_least(1), output=False
    )
    num_workers: int = option(
        0,
        "DataLoader workers when scoring and embedding (0 = in the main process)",
        check=at_least(0),
        output=False,
    )
    device: str = option(
        "auto", "auto (CUDA when present) | cpu | cuda | cuda:N", check=device_name, output=False
    )
    progress: bool = option(False, "progress bars on stderr (only on a terminal)", output=False)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class FalsePositives:
    table: PatchTable  # label-0 patches scored >= threshold
    probs: np.ndarray
    features: np.ndarray  # (n, 512)
    n_candidates: int  # negatives scored


@dataclass(frozen=True)
class MinedPatch:
    query: PatchRef
    query_xy: tuple[int, int]
    ref: PatchRef
    xy: tuple[int, int]
    distance: float
    rank: int  # 1 = nearest to its query


@dataclass
class MiningResult:
    false_positives: FalsePositives
    mined: list[MinedPatch]
    weak_pool_size: int
    pool: PatchTable | None = None  # the weak patches searched, in feature order
    neighbours: KnnResult | None = None  # raw alpha nearest per false positive (rows of pool)
    csv_path: Path | None = None
    cache_path: Path | None = None
    cache_reused: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def mined_refs(self) -> list[PatchRef]:
        return [patch.ref for patch in self.mined]


# Past these shares mining is not finding *hard* negatives: a model that calls most
# negatives positive is undertrained (or the threshold is too low), and a mined set
# that is a large part of the pool is the weak set again, not its hard cases.
IMPLAUSIBLE_FP_SHARE = 0.5
IMPLAUSIBLE_MINED_SHARE = 0.25


def implausible_mining(
    n_false_positives: int, n_candidates: int, n_mined: int, pool_size: int, threshold: float
) -> list[str]:
    """Warnings for a mining result that cannot be what the method means."""
    found = []
    if n_candidates and n_false_positives / n_candidates > IMPLAUSIBLE_FP_SHARE:
        found.append(
            f"the model calls {n_false_positives} of {n_candidates} negatives positive "
            f"({n_false_positives / n_candidates:.0%}) at threshold {threshold}: it is probably undertrained "
            "(more epochs) or the threshold is too low, and these are not hard negatives"
        )
    if pool_size and n_mined / pool_size > IMPLAUSIBLE_MINED_SHARE:
        found.append(
            f"{n_mined} of the {pool_size} weak patches ({n_mined / pool_size:.0%}) were mined: that is much of "
            "the pool, not its hard cases; lower alpha or check the false positives above"
        )
    return found


def fp_candidate_table(
    store: Any,
    splits: Mapping[str, str],
    fp_source: str = "train",
    *,
    sets: Iterable[str] = ("hard",),
    training: PatchTable | None = None,
) -> PatchTable:
    """Label-0 patches whose slides are in the ``fp_source`` splits.

    With ``training`` (the model's actual training patches, after any subsampling)
    and ``fp_source == "train"``, only those of its training split are used: the
    extra negatives a strong model was given come from weak slides outside the
    splits, and are not false-positive queries.
    """
    wanted = FP_SOURCES[fp_source]
    slides = sorted(slide for slide, split in splits.items() if split in wanted)
    if fp_source == "train" and training is not None:
        in_split = np.fromiter(
            (splits.get(str(s)) in wanted for s in training.slide_ids), bool, len(training)
        )
        chosen = training.take(np.nonzero((training.labels == 0) & in_split)[0])
    else:
        chosen = select_patches(store, slides, sets=sets, label=0)
    leaked = sorted({str(s) for s in chosen.slide_ids if splits.get(str(s)) not in wanted})
    if leaked:
        raise SplitLeakError(
            f"false-positive candidates from slides outside the {fp_source} split: {', '.join(leaked[:5])}"
        )
    return chosen


def find_false_positives(
    model: Any, store_path: str | Path, candidates: PatchTable, config: MiningConfig
) -> FalsePositives:
    """Score every candidate negative with the trainer's ``predict``; embed the
    ones at or above the threshold with its ``embed_patches``."""
    from wsi_tools.train.inference import embed_patches, predict

    options: dict[str, Any] = {"num_workers": config.num_workers, "progress": config.progress}
    probs = predict(model, store_path, candidates.refs, config.batch_size, config.device, **options)
    hit = np.nonzero(probs >= config.threshold)[0]
    table = candidates.take(hit)
    features = embed_patches(model, store_path, table.refs, config.batch_size, config.device, **options)
    return FalsePositives(table, probs[hit], features, n_candidates=len(candidates))


def weak_pool_table(store: Any, splits: Mapping[str, str], exclude_slides: Iterable[str] = ()) -> PatchTable:
    """Every weak-set patch that may be mined: never from a validation or test
    slide, nor from ``exclude_slides`` (weak slides held out for evaluation)."""
    excluded = set(exclude_slides)
    slides = [
        slide
        for slide in store.slide_ids()
        if store.slide_attrs(slide).get("set") == "weak"
        and splits.get(slide) not in ("val", "test")
        and slide not in excluded
    ]
    return select_patches(store, slides)


def nearest_weak_patches(
    false_positives: FalsePositives,
    weak_table: PatchTable,
    weak_features: Any,
    config: MiningConfig,
    *,
    exclude: Iterable[tuple[str, int]] = (),
) -> tuple[list[MinedPatch], KnnResult | None]:
    """``alpha`` nearest weak patches per false positive, de-duplicated (best
    distance kept), never one of ``exclude`` (patches already in training).
    Also returns the raw search result (rows of ``weak_table``)."""
    fps = false_positives.table
    if not len(fps) or not len(weak_table):
        return [], None
    excluded = set((str(s), int(i)) for s, i in exclude)
    mask = np.array(
        [(str(s), int(i)) in excluded for s, i in zip(weak_table.slide_ids, weak_table.indices, strict=True)],
        dtype=bool,
    )
    result = knn_search(
        false_positives.features,
        weak_features,
        config.alpha,
        metric=config.metric,
        exclude=mask if mask.any() else None,
        device=None if config.device == "auto" else config.device,
        backend=config.knn_backend,
    )
    distances = result.distances.astype(np.float64)
    if config.metric == "cosine":
        distances = 1.0 - distances  # similarity -> distance, smaller is nearer
    best: dict[int, MinedPatch] = {}
    for q in range(len(fps)):
        query = PatchRef(str(fps.slide_ids[q]), int(fps.indices[q]))
        query_xy = (int(fps.coords[q, 0]), int(fps.coords[q, 1]))
        for rank, (row, distance) in enumerate(zip(result.indices[q], distances[q], strict=True), start=1):
            if row < 0:
                break
            current = best.get(int(row))
            if current is None or distance < current.distance:
                best[int(row)] = MinedPatch(
                    query=query,
                    query_xy=query_xy,
                    ref=PatchRef(str(weak_table.slide_ids[row]), int(weak_table.indices[row])),
                    xy=(int(weak_table.coords[row, 0]), int(weak_table.coords[row, 1])),
                    distance=float(distance),
                    rank=rank,
                )
    mined = sorted(best.values(), key=lambda m: (m.query.slide_id, m.query.index, m.rank))
    trained_on = sorted({m.ref.slide_id for m in mined if (m.ref.slide_id, m.ref.index) in excluded})
    if trained_on:
        raise SplitLeakError(f"mined patches the model already trained on, from {', '.join(trained_on[:5])}")
    return mined, result


def write_mined_csv(mined: Iterable[MinedPatch], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MINED_COLUMNS)
        for m in mined:
            writer.writerow(
                [m.query.slide_id, *m.query_xy, m.ref.slide_id, *m.xy, f"{m.distance:.6g}", m.rank]
            )
    return path


@dataclass(frozen=True)
class MinedList:
    refs: list[PatchRef]  # the mined weak patches, in file order
    query_slides: frozenset[str]  # the slides whose false positives they were mined for


def read_mined_csv(path: str | Path, store: Any) -> MinedList:
    """``mined.csv`` back as store references (coordinates looked up in the store)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: mined list not found; give the mined.csv that `wsi-tools mine` wrote")
    refs: list[PatchRef] = []
    queries: set[str] = set()
    lookup: dict[str, dict[tuple[int, int], int]] = {}
    known = set(store.slide_ids())
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in MINED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                f"{path}: not a mined.csv (no column {', '.join(missing)}); give one `wsi-tools mine` wrote"
            )
        for line, row in enumerate(reader, start=2):
            slide_id = row["slide_id"]
            if slide_id not in known:
                raise ConfigError(
                    f"{path}:{line}: slide {slide_id!r} is not in the store; use the store it was mined from"
                )
            if slide_id not in lookup:
                coords = np.asarray(store.coords(slide_id))
                lookup[slide_id] = {(int(x), int(y)): i for i, (x, y) in enumerate(coords)}
            try:
                index = lookup[slide_id].get((int(row["x"]), int(row["y"])))
            except ValueError:
                index = None
            if index is None:
                raise ConfigError(
                    f"{path}:{line}: no patch at ({row['x']}, {row['y']}) in slide {slide_id!r}"
                )
            refs.append(PatchRef(slide_id, index))
            queries.add(row["query_slide_id"])
    return MinedList(refs, frozenset(queries))


def check_mined_against_splits(mined: MinedList, splits: Mapping[str, str], source: str | Path) -> None:
    """Mined patches, and the false positives they were mined for, must come from outside
    the validation and test splits: else those splits would have shaped the training."""
    held_out = {slide for slide, split in splits.items() if split in ("val", "test")}
    leaked = sorted(({ref.slide_id for ref in mined.refs} | mined.query_slides) & held_out)
    if leaked:
        raise SplitLeakError(
            f"{source}: mined for or from slides of the validation or test split ({', '.join(leaked[:5])}); "
            "train with the splits of the model it was mined with (--set splits_file=RUN/splits.csv)"
        )


def training_table(store: Any, checkpoint_state: Mapping[str, Any], train_config: Any) -> PatchTable:
    """The patches a checkpoint's model was trained on, from the trainer's own builder."""
    from wsi_tools.train.tables import training_table as build_training_table

    extra = [tuple(ref) for ref in checkpoint_state.get("extra_train_negatives", [])]
    return build_training_table(store, dict(checkpoint_state["splits"]), train_config, extra).table


def write_false_positives_csv(false_positives: FalsePositives, path: str | Path) -> Path:
    path = Path(path)
    fps = false_positives.table
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["slide_id", "index", "x", "y", "prob"])
        for s, i, (x, y), p in zip(
            fps.slide_ids, fps.indices, fps.coords, false_positives.probs, strict=True
        ):
            writer.writerow([s, int(i), int(x), int(y), f"{p:.6g}"])
    return path


def run_mining(
    checkpoint: str | Path,
    store_path: str | Path,
    out_dir: str | Path,
    config: MiningConfig = MiningConfig(),
    *,
    cache_dir: str | Path | None = None,
    exclude_slides: Iterable[str] = (),
) -> MiningResult:
    """Steps 2-3 for a trained weak model: false positives of its own splits,
    their ``alpha`` nearest weak patches, ``mined.csv`` and
    ``false_positives.csv`` in ``out_dir``. Weak-set features are cached under
    ``cache_dir`` (default ``out_dir``). ``exclude_slides`` are weak slides
    kept out of the pool (held out for evaluation)."""
    from wsi_tools.mining.embeddings import cache_key, cached_features, file_digest
    from wsi_tools.train.checkpoint import check_store_fingerprint, read_checkpoint
    from wsi_tools.train.data import open_store
    from wsi_tools.train.inference import load_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = read_checkpoint(checkpoint)
    model, train_config = load_model(checkpoint, device=config.device)
    store = open_store(store_path)
    check_store_fingerprint(state, store, checkpoint, store_path, refuse=False)
    splits = dict(state["splits"])
    missing = sorted(set(splits) - set(store.slide_ids()))
    if missing:
        raise ConfigError(
            f"{store_path}: slides of {checkpoint}'s splits are missing from the store "
            f"({', '.join(missing[:5])}); mine with the store the model was trained on"
        )
    training = training_table(store, state, train_config)
    candidates = fp_candidate_table(
        store, splits, config.fp_source, sets=train_config.train_sets, training=training
    )
    false_positives = find_false_positives(model, store_path, candidates, config)
    pool = weak_pool_table(store, splits, exclude_slides)
    if not len(pool):
        raise ConfigError(f"{store_path}: no weak-set slides to mine; extract some with --set weak first")
    key = cache_key(file_digest(checkpoint), store.fingerprint(), int(model.input_size))
    cache = cached_features(
        model,
        store_path,
        pool,
        cache_dir or out_dir,
        key,
        batch_size=config.batch_size,
        device=config.device,
        num_workers=config.num_workers,
        progress=config.progress,
    )
    mined, neighbours = nearest_weak_patches(
        false_positives, pool, cache.features, config, exclude=training.keys()
    )
    result = MiningResult(
        false_positives=false_positives,
        mined=mined,
        weak_pool_size=len(pool),
        pool=pool,
        neighbours=neighbours,
        csv_path=write_mined_csv(mined, out_dir / "mined.csv"),
        cache_path=cache.path,
        cache_reused=cache.reused,
        warnings=implausible_mining(
            len(false_positives.table), false_positives.n_candidates, len(mined), len(pool), config.threshold
        ),
    )
    for message in result.warnings:
        python_warnings.warn(f"{checkpoint}: {message}", UserWarning, stacklevel=2)
    write_false_positives_csv(false_positives, out_dir / "false_positives.csv")
    return result
