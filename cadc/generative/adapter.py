"""The trainable part of CADC's one-step denoiser: a new UNet ``conv_in`` plus UNet LoRA.

Everything else of SD-Turbo stays frozen and is never copied into a CADC checkpoint.

Checkpoint layout (tensors in the CADC ``.safetensors`` file, names as diffusers/peft write them
with a ``unet.`` prefix, under the checkpoint prefix ``adapter.``)::

    adapter.unet.conv_in.weight                 [C0, latent_channels, 3, 3]   C0 = block_out_channels[0]
    adapter.unet.conv_in.bias                   [C0]
    adapter.unet.<module>.lora_A.weight         Linear: [r, in]      Conv2d k×k: [r, in, k, k]
    adapter.unet.<module>.lora_B.weight         Linear: [out, r]     Conv2d:     [out, r, 1, 1]

``<module>`` is the diffusers ``UNet2DConditionModel`` module path, e.g.
``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``. The LoRA update of a module is
``W + (alpha / r) · B @ A``. The JSON metadata ``cadc.adapter`` holds :class:`AdapterConfig`
(``{"rank": 32, "alpha": 8.0, "targets": [...], "latent_channels": 320}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

ADAPTER_PREFIX = "adapter."
UNET_PREFIX = "unet."
LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "conv",
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv_out",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
)
"""StableCodec's UNet LoRA targets (peft suffix match on module names)."""


class AdapterError(ValueError):
    """The adapter tensors or metadata are inconsistent."""


@dataclass(frozen=True)
class AdapterConfig:
    """LoRA hyper-parameters stored as JSON next to the adapter tensors.

    ``alpha`` defaults to 8, peft's default, which StableCodec's ``LoraConfig`` leaves in place
    (so the LoRA scale is 8 / 32 = 0.25 at rank 32).
    """

    rank: int = 32
    alpha: float = 8.0
    targets: tuple[str, ...] = LORA_TARGETS
    latent_channels: int = 320

    @property
    def scale(self) -> float:
        """LoRA scale alpha / rank."""
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        """JSON-ready dict (the ``cadc.adapter`` metadata)."""
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> AdapterConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise AdapterError(f"unknown adapter metadata keys: {sorted(unknown)}")
        kw = dict(d)
        if "targets" in kw:
            kw["targets"] = tuple(kw["targets"])
        return cls(**kw)


