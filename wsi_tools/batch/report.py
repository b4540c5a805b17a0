"""What a batch did, slide by slide: ``report.json``, ``report.md`` and a summary table."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from wsi_tools._atomic import write_atomically

if TYPE_CHECKING:
    from rich.table import Table

STATUSES = ("complete", "skipped", "failed", "interrupted")
EXIT_ALL_DONE = 0
EXIT_SOME_FAILED = 3


def new_run_id() -> str:
    """UTC timestamp plus a short random suffix: sortable, and unique across clients."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class SlideOutcome:
    """The fate of one manifest row."""

    slide_id: str
    slide_path: str
    set: str
    line: int
    split: str | None = None
    status: str = "interrupted"  # until a result says otherwise
    n_patches: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of its attempts, in the worker
    cpu_seconds: float = 0.0  # CPU time of its extraction processes (all threads)
    error_type: str | None = None
    error: str | None = None
    attempts: int = 0
    worker: str | None = None


@dataclass
class BatchReport:
    run_id: str
    store: str
    manifest: str
    run_dir: str
    started: str
    finished: str | None
    seconds: float
    workers: int | None
    scheduler: str | None
    settings: dict[str, Any]
    options: dict[str, Any]
    warnings: list[str]
    slides: list[SlideOutcome]

    @property
    def totals(self) -> dict[str, Any]:
        by_status = Counter(outcome.status for outcome in self.slides)
        extracted = sum(outcome.n_patches for outcome in self.slides if outcome.status == "complete")
        return {
            "slides": len(self.slides),
            **{status: by_status.get(status, 0) for status in STATUSES},
            "patches_extracted": extracted,
            "patches_in_store": sum(o.n_patches for o in self.slides if o.status in ("complete", "skipped")),
            "slides_without_patches": len(self.empty()),
            "patches_per_s": round(extracted / self.seconds, 2) if self.seconds > 0 else 0.0,
            "cpu_seconds": round(sum(outcome.cpu_seconds for outcome in self.slides), 2),
            "slides_per_hour": round(by_status.get("complete", 0) * 3600 / self.seconds, 1)
            if self.seconds > 0
            else 0.0,
        }

    @property
    def exit_code(self) -> int:
        ok = all(outcome.status in ("complete", "skipped") for outcome in self.slides)
        return EXIT_ALL_DONE if ok else EXIT_SOME_FAILED

    def empty(self) -> list[SlideOutcome]:
        """Slides done but with no patch: a row of their own in the reports."""
        return [o for o in self.slides if o.status in ("complete", "skipped") and o.n_patches == 0]

    def failed(self) -> list[SlideOutcome]:
        return [outcome for outcome in self.slides if outcome.status not in ("complete", "skipped")]

    def as_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in asdict(self).items() if key != "slides"}
        return {**data, "totals": self.totals, "slides": [asdict(outcome) for outcome in self.slides]}


def markdown_cell(text: object) -> str:
    """``text`` as one cell of a markdown table: pipes escaped, on one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _counts_text(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items() if not isinstance(value, dict))


def report_markdown(report: BatchReport) -> str:
    totals = report.totals
    lines = [
        f"# Batch run {report.run_id}",
        "",
        f"- store: `{report.store}`",
        f"- manifest: `{report.manifest}`",
        f"- started {report.started}, finished {report.finished or 'not (interrupted)'}, "
        f"{report.seconds:.1f} s",
        f"- cluster: {report.scheduler or f'local, {report.workers} worker process(es)'}",
        f"- slides: {totals['slides']} — complete {totals['complete']}, skipped (already complete) "
        f"{totals['skipped']}, failed {totals['failed']}, interrupted {totals['interrupted']}",
        f"- patches extracted: {totals['patches_extracted']} ({totals['patches_per_s']} patches/s); "
        f"in the store for these slides: {totals['patches_in_store']}",
        "",
        *[f"- warning: {warning}" for warning in report.warnings],
        "",
        "| line | slide_id | set | status | patches | seconds | attempts | counts | error |",
        "|---:|---|---|---|---:|---:|---:|---|---|",
    ]
    for o in report.slides:
        error = f"{o.error_type}: {o.error}" if o.error else ""
        lines.append(
            f"| {o.line} | {markdown_cell(o.slide_id)} | {o.set} | {o.status} | {o.n_patches} | {o.seconds:.1f} "
            f"| {o.attempts} | {markdown_cell(_counts_text(o.counts))} | {markdown_cell(error)} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_report(report: BatchReport, run_dir: Path) -> tuple[Path, Path]:
    """``report.json``, ``report.md``, the effective ``config.yaml`` and, when the
    manifest names splits, ``splits.csv`` (slide_id,split) in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path = run_dir / "report.json"
    md_path = run_dir / "report.md"
    write_atomically(json_path, json.dumps(report.as_dict(), indent=2) + "\n")
    write_atomically(md_path, report_markdown(report))
    # Flat extraction settings, so `--config runs/<run_id>/config.yaml` repeats the run.
    options = " ".join(f"{key}={value}" for key, value in report.options.items())
    header = f"# Effective extraction settings of batch run {report.run_id}.\n# Batch options: {options}\n"
    write_atomically(run_dir / "config.yaml", header + yaml.safe_dump(report.settings, sort_keys=False))
    splits = [(o.slide_id, o.split) for o in report.slides if o.split]
    if splits:
        write_atomically(
            run_dir / "splits.csv", "slide_id,split\n" + "".join(f"{i},{s}\n" for i, s in splits)
        )
    return json_path, md_path


def summary_table(report: BatchReport, max_rows: int = 50) -> Table:
    """A rich table: failures first (they need attention), then the rest."""
    from rich.markup import escape
    from rich.table import Table

    totals = report.totals
    table = Table(
        title=f"batch {report.run_id}",
        caption=(
            f"{totals['complete']} complete, {totals['skipped']} skipped, {totals['failed']} failed, "
            f"{totals['interrupted']} interrupted · {totals['patches_extracted']} patches extracted "
            f"at {totals['patches_per_s']}/s in {report.seconds:.1f} s"
            + (f" · {totals['slides_without_patches']} slide(s) kept no patch" if report.empty() else "")
        ),
    )
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("slide_id", "left"),
        ("set", "left"),
        ("status", "left"),
        ("patches", "right"),
        ("s", "right"),
        ("error", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="fold")
    colours = {"complete": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow"}
    ordered: Sequence[SlideOutcome] = sorted(
        report.slides, key=lambda o: (o.status in ("complete", "skipped"), o.line)
    )
    for o in ordered[:max_rows]:
        error = f"{o.error_type}: {o.error}" if o.error else ""
        status = f"[{colours.get(o.status, 'white')}]{o.status}[/]"
        table.add_row(escape(o.slide_id), o.set, status, str(o.n_patches), f"{o.seconds:.1f}", escape(error))
    if len(ordered) > max_rows:
        table.add_row(f"... {len(ordered) - max_rows} more in report.md", "", "", "", "", "")
    return table
