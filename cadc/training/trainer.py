"""The training loop: one function, :func:`train`, for every stage, device and process count.

Run folder (``out``)::

    model.safetensors          codec (+ adapter) after codec.update(force=True) — `cadc compress --model`
    trainer-state.safetensors  optimizers, discriminator heads, step (for --resume)
    summary.json               final numbers (written at the end)

Per optimizer step: for each of ``grad_accum`` micro-batches, forward + backward (DDP syncs the
gradients on the last one); then gradient clipping (max norm ``grad_clip``) and AdamW on the
codec/adapter, Adam on the entropy bottleneck's quantiles (CompressAI's aux optimizer), and in
Stage II a hinge-loss step of the discriminator heads. The learning rate follows a cosine from
``lr`` to ``lr_end`` (after ``warmup_steps`` of linear warm-up). The global RNG is reseeded from
(seed, step, rank) at every step, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import __version__
from ..model import CADCCodec
from ..weights import load_checkpoint, save_codec
from . import distributed
from .config import TrainConfig
from .data import CropDataset, StepSampler, list_images, load_eval_image, split_holdout
from .losses import hinge_d_loss, psnr, rate_bpp
from .objective import Objective
from .state import load_state, save_state

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer-state.safetensors"
SUMMARY_FILE = "summary.json"
RESUME_KEYS = ("stage", "preset", "ablation", "crop_size", "batch_size", "grad_accum", "seed")
"""Config fields a resumed run must share with the run it continues."""


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine lr → lr_end."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.lr_end + 0.5 * (config.lr - config.lr_end) * (1.0 + math.cos(math.pi * progress))


def _recent_means(history: dict[str, list[float]], count: int) -> dict[str, float]:
    """Mean of the last ``count`` values of each metric."""
    return {k: sum(v[-count:]) / len(v[-count:]) for k, v in history.items() if v}


def train(
    config: TrainConfig, data: Sequence[str | Path], out: str | Path, resume: bool = False, command: str = ""
) -> dict[str, Any]:
    """Train as configured; returns (and on rank 0 writes) the JSON summary."""
    info = distributed.setup(config.device)
    try:
        return _Run(config, data, Path(out), info, command).run(resume)
    finally:
        distributed.teardown(info)


class _Run:
    """State of one training run (one process)."""

    def __init__(
        self,
        config: TrainConfig,
        data: Sequence[str | Path],
        out: Path,
        info: distributed.DistInfo,
        command: str,
    ) -> None:
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config, self.out, self.info, self.command = config, out, info, command
        self.device = info.device
        self.amp_dtype = (
            torch.bfloat16
            if config.amp == "bf16" or (config.amp == "auto" and self.device.type == "cuda")
            else None
        )
        paths = list_images(data)
        self.train_paths, self.eval_paths = split_holdout(
            paths, config.holdout, config.holdout_names, config.seed
        )
        torch.manual_seed(config.seed)
        self.codec, adapter_state = self._build_codec()
        self.branch = self.discriminator = None
        if config.stage == "codec":
            self.objective = Objective(self.codec, config).to(self.device)
        else:
            self._build_generative(adapter_state)
        self._set_trainable()
        self.model: torch.nn.Module = (
            DistributedDataParallel(
                self.objective,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
            if info.distributed
            else self.objective
        )
        self.optimizers = self._build_optimizers()
        out.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ building
    def _build_codec(self) -> tuple[CADCCodec, dict[str, Any]]:
        """The codec (fresh, or from ``init``) and the init's adapter tensors/config (if any)."""
        c = self.config
        if c.init is None:
            return CADCCodec(c.codec_config()), {}
        checkpoint = load_checkpoint(c.init)
        codec = checkpoint.codec
        if (codec.config.ugaq, codec.config.aux) != (c.switches.ugaq, c.switches.aux):
            raise ValueError(
                f"init checkpoint {c.init} has ugaq={codec.config.ugaq}, aux={codec.config.aux}; "
                f"ablation {c.ablation!r} needs ugaq={c.switches.ugaq}, aux={c.switches.aux}"
            )
        codec.config = codec.config.replace(rate_tag=c.rate_tag or f"lambda={c.lambda_rate:g}")
        adapter = {"state": checkpoint.adapter_state, "config": checkpoint.adapter_config}
        return codec.train(), adapter if checkpoint.adapter_state else {}

    def _build_generative(self, adapter_state: dict[str, Any]) -> None:
        """Stage I/II: the SD-Turbo branch, LPIPS/CLIP backbones and (Stage II) the discriminator."""
        from ..generative.adapter import AdapterConfig, AdapterWeights
        from ..generative.captioner import Captioner
        from ..generative.sd_turbo import SDTurboSource
        from .backbones import LPIPS, CLIPEmbedding, Discriminator
        from .generative_branch import GenerativeBranch

        c = self.config
        adapter = (
            AdapterWeights.from_state_dict(adapter_state["state"], adapter_state["config"])
            if adapter_state
            else None
        )
        adapter_config = AdapterConfig(
            rank=c.lora_rank, alpha=c.lora_alpha, latent_channels=self.codec.config.latent_channels
        )
        use_captions = c.switches.caption and c.stage == "stage2"
        captioner = Captioner.from_source(c.blip, self.device) if use_captions and c.blip else None
        self.branch = GenerativeBranch(
            SDTurboSource(c.sd_turbo), adapter, adapter_config, captioner, self.amp_dtype
        )
        lpips = LPIPS.from_source(c.lpips) if c.lpips else None
        clip = CLIPEmbedding.from_source(c.clip) if c.clip else None
        self.objective = Objective(self.codec, c, self.branch, lpips, clip).to(self.device)
        if c.discriminator and c.adv_weight > 0 and c.stage == "stage2":
            self.discriminator = Discriminator.from_source(c.discriminator).to(self.device)

    def _set_trainable(self) -> None:
        """Codec parameters train, except g_aux when no loss reaches it (Stage I: d4 = 0, and the
        captions of x̂_aux are computed without gradients)."""
        self.codec.requires_grad_(True)
        if self.codec.g_aux is not None and self.config.effective_aux_weight == 0:
            self.codec.g_aux.requires_grad_(False)

    def _main_parameters(self) -> list[torch.nn.Parameter]:
        quantiles = self.codec.entropy_bottleneck.quantiles
        params = [p for p in self.codec.parameters() if p.requires_grad and p is not quantiles]
        if self.branch is not None:
            params += self.branch.trainable_parameters()
        return params

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        optimizers: dict[str, torch.optim.Optimizer] = {
            "main": torch.optim.AdamW(self._main_parameters(), lr=c.lr, weight_decay=c.weight_decay),
            "quantiles": torch.optim.Adam([self.codec.entropy_bottleneck.quantiles], lr=c.aux_lr),
        }
        if self.discriminator is not None:
            optimizers["disc"] = torch.optim.AdamW(
                self.discriminator.heads.parameters(),
                lr=c.disc_lr,
                betas=(0.0, 0.99),
                weight_decay=c.weight_decay,
            )
        return optimizers

    # ------------------------------------------------------------------ running
    def run(self, resume: bool) -> dict[str, Any]:
        c, info = self.config, self.info
        start = self._resume() if resume else 0
        sampler = StepSampler(start, c.steps, c.batch_size, c.grad_accum, info.world, info.rank)
        loader = DataLoader(
            CropDataset(self.train_paths, c.crop_size, c.seed),
            batch_size=c.batch_size,
            sampler=sampler,
            num_workers=c.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=c.num_workers > 0,
        )
        batches = iter(loader)
        progress = tqdm(total=c.steps, initial=start, disable=not info.is_main, desc=f"cadc train {c.stage}")
        history: dict[str, list[float]] = defaultdict(list)
        started = time.perf_counter()
        for step in range(start, c.steps):
            metrics = self._step(step, batches)
            for key, value in metrics.items():
                history[key].append(value)
            progress.update(1)
            if (step + 1) % c.log_every == 0 or step + 1 == c.steps:
                recent = distributed.all_mean(_recent_means(history, c.log_every), info)
                progress.set_postfix({k: f"{v:.4g}" for k, v in recent.items()}, refresh=False)
            if c.eval_every and (step + 1) % c.eval_every == 0 and step + 1 < c.steps and info.is_main:
                progress.write(json.dumps({"step": step + 1, "eval": self.evaluate()["mean"]}))
            if c.checkpoint_every and (step + 1) % c.checkpoint_every == 0 and step + 1 < c.steps:
                self._checkpoint(step + 1)
        progress.close()
        seconds = time.perf_counter() - started
        self._checkpoint(c.steps)
        summary = {
            "stage": c.stage,
            "ablation": c.ablation,
            "steps": c.steps,
            "resumed_from": start,
            "train_seconds": seconds,
            "world_size": info.world,
            "device": str(self.device),
            "final_train": _recent_means(history, c.log_every),
            "train_images": [p.name for p in self.train_paths],
            "held_out": self.evaluate() if info.is_main else None,
            "model": str(self.out / MODEL_FILE),
            "parameters_sha256": self.parameters_sha256(),
            "config": c.to_dict(),
        }
        if info.is_main:
            (self.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary

    def _step(self, step: int, batches: Iterator[torch.Tensor]) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns averaged scalar metrics."""
        c, info = self.config, self.info
        torch.manual_seed(((c.seed * 1_000_003) + step) * 4099 + info.rank)
        lr = lr_at(step, c)
        for group in self.optimizers["main"].param_groups:
            group["lr"] = lr
        self.model.train()
        if self.discriminator is not None:
            self.discriminator.train()
        sums: dict[str, float] = defaultdict(float)
        for micro in range(c.grad_accum):
            x = next(batches).to(self.device, non_blocking=True)
            sync = micro == c.grad_accum - 1 or not info.distributed
            with nullcontext() if sync else self.model.no_sync():
                total, terms, x_hat = self.model(x, discriminator=self.discriminator)
                (total / c.grad_accum).backward()
            if self.discriminator is not None:
                d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(x_hat.detach()))
                (d_loss / c.grad_accum).backward()
                terms["disc"] = float(d_loss.detach())
            terms["psnr"] = psnr(x_hat, x)
            for key, value in terms.items():
                sums[key] += value / c.grad_accum
        if not all(math.isfinite(v) for v in sums.values()):
            raise FloatingPointError(f"non-finite loss at step {step}: {dict(sums)}")
        torch.nn.utils.clip_grad_norm_(self._main_parameters(), c.grad_clip)
        if self.discriminator is not None:
            distributed.average_gradients(self.discriminator.heads.parameters(), info)
        for optimizer in self.optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sums["lr"] = lr
        return dict(sums)

    # ------------------------------------------------------------------ checkpoints
    def _adapter(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        if self.branch is None:
            return None, None
        weights = self.branch.adapter_weights()
        return weights.state_dict(), weights.config.to_dict()

    def parameters_sha256(self) -> str:
        """sha256 over every trained parameter (codec, adapter), by name: equal on all ranks."""
        digest = hashlib.sha256()
        named = list(self.codec.named_parameters())
        if self.branch is not None:
            named += [(f"adapter.{i}", p) for i, p in enumerate(self.branch.trainable_parameters())]
        for name, p in named:
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _checkpoint(self, step: int) -> None:
        """Rank 0 writes model.safetensors (tables built on a copy) and the trainer state."""
        if self.info.is_main:
            snapshot = copy.deepcopy(self.codec).cpu().eval()
            snapshot.update(force=True)
            adapter_state, adapter_config = self._adapter()
            provenance = {
                "cadc_version": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "step": step,
                "command": self.command,
                "train_images": [p.name for p in self.train_paths],
                "held_out_images": [p.name for p in self.eval_paths],
                "train_config": self.config.to_dict(),
                "world_size": self.info.world,
            }
            save_codec(self.out / MODEL_FILE, snapshot, adapter_state, adapter_config, provenance)
            modules = (
                {"discriminator_heads": self.discriminator.heads} if self.discriminator is not None else {}
            )
            extra = {"config": self.config.to_dict(), "world_size": self.info.world}
            save_state(self.out / STATE_FILE, step, self.optimizers, modules, extra)
        if self.info.distributed:
            torch.distributed.barrier()

    def _resume(self) -> int:
        """Load model.safetensors + trainer-state.safetensors from ``out``; returns the step."""
        state_path, model_path = self.out / STATE_FILE, self.out / MODEL_FILE
        if not state_path.is_file() or not model_path.is_file():
            raise FileNotFoundError(f"--resume: no {STATE_FILE} / {MODEL_FILE} in {self.out}")
        checkpoint = load_checkpoint(model_path, device=self.device)
        self.codec.load_state_dict(checkpoint.codec.state_dict())
        if self.branch is not None:
            from ..generative.adapter import AdapterWeights

            weights = AdapterWeights.from_state_dict(checkpoint.adapter_state, checkpoint.adapter_config)
            with torch.no_grad():
                unet = self.branch.denoiser.unet
                unet.conv_in.weight.copy_(weights.conv_in_weight)
                unet.conv_in.bias.copy_(weights.conv_in_bias)
                for name, layer in self.branch.lora_layers.items():
                    layer.lora_A["default"].weight.copy_(weights.lora[name][0])
                    layer.lora_B["default"].weight.copy_(weights.lora[name][1])
        modules = {"discriminator_heads": self.discriminator.heads} if self.discriminator is not None else {}
        meta = load_state(state_path, self.optimizers, modules, self.device)
        previous = meta["config"]
        changed = [k for k in RESUME_KEYS if previous.get(k) != self.config.to_dict()[k]]
        if changed:
            raise ValueError(f"--resume: {changed} differ from the run in {self.out}; start a new --out")
        return int(meta["step"])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """bpp (from the eval-mode likelihoods = the coder's rate) and PSNR on the held-out images,
        each padded to a multiple of 64 and measured on its original area."""
        self.objective.eval()
        rows = {}
        for path in self.eval_paths:
            x, (height, width) = load_eval_image(path)
            x = x.to(self.device)
            out = self.codec(x)
            row = {"bpp": float(rate_bpp(out["likelihoods"], height * width))}
            if out["x_aux"] is not None:
                row["psnr_aux"] = psnr(out["x_aux"][..., :height, :width], x[..., :height, :width])
            if self.branch is not None:
                x_hat = self.branch(out["l_T"], out["x_aux"])
                row["psnr"] = psnr(x_hat[..., :height, :width], x[..., :height, :width])
            rows[path.name] = row
        keys = sorted({k for row in rows.values() for k in row})
        mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in keys} if rows else {}
        return {"images": rows, "mean": mean}