@dataclass
class AdapterWeights:
    """New ``conv_in`` and LoRA tensors for a diffusers SD-Turbo UNet.

    Attributes:
        config: rank, alpha, targets, latent_channels.
        conv_in_weight: [C0, latent_channels, 3, 3].
        conv_in_bias: [C0].
        lora: diffusers UNet module path → (lora_A weight, lora_B weight), shapes as in the module doc.
    """

    config: AdapterConfig
    conv_in_weight: torch.Tensor
    conv_in_bias: torch.Tensor
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under their checkpoint names (``adapter.unet.…``), contiguous, for safetensors."""
        p = ADAPTER_PREFIX + UNET_PREFIX
        out = {p + "conv_in.weight": self.conv_in_weight, p + "conv_in.bias": self.conv_in_bias}
        for name, (a, b) in self.lora.items():
            out[f"{p}{name}.lora_A.weight"] = a
            out[f"{p}{name}.lora_B.weight"] = b
        return {k: v.contiguous() for k, v in out.items()}

    def lora_state_dict(self, with_alpha: bool = True) -> dict[str, torch.Tensor]:
        """LoRA tensors in diffusers UNet naming without prefix (``<module>.lora_A.weight``, …).

        With ``with_alpha``, each module also gets a scalar ``<module>.alpha`` tensor, which
        kohya/ComfyUI-style LoRA loaders read to compute the scale alpha / rank.
        """
        out: dict[str, torch.Tensor] = {}
        for name, (a, b) in self.lora.items():
            out[f"{name}.lora_A.weight"] = a
            out[f"{name}.lora_B.weight"] = b
            if with_alpha:
                out[f"{name}.alpha"] = torch.tensor(float(self.config.alpha))
        return out

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], config: Mapping | AdapterConfig | None = None
    ) -> AdapterWeights:
        """Parse adapter tensors from a checkpoint state dict.

        Args:
            state: tensors; only keys starting with ``adapter.`` are read (other keys, e.g. ``codec.*``,
                are ignored), so the whole checkpoint can be passed.
            config: the ``cadc.adapter`` metadata; when None the rank is read from the tensors and
                alpha takes its default (8).

        Raises:
            AdapterError: missing conv_in, unpaired LoRA tensors, unknown names or inconsistent ranks.
        """
        p = ADAPTER_PREFIX + UNET_PREFIX
        items = {k[len(p) :]: v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
        stray = [k for k in state if k.startswith(ADAPTER_PREFIX) and not k.startswith(p)]
        if stray:
            raise AdapterError(f"adapter tensors must start with {p!r}; got {stray[:3]}")
        try:
            w = items.pop("conv_in.weight")
            bias = items.pop("conv_in.bias")
        except KeyError as e:
            raise AdapterError(f"adapter has no {p}conv_in.weight / .bias") from e
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in items.items():
            for part in ("lora_A", "lora_B"):
                suffix = f".{part}.weight"
                if key.endswith(suffix):
                    pairs.setdefault(key[: -len(suffix)], {})[part] = t
                    break
            else:
                raise AdapterError(f"unexpected adapter tensor {p}{key}")
        lora = {}
        for name, ab in sorted(pairs.items()):
            if set(ab) != {"lora_A", "lora_B"}:
                raise AdapterError(f"LoRA module {name} needs both lora_A and lora_B")
            lora[name] = (ab["lora_A"], ab["lora_B"])
        ranks = {a.shape[0] for a, _ in lora.values()} | {b.shape[1] for _, b in lora.values()}
        if isinstance(config, AdapterConfig):
            cfg = config
        elif config is not None:
            cfg = AdapterConfig.from_dict(config)
        else:
            cfg = AdapterConfig(rank=next(iter(ranks)) if ranks else AdapterConfig.rank)
        cfg = dataclasses.replace(cfg, latent_channels=int(w.shape[1]))
        if ranks - {cfg.rank}:
            raise AdapterError(f"LoRA ranks {sorted(ranks)} disagree with the metadata rank {cfg.rank}")
        if w.ndim != 4 or bias.shape != (w.shape[0],):
            raise AdapterError(f"conv_in weight {tuple(w.shape)} / bias {tuple(bias.shape)} are malformed")
        return cls(cfg, w, bias, lora)


def seeded_adapter(
    base_conv_in: torch.nn.Conv2d,
    lora_shapes: Mapping[str, tuple[torch.Size, torch.Size]],
    config: AdapterConfig,
    seed: int = 0,
) -> AdapterWeights:
    """A deterministic stand-in adapter for demos and tests (no trained weights).

    ``conv_in`` copies the base UNet's conv_in onto the first 4 input channels (the noisy SD latent)
    and zeros the other ``latent_channels − 4``; LoRA A is Gaussian with std 1/r from ``seed`` (peft's
    "gaussian" init) and B is zero, so the UNet behaves like plain SD-Turbo on l_T[:, :4].

    Args:
        base_conv_in: the pretrained UNet's Conv2d(4 → C0, 3×3).
        lora_shapes: module path → (lora_A shape, lora_B shape).
        config: adapter hyper-parameters; ``latent_channels`` sets conv_in's input width (≥ 4).
        seed: generator seed for LoRA A.
    """
    c_in = base_conv_in.in_channels
    if config.latent_channels < c_in:
        raise AdapterError(f"latent_channels {config.latent_channels} < base conv_in inputs {c_in}")
    w = torch.zeros(base_conv_in.out_channels, config.latent_channels, 3, 3)
    w[:, :c_in] = base_conv_in.weight.detach().float().cpu()
    bias = base_conv_in.bias.detach().float().cpu().clone()
    gen = torch.Generator().manual_seed(seed)
    lora = {
        name: (torch.randn(sa, generator=gen) / config.rank, torch.zeros(sb))
        for name, (sa, sb) in sorted(lora_shapes.items())
    }
    return AdapterWeights(config, w, bias, lora)
