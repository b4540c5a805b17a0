"""ResNet18 with one output logit, as in the paper, and its 512-d embedding.

``weights``: ``none`` (random), ``imagenet`` (torchvision's
``ResNet18_Weights.IMAGENET1K_V1``, read only from the local torch hub cache;
nothing is ever downloaded) or a path to a local state dict (a plain
torchvision ResNet18 state dict, with or without its 1000-class ``fc``, or one
of this class's own state dicts).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from wsi_tools.errors import ConfigError

IMAGENET_FILENAME = "resnet18-f37072fd.pth"
EMBED_DIM = 512


def imagenet_weights_path() -> Path:
    """Where torchvision keeps the ImageNet ResNet18 weights: ``<torch hub dir>/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILENAME


class PatchClassifier(nn.Module):
    """ResNet18 backbone + a single-logit head.

    ``forward(x)`` takes a normalised float batch (B, 3, H, W) and returns the
    logits (B,); ``embed(x)`` returns the penultimate (B, 512) features (after
    global average pooling), which the miner uses. ``input_size`` is the side
    the patches are resized to before the network.
    """

    def __init__(self, input_size: int = 224) -> None:
        super().__init__()
        self.backbone = resnet18(weights=None)
        self.backbone.fc = nn.Linear(EMBED_DIM, 1)
        self.input_size = int(input_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return torch.flatten(b.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.fc(self.embed(x)).squeeze(1)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(
            f"{path}: cannot read a state dict ({type(error).__name__}: {error}); give a file saved with torch.save(model.state_dict())"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our own checkpoints
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict (a mapping of parameter names to tensors)")
    return state


def _load_backbone(model: PatchClassifier, state: dict[str, torch.Tensor], source: str) -> None:
    if any(key.startswith("backbone.") for key in state):
        state = {key.removeprefix("backbone."): value for key, value in state.items()}
    head = {key: value for key, value in state.items() if key.startswith("fc.")}
    body = {key: value for key, value in state.items() if not key.startswith("fc.")}
    missing, unexpected = model.backbone.load_state_dict(body, strict=False)
    missing = [key for key in missing if not key.startswith("fc.")]
    if missing or unexpected:
        raise ConfigError(
            f"{source}: not a ResNet18 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if head.get("fc.weight") is not None and tuple(head["fc.weight"].shape) == (1, EMBED_DIM):
        model.backbone.fc.load_state_dict({k.removeprefix("fc."): v for k, v in head.items()})
    # A 1000-class ImageNet head is dropped: the single-logit head starts fresh.


def build_model(weights: str = "none", input_size: int = 224) -> PatchClassifier:
    """A fresh :class:`PatchClassifier` initialised from ``weights`` (see module docstring)."""
    model = PatchClassifier(input_size)
    choice = weights.strip()
    if choice.lower() == "none":
        return model
    if choice.lower() == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            raise ConfigError(
                f"weights: imagenet needs the torchvision ResNet18 file at {path} "
                f"(nothing is downloaded). Copy {IMAGENET_FILENAME} (from "
                "https://download.pytorch.org/models/resnet18-f37072fd.pth on a machine with network) "
                f"into {path.parent}, or set TORCH_HOME, or use weights: none or weights: PATH"
            )
        _load_backbone(model, _load_state_dict(path), str(path))
        return model
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights: {choice!r} is not none, imagenet or an existing state dict file")
    _load_backbone(model, _load_state_dict(path), str(path))
    return model
