"""Training the patch classifier: ``train()`` orchestrates, the sibling modules do the work.

``runtime`` (device, AMP, DDP, seeding), ``tables`` (splits into patch tables,
one training-table builder shared with the miner), ``checkpoint`` (the record,
the cosine schedule, the resume checks), ``loop`` (the epoch and validation,
with the sampler and the step as parameters), ``inference`` (scoring) and
``evaluation`` (the report).

Stable API (the mining pipeline builds on it):

- ``train(config, store_path=None, out_dir=None, *, splits=None,
  extra_train_negatives=(), resume=None) -> TrainResult(run_dir,
  best_checkpoint, metrics, ...)``. Splits are by slide (see
  :mod:`wsi_tools.train.splits`); ``splits`` (a mapping or a CSV path) fixes
  the split of the slides it names. ``extra_train_negatives`` are
  :class:`~wsi_tools.train.data.PatchRef` s (mined patches of the weak set)
  added, with label 0, to the training split only; a reference to a
  validation or test slide raises. The model is initialised right after
  seeding, so two runs with the same ``seed`` and ``weights`` start from the
  same weights (the weak and strong models of the paper).
- ``sampler`` (``factory(train_table, config, runtime) -> EpochOrder``) and
  ``step`` (``step(model, images, labels, runtime) -> loss``) are the training
  method; the defaults, :func:`patch_sampler` and :func:`~wsi_tools.train.loop.bce_step`,
  train the patch classifier of the paper.
- ``load_model``, ``predict``, ``embed_patches`` live in :mod:`~wsi_tools.train.inference`,
  ``read_checkpoint`` in :mod:`~wsi_tools.train.checkpoint`, ``evaluate`` in
  :mod:`~wsi_tools.train.evaluation`.

Run folder: ``config.yaml``, ``splits.csv``, ``best.pt`` (lowest validation
loss), ``last.pt``, ``history.csv``, ``predictions.csv``
(``slide_id,x,y,label,prob,split`` for every validation and test patch),
``metrics.json`` (see :func:`report`), ``roc.png``, ``pr.png``, ``loss.png``.

Checkpoints are plain dicts of tensors and Python types, loaded with
``torch.load(weights_only=True)`` (:class:`~wsi_tools.train.checkpoint.Checkpoint`): ``model``, ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (completed epochs), ``config``, ``splits``,
``best_val_loss``, ``best_epoch``, ``history``, ``extra_train_negatives``,
``store_fingerprint``. ``resume=last.pt`` continues the same run: the epoch
count, the per-batch cosine schedule, the optimiser moments and the epoch
order (a function of seed and epoch) carry on, so an interrupted run resumed
ends where a straight run would.

Distributed training: launch with ``torchrun --nproc_per_node=N -m wsi_tools
train ...``. When ``WORLD_SIZE > 1`` each process joins the process group
(NCCL on CUDA, else gloo), uses ``cuda:LOCAL_RANK``, reads every
``WORLD_SIZE``-th patch of the epoch order (``EpochSampler``), wraps the
model in ``DistributedDataParallel``, all-reduces the validation loss so that
every rank takes the same best-checkpoint and early-stopping decisions, and
only rank 0 writes files and scores the validation and test splits.

On CUDA: autocast (bf16 where supported, else fp16 with a GradScaler),
channels_last, pinned memory and non-blocking copies, and the resize /
augmentation / normalisation run per batch on the GPU (``transforms_on``).
On the CPU everything runs at full precision.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from wsi_tools import __version__
from wsi_tools.config_file import required_path
from wsi_tools.errors import ConfigError, StoreError
from wsi_tools.provenance import compute_environment
from wsi_tools.train.augment import BatchTransform, sample_transform
from wsi_tools.train.checkpoint import (
    Checkpoint,
    CosineSchedule,
    changed_config_keys,
    check_resume_splits,
    check_store_fingerprint,
    link_or_copy,
    load_checkpoint,
    load_weights,
    pixel_recipe,
    save_checkpoint,
)
from wsi_tools.train.config import SPLIT_NAMES, TrainConfig
from wsi_tools.train.data import (
    EpochSampler,
    PatchDataset,
    PatchRef,
    PatchTable,
    balanced_weights,
    open_store,
    slide_infos,
)
from wsi_tools.train.evaluation import report
from wsi_tools.train.inference import patch_loader, prepare_model, unwrap, worker_resize
from wsi_tools.train.loop import EpochOrder, TrainingStep, bce_step, train_one_epoch, validation_loss
from wsi_tools.train.model import PatchClassifier, build_model
from wsi_tools.train.plots import plot_loss
from wsi_tools.train.runtime import Runtime, log, reproducibility, seed_everything, start_runtime
from wsi_tools.train.splits import (
    assert_disjoint,
    empty_split_message,
    make_splits,
    read_splits_csv,
    write_splits_csv,
)
from wsi_tools.train.tables import split_table, training_table

SamplerFactory = Callable[[PatchTable, TrainConfig, Runtime], EpochOrder]
"""``factory(train_table, config, runtime) -> sampler`` of the training patches, per rank."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    metrics: dict[str, Any]
    last_checkpoint: Path | None = None
    splits: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def patch_sampler(table: PatchTable, config: TrainConfig, runtime: Runtime) -> EpochOrder:
    """Every training patch once per epoch (class-balanced draws with ``balanced_sampler``)."""
    return EpochSampler(
        len(table),
        seed=config.seed,
        weights=balanced_weights(table.labels) if config.balanced_sampler else None,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )


