"""The four-step hard negative mining pipeline of Lee et al. (2024).

Per seed:

1. **weak model**: the trainer on the hard set (slide-level splits);
2. **false positives**: label-0 patches of its training split scored >= the threshold;
3. **mining**: their ``alpha`` nearest weak-set patches (exact kNN on the weak
   model's 512-d features), added as label-0 references to the training split;
4. **strong model**: the same recipe, the same splits and the same initial
   weights as the weak model (not fine-tuned from it), trained on the training
   patches plus the mined ones.

Both models are evaluated on the same, untouched test split; the pipeline
checks that their prediction rows are identical. ``report.json`` and
``report.md`` hold the paper's Table 2 form (mean ± SD over seeds of AUROC,
AUPRC, F1, sensitivity and specificity for weak, strong and their relative
delta) and, per seed, the numbers of false positives and mined patches.

Folder layout: ``OUT/seed_<s>/{init.pt, weak/, mining/, strong/, *.png}``,
``OUT/report.json``, ``OUT/report.md``, ``OUT/config.yaml``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wsi_tools.config_file import deep_merge, packaged_config, read_yaml_mapping, required_path
from wsi_tools.errors import ConfigError, SplitLeakError
from wsi_tools.mining.mine import MinedList, MiningConfig, check_mined_against_splits
from wsi_tools.options import Overrides, at_least, from_mapping, load_beside, option, to_plain, validate
from wsi_tools.pipelines.report import (
    format_mean_sd,
    read_test_rows,
    seeds_markdown,
    summarize_runs,
    table2_markdown,
)
from wsi_tools.provenance import code_version, compute_environment, now_iso
from wsi_tools.train.config import TrainConfig

DEFAULT_CONFIG = packaged_config("hnm.yaml")


@dataclass(frozen=True)
class FigureConfig:
    enabled: bool = option(True, "write tsne.png, gradcam.png and mined_gallery.png per seed")
    tsne_points: int = option(
        1500,
        "patches in each t-SNE panel (false positives and mined patches are always kept)",
        check=at_least(10),
    )
    gradcam_patches: int = option(
        4,
        "test-split false positives and true positives of the weak model in gradcam.png (each)",
        check=at_least(1),
    )
    gallery_queries: int = option(6, "false positives in mined_gallery.png", check=at_least(1))
    gallery_hits: int = option(5, "nearest weak patches shown for each false positive", check=at_least(1))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class HnmConfig:
    """The whole pipeline: a training recipe for both models, mining, seeds, pictures."""

    train: TrainConfig
    mining: MiningConfig
    seeds: tuple[int, ...] = (0, 1, 2)
    store: str | None = None
    out: str | None = None
    figures: FigureConfig = field(default_factory=FigureConfig)
    # weak slides kept out of mining and scored by both models at the end (an
    # all-negative set rich in mimics); 0 = none
    weak_holdout: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The effective config in the YAML's own shape (the recipe expanded in ``train``):
        fed back as a config, it gives the same pipeline."""
        plain = to_plain(self)
        return {
            key: plain[key] for key in ("store", "out", "seeds", "weak_holdout", "train", "mining", "figures")
        }


TOP_KEYS = ("store", "out", "seeds", "train_config", "train", "mining", "figures", "weak_holdout")


def config_section(mapping: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    """A section of a config mapping (absent or null: empty), refused unless a mapping."""
    value = mapping.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: '{key}' must be a section of key: value lines, got {value!r}")
    return dict(value)


def parse_hnm_config(mapping: Mapping[str, Any], source: str, base_dir: Path) -> HnmConfig:
    """Validate a pipeline mapping. ``train_config`` (relative to ``base_dir``)
    names the base training recipe; ``train`` overrides its keys."""
    unknown = sorted(set(mapping) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(TOP_KEYS)}")
    recipe_mapping: dict[str, Any] = {}
    if mapping.get("train_config"):
        recipe_path = base_dir / str(mapping["train_config"])
        recipe_mapping = read_yaml_mapping(recipe_path)
        TrainConfig.from_mapping(recipe_mapping, str(recipe_path))  # an error in the recipe names it
    train = from_mapping(
        TrainConfig, deep_merge(recipe_mapping, config_section(mapping, "train", source)), source, "train"
    )
    mining = from_mapping(
        MiningConfig,
        {"threshold": train.threshold, **config_section(mapping, "mining", source)},
        source,
        "mining",
    )
    figures = from_mapping(FigureConfig, config_section(mapping, "figures", source), source, "figures")
    seeds = mapping.get("seeds", [0, 1, 2])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if (
        not isinstance(seeds, list | tuple)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds)
    ):
        raise ConfigError(f"{source}: 'seeds' must be a non-empty list of non-negative integers (or a count)")
    weak_holdout = mapping.get("weak_holdout", 0)
    if not isinstance(weak_holdout, int) or isinstance(weak_holdout, bool) or weak_holdout < 0:
        raise ConfigError(f"{source}: 'weak_holdout' must be a number of weak slides (0 or more)")
    return HnmConfig(
        train=train,
        mining=mining,
        seeds=tuple(seeds),
        store=mapping.get("store"),
        out=mapping.get("out"),
        figures=figures,
        weak_holdout=weak_holdout,
    )


