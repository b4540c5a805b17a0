"""The one config system: file, then deep-merged overrides, --print-config, errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wsi_tools.cli import main
from wsi_tools.errors import ConfigError
from wsi_tools.pipelines.ablation import load_ablation_config
from wsi_tools.pipelines.demo import load_demo_config
from wsi_tools.pipelines.hnm import load_hnm_config


def _pipeline_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "seeds": [4],
                "train": {"epochs": 3, "input_size": 64, "lr": 0.002},
                "mining": {"metric": "cosine", "fp_source": "val", "alpha": 5},
                "figures": {"enabled": False, "tsne_points": 300},
            }
        )
    )
    return path


def test_a_dotted_override_keeps_the_rest_of_its_section(tmp_path: Path) -> None:
    # Regression: --set mining.alpha=10 used to replace the whole mining section, so
    # metric and fp_source silently fell back to their defaults (and train.*, figures.* too).
    path = _pipeline_yaml(tmp_path)
    config = load_hnm_config(path, ["mining.alpha=10", "train.epochs=7", "figures.tsne_points=50"])
    assert config.mining.alpha == 10
    assert (config.mining.metric, config.mining.fp_source) == ("cosine", "val")
    assert (config.train.epochs, config.train.input_size, config.train.lr) == (7, 64, 0.002)
    assert (config.figures.tsne_points, config.figures.enabled) == (50, False)
    assert config.seeds == (4,)
    # A mapping of overrides merges the same way.
    assert load_hnm_config(path, {"mining": {"alpha": 10}}).mining == config.mining


def test_overrides_merge_deeply_in_the_demo_and_ablation_configs() -> None:
    demo = load_demo_config(None, ["train.epochs=3", "cohort.n_weak_slides=4"])
    assert (demo.hnm.train.epochs, demo.hnm.train.input_size) == (3, 64)  # input_size from demo.yaml
    assert (demo.cohort.n_weak_slides, demo.cohort.n_hard_slides) == (4, 12)
    ablation = load_ablation_config(None, ["figures.tsne_points=100", "studies.alpha=[1, 2]"])
    assert ablation.hnm.figures.enabled is False  # ablation.yaml's own figures key survives
    assert ablation.hnm.figures.tsne_points == 100
    assert ablation.studies["alpha"] == (1, 2) and ablation.studies["metric"] == ("l2", "cosine")


def test_print_config_is_the_effective_config_and_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _pipeline_yaml(tmp_path)
    assert main(["run", "--config", str(path), "--set", "mining.alpha=9", "--print-config"]) == 0
    printed = capsys.readouterr().out
    effective = yaml.safe_load(printed)
    assert effective["mining"] == {**effective["mining"], "alpha": 9, "metric": "cosine", "fp_source": "val"}
    assert effective["train"]["epochs"] == 3 and effective["train"]["weights"] == "none"
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert load_hnm_config(again) == load_hnm_config(path, ["mining.alpha=9"])
    assert not list(tmp_path.glob("runs*")) and not (tmp_path / "report.md").exists()  # printed, nothing run

    assert (
        main(["train", "--set", "epochs=2", "--set", "split_ratios=[0.5, 0.3, 0.2]", "--print-config"]) == 0
    )
    train = yaml.safe_load(capsys.readouterr().out)
    assert train["epochs"] == 2 and train["split_ratios"] == [0.5, 0.3, 0.2] and train["lr"] == 1e-4


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("mining.alpha=-3", ("--set mining.alpha=-3", "'mining.alpha'", "must be >= 1")),
        ("train.epoch=2", ("--set train.epoch=2", "'train.epoch'", "known keys in train")),
        ("train.split_ratios=[.nan, 0.2, 0.2]", ("'train.split_ratios'", "finite")),
        ("train.seed=18446744073709551616", ("'train.seed'", "4294967295")),
        ("train.input_size=20000", ("'train.input_size'", "4096")),
        ("mining=3", ("'mining' must be a section",)),
        ("mining.alpha", ("expected key=value",)),
    ],
)
def test_errors_name_the_file_the_override_and_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, fragments: tuple[str, ...]
) -> None:
    path = _pipeline_yaml(tmp_path)
    assert main(["run", "--config", str(path), "--set", override, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if override != "mining.alpha":
        assert str(path) in err


def test_a_bad_file_is_named_before_any_override(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mining:\n  alpha: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: bad value for 'mining\.alpha'"):
        load_hnm_config(path, ["mining.alpha=5"])


def test_batch_prints_its_extraction_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "extract.yaml"
    config.write_text("patch_size: 256\nfraction: 1/2\n")
    argv = ["batch", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "s.zarr"), "--config", str(config)]
    assert main([*argv, "--min-tissue", "0.25", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["patch_size"], printed["fraction"], printed["min_tissue"]) == (256, 0.5, 0.25)
    assert printed["threads"] == 1 and not (tmp_path / "s.zarr").exists()


def test_extract_and_batch_flags_come_from_the_extraction_config() -> None:
    import dataclasses

    from wsi_tools.cli import build_parser
    from wsi_tools.cli._common import extraction_flags_given
    from wsi_tools.extract import ExtractionConfig

    parser = build_parser()
    for command in (["extract", "s.svs", "--out", "o", "--set", "weak"], ["batch", "m.csv", "--out", "o"]):
        args = parser.parse_args(command)
        assert extraction_flags_given(args, args.extraction_flags) == {}  # nothing given, nothing overridden
        args = parser.parse_args([*command, "--fraction", "1/4", "--magnification", "10", "--no-cover"])
        given = extraction_flags_given(args, args.extraction_flags)
        assert given == {"fraction": 0.25, "target_mpp": 1.0, "cover": False}
    flagged = set(parser.parse_args(["extract", "s.svs", "--out", "o", "--set", "weak"]).extraction_flags)
    assert flagged == {spec.name for spec in dataclasses.fields(ExtractionConfig)} - {"set"}
    with pytest.raises(SystemExit):
        parser.parse_args(["batch", "m.csv", "--out", "o", "--slide-mpp", "0.5"])  # per slide: the manifest's
    with pytest.raises(SystemExit):
        parser.parse_args(["batch", "m.csv", "--out", "o", "--backend", "pillow"])  # choices from the check


def test_extract_and_mine_print_their_effective_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["extract", "s.svs", "--out", "o", "--set", "weak", "--fraction", "1/4", "--print-config"]) == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["fraction"] == 0.25 and printed["set"] == "weak" and printed["patch_size"] == 512
    command = ["mine", "--checkpoint", "c.pt", "--store", "s", "--out", "o", "--threshold", "0.2"]
    assert main([*command, "--alpha", "7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["alpha"] == 7 and printed["threshold"] == 0.2 and printed["metric"] == "l2"