def train(
    config: TrainConfig,
    store_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    splits: Mapping[str, str] | str | Path | None = None,
    extra_train_negatives: Sequence[PatchRef | tuple[str, int]] = (),
    resume: str | Path | None = None,
    progress: bool | None = None,
    sampler: SamplerFactory = patch_sampler,
    step: TrainingStep = bce_step,
) -> TrainResult:
    """Train the patch classifier on ``store_path`` and write the run folder ``out_dir``.

    ``store_path``/``out_dir`` default to ``config.store``/``config.out``. See the
    module docstring for ``splits``, ``extra_train_negatives`` and ``resume``;
    ``sampler`` and ``step`` are the training method (see :mod:`wsi_tools.train.loop`).
    """
    store_path = required_path(store_path, config.store, flag="--store STORE", key="store", what="store")
    out_dir = required_path(out_dir, config.out, flag="--out RUN_DIR", key="out", what="run folder")
    config = config.replace(store=str(store_path), out=str(out_dir))
    runtime = start_runtime(config)
    try:
        with reproducibility(config, runtime):
            run = _Run(
                config, store_path, out_dir, runtime, config.progress if progress is None else progress
            )
            return run.train(splits, extra_train_negatives, resume, sampler, step)
    finally:
        if runtime.owns_process_group:
            dist.destroy_process_group()


LONG_RUN_S = 2 * 3600  # a run longer than this gets a note after its first epoch


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return (
        f"{minutes // 60}h{minutes % 60:02d}m"
        if minutes >= 60
        else f"{max(minutes, 1)}m"
        if seconds >= 60
        else f"{seconds:.0f}s"
    )


