"""Run a manifest on Dask distributed: one slide = one task, failures isolated, resumable.

The client validates the manifest and settings, opens (or creates) the store,
skips slides the store already holds complete, and submits one task per other
slide, largest file first. Each task runs :func:`wsi_tools.extract.extract_slide`
in a child process of its worker (see ``isolate.py``), so the worker writes the
slide's group straight into the shared store, a ``--timeout`` can really stop
it, and a crash costs one slide. Every task returns a record instead of
raising, so Dask never mistakes a bad slide for a bad worker; a worker that
dies anyway surfaces as ``KilledWorker`` and is recorded too.

Resume needs nothing from the client: a slide becomes complete in the store
atomically (``SlideWriter.commit``), leftovers of killed slides are temporary
groups the next extraction of that slide removes, and extraction is
deterministic, so a rerun writes exactly what an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wsi_tools.batch.isolate import run_isolated
from wsi_tools.batch.manifest import Manifest, ManifestEntry, read_manifest
from wsi_tools.batch.report import BatchReport, SlideOutcome, new_run_id, write_report
from wsi_tools.batch.settings import extraction_config, load_settings
from wsi_tools.errors import ConfigError
from wsi_tools.provenance import now_iso

REPORT_EVERY_S = 10.0  # a live report.json, so even a kill -9 leaves an account of the run
# Settings whose change makes an already-complete slide differ from what this run would write.


@dataclass(frozen=True)
class BatchOptions:
    """How to run (not what to extract: that is the settings)."""

    workers: int | None = None  # local worker processes; None = every available core
    scheduler: str | None = None  # tcp://host:port of an existing cluster instead
    timeout: float | None = None  # seconds per slide attempt; None = no limit
    retries: int = 1  # extra attempts after transient-looking errors only
    overwrite: bool = False  # re-extract slides the store already holds complete
    check: bool = False  # run check_slide on each slide file before extracting it
    qc_dir: str | None = None  # a QC overview PNG per slide
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, got {self.retries}")


@dataclass(frozen=True)
class SlideJob:
    """Everything a worker needs for one slide: plain, picklable values."""

    slide_id: str
    slide_path: str
    set: str
    annotation_path: str | None
    slide_mpp: float | None
    store_path: str
    settings: dict[str, Any]
    overwrite: bool
    qc_dir: str | None
    timeout: float | None
    check: bool = False


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def extract_job(job: SlideJob, extract_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Runs in the child process: one ``extract_slide`` call, its result as a dict."""
    if extract_fn is None:
        from wsi_tools.extract import extract_slide

        extract_fn = extract_slide
    config = extraction_config(job.settings, job.set, job.slide_mpp)
    if job.check:
        _preflight(job.slide_path)
    result = extract_fn(
        job.slide_path,
        job.store_path,
        config,
        annotation_path=job.annotation_path,
        slide_id=job.slide_id,
        overwrite=job.overwrite,
        qc_dir=job.qc_dir,
        progress=False,
    )
    return {
        "status": result.status,
        "n_patches": int(result.n_patches),
        "counts": _plain(result.counts),
        "seconds": float(result.seconds),
    }


def _preflight(slide_path: str) -> None:
    from wsi_tools.errors import SlideReadError
    from wsi_tools.slide import check_slide

    checked = check_slide(slide_path)
    if not checked.ok:
        raise SlideReadError(
            f"{slide_path}: failed the preflight check (batch --check): {checked.first_problem}; "
            "nothing was extracted from it"
        )


def slide_task(job: SlideJob, extract_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The Dask task: never raises for a bad slide, returns a record instead."""
    outcome = run_isolated(extract_job, (job, extract_fn), timeout=job.timeout)
    record = asdict(outcome)
    record.pop("value")
    record["result"] = outcome.value
    try:
        from distributed import get_worker

        record["worker"] = get_worker().address
    except (ImportError, ValueError):
        record["worker"] = None
    return record


def _plain(value: Any) -> Any:
    """Counts as JSON-able plain types (numpy ints and the like become Python ones)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "item"):
        return value.item()
    return value


# A worker that dies twice on the same task gives up on it (KilledWorker); each
# worker holds one task at a time, so large slides spread out; workers may
# start the extraction child processes (see isolate.py).
CLUSTER_CONFIG = {
    "distributed.worker.daemon": False,
    "distributed.scheduler.allowed-failures": 1,
    "distributed.scheduler.worker-saturation": 1.0,
}


