"""Write diffusers SD 2.x models as ONE single-file checkpoint in the original LDM/SD2 key layout.

diffusers only converts LDM → diffusers; this module is the inverse, so tests can produce the kind
of file ComfyUI users keep in ``models/checkpoints/`` and read it back through the user-facing
loader (:class:`cadc.generative.sd_turbo.SDTurboSource`)::

    model.diffusion_model.*     UNet (input_blocks / middle_block / output_blocks / out)
    first_stage_model.*         KL VAE (encoder.down.i.block.j, decoder.up.i, mid.attn_1 with 1×1 convs)
    cond_stage_model.model.*    OpenCLIP text tower (transformer.resblocks.i.attn.in_proj_weight, ...)

The OpenCLIP tower is written with one block more than the diffusers text encoder has (a copy of
its last block) plus a ``text_projection``, as in real SD 2.x files, where SD uses the penultimate
block's output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from cadc.generative.sd_turbo import (
    CONFIGS_METADATA_KEY,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    fit_prefix,
)

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_UNET_RESNET[head]}.{tail}"


def unet_to_ldm(sd: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict → LDM names (without ``model.diffusion_model.``)."""
    per = config["layers_per_block"] + 1  # input/output blocks per resolution level
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        module, _, param = key.rpartition(".")
        p = key.split(".")
        if module in _UNET_TOP:
            ldm = f"{_UNET_TOP[module]}.{param}"
        elif p[0] == "down_blocks":
            b = int(p[1])
            if p[2] == "downsamplers":
                ldm = f"input_blocks.{(b + 1) * per}.0.op.{param}"
            else:
                idx, rest = 1 + b * per + int(p[3]), ".".join(p[4:])
                sub = f"0.{_resnet(rest)}" if p[2] == "resnets" else f"1.{rest}"
                ldm = f"input_blocks.{idx}.{sub}"
        elif p[0] == "mid_block":
            rest = ".".join(p[3:])
            sub = f"{2 * int(p[2])}.{_resnet(rest)}" if p[1] == "resnets" else f"1.{rest}"
            ldm = f"middle_block.{sub}"
        elif p[0] == "up_blocks":
            b = int(p[1])
            if p[2] == "upsamplers":
                has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd)
                ldm = f"output_blocks.{b * per + per - 1}.{2 if has_attn else 1}.conv.{param}"
            else:
                idx, rest = b * per + int(p[3]), ".".join(p[4:])
                sub = f"0.{_resnet(rest)}" if p[2] == "resnets" else f"1.{rest}"
                ldm = f"output_blocks.{idx}.{sub}"
        else:
            raise KeyError(f"no LDM name for UNet tensor {key}")
        out[ldm] = t
    return out


def vae_to_ldm(sd: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state dict → LDM names (without ``first_stage_model.``)."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        p = key.split(".")
        name = key.replace("conv_norm_out", "norm_out")
        if p[1] == "down_blocks":
            i = p[2]
            if p[3] == "downsamplers":
                name = f"{p[0]}.down.{i}.downsample.conv.{p[-1]}"
            else:
                name = f"{p[0]}.down.{i}.block.{p[4]}." + ".".join(p[5:])
        elif p[1] == "up_blocks":
            i = n_up - 1 - int(p[2])
            if p[3] == "upsamplers":
                name = f"{p[0]}.up.{i}.upsample.conv.{p[-1]}"
            else:
                name = f"{p[0]}.up.{i}.block.{p[4]}." + ".".join(p[5:])
        elif p[1] == "mid_block" and p[2] == "resnets":
            name = f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:])
        elif p[1] == "mid_block" and p[2] == "attentions":
            module, _, param = ".".join(p[4:]).rpartition(".")
            name = f"{p[0]}.mid.attn_1.{_VAE_ATTN[module]}.{param}"
            t = t[:, :, None, None] if t.ndim == 2 else t  # linear → 1×1 conv, as in LDM
        out[name.replace("conv_shortcut", "nin_shortcut")] = t
    return out


def text_encoder_to_open_clip(sd: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """diffusers ``CLIPTextModel`` state dict → OpenCLIP names (without ``cond_stage_model.model.``).

    Adds block ``num_layers`` (a copy of the last one) and an identity ``text_projection`` so the
    tower has the shape of a real SD 2.x checkpoint.
    """
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    for i in range(num_layers + 1):
        src = f"text_model.encoder.layers.{min(i, num_layers - 1)}."
        dst = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{src}self_attn.{x}_proj.{kind}"] for x in ("q", "k", "v")], dim=0
            )
            for d_name, ldm_name in _CLIP_LAYER.items():
                out[f"{dst}{ldm_name}.{kind}"] = sd[f"{src}{d_name}.{kind}"].clone()
    width = out["ln_final.weight"].shape[0]
    out["text_projection"] = torch.eye(width, dtype=out["ln_final.weight"].dtype)
    return out


def sd_to_ldm_state_dict(
    unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel
) -> dict[str, torch.Tensor]:
    """All three models under their single-file names (prefixes included)."""
    out = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}
    out |= {VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}
    te_sd = fit_prefix(text_encoder.state_dict(), ["text_model."], "text_model.")
    te = text_encoder_to_open_clip(te_sd, text_encoder.config.num_hidden_layers)
    out |= {OPEN_CLIP_PREFIX + k: v for k, v in te.items()}
    return out


def write_sd_checkpoint(
    path: str | os.PathLike,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    *,
    embed_configs: bool = True,
    dtype: torch.dtype | None = None,
) -> None:
    """Save UNet + VAE + text encoder as one LDM-layout ``.safetensors`` file.

    Args:
        path: output file.
        embed_configs: store the diffusers configs in the metadata key ``cadc.diffusers_configs``
            (needed to read back non-SD-Turbo sizes such as the tiny models; leave False for a file
            shaped like the real SD-Turbo checkpoint, whose configs are bundled).
        dtype: cast floating tensors (e.g. ``torch.float16`` to halve the file).
    """
    sd = sd_to_ldm_state_dict(unet, vae, text_encoder)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    sd = {k: v.contiguous() for k, v in sd.items()}
    metadata = {"format": "pt"}
    if embed_configs:
        configs = {
            "unet": dict(unet.config),
            "vae": dict(vae.config),
            "text_encoder": text_encoder.config.to_dict(),
        }
        metadata[CONFIGS_METADATA_KEY] = json.dumps(configs, default=list)
    save_file(sd, os.fspath(path), metadata=metadata)
