"""The training loop: one function, :func:`train`, for every stage, device and process count.

Run folder (``out``; layout in :mod:`.checkpoints`, records in :mod:`.records`)::

    model.safetensors          last exported model (EMA weights when EMA is on) — `cadc compress --model`
    trainer-state.safetensors  raw weights, EMA, optimizers, discriminator heads, step (for --resume)
    best.safetensors/.json     exported model with the best validation score
    checkpoints/step-N/        step checkpoints (retention: keep_checkpoints newest + multiples of keep_every)
    metrics.jsonl              per-step scalars; validation.jsonl per validation; tensorboard/ if available
    summary.json               final numbers (written at the end)

Per optimizer step: for each of ``grad_accum`` micro-batches, forward + backward (DDP syncs the
gradients on the last one); then gradient clipping (max norm ``grad_clip``; g_aux separately when
it trains on a stop-gradient latent) and AdamW on the codec/adapter, Adam on the entropy
bottleneck's quantiles (CompressAI's aux optimizer), in Stage II a hinge-loss step of the
discriminator heads, and the EMA update. The learning rate follows a cosine from ``lr`` to
``lr_end`` (after ``warmup_steps`` of linear warm-up). The global RNG is reseeded from
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
from ..transforms import set_gradient_checkpointing
from ..weights import load_checkpoint, save_codec
from . import checkpoints, distributed
from .checkpoints import MODEL_FILE, STATE_FILE
from .config import TrainConfig
from .data import CropDataset, StepSampler, list_images, split_holdout
from .ema import EMA
from .losses import hinge_d_loss, psnr
from .objective import Objective
from .precision import autocast, autocast_dtype, cast_frozen, frozen_dtype
from .records import RunLog, peak_memory, reset_peak_memory
from .state import load_state, save_state
from .validation import Validator

__all__ = ["MODEL_FILE", "RESUME_KEYS", "STATE_FILE", "SUMMARY_FILE", "TrainingRun", "lr_at", "train"]

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
    info = distributed.setup(config.device, config.dist_timeout_s)
    try:
        return TrainingRun(config, data, Path(out), info, command).run(resume)
    finally:
        distributed.teardown(info)


class TrainingRun:
    """One training run in this process: the models, optimizers, EMA and validator of
    :func:`train` (built by the constructor; :meth:`run` trains)."""

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
        self.amp_dtype = autocast_dtype(config, self.device)
        self.frozen_dtype = frozen_dtype(config, self.amp_dtype)
        paths = list_images(data)
        self.train_paths, self.eval_paths = split_holdout(
            paths, config.holdout, config.holdout_names, config.seed
        )
        if config.val_data:
            self.eval_paths += [p for p in list_images(config.val_data) if p not in self.eval_paths]
        torch.manual_seed(config.seed)
        self.codec, adapter_state = self._build_codec()
        set_gradient_checkpointing(self.codec, bool(config.gradient_checkpointing))
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
        self.ema = EMA(self.named_trained(), config.ema_decay) if config.ema_decay > 0 else None
        self.validator = Validator(self.eval_paths, config, info, self.amp_dtype)
        self.best: dict[str, Any] | None = None
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
        codec.config = codec.config.replace(
            rate_tag=c.rate_tag or f"lambda={c.lambda_rate:g}", captioner_id=c.captioner_hint
        )
        adapter = {"state": checkpoint.adapter_state, "config": checkpoint.adapter_config}
        return codec.train(), adapter if checkpoint.adapter_state else {}

    def _build_generative(self, adapter_state: dict[str, Any]) -> None:
        """Stage I/II: the SD-Turbo branch, LPIPS/CLIP backbones and (Stage II) the discriminator,
        frozen parts in ``frozen_dtype`` on the device, trainable parts float32."""
        from ..generative.adapter import AdapterConfig, AdapterWeights
        from ..generative.captioner import Captioner
        from ..generative.sd_turbo import SDTurboSource
        from .backbones import LPIPS, CLIPEmbedding, Discriminator
        from .generative_branch import GenerativeBranch

        c, dtype = self.config, self.frozen_dtype
        adapter = (
            AdapterWeights.from_state_dict(adapter_state["state"], adapter_state["config"])
            if adapter_state
            else None
        )
        adapter_config = AdapterConfig(
            rank=c.lora_rank, alpha=c.lora_alpha, latent_channels=self.codec.config.latent_channels
        )
        use_captions = c.switches.caption and c.stage == "stage2"
        captioner = Captioner.from_source(c.blip, self.device, dtype) if use_captions and c.blip else None
        self.branch = GenerativeBranch(
            SDTurboSource(c.sd_turbo),
            adapter,
            adapter_config,
            captioner,
            self.amp_dtype,
            dtype,
            bool(c.gradient_checkpointing),
        )
        lpips = LPIPS.from_source(c.lpips).to(dtype) if c.lpips else None
        clip = CLIPEmbedding.from_source(c.clip).to(dtype) if c.clip else None
        self.objective = Objective(self.codec, c, self.branch, lpips, clip, self.amp_dtype).to(self.device)
        if c.discriminator and c.adv_weight > 0 and c.stage == "stage2":
            discriminator = Discriminator.from_source(c.discriminator)
            cast_frozen(discriminator, dtype, list(discriminator.heads.parameters()))
            self.discriminator = discriminator.to(self.device)

    def _set_trainable(self) -> None:
        """Codec parameters train, except g_aux when no loss reaches it (d4 = 0; the captions of
        x̂_aux are computed without gradients)."""
        self.codec.requires_grad_(True)
        if self.codec.g_aux is not None and self.config.effective_aux_weight == 0:
            self.codec.g_aux.requires_grad_(False)

    def _aux_separate(self) -> bool:
        """g_aux trains on a stop-gradient latent with its own optimizer and clipping."""
        return bool(
            self.codec.g_aux is not None and self.config.effective_aux_weight > 0 and self.config.aux_stop_gradient
        )

    def _aux_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.codec.g_aux.parameters()) if self._aux_separate() else []

    def _main_parameters(self) -> list[torch.nn.Parameter]:
        skip = {id(self.codec.entropy_bottleneck.quantiles)} | {id(p) for p in self._aux_parameters()}
        params = [p for p in self.codec.parameters() if p.requires_grad and id(p) not in skip]
        if self.branch is not None:
            params += self.branch.trainable_parameters()
        return params

    def named_trained(self) -> dict[str, torch.nn.Parameter]:
        """Every parameter the run may change: ``codec.<name>`` and ``adapter.unet.<name>``."""
        named = {f"codec.{k}": p for k, p in self.codec.named_parameters()}
        if self.branch is not None:
            named |= {f"adapter.{k}": p for k, p in self.branch.named_trainable_parameters().items()}
        return named

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        optimizers: dict[str, torch.optim.Optimizer] = {
            "main": torch.optim.AdamW(self._main_parameters(), lr=c.lr, weight_decay=c.weight_decay),
            "quantiles": torch.optim.Adam([self.codec.entropy_bottleneck.quantiles], lr=c.aux_lr),
        }
        if self._aux_separate():
            optimizers["g_aux"] = torch.optim.AdamW(self._aux_parameters(), lr=c.lr, weight_decay=c.weight_decay)
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
        self.best = checkpoints.read_best(self.out) if resume else None
        log = RunLog(self.out, start, c.tensorboard, enabled=info.is_main)
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
        if info.is_main and log.writer is None and c.tensorboard:
            progress.write(log.tensorboard_note)
        history: dict[str, list[float]] = defaultdict(list)
        started = time.perf_counter()
        try:
            for step in range(start, c.steps):
                reset_peak_memory(self.device)
                tick = time.perf_counter()
                metrics = distributed.all_mean(self._step(step, batches), info)
                for key, value in metrics.items():
                    history[key].append(value)
                log.step(
                    step + 1,
                    {**metrics, "step_seconds": time.perf_counter() - tick, **peak_memory(self.device)},
                )
                progress.update(1)
                if (step + 1) % c.log_every == 0 or step + 1 == c.steps:
                    log.flush()
                    recent = _recent_means(history, c.log_every)
                    progress.set_postfix({k: f"{v:.4g}" for k, v in recent.items()}, refresh=False)
                if c.eval_every and self.eval_paths and (step + 1) % c.eval_every == 0 and step + 1 < c.steps:
                    result = self.validate(step + 1, log)
                    progress.write(json.dumps({"step": step + 1, "score": result["score"], "eval": result["mean"]}))
                if c.checkpoint_every and (step + 1) % c.checkpoint_every == 0 and step + 1 < c.steps:
                    self._checkpoint(step + 1)
            progress.close()
            seconds = time.perf_counter() - started
            self._checkpoint(c.steps)
            held_out = self.validate(c.steps, log) if self.eval_paths else None
        finally:
            log.close()
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
            "held_out": held_out,
            "best": self.best,
            "tensorboard": log.tensorboard_note if info.is_main else None,
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
        for name in ("main", "g_aux"):
            for group in self.optimizers[name].param_groups if name in self.optimizers else ():
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
                with autocast(self.device, self.amp_dtype):
                    real, fake = self.discriminator(x), self.discriminator(x_hat.detach())
                d_loss = hinge_d_loss(real.float(), fake.float())
                (d_loss / c.grad_accum).backward()
                terms["disc"] = float(d_loss.detach())
            terms["psnr"] = psnr(x_hat, x)
            for key, value in terms.items():
                sums[key] += value / c.grad_accum
        if not all(math.isfinite(v) for v in sums.values()):
            raise FloatingPointError(f"non-finite loss at step {step}: {dict(sums)}")
        sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self._main_parameters(), c.grad_clip))
        if "g_aux" in self.optimizers:
            sums["grad_norm_aux"] = float(torch.nn.utils.clip_grad_norm_(self._aux_parameters(), c.grad_clip))
        if self.discriminator is not None:
            distributed.average_gradients(self.discriminator.heads.parameters(), info)
        for optimizer in self.optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(step + 1)
        sums["lr"] = lr
        return dict(sums)

    # ------------------------------------------------------------------ checkpoints
    def _exported(self) -> tuple[CADCCodec, dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        """CPU copy of the codec with its tables built, and the adapter (EMA weights if EMA is on)."""
        with self.ema.applied() if self.ema is not None else nullcontext():
            snapshot = copy.deepcopy(self.codec).cpu().eval()
            adapter_state = adapter_config = None
            if self.branch is not None:
                weights = self.branch.adapter_weights()
                adapter_state, adapter_config = weights.state_dict(), weights.config.to_dict()
        snapshot.update(force=True)
        return snapshot, adapter_state, adapter_config

    def _save_model(self, path: Path, step: int) -> None:
        codec, adapter_state, adapter_config = self._exported()
        provenance = {
            "cadc_version": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "step": step,
            "ema_decay": self.config.ema_decay,
            "command": self.command,
            "train_images": [p.name for p in self.train_paths],
            "held_out_images": [p.name for p in self.eval_paths],
            "train_config": self.config.to_dict(),
            "world_size": self.info.world,
        }
        save_codec(path, codec, adapter_state, adapter_config, provenance)

    def parameters_sha256(self) -> str:
        """sha256 over every trained parameter (codec, adapter), by name: equal on all ranks."""
        digest = hashlib.sha256()
        for name, p in self.named_trained().items():
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _checkpoint(self, step: int) -> None:
        """Rank 0 writes checkpoints/step-N (exported model + trainer state), points the top-level
        files at it and prunes old step folders; every rank waits at a barrier."""
        if self.info.is_main:
            folder = checkpoints.step_dir(self.out, step)
            folder.mkdir(parents=True, exist_ok=True)
            self._save_model(folder / MODEL_FILE, step)
            modules = (
                {"discriminator_heads": self.discriminator.heads} if self.discriminator is not None else {}
            )
            named = {f"weights.{k}": p for k, p in self.named_trained().items()}
            if self.ema is not None:
                named |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
            extra = {"config": self.config.to_dict(), "world_size": self.info.world}
            save_state(folder / STATE_FILE, step, self.optimizers, modules, extra, named)
            checkpoints.publish_last(self.out, step)
            checkpoints.prune(self.out, self.config.keep_checkpoints, self.config.keep_every)
        if self.info.distributed:
            torch.distributed.barrier()

    def _resume(self) -> int:
        """Load model.safetensors + trainer-state.safetensors from ``out``; returns the step.

        The trained (non-EMA) weights come from the state's ``weights.*`` tensors; states written
        before those existed hold no EMA, and their model.safetensors has the trained weights."""
        state_path, model_path = self.out / STATE_FILE, self.out / MODEL_FILE
        if not state_path.is_file() or not model_path.is_file():
            raise FileNotFoundError(f"--resume: no {STATE_FILE} / {MODEL_FILE} in {self.out}")
        checkpoint = load_checkpoint(model_path, device=self.device)
        self.codec.load_state_dict(checkpoint.codec.state_dict())
        if self.branch is not None:
            from ..generative.adapter import ADAPTER_PREFIX

            adapter = self.branch.named_trainable_parameters()
            with torch.no_grad():
                for key, value in checkpoint.adapter_state.items():
                    adapter[key[len(ADAPTER_PREFIX) :]].copy_(value)
        modules = {"discriminator_heads": self.discriminator.heads} if self.discriminator is not None else {}
        meta = load_state(state_path, self.optimizers, modules, self.device)
        previous = meta["config"]
        changed = [k for k in RESUME_KEYS if previous.get(k) != self.config.to_dict()[k]]
        if changed:
            raise ValueError(f"--resume: {changed} differ from the run in {self.out}; start a new --out")
        tensors = meta["tensors"]
        weights = {k[len("weights.") :]: v for k, v in tensors.items() if k.startswith("weights.")}
        if weights:
            with torch.no_grad():
                for name, p in self.named_trained().items():
                    p.copy_(weights[name])
        if self.ema is not None:
            ema = {k[len("ema.") :]: v.to(self.device) for k, v in tensors.items() if k.startswith("ema.")}
            if not ema:
                raise ValueError(f"--resume: {state_path} holds no EMA (ema_decay was 0); set ema_decay = 0")
            self.ema.load_state_dict(ema)
        return int(meta["step"])

    # ------------------------------------------------------------------ validation
    def validate(self, step: int, log: RunLog) -> dict[str, Any]:
        """Score the EMA (or trained) weights on the validation images on every rank; rank 0 logs
        it and exports ``best`` when the score improved."""
        with self.ema.applied() if self.ema is not None else nullcontext():
            result = self.validator(self.objective)
        log.validation(step, result)
        improved = math.isfinite(result["score"]) and (self.best is None or result["score"] < self.best["score"])
        if improved:
            self.best = {"step": step, "score": result["score"], "mean": result["mean"]}
            if self.info.is_main:
                self._save_model(self.out / checkpoints.BEST_MODEL_FILE, step)
                checkpoints.write_best_info(self.out, self.best)
        return result