@dataclass
class _Run:
    """One training run: its inputs, where it computes, and what it has written."""

    config: TrainConfig
    store_path: Path
    out_dir: Path
    runtime: Runtime
    progress: bool
    loop_started: float = 0.0
    first_epoch: int = 1

    def train(
        self,
        splits_arg: Mapping[str, str] | str | Path | None,
        extra_refs: Sequence[PatchRef | tuple[str, int]],
        resume: str | Path | None,
        make_sampler: SamplerFactory,
        step: TrainingStep,
    ) -> TrainResult:
        config, runtime = self.config, self.runtime
        # Seed, then build the model first: the same seed and weights give the same initial model.
        seed_everything(config.seed)
        model: nn.Module = build_model(config.weights, config.input_size)
        store = open_store(self.store_path)
        checkpoint = self._resumed(resume, splits_arg, store) if resume else None
        if checkpoint is not None and not extra_refs:
            extra_refs = checkpoint.extra_refs()
        splits = self._splits(checkpoint, splits_arg, store)
        tables = {name: split_table(store, splits, name) for name in SPLIT_NAMES}
        built = training_table(store, splits, config, extra_refs)
        self._describe(splits, built.table, built.extra, tables)
        if runtime.is_main:
            self._write_start(splits, built.extra)

        model = self._place(model)
        sampler = make_sampler(built.table, config, runtime)
        # A last batch of one patch breaks BatchNorm in training mode: drop it.
        drop_last = len(sampler) > config.batch_size and len(sampler) % config.batch_size == 1
        optimizer, schedule, scaler = self._optimisation(model, len(sampler), drop_last, checkpoint)
        record = self._record(checkpoint, splits, store, built.extra)

        dataset, batch_transform = self._training_data(built.table)
        best_path, last_path = self.out_dir / "best.pt", self.out_dir / "last.pt"
        stale = 0 if not record.history else record.epoch - record.best_epoch
        self.loop_started, self.first_epoch = time.perf_counter(), record.epoch + 1
        for epoch in range(record.epoch + 1, config.epochs + 1):
            if config.early_stopping_patience and stale >= config.early_stopping_patience:
                log(runtime, f"early stopping: no lower validation loss for {stale} epoch(s)")
                break
            sampler.set_epoch(epoch)
            # Augmentation draws depend on (seed, epoch) only, so resuming replays them.
            torch.manual_seed(config.seed * 100_003 + epoch)
            loader = patch_loader(
                dataset, config.batch_size, sampler, config.num_workers, runtime,
                config.seed * 100_003 + epoch, drop_last,
            )  # fmt: skip
            started = time.perf_counter()
            train_loss, seen = train_one_epoch(
                model, loader, step, batch_transform, optimizer, schedule, scaler, runtime,
                progress=self.progress, desc=f"epoch {epoch}/{config.epochs}",
            )  # fmt: skip
            seconds = time.perf_counter() - started
            val_loss = validation_loss(model, self.store_path, tables["val"], config, runtime)
            improved = self._end_epoch(record, epoch, train_loss, val_loss, schedule.last_lr, seen, seconds)
            stale = epoch - record.best_epoch
            if runtime.is_main:
                record.model, record.optimizer = unwrap(model).state_dict(), optimizer.state_dict()
                record.scheduler, record.scaler = schedule.state_dict(), scaler.state_dict()
                save_checkpoint(last_path, record)
                if improved:
                    link_or_copy(last_path, best_path)
        dataset.close()

        metrics = (
            self._finish(record, best_path, tables, built.table, len(built.extra)) if runtime.is_main else {}
        )
        if runtime.distributed:
            dist.barrier()
        return TrainResult(self.out_dir, best_path, metrics, last_path, dict(splits), list(record.history))

    def _splits(
        self, checkpoint: Checkpoint | None, splits_arg: Mapping[str, str] | str | Path | None, store: Any
    ) -> dict[str, str]:
        """The run's slide splits: the checkpoint's on resume, else built on rank 0 and shared."""
        if checkpoint is not None:
            return dict(checkpoint.splits)
        splits = build_splits(self.config, store, splits_arg, self.runtime)
        if self.runtime.distributed:
            shared = [splits]
            dist.broadcast_object_list(shared, src=0)
            splits = shared[0]
        return splits

    def _optimisation(
        self, model: nn.Module, n_samples: int, drop_last: bool, checkpoint: Checkpoint | None
    ) -> tuple[torch.optim.Optimizer, CosineSchedule, torch.amp.GradScaler]:
        """Adam, the per-batch cosine schedule and the AMP scaler, restored on resume."""
        config, runtime = self.config, self.runtime
        batches = n_samples // config.batch_size if drop_last else -(-n_samples // config.batch_size)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
        if checkpoint is not None:
            load_weights(unwrap(model), checkpoint.model, "the resumed checkpoint")
            optimizer.load_state_dict(checkpoint.optimizer)
            scaler.load_state_dict(checkpoint.scaler)
        # An extended (or shortened) resumed run re-spans the cosine over its new length.
        schedule = CosineSchedule(
            optimizer, config.epochs * batches, config.eta_min, checkpoint.scheduler if checkpoint else None
        )
        return optimizer, schedule, scaler

    def _resumed(
        self, resume: str | Path, splits_arg: Mapping[str, str] | str | Path | None, store: Any
    ) -> Checkpoint:
        """The checkpoint to continue, after the checks that it continues this run."""
        checkpoint = load_checkpoint(resume)
        check_store_fingerprint(checkpoint.to_payload(), store, str(resume), self.store_path, refuse=True)
        given_name = str(splits_arg) if isinstance(splits_arg, str | Path) else "splits="
        check_resume_splits(
            checkpoint, None if splits_arg is None else _given_splits(splits_arg), resume, given_name
        )
        changed = changed_config_keys(checkpoint, self.config)
        if changed:
            log(self.runtime, f"note: resuming with changed config key(s): {', '.join(changed)}")
        log(self.runtime, f"resuming {resume} after epoch {checkpoint.epoch}")
        return checkpoint

    def _record(
        self, checkpoint: Checkpoint | None, splits: dict[str, str], store: Any, extra: PatchTable
    ) -> Checkpoint:
        """The checkpoint record this run writes each epoch (a resumed one carries on its own)."""
        record = checkpoint or Checkpoint(config={}, model={}, splits={})
        record.config, record.splits = self.config.to_dict(), splits
        record.store_fingerprint, record.tool_version = str(store.fingerprint()), __version__
        train_slides = sorted(slide for slide, split in splits.items() if split == "train")
        record.pixels = pixel_recipe(store, train_slides, self.config)
        record.extra_train_negatives = [
            [str(s), int(i)] for s, i in zip(extra.slide_ids, extra.indices, strict=True)
        ]
        return record

    def _describe(
        self,
        splits: Mapping[str, str],
        train_table: PatchTable,
        extra: PatchTable,
        tables: Mapping[str, PatchTable],
    ) -> None:
        if len(train_table) < 2:
            raise ConfigError(
                f"{self.store_path}: the training split has {len(train_table)} patch(es); need at least 2"
            )
        empty = [name for name in ("val", "test") if len(tables[name]) == 0]
        if empty and not self.config.allow_empty_splits:
            raise ConfigError(empty_split_message(self.store_path, splits, empty, self.config))
        runtime = self.runtime
        log(
            runtime,
            "slides: "
            + ", ".join(f"{n} {sum(v == n for v in splits.values())}" for n in SPLIT_NAMES)
            + f" | patches: train {len(train_table)} ({int(train_table.labels.sum())} pos"
            + (f", {len(extra)} mined neg" if len(extra) else "")
            + f"), val {len(tables['val'])}, test {len(tables['test'])} | device {runtime.device}"
            + (f" x{runtime.world_size}" if runtime.distributed else "")
            + (f", autocast {str(runtime.amp_dtype).removeprefix('torch.')}" if runtime.amp_dtype else ""),
        )

    def _write_start(self, splits: Mapping[str, str], extra: PatchTable) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_splits_csv(splits, self.out_dir / "splits.csv")
        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        if len(extra):
            _write_refs_csv(extra, self.out_dir / "extra_train_negatives.csv")

    def _place(self, model: nn.Module) -> nn.Module:
        """The model on the device (channels_last on CUDA), wrapped in DDP under torchrun."""
        runtime = self.runtime
        model = model.to(runtime.device)
        if runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if runtime.distributed:
            # DDP forwards to the model; unwrap() gives the PatchClassifier back.
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[runtime.device.index] if runtime.cuda else None
            )
        return model

    def _training_data(self, table: PatchTable) -> tuple[PatchDataset, BatchTransform | None]:
        """The training dataset, and the batch transform when it runs on the device."""
        config, runtime = self.config, self.runtime
        placement = config.transforms_on
        if placement == "auto":
            placement = "device" if runtime.cuda else "loader"
        dataset = PatchDataset(
            self.store_path,
            table,
            transform=sample_transform(config.input_size, config.augment) if placement == "loader" else None,
            resize=None if placement == "loader" else worker_resize(config.input_size, runtime),
        )
        if placement != "device":
            return dataset, None
        return dataset, BatchTransform(config.input_size, config.augment).to(runtime.device)

    def _end_epoch(
        self,
        record: Checkpoint,
        epoch: int,
        train_loss: float,
        val_loss: float | None,
        lr: float,
        seen: int,
        seconds: float,
    ) -> bool:
        """Record the epoch in the history; True when it is the best so far."""
        # Without a validation split every epoch counts as the best (best.pt = last.pt).
        improved = val_loss is None or val_loss < record.best_val_loss
        if improved:
            record.best_val_loss = val_loss if val_loss is not None else record.best_val_loss
            record.best_epoch = epoch
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": lr,
            "patches_per_s": seen * self.runtime.world_size / seconds,
            "seconds": seconds,
        }
        record.history.append(row)
        record.epoch = epoch
        log(
            self.runtime,
            f"epoch {epoch}/{self.config.epochs}  train loss {train_loss:.4f}  val loss "
            + ("-" if val_loss is None else f"{val_loss:.4f}")
            + f"  lr {lr:.2e}  {row['patches_per_s']:.1f} patches/s"
            + ("  (best)" if improved else "")
            + self._eta(epoch),
        )
        return improved

    def _eta(self, epoch: int) -> str:
        """The time left for the whole run at this run's pace (training and validation),
        and, after its first epoch, a note when that is many hours."""
        remaining = self.config.epochs - epoch
        if remaining <= 0:
            return ""
        per_epoch = (time.perf_counter() - self.loop_started) / (epoch - self.first_epoch + 1)
        left = per_epoch * remaining
        if epoch == self.first_epoch and left > LONG_RUN_S:
            log(
                self.runtime,
                f"note: at this pace the remaining {remaining} epoch(s) take about {left / 3600:.1f} h on "
                f"{self.runtime.device} (early stopping may end it sooner); fewer epochs, a smaller "
                "input_size or a GPU shorten it",
            )
        return f"  run ETA {_duration(left)}"

    def _finish(
        self,
        record: Checkpoint,
        best_path: Path,
        tables: Mapping[str, PatchTable],
        train_table: PatchTable,
        n_extra: int,
    ) -> dict[str, Any]:
        """history.csv, loss.png, and the best model's report and metrics.json."""
        _write_history(record.history, self.out_dir / "history.csv")
        plot_loss(record.history, self.out_dir / "loss.png", record.best_epoch)
        best_model = PatchClassifier(self.config.input_size)
        load_weights(best_model, load_checkpoint(best_path).model, best_path)
        metrics = report(
            prepare_model(best_model, self.runtime),
            self.store_path,
            {"val": tables["val"], "test": tables["test"]},
            self.out_dir,
            self.config,
            self.runtime,
            progress=self.progress,
        )
        metrics["training"] = {
            "best_epoch": record.best_epoch,
            "best_val_loss": None if math.isinf(record.best_val_loss) else record.best_val_loss,
            "epochs_run": record.epoch,
            "train_patches": len(train_table),
            "train_positives": int(train_table.labels.sum()),
            "extra_train_negatives": n_extra,
            "environment": compute_environment(),
        }
        (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics


def _write_history(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    columns = ["epoch", "train_loss", "val_loss", "lr", "patches_per_s", "seconds"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k) for k in columns})


