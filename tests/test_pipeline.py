"""The four-step pipeline end to end on a tiny store, its checks and its CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_tools.cli import main
from wsi_tools.errors import ConfigError, SplitLeakError
from wsi_tools.testing.toy import TOY_TRAIN_KEYS

TINY = {
    "seeds": [0],
    "train": dict(TOY_TRAIN_KEYS),
    # threshold 0: every training negative is a false positive, so mining always has work
    "mining": {"alpha": 3, "threshold": 0.0, "progress": False},
    "figures": {"tsne_points": 60, "gradcam_patches": 2, "gallery_queries": 2, "gallery_hits": 3},
    # one of the two weak slides is never mined and is scored by both models at the end
    "weak_holdout": 1,
}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory):
    from wsi_tools.pipelines.hnm import load_hnm_config, run_pipeline
    from wsi_tools.testing.toy import write_toy_store

    root = tmp_path_factory.mktemp("pipeline")
    store = write_toy_store(
        root / "store.zarr",
        [(f"h{i}", "hard", 14, 5) for i in range(5)] + [("w0", "weak", 30, 0), ("w1", "weak", 30, 0)],
        patch_size=32,
    )
    config = load_hnm_config(None, TINY)
    report = run_pipeline(config, store, root / "out")
    return store, root / "out", report


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_pipeline_writes_table2_report_and_run_folders(pipeline_run):
    _, out, report = pipeline_run
    seed = out / "seed_0"
    for name in ("best.pt", "metrics.json", "predictions.csv", "splits.csv"):
        assert (seed / "weak" / name).is_file() and (seed / "strong" / name).is_file()
    for picture in ("tsne.png", "gradcam.png", "mined_gallery.png"):
        assert (seed / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report.json").read_text())
    table = saved["summary"]["metrics"]
    assert set(table) == {"auroc", "auprc", "f1", "sensitivity", "specificity"}
    for row in table.values():
        assert {"weak", "strong", "relative_delta_pct"} <= set(row)
    run = saved["runs"][0]
    assert run["n_false_positives"] == run["n_fp_candidates"] > 0  # threshold 0
    assert 0 < run["n_mined"] <= run["n_false_positives"] * 3
    markdown = (out / "report.md").read_text()
    assert "| AUROC |" in markdown and "#mined" in markdown
    assert report["summary"]["n_seeds"] == 1


def test_weak_and_strong_are_scored_on_identical_test_rows(pipeline_run):
    _, out, _ = pipeline_run
    weak = [r for r in _rows(out / "seed_0" / "weak" / "predictions.csv") if r["split"] == "test"]
    strong = [r for r in _rows(out / "seed_0" / "strong" / "predictions.csv") if r["split"] == "test"]
    assert weak and [(r["slide_id"], r["x"], r["y"], r["label"]) for r in weak] == [
        (r["slide_id"], r["x"], r["y"], r["label"]) for r in strong
    ]
    weak_splits = _rows(out / "seed_0" / "weak" / "splits.csv")
    assert weak_splits == _rows(out / "seed_0" / "strong" / "splits.csv")


def test_mined_patches_go_to_training_only_and_come_from_the_weak_set(pipeline_run):
    from wsi_tools.store import PatchStore
    from wsi_tools.train.checkpoint import read_checkpoint

    store_path, out, _ = pipeline_run
    store = PatchStore(store_path)
    strong = read_checkpoint(out / "seed_0" / "strong" / "best.pt")
    held_out = {s for s, split in strong["splits"].items() if split in ("val", "test")}
    mined = _rows(out / "seed_0" / "mining" / "mined.csv")
    extra = {(s, int(i)) for s, i in strong["extra_train_negatives"]}
    assert mined and len(extra) == len(mined)
    report = json.loads((out / "report.json").read_text())
    held_out_weak = set(report["runs"][0]["holdout_slides"])
    assert len(held_out_weak) == 1 and report["runs"][0]["holdout_n"] == 30
    for row in mined:
        assert store.slide_attrs(row["slide_id"])["set"] == "weak"
        assert row["slide_id"] not in held_out_weak
        assert row["slide_id"] not in held_out and row["query_slide_id"] not in held_out
        assert strong["splits"][row["query_slide_id"]] == "train"
        index = int(
            np.nonzero((store.coords(row["slide_id"]) == [int(row["x"]), int(row["y"])]).all(axis=1))[0][0]
        )
        assert (row["slide_id"], index) in extra
    # The weak model was trained without them.
    assert read_checkpoint(out / "seed_0" / "weak" / "best.pt")["extra_train_negatives"] == []


def test_strong_starts_from_the_weak_models_initial_weights(pipeline_run):
    from wsi_tools.train.checkpoint import read_checkpoint

    _, out, _ = pipeline_run
    init = out / "seed_0" / "init.pt"
    weak = read_checkpoint(out / "seed_0" / "weak" / "best.pt")
    strong = read_checkpoint(out / "seed_0" / "strong" / "best.pt")
    assert weak["config"]["weights"] == strong["config"]["weights"] == str(init)
    assert weak["config"]["seed"] == strong["config"]["seed"] == 0
    state = torch.load(init, weights_only=True)
    assert set(state) == set(weak["model"])  # a full PatchClassifier state: head included


def test_compare_test_rows_refuses_different_test_sets(tmp_path):
    from wsi_tools.pipelines.hnm import compare_test_rows

    header = "slide_id,x,y,label,prob,split\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "predictions.csv").write_text(header + "s1,0,0,0,0.5,test\ns1,1,0,1,0.9,test\n")
    (tmp_path / "b" / "predictions.csv").write_text(header + "s1,0,0,0,0.05,test\ns2,1,0,1,0.9,test\n")
    with pytest.raises(SplitLeakError, match="same test rows"):
        compare_test_rows(tmp_path / "a", tmp_path / "b", 0.1)
    (tmp_path / "b" / "predictions.csv").write_text(header + "s1,0,0,0,0.05,test\ns1,1,0,1,0.9,test\n")
    assert compare_test_rows(tmp_path / "a", tmp_path / "b", 0.1) == {
        "n_test": 2,
        "weak_test_fp": 1,
        "strong_test_fp": 0,
    }


def test_mine_cli_runs_steps_2_and_3(pipeline_run, tmp_path, capsys):
    store, out, report = pipeline_run
    code = main(
        [
            "mine",
            "--checkpoint",
            str(out / "seed_0" / "weak" / "best.pt"),
            "--store",
            str(store),
            "--out",
            str(tmp_path),
            "--alpha",
            "3",
            "--threshold",
            "0",
            "--no-progress",
            *[arg for slide in report["runs"][0]["holdout_slides"] for arg in ("--exclude-slide", slide)],
        ]
    )
    assert code == 0
    assert "false positive(s)" in capsys.readouterr().out
    assert _rows(tmp_path / "mined.csv") == _rows(out / "seed_0" / "mining" / "mined.csv")


def test_bad_configs_name_the_key(tmp_path, capsys):
    from wsi_tools.pipelines.ablation import load_ablation_config
    from wsi_tools.pipelines.hnm import load_hnm_config

    with pytest.raises(ConfigError, match="alpah"):
        load_hnm_config(None, {"mining": {"alpah": 3}})
    with pytest.raises(ConfigError, match="epoch"):
        load_hnm_config(None, {"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="studies"):
        load_ablation_config(None, {"studies": {"alpha": []}})
    assert (
        main(["run", "--set", "mining.metric=manhattan", "--store", str(tmp_path), "--out", str(tmp_path)])
        == 2
    )
    assert "metric" in capsys.readouterr().err


def test_ablation_conditions_share_the_weak_model(pipeline_run, tmp_path):
    from wsi_tools.pipelines.ablation import load_ablation_config, run_ablation

    store, _, _ = pipeline_run
    config = load_ablation_config(
        None, {**TINY, "studies": {"alpha": [1, 3], "metric": ["cosine"], "limited": None, "imbalance": None}}
    )
    report = run_ablation(config, store, tmp_path)
    conditions = [(row["study"], row["condition"]) for row in report["rows"]]
    assert conditions == [("alpha", "α = 1"), ("alpha", "α = 3"), ("metric", "cosine")]
    seed_dir = tmp_path / "alpha_metric" / "seed_0"
    assert sorted(p.name for p in seed_dir.iterdir() if p.name.startswith("strong")) == [
        "strong_alpha1_l2",
        "strong_alpha3_cosine",
        "strong_alpha3_l2",
    ]
    assert [p.name for p in seed_dir.iterdir() if p.name.startswith("weak")] == ["weak"]
    runs = {row["condition"]: row["runs"][0] for row in report["rows"]}
    assert runs["α = 1"]["weak_run"] == runs["α = 3"]["weak_run"] == runs["cosine"]["weak_run"]
    assert runs["α = 1"]["n_mined"] <= runs["α = 3"]["n_mined"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| alpha | α = 1 |" in markdown and "Held-out weak-slide FPs" in markdown


def test_mining_from_the_strong_model_uses_its_split_negatives_only(pipeline_run, tmp_path, capsys):
    # Regression: the strong checkpoint's mined (weak-set) negatives were taken as
    # false-positive candidates and tripped an AssertionError "outside ('train',)".
    store, out, _ = pipeline_run
    strong = out / "seed_0" / "strong" / "best.pt"
    code = main(["mine", "--checkpoint", str(strong), "--store", str(store), "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    splits = dict(torch.load(strong, weights_only=True)["splits"])
    queries = {row["slide_id"] for row in _rows(tmp_path / "false_positives.csv")}
    assert queries and all(splits.get(slide) == "train" for slide in queries)


def test_train_from_a_mined_list_is_the_strong_model(pipeline_run, tmp_path, capsys):
    store, out, _ = pipeline_run
    seed = out / "seed_0"
    mined_csv = seed / "mining" / "mined.csv"
    argv = ["train", "--store", str(store), "--out", str(tmp_path / "strong"), "--mined", str(mined_csv)]
    argv += [arg for key, value in TOY_TRAIN_KEYS.items() for arg in ("--set", f"{key}={value}")]
    # Without the weak run's splits the mined list is refused: its queries could be test slides here.
    assert main(argv) == 2 and "splits_file" in capsys.readouterr().err
    assert main([*argv, "--set", f"splits_file={seed / 'weak' / 'splits.csv'}"]) == 0
    assert _rows(tmp_path / "strong" / "extra_train_negatives.csv") == _rows(
        seed / "strong" / "extra_train_negatives.csv"
    )
    assert _rows(tmp_path / "strong" / "splits.csv") == _rows(seed / "weak" / "splits.csv")
    # A mined list whose queries lie in this run's test split is a leak, not a run.
    splits = {row["slide_id"]: row["split"] for row in _rows(seed / "weak" / "splits.csv")}
    query = _rows(mined_csv)[0]["query_slide_id"]
    swapped = tmp_path / "swapped.csv"
    swapped.write_text(
        "slide_id,split\n"
        + "".join(
            f"{s},{'test' if s == query else ('train' if v == 'test' else v)}\n" for s, v in splits.items()
        )
    )
    assert main([*argv, "--set", f"splits_file={swapped}"]) == 2
    assert "validation or test split" in capsys.readouterr().err


def test_a_changed_store_is_refused_on_resume_and_flagged_on_evaluate_and_mine(
    pipeline_run, tmp_path, capsys
):
    import shutil

    from wsi_tools.errors import StoreError
    from wsi_tools.store import PatchStore
    from wsi_tools.train.config import load_config
    from wsi_tools.train.evaluation import evaluate
    from wsi_tools.train.trainer import train

    store, out, report = pipeline_run
    changed = tmp_path / "changed.zarr"
    shutil.copytree(store, changed)
    held_out = report["runs"][0]["holdout_slides"][0]  # a weak slide outside every split
    PatchStore(changed, mode="a").delete_slide(held_out)
    before, after = PatchStore(store).fingerprint(), PatchStore(changed).fingerprint()
    assert before != after
    weak = out / "seed_0" / "weak"
    with pytest.raises(StoreError, match=f"fingerprint {before} then, {after} now"):
        train(
            load_config(None, {**TOY_TRAIN_KEYS, "epochs": 2}),
            changed,
            tmp_path / "r",
            resume=weak / "last.pt",
        )
    with pytest.warns(UserWarning, match=f"fingerprint {before} then, {after} now"):
        evaluate(weak / "best.pt", changed, "test", tmp_path / "eval")
    assert (
        main(
            [
                "mine",
                "--checkpoint",
                str(weak / "best.pt"),
                "--store",
                str(changed),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    assert f"fingerprint {before} then, {after} now" in capsys.readouterr().err


def test_resume_refuses_a_splits_file_that_differs(pipeline_run, tmp_path):
    from wsi_tools.train.config import load_config
    from wsi_tools.train.trainer import train

    store, out, _ = pipeline_run
    weak = out / "seed_0" / "weak"
    rows = _rows(weak / "splits.csv")
    other = tmp_path / "other.csv"
    other.write_text(
        "slide_id,split\n"
        + "".join(f"{r['slide_id']},{'val' if r['split'] == 'train' else r['split']}\n" for r in rows)
    )
    config = load_config(None, {**TOY_TRAIN_KEYS, "epochs": 2})
    with pytest.raises(ConfigError, match="differ from the checkpoint's"):
        train(config, store, tmp_path / "r", splits=other, resume=weak / "last.pt")


def test_the_split_rules_hold_under_python_O(tmp_path):
    import subprocess
    import sys

    header = "slide_id,x,y,label,prob,split\n"
    for name, rows in (("a", "s1,0,0,0,0.5,test\n"), ("b", "s2,0,0,0,0.5,test\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.csv").write_text(header + rows)
    script = (
        "import sys\n"
        "from wsi_tools.errors import SplitLeakError\n"
        "from wsi_tools.pipelines.hnm import compare_test_rows\n"
        "from wsi_tools.mining.mine import MinedList, check_mined_against_splits\n"
        "from wsi_tools.train.data import PatchRef\n"
        "caught = 0\n"
        "try:\n"
        f"    compare_test_rows({str(tmp_path / 'a')!r}, {str(tmp_path / 'b')!r}, 0.1)\n"
        "except SplitLeakError:\n"
        "    caught += 1\n"
        "try:\n"
        "    check_mined_against_splits(MinedList([PatchRef('w0', 0)], frozenset({'h3'})), {'h3': 'test'}, 'x')\n"
        "except SplitLeakError:\n"
        "    caught += 1\n"
        "sys.exit(0 if caught == 2 else 1)\n"
    )
    done = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