def load_hnm_config(path: str | Path | None = None, overrides: Overrides = ()) -> HnmConfig:
    """Read ``configs/hnm.yaml`` (or ``path``), then the overrides (``--set`` strings with
    dotted keys, or a mapping), each deep-merged: ``mining.alpha=10`` keeps the other
    ``mining`` keys of the file."""
    return load_beside(path, overrides, parse_hnm_config, DEFAULT_CONFIG)


# ------------------------------------------------------------------ the steps


def log(message: str) -> None:
    print(f"[hnm] {message}", file=sys.stderr, flush=True)


def save_initial_weights(train_config: TrainConfig, seed: int, path: Path) -> Path:
    """The seed's initial model, saved once: weak and strong both start from it."""
    import torch

    from wsi_tools.train.model import build_model
    from wsi_tools.train.runtime import seed_everything

    seed_everything(seed)
    model = build_model(train_config.weights, train_config.input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def train_model(
    train_config: TrainConfig,
    store: Path,
    out_dir: Path,
    *,
    splits: Mapping[str, str] | None = None,
    extra_train_negatives: Sequence[Any] = (),
) -> Any:
    from wsi_tools.train.trainer import train

    return train(train_config, store, out_dir, splits=splits, extra_train_negatives=extra_train_negatives)


def compare_test_rows(weak_dir: Path, strong_dir: Path, threshold: float) -> dict[str, int]:
    """Check that both models were scored on the identical test rows; count test FPs."""
    weak, strong = read_test_rows(weak_dir), read_test_rows(strong_dir)
    weak_keys = [row[:4] for row in weak]
    strong_keys = [row[:4] for row in strong]
    if weak_keys != strong_keys:
        raise SplitLeakError(
            f"weak ({len(weak_keys)}) and strong ({len(strong_keys)}) models were not scored on the same "
            f"test rows ({weak_dir}, {strong_dir}): their comparison would mean nothing"
        )
    return {
        "n_test": len(weak),
        "weak_test_fp": sum(1 for r in weak if r[3] == 0 and r[4] >= threshold),
        "strong_test_fp": sum(1 for r in strong if r[3] == 0 and r[4] >= threshold),
    }


def metric_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The Table 2 metrics (and log loss, confusion) of a trainer ``metrics.json``."""
    keys = ("auroc", "auprc", "f1", "sensitivity", "specificity", "log_loss")
    summary: dict[str, Any] = {k: metrics.get(k) for k in keys}
    summary.update(threshold=metrics.get("threshold"), n=metrics.get("n"), confusion=metrics.get("confusion"))
    return summary


def run_seed(
    config: HnmConfig,
    store: Path,
    seed_dir: Path,
    seed: int,
    *,
    mining_variants: Mapping[str, MiningConfig] | None = None,
    train_config: TrainConfig | None = None,
) -> list[dict[str, Any]]:
    """One seed: the weak model once, then for each mining variant (default: the
    config's own) mining and a strong model. Returns one record per variant."""
    from wsi_tools.mining.mine import run_mining

    recipe = (train_config or config.train).replace(seed=seed)
    init = save_initial_weights(recipe, seed, seed_dir / "init.pt")
    recipe = recipe.replace(weights=str(init))
    started = time.perf_counter()
    log(f"seed {seed}: step 1/4, weak model -> {seed_dir / 'weak'}")
    weak = train_model(recipe, store, seed_dir / "weak")
    weak_seconds = time.perf_counter() - started
    holdout = choose_weak_holdout(store, weak.splits, config.weak_holdout, seed)
    holdout_weak_probs = score_refs(weak.best_checkpoint, store, holdout, recipe) if holdout else None
    records = []
    variants = mining_variants or {"": config.mining}
    for name, mining_config in variants.items():
        suffix = f"_{name}" if name else ""
        started = time.perf_counter()
        log(f"seed {seed}{' ' + name if name else ''}: steps 2-3/4, false positives and mining")
        mining = run_mining(
            weak.best_checkpoint,
            store,
            seed_dir / f"mining{suffix}",
            mining_config,
            cache_dir=seed_dir / "cache",
            exclude_slides=sorted({ref[0] for ref in holdout}),
        )
        log(
            f"seed {seed}: {len(mining.false_positives.table)} false positive(s) among "
            f"{mining.false_positives.n_candidates} training negatives; {len(mining.mined)} weak patch(es) "
            f"mined from {mining.weak_pool_size}"
        )
        mining_seconds = time.perf_counter() - started
        started = time.perf_counter()
        log(f"seed {seed}: step 4/4, strong model -> {seed_dir / f'strong{suffix}'}")
        strong = train_model(
            recipe,
            store,
            seed_dir / f"strong{suffix}",
            splits=weak.splits,
            extra_train_negatives=mining.mined_refs,
        )
        mined_list = MinedList(mining.mined_refs, frozenset(m.query.slide_id for m in mining.mined))
        check_mined_against_splits(mined_list, weak.splits, mining.csv_path or seed_dir)
        counts = compare_test_rows(weak.run_dir, strong.run_dir, recipe.threshold)
        record = {
            "seed": seed,
            "variant": name or None,
            "weak_run": str(weak.run_dir),
            "strong_run": str(strong.run_dir),
            "mined_csv": str(mining.csv_path),
            "n_false_positives": len(mining.false_positives.table),
            "n_fp_candidates": mining.false_positives.n_candidates,
            "n_mined": len(mining.mined),
            "weak_pool": mining.weak_pool_size,
            **counts,
            **holdout_counts(
                holdout,
                holdout_weak_probs,
                strong.best_checkpoint,
                store,
                recipe,
                seed_dir / f"holdout_predictions{suffix}.csv",
            ),
            "weak": metric_summary(weak.metrics),
            "strong": metric_summary(strong.metrics),
            "seconds": {
                "weak": round(weak_seconds, 1),
                "mining": round(mining_seconds, 1),
                "strong": round(time.perf_counter() - started, 1),
            },
        }
        if config.figures.enabled:
            from wsi_tools.pipelines.pictures import seed_figures

            record["figures"] = seed_figures(
                store, weak, strong, mining, recipe, config.figures, seed_dir, suffix, mining_config.metric,
                caption=f"seed {seed}" + (f", {name}" if name else ""),
            )  # fmt: skip
            if holdout and not name:
                from wsi_tools.pipelines.pictures import holdout_heatmaps

                log(
                    f"seed {seed}: the weak and strong models over the held-out weak and test slides (predict)"
                )
                test_slides = sorted(slide for slide, split in weak.splits.items() if split == "test")
                record["figures"]["holdout_heatmaps"] = holdout_heatmaps(
                    store,
                    sorted({ref[0] for ref in holdout}) + test_slides,
                    weak.best_checkpoint,
                    strong.best_checkpoint,
                    seed_dir,
                )
        records.append(record)
    return records


def choose_weak_holdout(store: Path, splits: Mapping[str, str], count: int, seed: int) -> list[Any]:
    """Patches of ``count`` seeded weak slides (never one of the splits) kept out of mining."""
    if count <= 0:
        return []
    import numpy as np

    from wsi_tools.train.data import open_store, select_patches

    opened = open_store(store)
    weak_slides = sorted(
        s for s in opened.slide_ids() if opened.slide_attrs(s).get("set") == "weak" and s not in splits
    )
    if len(weak_slides) <= count:
        raise ConfigError(
            f"weak_holdout {count}: the store has {len(weak_slides)} weak slide(s); keep at least one for mining"
        )
    chosen = np.random.default_rng([seed, 4242]).choice(len(weak_slides), count, replace=False)
    return select_patches(opened, [weak_slides[i] for i in sorted(chosen)]).refs


def score_refs(checkpoint: Path, store: Path, refs: Sequence[Any], recipe: TrainConfig) -> Any:
    from wsi_tools.train.inference import load_model, predict

    model, _ = load_model(checkpoint)
    return predict(model, store, refs, recipe.batch_size, recipe.device)


def holdout_counts(
    holdout: Sequence[Any],
    weak_probs: Any,
    strong_checkpoint: Path,
    store: Path,
    recipe: TrainConfig,
    csv_path: Path,
) -> dict[str, Any]:
    """False positives of both models on the held-out weak slides (every patch is
    negative); both models' scores go to ``csv_path``."""
    if not holdout:
        return {"holdout_n": 0, "holdout_fp_weak": None, "holdout_fp_strong": None}
    from wsi_tools.train.data import open_store, table_from_refs

    strong_probs = score_refs(strong_checkpoint, store, holdout, recipe)
    table = table_from_refs(open_store(store), holdout)
    with csv_path.open("w") as handle:
        handle.write("slide_id,index,x,y,prob_weak,prob_strong\n")
        for (slide_id, index), (x, y), p_weak, p_strong in zip(
            holdout, table.coords, weak_probs, strong_probs, strict=True
        ):
            handle.write(f"{slide_id},{index},{x},{y},{p_weak:.6g},{p_strong:.6g}\n")
    return {
        "holdout_slides": sorted({ref[0] for ref in holdout}),
        "holdout_n": len(holdout),
        "holdout_fp_weak": int((weak_probs >= recipe.threshold).sum()),
        "holdout_fp_strong": int((strong_probs >= recipe.threshold).sum()),
    }


def holdout_markdown(summary: Mapping[str, Any]) -> str:
    counts = summary["counts"]
    if not counts["holdout_n"]["mean"]:
        return ""
    return (
        f"Held-out weak slides (never mined; {counts['holdout_n']['mean']:.0f} patches per seed, all negative): "
        f"false positives weak {format_mean_sd(counts['holdout_fp_weak'], 1)}, "
        f"strong {format_mean_sd(counts['holdout_fp_strong'], 1)}.\n"
    )


def write_report(records: Sequence[Mapping[str, Any]], config: HnmConfig, out: Path, seconds: float) -> dict:
    summary = summarize_runs(records)
    report = {
        "pipeline": "hard negative mining (Lee et al. 2024)",
        "threshold": config.train.threshold,
        "alpha": config.mining.alpha,
        "metric": config.mining.metric,
        "fp_source": config.mining.fp_source,
        "seeds": list(config.seeds),
        "summary": summary,
        "runs": list(records),
        "seconds": round(seconds, 1),
        "code_version": code_version(),
        "finished": now_iso(),
        "environment": compute_environment(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    markdown = [
        "# Hard negative mining: weak vs strong",
        "",
        f"Threshold {config.train.threshold}, α = {config.mining.alpha}, metric {config.mining.metric}, "
        f"false positives from the {config.mining.fp_source} split, seeds {list(config.seeds)}.",
        "",
        table2_markdown(summary),
        "",
        holdout_markdown(summary),
        "### Per seed",
        "",
        seeds_markdown(records),
        "",
        f"Total time {seconds / 60:.1f} min.",
        "",
    ]
    (out / "report.md").write_text("\n".join(markdown))
    return report


def run_pipeline(
    config: HnmConfig,
    store: str | Path | None = None,
    out: str | Path | None = None,
    on_seed: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """All seeds, then ``report.json`` / ``report.md`` in ``out``. Returns the report."""
    store = required_path(store, config.store, flag="--store STORE", key="store", what="store")
    out = required_path(out, config.out, flag="--out DIR", key="out", what="output folder")
    if not store.exists():
        raise ConfigError(f"{store}: patch store not found; extract one first (wsi-tools extract / batch)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    started = time.perf_counter()
    from wsi_tools.train.runtime import cpu_threads

    records = []
    # One thread count for training, embedding and the kNN: CPU results depend on it.
    with cpu_threads(config.train.cpu_threads):
        for seed in config.seeds:
            for record in run_seed(config, store, out / f"seed_{seed}", seed):
                records.append(record)
                if on_seed:
                    on_seed(record)
        return write_report(records, config, out, time.perf_counter() - started)
