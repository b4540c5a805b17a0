"""Trainer pieces that need no store: config validation, splits, metrics, model, transforms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, average_precision_score

from wsi_tools.errors import ConfigError
from wsi_tools.train.augment import BatchTransform, denormalize, sample_transform
from wsi_tools.train.config import KEY_HELP, TrainConfig, load_config
from wsi_tools.train.metrics import compute_metrics, point_metrics, slide_scores
from wsi_tools.train.model import build_model, imagenet_weights_path
from wsi_tools.train.splits import (
    assert_disjoint,
    check_no_leak,
    make_splits,
    read_splits_csv,
    write_splits_csv,
)

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- config


def test_shipped_config_documents_every_key_and_loads() -> None:
    path = REPO / "configs" / "train.yaml"
    text = path.read_text()
    loaded = yaml.safe_load(text)
    assert set(loaded) == set(TrainConfig().to_dict()) == set(KEY_HELP)
    for key in KEY_HELP:
        # Each key has a comment line right above it.
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert lines[index - 1].startswith("#"), f"{key} is not documented in {path}"
    assert load_config(path) == TrainConfig()


def test_config_rejects_unknown_keys_and_bad_values_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'learning_rate'"):
        load_config(path)
    path.write_text("epochs: three\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'epochs'"):
        load_config(path)
    path.write_text("split_ratios: [0.5, 0.5]\n")
    with pytest.raises(ConfigError, match="'split_ratios'"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="'amp'"):
        load_config(None, ["amp=fp8"])
    with pytest.raises(ConfigError, match="'batchsize'"):
        load_config(None, ["batchsize=4"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ConfigError, match="'train_sets'"):
        load_config(None, ["train_sets=[hard, strong]"])


def test_overrides_are_read_as_yaml_and_win(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nlr: 1.0e-3\n")
    config = load_config(path, ["epochs=2", "train_sets=[hard, weak]", "lr=3e-4", "deterministic=true"])
    assert config.epochs == 2 and config.lr == pytest.approx(3e-4)
    assert config.train_sets == ("hard", "weak") and config.deterministic is True
    assert load_config(None, {"input_size": 64}).input_size == 64


# ---------------------------------------------------------------- splits


def test_splits_are_by_slide_stratified_seeded_and_fixed_ones_win() -> None:
    labels = {f"pos{i}": 1 for i in range(10)} | {f"neg{i}": 0 for i in range(10)}
    splits = make_splits(labels, (0.6, 0.2, 0.2), seed=1)
    assert set(splits) == set(labels)
    for label in (0, 1):
        counts = {
            s: sum(1 for k, v in splits.items() if v == s and labels[k] == label) for s in splits.values()
        }
        assert counts == {"train": 6, "val": 2, "test": 2}
    assert make_splits(dict(reversed(list(labels.items()))), seed=1) == splits
    assert make_splits(labels, seed=2) != splits
    fixed = make_splits(labels, seed=1, fixed={"pos0": "test", "neg3": "val"})
    assert fixed["pos0"] == "test" and fixed["neg3"] == "val"
    # Tiny cohorts still put each class in validation and test.
    tiny = make_splits({"a": 1, "b": 1, "c": 1, "d": 0, "e": 0, "f": 0}, seed=0)
    assert sorted(tiny.values()) == ["test", "test", "train", "train", "val", "val"]


def test_split_leak_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'s1' is in both 'train' and 'test'"):
        check_no_leak([("s1", "train"), ("s2", "val"), ("s1", "test")])
    with pytest.raises(ConfigError, match="split leak: slide 'b'"):
        assert_disjoint({"train": ["a", "b"], "val": ["c"], "test": ["b"]})
    assert_disjoint({"train": ["a", "a"], "val": ["c"], "test": ["d"]})
    csv_path = tmp_path / "splits.csv"
    csv_path.write_text("slide_id,split\ns1,train\ns2,val\ns1,test\n")
    with pytest.raises(ConfigError, match="splits.csv.*'s1'"):
        read_splits_csv(csv_path)


def test_splits_csv_round_trip_and_manifest_split_column(tmp_path: Path) -> None:
    splits = {"a": "train", "b": "val", "c": "test"}
    path = write_splits_csv(splits, tmp_path / "splits.csv")
    assert path.read_text().splitlines()[0] == "slide_id,split"
    assert read_splits_csv(path) == splits
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "slide_path,set,annotation_path,slide_id,split\n"
        "x/one.svs,hard,x/one.xml,,test\n"
        "x/two.svs,hard,x/two.xml,custom,val\n"
        "x/three.svs,hard,x/three.xml,,\n"
    )
    assert read_splits_csv(manifest) == {"one": "test", "custom": "val"}


# ---------------------------------------------------------------- metrics

# Hand-checked: ranked by prob 0.9(+) 0.6(-) 0.4(+) 0.3(-) 0.1(-) 0.05(-).
Y = np.array([0, 0, 0, 0, 1, 1])
P = np.array([0.05, 0.1, 0.3, 0.6, 0.4, 0.9])


def test_metrics_against_hand_checked_arrays() -> None:
    m = point_metrics(Y, P, threshold=0.1)
    # AUROC: 7 of the 8 positive-negative pairs are ordered right.
    assert m["auroc"] == pytest.approx(7 / 8)
    # AUPRC of the positive class: precision 1/1 at the first hit, 2/3 at the second.
    assert m["auprc"] == pytest.approx((1 + 2 / 3) / 2)
    macro = average_precision_score(np.stack([1 - Y, Y], 1), np.stack([1 - P, P], 1), average="macro")
    assert macro == pytest.approx((5 / 6 + 0.95) / 2)  # the class-averaged trap differs
    assert m["auprc"] != pytest.approx(macro)
    # At 0.1 (prob >= 0.1 is positive, so the 0.1 negative is a false positive):
    # tp 2, fp 3, fn 0, tn 1.
    assert m["sensitivity"] == pytest.approx(1.0)
    assert m["specificity"] == pytest.approx(1 / 4)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 3 + 0))  # 4/7
    assert accuracy_score(Y, P >= 0.1) == pytest.approx(0.5)  # the accuracy trap differs
    expected_log_loss = -np.mean(Y * np.log(P) + (1 - Y) * np.log(1 - P))
    assert m["log_loss"] == pytest.approx(expected_log_loss)
    at_half = point_metrics(Y, P, threshold=0.5)
    assert (at_half["sensitivity"], at_half["specificity"], at_half["f1"]) == pytest.approx((0.5, 0.75, 0.5))


def test_bootstrap_ci_is_seeded_brackets_the_value_and_survives_one_class() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.35 * y + rng.random(200) * 0.65, 0, 1)
    first = compute_metrics(y, p, 0.1, n_bootstrap=100, seed=3)
    assert first == compute_metrics(y, p, 0.1, n_bootstrap=100, seed=3)
    for name in ("auroc", "auprc", "f1", "sensitivity", "specificity", "log_loss"):
        low, high = first[name]["ci95"]
        assert low <= first[name]["value"] <= high
    assert first["threshold"] == 0.1 and first["n"] == 200
    # Three patches, two of them positive: many resamples hold a single class.
    small = compute_metrics([1, 1, 0], [0.9, 0.8, 0.2], 0.1, n_bootstrap=100, seed=0)
    assert small["bootstrap"]["valid"]["auroc"] < 100
    assert small["auroc"]["value"] == 1.0
    one_class = compute_metrics([0, 0, 0], [0.05, 0.2, 0.0], 0.1, n_bootstrap=20)
    assert one_class["auroc"]["value"] is None and one_class["sensitivity"]["value"] is None
    assert one_class["specificity"]["value"] == pytest.approx(2 / 3)


def test_slide_scores_take_the_max_patch() -> None:
    ids, labels, probs = slide_scores(["b", "a", "a", "b"], [0, 1, 0, 0], [0.2, 0.3, 0.9, 0.1])
    assert ids == ["a", "b"]
    assert labels.tolist() == [1, 0] and probs.tolist() == [0.9, 0.2]


# ---------------------------------------------------------------- model


def test_model_has_one_logit_and_a_512_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("none", input_size=64).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits, features = model(x), model.embed(x)
    assert logits.shape == (3,) and features.shape == (3, 512)
    assert torch.allclose(logits, model.backbone.fc(features).squeeze(1))
    # PATH weights: a plain torchvision state dict with its 1000-class head.
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    loaded = build_model(str(tmp_path / "r18.pth"), input_size=64)
    assert torch.equal(loaded.backbone.conv1.weight, reference.conv1.weight)
    with pytest.raises(ConfigError, match="not none, imagenet or an existing"):
        build_model(str(tmp_path / "missing.pth"))


def test_imagenet_weights_are_never_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(
        torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download")
    )
    target = imagenet_weights_path()
    with pytest.raises(ConfigError, match=str(target.parent)):
        build_model("imagenet")
    from torchvision.models import resnet18

    target.parent.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), target)
    assert build_model("imagenet").backbone.fc.out_features == 1


# ---------------------------------------------------------------- transforms


def test_transforms_keep_rgb_order_and_shapes() -> None:
    red = torch.zeros(2, 3, 96, 96, dtype=torch.uint8)
    red[:, 0] = 255
    for augment in (False, True):
        batch = BatchTransform(64, augment)(red)
        assert batch.shape == (2, 3, 64, 64) and batch.dtype == torch.float32
        single = sample_transform(64, augment)(red[0])
        assert single.shape == (3, 64, 64)
        for image in (batch[0], single):
            rgb = denormalize(image).mean(dim=(1, 2))
            assert rgb[0] > 0.6 and rgb[1] < 0.4 and rgb[2] < 0.4  # red stays in channel 0
    plain = BatchTransform(64, False)(red)
    assert torch.allclose(plain[0], sample_transform(64, False)(red[0]), atol=1e-5)
    with pytest.raises(ValueError, match="uint8 RGB batch"):
        BatchTransform(64, False)(red.float())


def test_augmentation_draws_per_patch() -> None:
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    image[..., :20, :8] = 255  # an asymmetric mark: every flip/transpose moves it
    batch = BatchTransform(64, True)(image.repeat(16, 1, 1, 1))
    distinct = {tuple(torch.round(b * 100).flatten()[::97].tolist()) for b in batch}
    assert len(distinct) > 4
    assert math.isfinite(float(batch.sum()))
