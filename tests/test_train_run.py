"""End-to-end trainer runs on tiny separable stores (CPU, weights none)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_tools.cli import main
from wsi_tools.errors import ConfigError
from wsi_tools.testing.toy import write_toy_store
from wsi_tools.train import trainer
from wsi_tools.train.checkpoint import read_checkpoint
from wsi_tools.train.config import load_config
from wsi_tools.train.data import PatchRef, open_store
from wsi_tools.train.evaluation import evaluate
from wsi_tools.train.inference import embed_patches, load_model, predict
from wsi_tools.train.trainer import train

# Six slides with positives, four without: 4/1/1 and 2/1/1 slides per split.
LEARN_SLIDES = [(f"hard{i}", "hard", 12, 5 if i < 6 else 0) for i in range(10)] + [("weak0", "weak", 10, 0)]
QUICK = [
    "input_size=32",
    "batch_size=8",
    "num_workers=0",
    "bootstrap=20",
    "lr=1e-3",
    "progress=false",
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The suite shares two busy cores: oversubscribed OpenMP threads make these tiny
    convolutions 3-20x slower, so this module computes on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def learn_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_store(tmp_path_factory.mktemp("learn") / "store.zarr", LEARN_SLIDES, patch_size=64)


@pytest.fixture(scope="module")
def learned(learn_store: Path, tmp_path_factory: pytest.TempPathFactory) -> trainer.TrainResult:
    config = load_config(
        None,
        [
            "epochs=3",
            "input_size=64",
            "batch_size=16",
            "num_workers=0",
            "augment=false",
            "bootstrap=50",
            "lr=1e-3",
        ],
    )
    return train(config, learn_store, tmp_path_factory.mktemp("runs") / "weak", progress=False)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    slides = [(f"s{i}", "hard", 6, 3 if i < 3 else 0) for i in range(6)] + [("w", "weak", 6, 0)]
    return write_toy_store(tmp_path_factory.mktemp("small") / "store.zarr", slides, patch_size=32, seed=5)


def test_tiny_run_learns_and_writes_the_run_folder(learned: trainer.TrainResult, learn_store: Path) -> None:
    run = learned.run_dir
    val = learned.metrics["splits"]["val"]["patch"]
    assert val["auroc"]["value"] > 0.9, val
    for name in (
        "config.yaml",
        "splits.csv",
        "best.pt",
        "last.pt",
        "history.csv",
        "predictions.csv",
        "metrics.json",
        "roc.png",
        "pr.png",
        "loss.png",
    ):
        assert (run / name).stat().st_size > 0, name
    for png in ("roc.png", "pr.png", "loss.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Splits: by slide, each slide once, the weak slide left for mining.
    rows = list(csv.DictReader((run / "splits.csv").open()))
    assert [r["slide_id"] for r in rows].count("hard0") == 1
    assert {r["slide_id"] for r in rows} == {f"hard{i}" for i in range(10)}
    splits = {r["slide_id"]: r["split"] for r in rows}
    assert sorted(splits.values()).count("test") == 2 and sorted(splits.values()).count("val") == 2

    # Predictions: one row per val and test patch, with the store's coordinates and labels.
    predictions = list(csv.DictReader((run / "predictions.csv").open()))
    assert list(predictions[0]) == ["slide_id", "x", "y", "label", "prob", "split"]
    assert len(predictions) == 12 * 4 and {p["split"] for p in predictions} == {"val", "test"}
    store = open_store(learn_store)
    first = predictions[0]
    index = int(
        np.nonzero((store.coords(first["slide_id"]) == [int(first["x"]), int(first["y"])]).all(1))[0][0]
    )
    assert int(first["label"]) == int(store.labels(first["slide_id"])[index])
    assert all(splits[p["slide_id"]] == p["split"] for p in predictions)

    # metrics.json: the test split at the top, every metric with a CI, slide level beside it.
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["threshold"] == 0.1
    for key in ("auroc", "auprc", "f1", "sensitivity", "specificity", "log_loss"):
        assert set(metrics[key]) == {"value", "ci95"}
        assert set(metrics["slide_level"][key]) == {"value", "ci95"}
    assert metrics["n"] == 24 and metrics["slide_level"]["n"] == 2
    probs = np.array([float(p["prob"]) for p in predictions if p["split"] == "test"])
    labels = np.array([int(p["label"]) for p in predictions if p["split"] == "test"])
    assert metrics["confusion"]["tp"] == int(((probs >= 0.1) & (labels == 1)).sum())

    # Best checkpoint = lowest validation loss; the per-batch cosine reaches zero.
    history = learned.history
    losses = [h["val_loss"] for h in history]
    checkpoint = read_checkpoint(learned.best_checkpoint)
    assert checkpoint["best_epoch"] == 1 + int(np.argmin(losses))
    last = read_checkpoint(learned.last_checkpoint)
    steps_per_epoch = last["scheduler"]["last_epoch"] // 3
    assert last["scheduler"]["total_steps"] == 3 * steps_per_epoch
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert history[0]["lr"] > 1e-4
    assert all(h["patches_per_s"] > 0 for h in history)


def test_predict_embed_and_evaluate_reuse_the_checkpoint(
    learned: trainer.TrainResult, learn_store: Path, tmp_path: Path
) -> None:
    model, config = load_model(learned.best_checkpoint)
    assert config.input_size == 64 and not model.training
    refs = [PatchRef("hard0", 3), PatchRef("weak0", 0), ("hard0", 0)]
    probs = predict(model, learn_store, refs, batch_size=2)
    assert probs.shape == (3,) and ((probs >= 0) & (probs <= 1)).all()
    # Same patch, same score, whatever the batch or order.
    assert predict(model, learn_store, refs[::-1], batch_size=3)[::-1] == pytest.approx(probs, abs=1e-5)
    features = embed_patches(model, learn_store, refs, batch_size=2)
    assert features.shape == (3, 512) and features.dtype == np.float32
    with torch.no_grad():
        logits = model.backbone.fc(torch.from_numpy(features)).squeeze(1)
    assert torch.sigmoid(logits).numpy() == pytest.approx(probs, abs=1e-4)

    metrics = evaluate(learned.best_checkpoint, learn_store, "test", tmp_path / "eval", bootstrap=20)
    assert metrics["split"] == "test" and metrics["n"] == 24
    trained = json.loads((learned.run_dir / "metrics.json").read_text())
    assert metrics["auroc"]["value"] == pytest.approx(trained["auroc"]["value"])
    for name in ("predictions.csv", "metrics.json", "roc.png", "pr.png"):
        assert (tmp_path / "eval" / name).is_file()


def test_resume_continues_like_a_straight_run(
    small_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(None, [*QUICK, "epochs=2", "augment=true"])
    straight = train(config, small_store, tmp_path / "straight")

    real_epoch = trainer.train_one_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):  # noqa: ANN002, ANN003 - same signature as the real one
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, small_store, tmp_path / "crashed")
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    assert read_checkpoint(tmp_path / "crashed" / "last.pt")["epoch"] == 1

    resumed = train(config, small_store, tmp_path / "crashed", resume=tmp_path / "crashed" / "last.pt")
    a, b = read_checkpoint(straight.last_checkpoint), read_checkpoint(resumed.last_checkpoint)
    assert b["epoch"] == a["epoch"] == 2 and len(b["history"]) == 2
    assert b["scheduler"]["last_epoch"] == a["scheduler"]["last_epoch"]
    assert b["splits"] == a["splits"]
    # Same weights as the straight run: model, Adam moments, schedule and the
    # (seed, epoch)-driven order and augmentation all carried over.
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key
    assert [h["train_loss"] for h in b["history"]] == pytest.approx(
        [h["train_loss"] for h in a["history"]], abs=1e-5
    )

    # Extending a finished run: epochs and the schedule continue to the new end.
    longer = train(
        config.replace(epochs=3), small_store, tmp_path / "straight", resume=straight.last_checkpoint
    )
    state = read_checkpoint(longer.last_checkpoint)
    steps = a["scheduler"]["last_epoch"] // 2
    assert state["epoch"] == 3 and state["scheduler"]["last_epoch"] == 3 * steps
    assert [h["epoch"] for h in longer.history] == [1, 2, 3]
    # The third epoch really trained: the cosine restarted from its closed form, not from 0.
    assert not torch.equal(state["model"]["backbone.conv1.weight"], a["model"]["backbone.conv1.weight"])
    assert longer.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_mined_negatives_join_training_only(small_store: Path, tmp_path: Path) -> None:
    config = load_config(None, [*QUICK, "epochs=1", "augment=false"])
    mined = [PatchRef("w", 0), PatchRef("w", 4)]
    result = train(config, small_store, tmp_path / "strong", extra_train_negatives=mined)
    state = read_checkpoint(result.best_checkpoint)
    assert state["extra_train_negatives"] == [["w", 0], ["w", 4]]
    assert result.metrics["training"]["extra_train_negatives"] == 2
    assert "w" not in result.splits
    assert (tmp_path / "strong" / "extra_train_negatives.csv").read_text().splitlines()[
        0
    ] == "slide_id,index,x,y"
    leak = [PatchRef(next(s for s, v in result.splits.items() if v == "test"), 0)]
    with pytest.raises(ConfigError, match="split leak"):
        train(config, small_store, tmp_path / "leaky", splits=result.splits, extra_train_negatives=leak)


def test_cli_train_and_evaluate(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "cli"
    args = ["train", "--store", str(small_store), "--out", str(run), "--no-progress"]
    for item in [*QUICK, "epochs=1", "augment=false"]:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test split" in out and "best checkpoint" in out
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--store", str(small_store), "--split", "val",
                 "--bootstrap", "10", "--workers", "0", "--json", "--no-progress"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["split"] == "val"
    assert (run / "eval-val" / "metrics.json").is_file()
    # Bad input: one line naming the key, exit 2.
    assert main(["train", "--store", str(small_store), "--out", str(run), "--set", "epoch=2"]) == 2
    err = capsys.readouterr().err
    assert "'epoch'" in err and "did you mean epochs?" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: fast\n")
    assert main(["train", "--config", str(bad), "--store", str(small_store), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "'lr'" in err
    assert main(["train", "--out", str(run)]) == 2
    assert "--store" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--store", str(small_store)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_torchrun_ddp_on_two_cpu_processes(small_store: Path, tmp_path: Path) -> None:
    """DDP (gloo on CPU): both ranks train their shard, rank 0 alone writes and reports."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "wsi_tools", "train"]
    command += ["--store", str(small_store), "--out", str(run), "--no-progress"]
    for item in [*QUICK, "epochs=1", "augment=false", "bootstrap=0"]:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device cpu x2" in done.stderr
    assert done.stdout.count("run folder:") == 1  # rank 0 only
    state = read_checkpoint(run / "best.pt")
    assert state["epoch"] == 1
    # Each rank takes every second patch of the epoch order, in batches of 8.
    per_rank = math.ceil(sum(6 for v in state["splits"].values() if v == "train") / 2)
    assert state["scheduler"]["last_epoch"] == math.ceil(per_rank / 8)
    assert (run / "metrics.json").is_file() and (run / "predictions.csv").is_file()


