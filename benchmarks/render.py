"""Write the README's measured figures from ``benchmarks/results/*.json``.

    python benchmarks/render.py            # rewrite the marked sections of README.md
    python benchmarks/render.py --check    # exit 1 if README.md is not what the JSON gives

Each section sits between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``
and ends with the date, commit and machine of the JSON it came from
(``benchmarks/record.py`` writes those). A test runs ``--check``, so a figure
typed by hand, or a JSON updated without the README, fails CI.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wsi_tools.pipelines.hnm import holdout_markdown
from wsi_tools.pipelines.report import format_mean_sd, seeds_markdown, table2_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MB_PER_GB = 1024


def _provenance(*records: Mapping[str, Any]) -> str:
    parts = []
    for record in records:
        result, machine = record["result"], record["machine"]
        environment = result.get("environment") or result.get("hnm", {}).get("environment") or {}
        threads = f", {environment['torch_threads']} torch threads" if "torch_threads" in environment else ""
        parts.append(
            f"`benchmarks/results/{record['name']}.json`: {record['date'][:10]}, {record['commit']}, "
            f"{machine['cpu_cores']} cores{threads}"
        )
    return "*Rendered by `benchmarks/render.py` from " + "; ".join(parts) + ".*"


def _load(results: Path, name: str) -> dict[str, Any]:
    path = results / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"render: {path} is missing; record it with benchmarks/record.py {name} ...")
    return dict(json.loads(path.read_text()))


# --------------------------------------------------------------------------- sections


def demo_section(results: Path) -> str:
    record = _load(results, "demo")
    demo = record["result"]
    report = demo["hnm"]
    seconds = demo["seconds"]
    times = ", ".join(f"{stage} {value:.0f} s" for stage, value in seconds.items() if stage != "total")
    return "\n".join(
        [
            f"The demo took {seconds['total']:.0f} s ({times}).",
            "",
            table2_markdown(report["summary"], title="Weak vs strong, test split"),
            "",
            holdout_markdown(report["summary"]),
            seeds_markdown(report["runs"]),
            "",
            _provenance(record),
        ]
    )


ABLATION_COLUMNS = ("specificity", "f1")


def ablation_section(results: Path) -> str:
    record = _load(results, "ablation")
    rows = record["result"]["rows"]
    lines = [
        "| study | condition | specificity weak → strong | F1 weak → strong | held-out weak-slide FPs weak → strong |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        summary = row["summary"]
        cells = [row["study"], row["condition"]]
        for metric in ABLATION_COLUMNS:
            entry = summary["metrics"][metric]
            cells.append(f"{format_mean_sd(entry['weak'])} → {format_mean_sd(entry['strong'])}")
        counts = summary["counts"]
        cells.append(
            f"{format_mean_sd(counts['holdout_fp_weak'], 1)} → {format_mean_sd(counts['holdout_fp_strong'], 1)}"
        )
        lines.append("| " + " | ".join(cells) + " |")
    minutes = record["result"]["seconds"] / 60
    return "\n".join(
        [
            f"Mean ± SD over seeds {record['result']['seeds']}, test split; {minutes:.0f} minutes in all.",
            "",
            *lines,
            "",
            _provenance(record),
        ]
    )


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _extract_row(result: Mapping[str, Any]) -> list[str]:
    slides = result["slides"]
    x20, x40 = slides["x20"], slides["x40"]
    speedup_ok = result["speedup_vs_naive"] >= 5
    bound_ok = result["cpu_over_decode_bound"] <= 3
    rss_ok = result["peak_rss_mb"] <= MB_PER_GB
    return [
        "`extract.py`",
        "weak-set extraction of 40960×30720 ×20 and ×40 slides (least disturbed of "
        f"{len(x20['cpu_s_runs'])} fresh-process runs)",
        f"{x20['patches_per_s']:.0f} / {x40['patches_per_s']:.0f} patches/s; "
        f"**{x20['speedup_vs_naive']:.0f}× / {x40['speedup_vs_naive']:.0f}×** the naive `read_region` + PNG loop; "
        f"CPU **{x20['cpu_over_decode_bound']:.2f}× / {x40['cpu_over_decode_bound']:.2f}×** the JPEG decode bound "
        f"at {x20['threads']} threads ({x20['cpu_over_decode_bound_threads1']:.2f}× / "
        f"{x40['cpu_over_decode_bound_threads1']:.2f}× on one); peak RSS {result['peak_rss_mb']:.0f} MB",
        "≥5× naive; ≤3× the decode bound; ≤1 GB",
        _met(speedup_ok and bound_ok and rss_ok),
    ]


def _batch_row(result: Mapping[str, Any]) -> list[str]:
    same = "identical stores" if result["same_store_1_and_2"] else "**stores differ**"
    return [
        "`batch.py`",
        f"{result['slides']} slides on 1 vs 2 Dask workers",
        f"{result['slides_per_hour_1']:,.0f} vs {result['slides_per_hour_2']:,.0f} slides/h, "
        f"**{result['speedup_2_vs_1']:.2f}×**, {same}",
        "≥1.7×",
        _met(result["speedup_2_vs_1"] >= 1.7 and result["same_store_1_and_2"]),
    ]


def _loader_row(result: Mapping[str, Any]) -> list[str]:
    ratio = result["store_bytes"] / result["png_bytes"]
    return [
        "`loader.py`",
        "the same DataLoader over the store and over its PNG export",
        f"{result['store_patches_per_s']:,.0f} vs {result['png_patches_per_s']:,.0f} patches/s, "
        f"**{result['speedup_vs_png']:.2f}×**; store {result['store_bytes'] / 1e6:.1f} MB vs PNG "
        f"{result['png_bytes'] / 1e6:.1f} MB (**{ratio:.3f}**)",
        "≥3×; store ≤ PNG",
        _met(result["speedup_vs_png"] >= 3 and ratio <= 1),
    ]


def _mining_row(result: Mapping[str, Any]) -> list[str]:
    return [
        "`mining.py`",
        f"exact kNN, {result['knn_queries']:,} queries over {result['knn_rows']:,} × 512-d; "
        "mining vs re-embedding per FP",
        f"kNN **{result['knn_over_matmul']:.2f}×** the bare matmul, peak RSS {result['peak_rss_mb'] / MB_PER_GB:.1f} GB; "
        f"**{result['speedup_vs_naive_mining']:.1f}×** faster than naive mining",
        "≤1.5×; ≤2 GB",
        _met(result["knn_over_matmul"] <= 1.5 and result["peak_rss_mb"] <= 2 * MB_PER_GB),
    ]


def _predict_row(result: Mapping[str, Any]) -> list[str]:
    x20, large = result["slides"]["x20"], result["slides"].get("large")
    rss = f"peak RSS {x20['peak_rss_mb'] / MB_PER_GB:.2f} GB"
    if large is not None:
        rss += f" ({large['peak_rss_mb'] / MB_PER_GB:.2f} GB on the 100k × 100k px slide)"
    sizes = "40960×30720 px ×20 slide (224 px windows at 0.5 µm/px, stride 112)"
    if large is not None:
        sizes += " and a 100000×100000 px one (224 px at 2 µm/px)"
    return [
        "`predict.py`",
        f"`predict` on a {sizes}, ResNet18 at 224 on the {x20['device'].upper()}; the reading alone, "
        "the bare forward, and end to end",
        f"read {result['read_patches_per_s']:,.0f} windows/s ({x20['read_patches_per_s_threads1']:,.0f} on one "
        f"thread: **{result['gpus_fed_per_read_core']:.1f}** GPUs' worth at "
        f"{result['gpu_forward_reference_patches_per_s']:,.0f}/s each), model {result['model_patches_per_s']:.0f}/s, "
        f"predict {result['predict_patches_per_s']:.0f}/s: overlap efficiency **{result['overlap_efficiency']:.2f}**; "
        f"{rss}",
        "overlap ≥0.85; ≤2 GB",
        _met(result["overlap_efficiency"] >= 0.85 and result["peak_rss_mb"] <= 2 * MB_PER_GB),
    ]


BENCHMARK_ROWS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "extract": _extract_row,
    "batch": _batch_row,
    "loader": _loader_row,
    "mining": _mining_row,
    "predict": _predict_row,
}


def benchmarks_section(results: Path) -> str:
    records = [_load(results, name) for name in BENCHMARK_ROWS]
    lines = ["| benchmark | what it measures | measured | target | met |", "|---|---|---|---|---|"]
    for record in records:
        lines.append("| " + " | ".join(BENCHMARK_ROWS[record["name"]](record["result"])) + " |")
    return "\n".join([*lines, "", _provenance(*records)])


SECTIONS: dict[str, Callable[[Path], str]] = {
    "demo": demo_section,
    "ablation": ablation_section,
    "benchmarks": benchmarks_section,
}


def _replacement(body: str) -> Callable[[re.Match[str]], str]:
    return lambda match: match.group(1) + body + "\n" + match.group(2)


def render(text: str, results: Path) -> str:
    """``text`` with every marked section replaced by what the JSON gives."""
    for name, section in SECTIONS.items():
        pattern = re.compile(rf"(<!-- figures:{name} -->\n).*?(<!-- /figures:{name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(
                f"render: README.md has no <!-- figures:{name} --> ... <!-- /figures:{name} --> section"
            )
        body = section(results).strip("\n")
        text = pattern.sub(_replacement(body), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the file to render")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the recorded JSON files")
    args = parser.parse_args()
    current = args.readme.read_text()
    rendered = render(current, args.results)
    if args.check:
        if rendered != current:
            print(
                f"{args.readme} is not what {args.results} gives: run python benchmarks/render.py",
                file=sys.stderr,
            )
            return 1
        return 0
    args.readme.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
