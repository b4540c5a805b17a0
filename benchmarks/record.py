"""Keep a measurement as JSON with the date, commit and machine it came from.

    python benchmarks/record.py extract -- python benchmarks/extract.py
    python benchmarks/record.py demo --report demo_out/hnm/report.json
    python benchmarks/record.py ablation --report ablation/report.json

A benchmark is run and its last stdout line (one JSON object) is kept; a
pipeline's ``report.json`` is read as it is. Either lands in
``benchmarks/results/NAME.json``, from which ``benchmarks/render.py`` writes the
README's tables: a figure in the README is never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from wsi_tools.provenance import code_version, now_iso

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if "model name" in line
            ),
            "",
        )
    return {"cpu_cores": len(os.sched_getaffinity(0)), "cpu": model, "system": platform.platform()}


def run_benchmark(command: list[str]) -> dict[str, Any]:
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"record: {' '.join(command)} exited {completed.returncode}; nothing recorded")
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        raise SystemExit(
            f"record: the last line of {' '.join(command)} is not JSON; nothing recorded"
        ) from None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s NAME (--report PATH | -- COMMAND ...)",
    )
    parser.add_argument("name", help="the result's name: benchmarks/results/NAME.json")
    parser.add_argument("--report", type=Path, help="a pipeline's report.json to keep (demo, ablation)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]  # what follows "--": the benchmark to run
    if bool(command) == bool(args.report):
        parser.error("give either --report PATH or -- COMMAND")
    if args.report:
        result = json.loads(args.report.read_text())
        source = str(args.report)
        # A report names the code that made it; the checkout may have moved on since.
        made_by = result.get("code_version") or result.get("hnm", {}).get("code_version")
        made_on = result.get("finished") or result.get("hnm", {}).get("finished")
    else:
        result = run_benchmark(command)
        source = " ".join(command)
        made_by, made_on = None, None
    record = {
        "name": args.name,
        "date": made_on or now_iso(),
        "commit": made_by or code_version(),
        "source": source,
        "machine": machine(),
        "result": result,
    }
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"{args.name}.json"
    target.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"recorded {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
