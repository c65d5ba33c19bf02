"""Training configuration: one dataclass, read from TOML or JSON, with ``key=value`` overrides.

A config file holds the fields of :class:`TrainConfig` at its top level (nested tables are not
used), for example::

    stage = "codec"          # "codec" (codec path only, no SD), "stage1" or "stage2"
    preset = "tiny"
    ablation = "full"
    lambda_rate = 0.02
    crop_size = 256
    batch_size = 8
    steps = 4000

Precedence: stage defaults (:data:`STAGE_DEFAULTS`, for the fields left unset: λ, lr, lr_end,
d4) < file < command-line overrides. The ablation preset then switches the codec
(see :data:`ABLATIONS`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BLIP_CAPTIONER_ID, CodecConfig, get_preset

STAGES = ("codec", "stage1", "stage2")
FROZEN_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Ablation:
    """One row of the paper's ablation (Table: M0, +UGAQ, +UGAQ+ADGIC, full CADC = +BFATC).

    Attributes:
        ugaq: build f_u (content-adaptive steps); False is isotropic rounding (m ≡ 1).
        aux: build g_aux and train it with L_aux (ADGIC).
        caption: condition the one-step UNet on BLIP captions of x̂_aux joined with the fixed
            prompt (BFATC); False conditions on the fixed prompt only. Captions are used in
            Stage II, where L_aux trains g_aux; Stage I (g_aux untrained) uses the fixed prompt.
    """

    ugaq: bool
    aux: bool
    caption: bool


ABLATIONS: dict[str, Ablation] = {
    "M0": Ablation(ugaq=False, aux=False, caption=False),
    "ugaq": Ablation(ugaq=True, aux=False, caption=False),
    "adgic": Ablation(ugaq=False, aux=True, caption=False),
    "ugaq+adgic": Ablation(ugaq=True, aux=True, caption=False),
    "full": Ablation(ugaq=True, aux=True, caption=True),
}

STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "codec": {
        "lambda_rate": 0.02, "lr": 1e-4, "lr_end": 1e-4, "aux_weight": 1.0,
        "aux_stop_gradient": False, "gradient_checkpointing": False, "ema_decay": 0.0,
    },
    "stage1": {
        "lambda_rate": 0.5, "lr": 1e-4, "lr_end": 1e-4, "aux_weight": 4.0,
        "aux_stop_gradient": True, "gradient_checkpointing": True, "ema_decay": 0.999,
    },
    "stage2": {
        "lambda_rate": 2.0, "lr": 5e-5, "lr_end": 1e-6, "aux_weight": 4.0,
        "aux_stop_gradient": False, "gradient_checkpointing": True, "ema_decay": 0.999,
    },
}
"""Per-stage values of the fields that differ between stages (paper / StableCodec); they fill the
fields a config leaves at None.