def test_cosine_schedule_is_closed_form_and_re_spans_on_resume() -> None:
    from wsi_tools.train.checkpoint import CosineSchedule, cosine_lr

    assert cosine_lr(0, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert cosine_lr(5, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_lr(10, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert cosine_lr(99, 10, 1.0, 0.1) == pytest.approx(0.1)  # past the end: stays at eta_min
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    schedule = CosineSchedule(optimizer, total_steps=4, eta_min=0.0)
    for _ in range(2):
        schedule.step()
    assert schedule.last_lr == pytest.approx(0.1)
    # The run is extended to 8 steps: it carries on from step 2 of the new, longer curve.
    fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    resumed = CosineSchedule(fresh, total_steps=8, eta_min=0.0, state=schedule.state_dict())
    assert resumed.base_lrs == [0.2]
    assert resumed.last_lr == pytest.approx(cosine_lr(2, 8, 0.2, 0.0))
    # torch's CosineAnnealingLR state (old checkpoints) reads the same.
    old = {"last_epoch": 3, "base_lrs": [0.2], "T_max": 4, "eta_min": 0.0, "_last_lr": [0.0]}
    assert CosineSchedule(fresh, total_steps=6, eta_min=0.0, state=old).last_lr == pytest.approx(
        cosine_lr(3, 6, 0.2, 0.0)
    )


def test_a_training_method_plugs_in_its_sampler_and_step(small_store: Path, tmp_path: Path) -> None:
    """A new method supplies the order of the patches and the loss; the loop is the trainer's."""
    from wsi_tools.train.loop import bce_step

    seen_labels: list[int] = []
    steps: list[int] = []

    class FirstHalf:
        def __init__(self, n: int) -> None:
            self.n = n

        def set_epoch(self, epoch: int) -> None:
            pass

        def __len__(self) -> int:
            return self.n // 2

        def __iter__(self) -> Iterator[int]:
            return iter(range(self.n // 2))

    def sampler(table, config, runtime):  # type: ignore[no-untyped-def]
        seen_labels.extend(int(v) for v in table.labels)
        return FirstHalf(len(table))

    def step(model, images, labels, runtime):  # type: ignore[no-untyped-def]
        steps.append(len(labels))
        return bce_step(model, images, labels, runtime)

    config = load_config(None, [*QUICK, "epochs=1", "augment=false"])
    result = train(config, small_store, tmp_path / "plugged", sampler=sampler, step=step)
    assert seen_labels and set(seen_labels) <= {0, 1}
    assert sum(steps) == len(seen_labels) // 2  # the loop drew only what the sampler gave
    assert result.history[0]["epoch"] == 1


def test_cpu_threads_make_a_run_repeat_whatever_the_ambient_thread_count(
    small_store: Path, tmp_path: Path
) -> None:
    """A convolution's sums depend on torch's thread count: with ``cpu_threads`` fixed, a run
    started under 1 or 2 ambient threads gives the same weights bit for bit (the demo's
    reproducibility across machines), and the ambient setting comes back afterwards."""
    config = load_config(None, [*QUICK, "epochs=1", "augment=false", "cpu_threads=2"])
    weights = []
    for ambient in (1, 2):
        torch.set_num_threads(ambient)
        result = train(config, small_store, tmp_path / f"ambient{ambient}")
        assert torch.get_num_threads() == ambient
        assert result.metrics["training"]["environment"]["torch_threads"] == 2
        weights.append(read_checkpoint(result.last_checkpoint)["model"])
    torch.set_num_threads(1)
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_a_run_without_validation_or_test_slides_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two hard slides: 0.6/0.2/0.2 leaves one split empty, so "best" would be chosen blind.
    store = write_toy_store(tmp_path / "two.zarr", [("a", "hard", 6, 3), ("b", "hard", 6, 0)], patch_size=32)
    args = [
        "train",
        "--store",
        str(store),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--set",
        "epochs=1",
    ]
    for item in QUICK:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hold no patch" in err and "allow_empty_splits=true" in err
    assert not (tmp_path / "run" / "best.pt").exists()
    assert main([*args, "--set", "allow_empty_splits=true"]) == 0  # the explicit way to do it anyway
    assert (tmp_path / "run" / "best.pt").is_file()


def test_the_run_eta_is_printed_and_a_long_run_gets_a_note(
    small_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [trainer._duration(s) for s in (12, 420, 7500)] == ["12s", "7m", "2h05m"]
    monkeypatch.setattr(trainer, "LONG_RUN_S", 0.0)  # every run is "long": the note must appear
    config = load_config(None, [*QUICK, "epochs=2", "augment=false", "bootstrap=0"])
    train(config, small_store, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert "run ETA" in epoch_lines[0] and "run ETA" not in epoch_lines[-1]  # nothing left after the last
    assert "note: at this pace the remaining 1 epoch(s) take about" in err