@contextlib.contextmanager
def local_cluster(n_workers: int | None = None) -> Iterator[Any]:
    """A LocalCluster of single-threaded worker processes, configured for batches."""
    import dask
    from distributed import LocalCluster

    # The config stays set while the cluster lives: a restarted worker reads it again.
    with dask.config.set(CLUSTER_CONFIG), warnings.catch_warnings():
        # Without a dashboard the scheduler still serves health checks, and says so
        # when another cluster has port 8787: harmless, not worth a warning.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        with LocalCluster(
            n_workers=n_workers or available_cores(),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster:
            yield cluster


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A client on ``scheduler``, or on a new :func:`local_cluster` of ``workers``."""
    from distributed import Client

    if not scheduler:
        with local_cluster(workers) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="30s")
    except OSError as error:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {scheduler} ({error}); check --scheduler"
        ) from error
    with client:
        yield client


def _job(entry: ManifestEntry, store_path: Path, settings: dict[str, Any], options: BatchOptions) -> SlideJob:
    return SlideJob(
        slide_id=entry.slide_id,
        slide_path=str(entry.slide_path),
        set=entry.set,
        annotation_path=str(entry.annotation_path) if entry.annotation_path else None,
        slide_mpp=entry.mpp,
        store_path=str(store_path),
        settings=dict(settings),
        overwrite=options.overwrite,
        qc_dir=options.qc_dir,
        timeout=options.timeout,
        check=options.check,
    )


class SlideProgress:
    """A tqdm bar over slides with done / failed / remaining and the rate of the work
    items (patches for batch, windows for predict); shown on a terminal only."""

    def __init__(
        self, total: int, already: int, already_failed: int, enabled: bool, desc: str, items: str
    ) -> None:
        from tqdm import tqdm

        self.started = time.perf_counter()
        self.items = 0
        self.item_name = items
        self.done = already
        self.failed = already_failed
        self.total = total
        self.bar = tqdm(
            total=total,
            initial=already + already_failed,
            unit="slide",
            desc=desc,
            file=sys.stderr,
            disable=not enabled or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )
        self._show()

    def _show(self) -> None:
        rate = self.items / max(time.perf_counter() - self.started, 1e-9)
        left = self.total - self.done - self.failed
        self.bar.set_postfix_str(
            f"done {self.done} failed {self.failed} left {left} · {rate:.1f} {self.item_name}/s"
        )

    def record(self, failed: bool, items: int = 0) -> None:
        """One slide finished: failed, or done with ``items`` new work items."""
        if failed:
            self.failed += 1
        else:
            self.done += 1
            self.items += items
        self.bar.update(1)
        self._show()

    def close(self) -> None:
        self.bar.close()


def _apply_record(outcome: SlideOutcome, record: Mapping[str, Any]) -> None:
    outcome.worker = record.get("worker")
    outcome.seconds += float(record.get("seconds") or 0.0)
    outcome.cpu_seconds += float(record.get("cpu_seconds") or 0.0)
    if record["ok"]:
        result = record["result"]
        outcome.status = result["status"]
        outcome.n_patches = result["n_patches"]
        outcome.counts = result["counts"]
        outcome.error_type = outcome.error = None
    else:
        outcome.status = "failed"
        outcome.error_type = record["error_type"]
        outcome.error = record["error"]
        if outcome.error_type == "MissingMppError":  # the fix differs in a batch
            outcome.error += "; in a batch, write the slide's µm/px in the manifest's mpp column"


def _skipped_outcomes(
    store: Any, manifest: Manifest, outcomes: dict[str, SlideOutcome], settings: Mapping[str, Any]
) -> set[str]:
    """Mark slides the store holds complete from the same inputs as skipped. One held
    complete from another slide file, annotation file or output-changing setting is
    failed with what changed and the way out: skipping it would keep the old result
    under the new inputs' name."""
    from wsi_tools.extract import already_extracted_message, changes_since_extraction

    skipped = set()
    for entry in manifest.entries:
        slide_id, outcome = entry.slide_id, outcomes[entry.slide_id]
        if not store.is_complete(slide_id):  # a damaged slide is extracted again
            continue
        skipped.add(slide_id)
        attrs = store.slide_attrs(slide_id)
        config = extraction_config(settings, entry.set, entry.mpp)
        changed = changes_since_extraction(attrs, entry.slide_path, entry.annotation_path, config)
        if changed:
            outcome.status = "failed"
            outcome.error_type = "ConfigError"
            outcome.error = already_extracted_message(store.path, slide_id, changed)
            continue
        store.remove_leftovers(slide_id)  # as extract_slide does for a complete slide
        outcome.status = "skipped"
        outcome.n_patches = int(attrs["n_patches"]) if "n_patches" in attrs else len(store.coords(slide_id))
        outcome.counts = _plain(attrs.get("counts") or {})
    return skipped


def _check_settings(settings: Mapping[str, Any]) -> None:
    """Fail on bad settings here, once, not once per slide on the workers."""
    from wsi_tools.annotations import load_label_map

    try:
        extraction_config(settings, "weak", None)
    except TypeError as error:  # a key ExtractionConfig does not know
        raise ConfigError(f"extraction settings rejected: {error}") from error
    load_label_map(settings.get("label_map"))


