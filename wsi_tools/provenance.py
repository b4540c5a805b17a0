"""What every output records about how it was made: when (UTC) and by which code."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from wsi_tools import __version__


def now_iso() -> str:
    """The current UTC time to the second, ISO 8601 (what every ``started``/``finished`` holds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def code_version() -> str:
    """This package's version, plus the git commit when run from a checkout (``0.1.0+abc1234``;
    a trailing ``-dirty`` when the tree has uncommitted changes)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}" if commit else __version__


def compute_environment() -> dict[str, object]:
    """What a CPU run's floating-point results depend on beyond the code and the seed:
    the versions, torch's thread count and the CPU kernels it dispatched to."""
    import platform

    import numpy
    import torch

    return {
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }
