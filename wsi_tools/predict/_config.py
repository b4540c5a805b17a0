"""What ``wsi-tools predict`` does: one frozen config, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from wsi_tools.errors import ConfigError
from wsi_tools.options import (
    at_least,
    between,
    device_name,
    one_of,
    option,
    positive,
    unit_interval,
    validate,
)
from wsi_tools.slide import READER_CHOICES


@dataclass(frozen=True)
class PredictConfig:
    """Sliding-window inference over whole slides (defaults: Kanavati et al.'s half-patch stride)."""

    stride: int | None = option(
        None,
        "window step in px at the model's resolution; must divide the patch size; "
        "none: half a patch (the seed paper: 224 px windows at stride 112)",
        check=at_least(1),
    )
    overlap: float | None = option(
        None,
        "share of a window its neighbour overlaps (stride = patch x (1 - overlap), e.g. 0.5 for half a "
        "patch, 0 for none); give --stride or --overlap; none: --stride's default",
        check=between(0.0, 0.95),
        output=False,  # what it changes is the stride, which the outputs record
    )
    threshold: float | None = option(
        None,
        "a window or map cell at or above this probability is positive; none: the checkpoint's threshold",
        check=unit_interval,
    )
    tissue_min: float = option(
        0.25, "least tissue share of a window for it to be scored", check=unit_interval
    )
    top_k: int = option(8, "score_topk is the mean probability of the k highest windows", check=at_least(1))
    target_mpp: float | None = option(
        None,
        "µm/px of the windows; none: what the checkpoint records (needed for old checkpoints)",
        check=positive,
    )
    patch_size: int | None = option(
        None, "window side in px at that resolution; none: what the checkpoint records", check=at_least(8)
    )
    tolerance: float | None = option(
        None,
        "relative mpp difference within which a pyramid level is read as is; none: the checkpoint's",
        check=unit_interval,
    )
    gradcam: bool = option(
        False, "Grad-CAM maps of the top-scoring regions (gradcam.png, gradcam.npz); off: none"
    )
    gradcam_regions: int = option(
        8, "how many top-scoring regions get a Grad-CAM map (each two patch sides wide)", check=at_least(1)
    )
    gradcam_stride: int = option(
        32, "px at the model's resolution between the Grad-CAM windows of a region or of the whole slide (the seed paper: 32)",
        check=at_least(1),
    )  # fmt: skip
    gradcam_whole_slide: bool = option(
        False,
        "Grad-CAM of every tissue window every --gradcam-stride px over the whole slide "
        "(gradcam_slide.png, .npy): (patch / stride)^2 / (patch / --stride)^2 times the windows "
        "of the prediction, each a backward pass (49 / 4 at the defaults); its cost is printed; off: none",
    )
    slide_mpp: float | None = option(
        None, "level-0 µm/px for a slide without MPP, or to override it", check=positive
    )
    backend: str = option("auto", "slide reader: auto | openslide | tiffslide", check=one_of(*READER_CHOICES))
    batch_size: int = option(64, "windows per forward pass", check=at_least(1), output=False)
    threads: int = option(
        2, "threads that read windows while the model runs", check=at_least(1), output=False
    )
    device: str = option(
        "auto",
        "auto (CUDA when present; several GPUs: one worker each) | cpu | cuda | cuda:N (that GPU alone)",
        check=device_name,
        output=False,
    )
    progress: bool = option(True, "progress bars on a terminal", output=False)

    def __post_init__(self) -> None:
        validate(self)
        if self.stride is not None and self.overlap is not None:
            raise ConfigError(f"give --stride ({self.stride}) or --overlap ({self.overlap:g}), not both")

    def replace(self, **changes: Any) -> PredictConfig:
        return dataclasses.replace(self, **changes)