def run_batch(
    manifest: Manifest | str | Path,
    store_path: str | Path,
    settings: Mapping[str, Any] | None = None,
    options: BatchOptions | None = None,
    *,
    extract_fn: Callable[..., Any] | None = None,
) -> BatchReport:
    """Extract every manifest slide into ``store_path``; returns (and writes) the run report.

    ``settings`` are extraction settings from :func:`load_settings` (None: the
    defaults). ``extract_fn`` replaces ``extract_slide`` (same signature; for
    fault-injection tests); it must be importable by the workers.
    """
    from wsi_tools.store import PatchStore

    options = options or BatchOptions()
    if options.qc_dir is not None:  # workers may run elsewhere: no relative paths
        options = dataclasses.replace(options, qc_dir=str(Path(options.qc_dir).expanduser().resolve()))
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    settings = dict(settings) if settings is not None else load_settings()
    _check_settings(settings)
    store_path = Path(store_path).expanduser().resolve()
    store = PatchStore(store_path, mode="a")  # created here, before workers race to create it

    run_id = new_run_id()
    started = time.perf_counter()
    outcomes = {
        e.slide_id: SlideOutcome(
            slide_id=e.slide_id, slide_path=str(e.slide_path), set=e.set, line=e.line, split=e.split
        )
        for e in manifest.entries
    }
    warnings: list[str] = []
    skipped = set() if options.overwrite else _skipped_outcomes(store, manifest, outcomes, settings)
    pending = [entry for entry in manifest.entries if entry.slide_id not in skipped]
    report = BatchReport(
        run_id=run_id,
        store=str(store_path),
        manifest=str(manifest.path),
        run_dir=str(store_path / "runs" / run_id),
        started=now_iso(),
        finished=None,
        seconds=0.0,
        workers=None if options.scheduler else (options.workers or available_cores()),
        scheduler=options.scheduler,
        settings=settings,
        options={**asdict(options), "manifest": str(manifest.path)},
        warnings=warnings,
        slides=list(outcomes.values()),
    )

    def save() -> None:
        report.seconds = time.perf_counter() - started
        write_report(report, Path(report.run_dir))

    save()
    refused = sum(outcomes[slide_id].status == "failed" for slide_id in skipped)
    progress = SlideProgress(
        len(outcomes), len(skipped) - refused, refused, options.progress, "batch", "patches"
    )
    try:
        if pending:
            _run_on_cluster(
                pending, outcomes, store_path, settings, options, run_id, extract_fn, progress, save
            )
        report.finished = now_iso()
    finally:
        report.warnings += _empty_slide_warnings(report)
        progress.close()
        save()
    return report


def _empty_slide_warnings(report: BatchReport) -> list[str]:
    from wsi_tools.extract import why_empty

    return [f"{o.slide_id}: kept no patch ({why_empty(o.counts)})" for o in report.empty()]


def _run_on_cluster(
    pending: list[ManifestEntry],
    outcomes: dict[str, SlideOutcome],
    store_path: Path,
    settings: dict[str, Any],
    options: BatchOptions,
    run_id: str,
    extract_fn: Callable[..., Any] | None,
    progress: SlideProgress,
    save: Callable[[], None],
) -> None:
    from distributed import as_completed

    jobs = {entry.slide_id: _job(entry, store_path, settings, options) for entry in pending}
    # Largest slides first: the run's tail is then short slides, not one big one.
    sizes = {entry.slide_id: entry.slide_path.stat().st_size for entry in pending}
    order = sorted(jobs, key=lambda slide_id: -sizes[slide_id])
    with dask_client(options.workers, options.scheduler) as client:

        def submit(slide_id: str) -> Any:
            outcome = outcomes[slide_id]
            outcome.attempts += 1
            suffix = "" if outcome.attempts == 1 else f"-retry{outcome.attempts - 1}"
            return client.submit(
                slide_task,
                jobs[slide_id],
                extract_fn,
                key=f"extract-{slide_id}-{run_id}{suffix}",
                pure=False,
                retries=0,  # retries are ours: only for transient-looking errors
                priority=sizes[slide_id],
            )

        slide_of: dict[str, str] = {}
        queue = as_completed()
        for slide_id in order:
            future = submit(slide_id)
            slide_of[future.key] = slide_id
            queue.add(future)
        last_save = time.perf_counter()
        for future in queue:
            slide_id = slide_of.pop(future.key)
            outcome = outcomes[slide_id]
            if future.status == "finished":
                record = future.result()
                if not record["ok"] and record["transient"] and outcome.attempts <= options.retries:
                    outcome.seconds += float(record.get("seconds") or 0.0)
                    outcome.cpu_seconds += float(record.get("cpu_seconds") or 0.0)
                    retry = submit(slide_id)
                    slide_of[retry.key] = slide_id
                    queue.add(retry)
                    continue
                _apply_record(outcome, record)
            else:  # the task itself failed: KilledWorker (its worker died) or cancelled
                error = future.exception() if future.status == "error" else None
                outcome.status = "failed"
                outcome.error_type = type(error).__name__ if error is not None else "Cancelled"
                outcome.error = (
                    f"{error}; the worker process died while extracting this slide"
                    if error is not None
                    else "the task was cancelled"
                )
            future.release()
            progress.record(
                outcome.status == "failed", outcome.n_patches if outcome.status == "complete" else 0
            )
            if time.perf_counter() - last_save > REPORT_EVERY_S:
                save()
                last_save = time.perf_counter()