Stage I trains g_aux with L_aux on a stop-gradient l_T (its own optimizer), so that Stage II's
first BLIP captions describe a real preview instead of g_aux's random init, while every other
parameter sees exactly the paper's Stage I loss. aux_weight 4 on 0..1 images is StableCodec's
convention of weight 1 on −1..1 images (MSE on −1..1 is 4 × MSE on 0..1)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one ``cadc train`` run needs.

    Model and stage:
        stage: ``codec`` trains the codec path alone — λ·R + aux_weight·MSE(x, x̂_aux)
            [+ lt_weight·mean(l_T²)] — with no SD model (this trains the shipped tiny model);
            ``stage1`` / ``stage2`` add the one-step SD-Turbo decoder (``sd_turbo`` required).
        preset: codec preset (``tiny`` | ``sd-turbo``); ignored when ``init`` is given.
        ablation: a key of :data:`ABLATIONS`.
        init: checkpoint to start from (Stage II starts from Stage I's ``model.safetensors``).
        rate_tag: written into the codec config (``CodecConfig.rate_tag``); default "lambda=<λ>".
    Losses (R in bits per pixel, MSE on images in 0..1 — StableCodec computes MSE on −1..1 images,
    which is 4 × ours, so its d1 = 2 is ``mse_weight = 8`` here):
        lambda_rate: λ_base (Stage I) / λ_target (Stage II).
        mse_weight, lpips_weight, clip_weight: d1, d2, d3 on the generative output x̂.
        aux_weight: d4, weight of MSE(x, x̂_aux); forced to 0 without ADGIC.
        aux_stop_gradient: L_aux reaches g_aux only (l_T detached; g_aux gets its own AdamW and
            gradient clipping). Stage I default: g_aux learns to preview the latent while the rest
            trains on the paper's Stage I loss.
        adv_weight: d5, generator's adversarial weight (Stage II).
        lt_weight: optional regulariser mean(l_T²) for the codec-path stage.
    Frozen sources (local paths, or ``tiny-random`` for test stand-ins):
        sd_turbo, blip, lpips, clip, discriminator.
    Adapter: lora_rank, lora_alpha (StableCodec: 32 and peft's default 8).
    Optimisation:
        lr, lr_end: AdamW learning rate, cosine from lr to lr_end over ``steps`` (equal = constant).
        warmup_steps: linear warm-up steps at the start.
        weight_decay, grad_clip, aux_lr (quantile optimiser), disc_lr (discriminator heads).
        steps: optimizer steps; batch_size: images per process per micro-step;
        grad_accum: micro-steps per optimizer step (effective batch = batch·accum·world).
        amp: ``auto`` (bf16 on CUDA, off on CPU), ``bf16`` or ``off``; the frozen networks (UNet,
            VAE, loss backbones) run under autocast, the codec and its rate stay float32.
        frozen_dtype: storage dtype of the frozen networks: ``auto`` (the autocast dtype when amp
            is on, else float32), ``float32``, ``bfloat16`` or ``float16`` (the last two need amp).
            Trainable parameters and optimizer states are float32 whatever the files hold.
        gradient_checkpointing: recompute activations of the UNet, the VAE decoder and the codec's
            g_a / g_s / g_aux in backward (stage1/stage2 default on; codec stage off).
        ema_decay: exponential moving average of the trained weights (0 = off; stage1/stage2
            0.999); the EMA weights are what validation scores and ``model.safetensors`` holds.
    Data:
        crop_size: random square crops (multiple of 64); smaller images are replicate-padded.
        holdout: number of images (sorted by name, chosen with ``seed``) kept out of training
            and used for evaluation; ``holdout_names`` names them explicitly instead.
        val_data: extra validation folders/files (e.g. a CLIC or Kodak folder), never trained on.
        num_workers: DataLoader worker processes per rank.
    Validation (every ``eval_every`` steps and at the end; images spread over the ranks):
        val_metrics_weights: folder of ``cadc eval``'s metric backbones (alexnet/vgg16
            safetensors) for LPIPS-Alex and DISTS; None scores bpp, PSNR and MS-SSIM only.
        val_tile_above: the UNet and VAE decoder run over 96-latent tiles (overlap 32) when the
            latent's longer side exceeds this, as the decoder does.
        dist_timeout_s: collective time-out of the process group (validation, checkpoints and
            every all-reduce must finish within it on every rank).
    Run:
        seed, log_every (tqdm postfix), eval_every, checkpoint_every (steps; 0 = only at the end),
        keep_checkpoints (newest step checkpoints kept), keep_every (also keep multiples of this
        step; 0 = none), tensorboard (write TensorBoard events when the package is importable;
        metrics.jsonl is always written), threads (torch CPU threads per process; 0 = torch
        default), device (``auto`` = cuda if present).
    """

    stage: str = "codec"
    preset: str = "tiny"
    ablation: str = "full"
    init: str | None = None
    rate_tag: str | None = None
    lambda_rate: float | None = None
    mse_weight: float = 8.0
    lpips_weight: float = 1.0
    clip_weight: float = 0.1
    aux_weight: float | None = None
    aux_stop_gradient: bool | None = None
    adv_weight: float = 0.1
    lt_weight: float = 0.0
    sd_turbo: str | None = None
    blip: str | None = None
    lpips: str | None = None
    clip: str | None = None
    discriminator: str | None = None
    lora_rank: int = 32
    lora_alpha: float = 8.0
    lr: float | None = None
    lr_end: float | None = None
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    aux_lr: float = 1e-3
    disc_lr: float = 1e-4
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    amp: str = "auto"
    frozen_dtype: str = "auto"
    gradient_checkpointing: bool | None = None
    ema_decay: float | None = None
    crop_size: int = 256
    holdout: int = 2
    holdout_names: tuple[str, ...] = ()
    val_data: tuple[str, ...] = ()
    val_metrics_weights: str | None = None
    val_tile_above: int = 128
    dist_timeout_s: int = 1800
    num_workers: int = 0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    keep_every: int = 0
    tensorboard: bool = True
    threads: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in STAGE_DEFAULTS.get(self.stage, {}).items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        checks = [
            (self.stage in STAGES, f"stage must be one of {STAGES}"),
            (self.ablation in ABLATIONS, f"ablation must be one of {sorted(ABLATIONS)}"),
            (self.crop_size > 0 and self.crop_size % 64 == 0, "crop_size must be a positive multiple of 64"),
            (self.steps >= 0 and self.batch_size >= 1 and self.grad_accum >= 1, "steps/batch/accum"),
            (self.amp in ("auto", "bf16", "off"), "amp must be auto, bf16 or off"),
            (self.frozen_dtype in FROZEN_DTYPES, f"frozen_dtype must be one of {FROZEN_DTYPES}"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (self.keep_checkpoints >= 1 and self.keep_every >= 0, "keep_checkpoints >= 1, keep_every >= 0"),
            (self.dist_timeout_s > 0 and self.val_tile_above >= 0, "dist_timeout_s > 0, val_tile_above >= 0"),
            (self.stage == "codec" or self.sd_turbo is not None, f"stage {self.stage!r} needs sd_turbo"),
            (
                self.stage != "codec" or ABLATIONS[self.ablation].aux,
                "the codec stage trains MSE(x, x̂_aux) and needs an ablation with ADGIC (aux)",
            ),
            (
                self.stage != "stage2" or not ABLATIONS[self.ablation].caption or self.blip is not None,
                f"ablation {self.ablation!r} in stage2 captions x̂_aux with BLIP: set blip=<local folder> "
                "(or tiny-random for tests), or use ablation 'ugaq+adgic' (fixed prompt only)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")

    @property
    def switches(self) -> Ablation:
        return ABLATIONS[self.ablation]

    @property
    def effective_aux_weight(self) -> float:
        """d4, zero when the ablation has no aux decoder."""
        return self.aux_weight if self.switches.aux else 0.0

    @property
    def captioner_hint(self) -> str | None:
        """The captioner the models of this run are decoded with (``CodecConfig.captioner_id``):
        BLIP after a Stage II with captions (BFATC); none otherwise, since the UNet step never saw
        a caption (codec-only and Stage I runs, ablations without BFATC)."""
        return BLIP_CAPTIONER_ID if self.stage == "stage2" and self.switches.caption else None

    def codec_config(self) -> CodecConfig:
        """The codec this run builds when it does not start from ``init``."""
        tag = self.rate_tag or f"lambda={self.lambda_rate:g}"
        return get_preset(self.preset).replace(
            ugaq=self.switches.ugaq, aux=self.switches.aux, rate_tag=tag, captioner_id=self.captioner_hint
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML (``.toml``) or JSON file, apply stage defaults and ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = path.read_text()
        data = _read_toml(text) if path.suffix.lower() == ".toml" else json.loads(text)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
    for key in ("holdout_names", "val_data"):
        if key in data:
            data[key] = (data[key],) if isinstance(data[key], str) else tuple(data[key])
    return TrainConfig(**data)


def _read_toml(text: str) -> dict[str, Any]:
    """tomllib (Python ≥ 3.11) or the ``tomli`` backport."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("TOML configs need Python >= 3.11 or `pip install tomli`; JSON works everywhere") from None
    return tomllib.loads(text)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` → (key, value); the value is parsed as JSON when it can be (numbers, true,
    null, lists), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
