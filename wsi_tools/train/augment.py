"""Resize, augmentation and normalisation with torchvision ``transforms.v2``.

Everything is RGB: the store holds RGB patches and nothing here reorders
channels (the ImageNet mean/std are in RGB order). The same pipeline runs in
two places:

- in the loader workers, one patch at a time (``PatchDataset(transform=...)``);
- on the device, per batch (:class:`BatchTransform`): the workers only read and
  decompress uint8 patches, and the GPU resizes, augments and normalises. Each
  patch of a batch still gets its own random draw. When that "device" is the
  CPU, the workers also do the cheap uint8 resize, one call per batch
  (``PatchDataset(resize=...)``, :func:`wsi_tools.train.data.resize_batch`),
  which cuts the bytes passed between processes about 5x.

Augmentations (the paper's list): horizontal/vertical flips, transpose,
shift-scale (``RandomAffine``), elastic deformation, Gaussian blur, Gaussian
noise, brightness/contrast (``ColorJitter``). Resizing happens first, so the
augmentations work on ``input_size`` pixels, not the stored 512.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


class RandomTranspose(v2.Transform):
    """Swap height and width (a transpose: a rot90 plus a flip) with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"apply": bool(torch.rand(1) < self.p)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return inpt.transpose(-1, -2) if params["apply"] else inpt


def augmentation() -> v2.Compose:
    """Random training augmentation on a float RGB image in [0, 1] (C, H, W)."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            RandomTranspose(0.5),
            # Shift-scale, as albumentations' ShiftScaleRotate without the rotation;
            # reflection-like white fill matches the background of the slides.
            v2.RandomApply(
                [v2.RandomAffine(degrees=0, translate=(0.0625, 0.0625), scale=(0.9, 1.1), fill=1.0)],
                p=0.5,
            ),
            v2.RandomApply([v2.ElasticTransform(alpha=30.0, sigma=5.0, fill=1.0)], p=0.25),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.25),
            v2.RandomApply([v2.GaussianNoise(mean=0.0, sigma=0.03, clip=True)], p=0.25),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.5),
        ]
    )


def _to_float_and_resize(input_size: int) -> list[nn.Module]:
    # Resizing the uint8 patch first is several times cheaper than resizing floats.
    return [
        v2.Resize((input_size, input_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]


def sample_transform(input_size: int, augment: bool) -> v2.Compose:
    """For one uint8 RGB patch (3, H, W): float, resize, optional augmentation, normalise."""
    steps: list[nn.Module] = _to_float_and_resize(input_size)
    if augment:
        steps.append(augmentation())
    steps.append(v2.Normalize(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB))
    return v2.Compose(steps)


class BatchTransform(nn.Module):
    """The same pipeline on a uint8 batch (B, 3, H, W) already on the device.

    Resize and normalise are applied to the whole batch at once (they have no
    randomness; the resize is a no-op when the workers already resized);
    augmentation is drawn per patch.
    """

    def __init__(self, input_size: int, augment: bool) -> None:
        super().__init__()
        self.prepare = v2.Compose(_to_float_and_resize(input_size))
        self.augment = augmentation() if augment else None
        self.normalize = v2.Normalize(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(
                f"expected a uint8 RGB batch (B, 3, H, W), got {tuple(batch.shape)} {batch.dtype}"
            )
        x = self.prepare(batch)
        if self.augment is not None:
            x = torch.stack([self.augment(image) for image in x])
        return self.normalize(x)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] RGB, for checks and pictures."""
    mean = torch.tensor(IMAGENET_MEAN_RGB, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD_RGB, device=x.device).view(-1, 1, 1)
    return x * std + mean
