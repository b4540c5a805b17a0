"""Many slides on the Dask engine ``batch`` uses: one task per slide, a Predictor
loaded once per worker process, a failed slide recorded while the others finish.
On a machine with several GPUs each local worker takes its own (:func:`worker_device`).

Resume needs nothing from the client: a slide already predicted into ``OUT`` with
the same checkpoint and settings is skipped by the worker (``Predictor``'s own
rule), so a rerun of the same command picks up where a killed one stopped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from wsi_tools.predict._cohort import CohortSlide
from wsi_tools.predict._config import PredictConfig
from wsi_tools.predict._predict import Predictor, SlidePrediction

# One Predictor per (checkpoint, settings) in each worker process: the model loads once.
_PREDICTORS: dict[tuple[str, str], Predictor] = {}


def spreads_over_gpus(requested: str, gpu_count: int) -> bool:
    """Whether slides go one worker per GPU: the device was left to ``auto`` or ``cuda``
    and the machine has several."""
    return requested in ("auto", "cuda") and gpu_count > 1


def worker_device(requested: str, worker_name: object, gpu_count: int) -> str:
    """One GPU per worker: worker i of a local cluster (named 0, 1, ...) takes
    ``cuda:(i mod gpu_count)`` when ``auto`` or ``cuda`` was asked for and the machine
    has several GPUs; a named device (``cuda:1``, ``cpu``), one GPU, or a worker of a
    cluster of one's own (named otherwise: start it one GPU per worker, e.g. with
    CUDA_VISIBLE_DEVICES) keeps what was asked for."""
    if not spreads_over_gpus(requested, gpu_count) or not isinstance(worker_name, int | str):
        return requested
    try:
        index = int(worker_name)
    except ValueError:
        return requested
    return f"cuda:{index % gpu_count}"


def predict_task(
    checkpoint: str,
    config: PredictConfig,
    slide: CohortSlide,
    out: str,
    overwrite: bool,
    cpu_threads: int | None = None,
) -> SlidePrediction | dict[str, str]:
    """Runs on a worker: one slide, or the toolkit error that stopped it as a dict.
    ``cpu_threads``: torch's threads in this worker, so that the workers of one
    machine share its cores instead of each taking all of them."""
    import torch
    from distributed import get_worker

    from wsi_tools.errors import WsiToolsError

    try:
        name: object = get_worker().name
    except ValueError:  # not on a worker (called directly)
        name = None
    device = worker_device(config.device, name, torch.cuda.device_count())
    if device != config.device:
        config = config.replace(device=device)
    if cpu_threads is not None and torch.get_num_threads() != cpu_threads:
        torch.set_num_threads(cpu_threads)
    key = (checkpoint, repr(config))
    try:
        if key not in _PREDICTORS:
            _PREDICTORS[key] = Predictor(checkpoint, config)
        return _PREDICTORS[key].predict_slide(
            slide.slide_path, out, slide_id=slide.slide_id, slide_mpp=slide.mpp, overwrite=overwrite
        )
    except WsiToolsError as error:
        return {"error": str(error), "error_type": type(error).__name__}


def predict_on_cluster(
    cohort: Sequence[CohortSlide],
    checkpoint: str | Path,
    config: PredictConfig,
    out: Path,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    on_result: Callable[[CohortSlide, SlidePrediction | dict[str, str]], None] | None = None,
) -> list[SlidePrediction | dict[str, str]]:
    """Every slide of ``cohort`` as a task; results in cohort order (a failure as a
    dict with ``error`` and ``error_type``, a task whose worker died included)."""
    from distributed import as_completed

    from wsi_tools.batch.engine import available_cores, dask_client

    out = out.expanduser().resolve()  # workers may run elsewhere: no relative paths
    cpu_threads = None if scheduler else max(1, available_cores() // (workers or available_cores()))
    results: dict[int, SlidePrediction | dict[str, str]] = {}
    run = uuid.uuid4().hex[:8]
    with dask_client(workers, scheduler) as client:
        futures = {
            client.submit(
                predict_task,
                str(Path(checkpoint).resolve()),
                config,
                slide,
                str(out),
                overwrite,
                cpu_threads,
                key=f"predict-{run}-{number}",
                pure=False,
            ): number
            for number, slide in enumerate(cohort)
        }
        for future in as_completed(futures):
            number = futures[future]
            try:
                result = future.result()
            except Exception as error:  # the task itself failed: its worker died, or a bug
                result = {"error": f"{type(error).__name__}: {error}", "error_type": type(error).__name__}
            results[number] = result
            if on_result is not None:
                on_result(cohort[number], result)
    return [results[number] for number in range(len(cohort))]