def _write_refs_csv(table: PatchTable, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["slide_id", "index", "x", "y"])
        for s, i, (x, y) in zip(table.slide_ids, table.indices, table.coords, strict=True):
            writer.writerow([s, int(i), int(x), int(y)])


# ---------------------------------------------------------------- splits


def _given_splits(splits: Mapping[str, str] | str | Path) -> dict[str, str]:
    """A ``splits`` argument: a slide -> split mapping, or a CSV path to read one from."""
    return read_splits_csv(splits) if isinstance(splits, str | Path) else dict(splits)


def _fixed_splits(
    config: TrainConfig, splits: Mapping[str, str] | str | Path | None, infos: Mapping[str, Any]
) -> dict[str, str]:
    """Splits decided before the ratio split; precedence: ``splits`` argument, splits_file, store attrs."""
    fixed = {s: info.split for s, info in infos.items() if info.split}
    if config.splits_file:
        fixed.update(read_splits_csv(config.splits_file))
    if splits is not None:
        fixed.update(_given_splits(splits))
    return fixed


def build_splits(
    config: TrainConfig,
    store: Any,
    splits: Mapping[str, str] | str | Path | None = None,
    runtime: Runtime | None = None,
) -> dict[str, str]:
    """Slide -> split for the slides of ``config.train_sets`` (weak slides stay out unless listed)."""
    infos = slide_infos(store)
    candidates = {s: info for s, info in infos.items() if info.set in config.train_sets}
    if not candidates:
        raise StoreError(
            f"{store.path if hasattr(store, 'path') else 'store'}: no complete slide of set(s) "
            f"{', '.join(config.train_sets)}; extract some first or change train_sets"
        )
    fixed = _fixed_splits(config, splits, infos)
    ignored = sorted(set(fixed) - set(candidates))
    if ignored:
        log(
            runtime,
            f"note: {len(ignored)} slide(s) with a given split are not training candidates and are ignored: {', '.join(ignored[:5])}",
        )
    result = make_splits(
        {s: info.label for s, info in candidates.items()},
        config.split_ratios,
        config.seed,
        fixed={s: v for s, v in fixed.items() if s in candidates},
    )
    assert_disjoint({name: [s for s, v in result.items() if v == name] for name in SPLIT_NAMES})
    return result
