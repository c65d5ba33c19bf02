"""Frozen loss backbones: LPIPS (VGG16), CLIP image embeddings, and the Stage II discriminator.

Every backbone loads from a LOCAL path; nothing is downloaded. ``"tiny-random"`` builds a seeded,
untrained stand-in of the same structure — FOR TESTS ONLY: its loss values mean nothing.

Sources:

* LPIPS: one ``.safetensors`` file with ``features.<i>.weight/bias`` (torchvision's
  ``vgg16().features`` numbering, ImageNet weights) and ``lin<k>.weight`` [1, C_k, 1, 1] for
  k = 0..4 (the LPIPS v0.1 linear heads). See docs/training.md for a conversion snippet.
* CLIP: a transformers folder of ``CLIPVisionModelWithProjection`` (``config.json`` +
  ``model.safetensors``), e.g. openai/clip-vit-large-patch14.
* Discriminator backbone: a transformers folder of a ViT-style model with hidden states, e.g.
  facebook/dinov2-with-registers-small (paper: DINOv2 with registers).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    PreTrainedModel,
)

TINY = "tiny-random"
TINY_SEED = 20260301
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)
"""Indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in ``vgg16().features``."""


class BackboneError(FileNotFoundError):
    """A loss backbone's local files are missing or do not fit."""


def _require(path: str | Path, what: str, hint: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise BackboneError(f"{what} not found at {path}: {hint} (nothing is downloaded)")
    return path


def _normalize(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], size: int | None
) -> torch.Tensor:
    """x [B, 3, H, W] in 0..1 → resized to ``size`` (bilinear, antialiased) and standardised."""
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _vgg_features(layers: tuple) -> nn.Sequential:
    modules: list[nn.Module] = []
    channels = 3
    for item in layers:
        if item == "M":
            modules.append(nn.MaxPool2d(2, 2))
        else:
            modules += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*modules)


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018): unit-normalised VGG features at 5 taps, squared
    differences weighted by non-negative 1×1 heads, spatially averaged and summed.

    ``forward(x_hat, x)`` takes two [B, 3, H, W] batches in 0..1 and returns [B] distances.
    """

    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, features: nn.Sequential, taps: tuple[int, ...], widths: tuple[int, ...]) -> None:
        super().__init__()
        self.features = features
        self.taps = taps
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        self.requires_grad_(False).eval()

    @classmethod
    def from_source(cls, source: str) -> LPIPS:
        """``tiny-random`` (test stand-in) or a local VGG16 LPIPS ``.safetensors`` file."""
        if source == TINY:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TINY_SEED)
                model = cls(_vgg_features((8, "M", 12, "M", 16)), (1, 4, 7), (8, 12, 16))
                for lin in model.lins:
                    lin.weight.data.abs_()
            return model
        path = _require(
            source, "LPIPS weights", "pass lpips=<vgg16 LPIPS .safetensors> (see docs/training.md)"
        )
        model = cls(_vgg_features(VGG16_LAYERS), VGG16_TAPS, (64, 128, 256, 512, 512))
        state = load_file(str(path))
        state = {k.replace("lin", "lins.", 1) if k.startswith("lin") else k: v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise BackboneError(f"{path} is not a VGG16 LPIPS file: {str(error).splitlines()[0]}") from error
        return model.requires_grad_(False).eval()

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shift = torch.tensor(self.SHIFT, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        scale = torch.tensor(self.SCALE, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        a, b = (x_hat * 2 - 1 - shift) / scale, (x * 2 - 1 - shift) / scale
        total = x.new_zeros(x.shape[0])
        tap = 0
        for index, layer in enumerate(self.features):
            a, b = layer(a), layer(b)
            if index == self.taps[tap]:
                na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[tap]((na - nb).pow(2)).mean(dim=(1, 2, 3))
                tap += 1
                if tap == len(self.taps):
                    break
        return total


class CLIPEmbedding(nn.Module):
    """L2-normalised CLIP image embeddings: x [B, 3, H, W] in 0..1 → [B, D]."""

    def __init__(self, model: CLIPVisionModelWithProjection) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.size = int(model.config.image_size)

    @classmethod
    def from_source(cls, source: str) -> CLIPEmbedding:
        """``tiny-random`` (test stand-in) or a local transformers CLIP vision folder."""
        if source == TINY:
            config = CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
                projection_dim=16,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TINY_SEED + 1)
                return cls(CLIPVisionModelWithProjection(config))
        path = _require(source, "CLIP vision model", "pass clip=<local CLIPVisionModelWithProjection folder>")
        model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        return cls(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = _normalize(x, CLIP_MEAN, CLIP_STD, self.size)
        embeds = self.model(pixel_values=pixels).image_embeds
        return F.normalize(embeds.float(), dim=-1)


class Discriminator(nn.Module):
    """Frozen ViT backbone + trainable per-layer token heads (projected-GAN style).

    ``forward(x)`` takes [B, 3, H, W] in 0..1 (resized to ``size``) and returns logits
    [B, layers·tokens]: one real/fake logit per token of each tapped hidden layer.
    """

    def __init__(self, backbone: PreTrainedModel, size: int, layers: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        depth = int(backbone.config.num_hidden_layers)
        self.layers = layers or tuple(sorted({depth // 4, depth // 2, (3 * depth) // 4, depth}))
        width = int(backbone.config.hidden_size)
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Linear(width, 1)
            )
            for _ in self.layers
        )
        self.size = size

    @classmethod
    def from_source(cls, source: str, size: int = 224) -> Discriminator:
        """``tiny-random`` (test stand-in) or a local transformers folder (DINOv2 with registers)."""
        if source == TINY:
            config = Dinov2WithRegistersConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                image_size=32,
                patch_size=8,
                num_register_tokens=2,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TINY_SEED + 2)
                return cls(Dinov2WithRegistersModel(config), size=32)
        path = _require(source, "discriminator backbone", "pass discriminator=<local DINOv2 folder>")
        return cls(AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True), size=size)

    def train(self, mode: bool = True) -> Discriminator:
        super().train(mode)
        self.backbone.eval()  # frozen: keep dropout etc. off
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = _normalize(x, IMAGENET_MEAN, IMAGENET_STD, self.size)
        hidden = self.backbone(pixel_values=pixels, output_hidden_states=True).hidden_states
        logits = [
            head(hidden[layer].float()).flatten(1)
            for layer, head in zip(self.layers, self.heads, strict=True)
        ]
        return torch.cat(logits, dim=1)
