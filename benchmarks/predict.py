"""Sliding-window inference: the reading pipeline, the model, ``predict`` end to end, peak RSS.

Two generated Aperio-like pyramids (``synth.tissue_content`` with sparse,
biopsy-like islands; levels 0 and 1 from ``synth.banked_tiles`` so a 10 Gpx
slide is written in about a minute), cached under ``--cache``:

- ``x20``: 40960 x 30720 px at 0.5 µm/px, levels at downsample 1, 4, 16;
  the seed paper's setting (Kanavati et al.): 224 px windows at 0.5 µm/px,
  stride 112, read from level 0 as is;
- ``large``: 100000 x 100000 px at 0.5 µm/px, levels 1, 4, 16, 64; 224 px
  windows at 2.0 µm/px (×5), stride 112, read from the 25000 x 25000 px level 1
  (held whole in memory, that level alone would be 1.9 GB).

The model is a ResNet18 at input 224 with random weights (speed and memory do
not depend on them). Each measurement runs in a fresh child process (clean
peak RSS, imports not timed):

- ``read``: the windows ``predict`` would score, through ``Predictor.read_batches``
  (reader threads, full batches), nothing scored; with the default reader
  threads and with one (``read_patches_per_s_threads1``: what one core feeds);
- ``model``: ``model(x)`` on ready, normalised batches of the same size on
  the device (``model_patches_per_s``), and ``Predictor.score`` on uint8
  batches (``score_patches_per_s``: with the conversion and normalisation);
- ``predict``: ``Predictor.predict_slide`` end to end (tissue, reading, model,
  map, regions, XML/GeoJSON, heatmap) with its peak RSS.

``overlap_efficiency`` = predict / min(read, model): 1.0 when the slower
stage never waits for the other. The last stdout line is one JSON object
(``read_patches_per_s``, ``model_patches_per_s``, ``predict_patches_per_s``,
``overlap_efficiency``, ``peak_rss_mb``, ``gpus_fed_per_read_core`` and a
block per slide). ``gpus_fed_per_read_core`` divides one reader thread's
windows/s by ``--gpu-forward`` (default 3000 patches/s: a ResNet18 at 224 px
under AMP on an H100, the issue's figure; measured only where a GPU is lent).

    .venv/bin/python benchmarks/predict.py [--cache DIR] [--skip-large] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLIDES = {
    # name: (size, downsamples, checkpoint target mpp)
    "x20": ((40960, 30720), (1, 4, 16), 0.5),
    "large": ((100_000, 100_000), (1, 4, 16, 64), 2.0),
}
SLIDE_MPP = 0.5
PATCH = 224
BLOB_PX = 6000
SPARSITY = 1.0  # about 5 % of the slide is tissue, in islands
BANKED_UP_TO = 4  # levels at downsample <= 4 come from the tile bank


def generate(cache: Path, name: str) -> tuple[Path, float]:
    from wsi_tools.testing.synth import banked_tiles, tissue_content, write_aperio_svs

    size, downsamples, _ = SLIDES[name]
    path = cache / f"predict_{name}_{size[0]}x{size[1]}_s{SPARSITY:g}.svs"
    if path.exists():
        return path, 0.0
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    content = tissue_content(seed=20, blob_px=BLOB_PX, sparsity=SPARSITY)
    bank = banked_tiles(content, seed=20)
    partial = path.with_suffix(".part.svs")
    write_aperio_svs(
        partial,
        content=content,
        size=size,
        mpp=SLIDE_MPP,
        app_mag=20,
        downsamples=downsamples,
        encoded=lambda downsample, level_size: (
            bank(downsample, level_size) if downsample <= BANKED_UP_TO else None
        ),
    )
    partial.rename(path)
    return path, time.perf_counter() - started


def write_checkpoint(path: Path, target_mpp: float) -> Path:
    import torch

    from wsi_tools.testing.toy import TOY_TRAIN_KEYS
    from wsi_tools.train.checkpoint import Checkpoint, save_checkpoint
    from wsi_tools.train.config import TrainConfig
    from wsi_tools.train.model import PatchClassifier

    torch.manual_seed(0)
    config = TrainConfig(**{**TOY_TRAIN_KEYS, "input_size": PATCH})
    model = PatchClassifier(config.input_size)
    pixels = {"target_mpp": target_mpp, "patch_size": PATCH, "tolerance": 0.05, "input_size": PATCH}
    save_checkpoint(
        path, Checkpoint(config=config.to_dict(), model=model.state_dict(), splits={}, pixels=pixels)
    )
    return path


# --------------------------------------------------------------------------- children


def child(phase: str, slide_path: str, checkpoint: str, out: str, threads: int, device: str) -> None:
    from wsi_tools.predict import PredictConfig, Predictor
    from wsi_tools.slide import open_slide

    config = PredictConfig(threads=threads, device=device, progress=False)
    predictor = Predictor(checkpoint, config)
    result: dict[str, float | int | str] = {"device": str(predictor.runtime.device)}
    started = time.perf_counter()
    if phase == "predict":
        prediction = predictor.predict_slide(slide_path, out, slide_id="bench")
        result.update(windows_per_second(int(prediction.scores["n_tiles"]), started))
    else:
        with open_slide(slide_path) as slide:
            windows = predictor.plan_windows(slide)
            if phase == "read":
                started = time.perf_counter()
                count = sum(len(patches) for _, patches in predictor.read_batches(slide, windows))
                result.update(windows_per_second(count, started))
            else:
                batches = []
                for _, patches in predictor.read_batches(slide, windows):
                    if len(patches) == config.batch_size:
                        batches.append(patches)
                    if len(batches) == 12:
                        break
                result.update(model_forward(predictor, batches))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def windows_per_second(count: int, started: float) -> dict[str, float | int]:
    seconds = time.perf_counter() - started
    return {"windows": count, "seconds": round(seconds, 2), "patches_per_s": round(count / seconds, 1)}


def model_forward(predictor, batches) -> dict[str, float]:
    """Patches/s of the bare forward on ready device batches, and of ``score`` on uint8 ones;
    the better of two rounds after a warm-up batch."""
    import torch

    from wsi_tools.train.data import resize_batch
    from wsi_tools.train.inference import to_device

    ready = [
        to_device(resize_batch(batch, predictor.pixels.input_size), predictor.runtime, predictor.transform)
        for batch in batches
    ]

    def synchronise() -> None:
        if predictor.runtime.cuda:
            torch.cuda.synchronize()

    def rate(step, items) -> float:
        step(items[0])
        synchronise()
        best = 0.0
        for _ in range(2):
            started = time.perf_counter()
            for item in items:
                step(item)
            synchronise()
            best = max(best, sum(len(item) for item in items) / (time.perf_counter() - started))
        return round(best, 1)

    def forward(x) -> None:
        with torch.no_grad(), predictor.runtime.autocast():
            predictor.model(x)

    return {
        "model_patches_per_s": rate(forward, ready),
        "score_patches_per_s": rate(predictor.score, batches),
        "batches": len(batches),
    }


def run_child(phase: str, slide: Path, checkpoint: Path, out: Path, threads: int, device: str) -> dict:
    command = [sys.executable, __file__, "--child", phase, str(slide), str(checkpoint), str(out)]
    command += ["--threads", str(threads), "--device", device]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"predict benchmark: the {phase} child failed:\n{completed.stderr[-4000:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def bench_slide(name: str, cache: Path, work: Path, device: str, threads: int, gpu_forward: float) -> dict:
    slide, generation_s = generate(cache, name)
    size, downsamples, target_mpp = SLIDES[name]
    checkpoint = write_checkpoint(work / f"{name}.pt", target_mpp)
    read = run_child("read", slide, checkpoint, work / "unused", threads, device)
    read_one = run_child("read", slide, checkpoint, work / "unused", 1, device)
    model = run_child("model", slide, checkpoint, work / "unused", threads, device)
    predicted = run_child("predict", slide, checkpoint, work / f"{name}_out", threads, device)
    slowest = min(read["patches_per_s"], model["model_patches_per_s"])
    return {
        "slide": slide.name,
        "size": list(size),
        "slide_mpp": SLIDE_MPP,
        "downsamples": list(downsamples),
        "window": f"{PATCH} px at {target_mpp} µm/px, stride {PATCH // 2}",
        "slide_mb": round(slide.stat().st_size / 2**20, 1),
        "generation_s": round(generation_s, 1),
        "device": predicted["device"],
        "windows": predicted["windows"],
        "reader_threads": threads,
        "read_patches_per_s": read["patches_per_s"],
        "read_patches_per_s_threads1": read_one["patches_per_s"],
        "model_patches_per_s": model["model_patches_per_s"],
        "score_patches_per_s": model["score_patches_per_s"],
        "predict_patches_per_s": predicted["patches_per_s"],
        "predict_s": predicted["seconds"],
        "overlap_efficiency": round(predicted["patches_per_s"] / slowest, 3),
        "gpus_fed_per_read_core": round(read_one["patches_per_s"] / gpu_forward, 2),
        "peak_rss_mb": predicted["peak_rss_mb"],
        "peak_rss_mb_read": read["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "wsi-tools-bench")
    parser.add_argument("--skip-large", action="store_true", help="only the 40k x 30k slide")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="reader threads (default: predict's)")
    parser.add_argument("--gpu-forward", type=float, default=3000.0, help="patches/s of one GPU's forward")
    parser.add_argument(
        "--child", nargs=4, metavar=("PHASE", "SLIDE", "CHECKPOINT", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    from wsi_tools.predict import PredictConfig

    threads = args.threads or PredictConfig.threads
    if args.child:
        child(*args.child, threads=threads, device=args.device)
        return
    slides = {}
    with tempfile.TemporaryDirectory(prefix="wsi-tools-bench-predict-") as work:
        for name in SLIDES:
            if name == "large" and args.skip_large:
                continue
            slides[name] = bench_slide(name, args.cache, Path(work), args.device, threads, args.gpu_forward)
            print(json.dumps({name: slides[name]}), file=sys.stderr)
    main_slide = slides["x20"]
    print(
        json.dumps(
            {
                "read_patches_per_s": main_slide["read_patches_per_s"],
                "model_patches_per_s": main_slide["model_patches_per_s"],
                "predict_patches_per_s": main_slide["predict_patches_per_s"],
                "overlap_efficiency": min(s["overlap_efficiency"] for s in slides.values()),
                "peak_rss_mb": max(s["peak_rss_mb"] for s in slides.values()),
                "gpus_fed_per_read_core": main_slide["gpus_fed_per_read_core"],
                "gpu_forward_reference_patches_per_s": args.gpu_forward,
                "slides": slides,
            }
        )
    )


if __name__ == "__main__":
    main()
