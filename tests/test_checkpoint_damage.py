"""A tampered or diverged checkpoint is refused (issue 13): a NaN model scores
nothing positive, so mining would report 0 false positives with exit 0."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_tools.cli import main
from wsi_tools.errors import ModelError
from wsi_tools.train.checkpoint import Checkpoint, read_checkpoint, save_checkpoint, tensors_digest
from wsi_tools.train.inference import check_finite_outputs


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "fc.bias": torch.zeros(1),
        "bn.num_batches": torch.tensor(3),
    }
    save_checkpoint(path, Checkpoint(config={"seed": 0}, model=model, splits={"s": "train"}))
    return path


def test_a_saved_checkpoint_carries_its_weights_checksum_and_reads_back(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "best.pt")
    payload = read_checkpoint(path)
    assert payload["model_sha256"] == tensors_digest(payload["model"])
    assert len(payload["model_sha256"]) == 64


def test_changed_weights_fail_the_checksum(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "best.pt")
    payload = torch.load(path, weights_only=True)
    payload["model"]["conv.weight"].view(-1)[: 2000 // 4] += 1e-3  # about 2,000 bytes of one tensor
    torch.save(payload, path)
    with pytest.raises(ModelError, match="do not match the checksum"):
        read_checkpoint(path)


def test_flipped_bytes_in_the_file_are_refused(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "best.pt")
    data = bytearray(path.read_bytes())
    raw = torch.load(path, weights_only=True)["model"]["conv.weight"].numpy().tobytes()
    start = bytes(data).find(raw[:64])
    assert start > 0  # the tensor's bytes are stored as they are
    for offset in range(start + 8, start + 8 + 40, 4):
        data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        read_checkpoint(path)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_even_with_a_matching_checksum(tmp_path: Path, value: float) -> None:
    path = _checkpoint(tmp_path / "best.pt")
    payload = torch.load(path, weights_only=True)
    payload["model"]["fc.bias"][0] = value
    payload["model_sha256"] = tensors_digest(payload["model"])  # as a diverged run would save it
    torch.save(payload, path)
    with pytest.raises(ModelError, match="'fc.bias' holds NaN or infinite values"):
        read_checkpoint(path)


def test_checkpoints_written_before_checksums_still_load(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "best.pt")
    payload = torch.load(path, weights_only=True)
    del payload["model_sha256"]
    torch.save(payload, path)
    assert set(read_checkpoint(path)["model"]) == {"conv.weight", "fc.bias", "bn.num_batches"}


def test_the_cli_gives_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _checkpoint(tmp_path / "best.pt")
    payload = torch.load(path, weights_only=True)
    payload["model"]["fc.bias"][0] = math.nan
    torch.save(payload, path)
    code = main(
        [
            "mine",
            "--checkpoint",
            str(path),
            "--store",
            str(tmp_path / "none.zarr"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert "best.pt" in captured.err and "checksum" in captured.err
    assert not (tmp_path / "m").exists()


def test_non_finite_model_outputs_are_an_error() -> None:
    check_finite_outputs(np.zeros((3, 4), np.float32), "embeddings")
    with pytest.raises(ModelError, match="non-finite logits for 1 of 3 patches"):
        check_finite_outputs(np.array([0.1, np.nan, 2.0], np.float32), "logits")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no config", "checkpoint lacks config"),
        ("no model", "checkpoint lacks model"),
        (
            "wrong shape",
            "weights do not fit the model (resnet18, one logit): size mismatch for backbone.fc.weight",
        ),
        (
            "extra key",
            'weights do not fit the model (resnet18, one logit): Unexpected key(s) in state_dict: "extra.w"',
        ),
    ],
)
def test_a_checkpoint_of_the_wrong_shape_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, message: str
) -> None:
    from wsi_tools.train.model import build_model

    state = build_model("none", 32).state_dict()
    if damage == "wrong shape":
        state["backbone.fc.weight"] = torch.zeros(3, 3)
    if damage == "extra key":
        state["extra.w"] = torch.zeros(2)
    path = tmp_path / "best.pt"
    save_checkpoint(path, Checkpoint(config={"input_size": 32}, model=state, splits={"s": "train"}))
    payload = torch.load(path, weights_only=True)
    if damage.startswith("no "):
        payload.pop(damage.removeprefix("no "))
        torch.save(payload, path)
    for command in (["evaluate", "--workers", "0"], ["mine", "--out", str(tmp_path / "m")]):
        code = main(
            [command[0], "--checkpoint", str(path), "--store", str(tmp_path / "s.zarr"), *command[1:]]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "best.pt" in err and message in err
