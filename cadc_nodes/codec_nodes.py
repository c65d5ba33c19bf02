"""Nodes for the learned codec: load it, encode images, save/load ``.cadc`` files, decode l_T.

Custom types passed between nodes:

* ``CADC_CODEC`` — a :class:`cadc.weights.Checkpoint` (the codec plus its denoiser adapter);
* ``CADC_BITSTREAM`` — a list of :class:`cadc.container.CadcFile`, one per image;
* ``CADC_LATENT`` — :class:`DecodedFiles`: l_T and x̂_aux of each file, and the checkpoint that
  decoded them (Caption and One-Step Denoise read the codec's defaults and adapter from it).

The codec core is imported when a node first runs, not when ComfyUI starts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cadc.container import CadcFile, read_cadc, write_cadc
from cadc.model_lookup import DEFAULT_MODEL_FILE, TINY_RANDOM, ModelMatch, find_model

from . import host

if TYPE_CHECKING:
    from cadc.codec_io import DecodedImage
    from cadc.weights import Checkpoint

CATEGORY = "CADC"
CODEC = "CADC_CODEC"
BITSTREAM = "CADC_BITSTREAM"
LATENT = "CADC_LATENT"
CADC_SUFFIX = ".cadc"


@dataclass(frozen=True)
class DecodedFiles:
    """``CADC_LATENT``: the decoded files and the checkpoint that decoded them.

    Attributes:
        images: one :class:`cadc.codec_io.DecodedImage` per file (l_T at the padded size, x̂_aux
            cropped to the original size, the header).
        checkpoint: the files' codec and its denoiser adapter.
    """

    images: list[DecodedImage]
    checkpoint: Checkpoint


def codec_choices() -> list[str]:
    """The checkpoints in the ``cadc`` model folders (the best shipped one first), then ``tiny-random``."""
    files = host.folder_paths().get_filename_list(host.CODEC_FOLDER)
    ordered = sorted(files, key=lambda name: (name != DEFAULT_MODEL_FILE, name))
    return [*ordered, TINY_RANDOM]


def load_codec_checkpoint(source: str) -> Checkpoint:
    """Load ``tiny-random`` or a checkpoint path (a fresh copy: ComfyUI's node cache keeps it)."""
    from cadc.weights import load_checkpoint

    return load_checkpoint(source)


def find_file_model(cadc_file: CadcFile) -> ModelMatch:
    """The checkpoint in ComfyUI's ``cadc`` folders (or ``tiny-random``) the file was made with.

    Raises:
        ModelNotFoundError: one line naming the model id, the weights hash and where to put it.
    """
    header = cadc_file.header
    paths = host.folder_paths()
    where = os.path.join(paths.models_dir, host.CODEC_FOLDER)
    return find_model(
        header.model_id,
        header.weights_sha256,
        paths.get_folder_paths(host.CODEC_FOLDER),
        f"put the checkpoint the file was made with into {where}",
    )


def image_to_tensor(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] → codec input [B, 3, H, W] in 0..1 (alpha dropped)."""
    return image[..., :3].permute(0, 3, 1, 2).float().clamp(0.0, 1.0).contiguous()


def tensor_to_image(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in 0..1 → ComfyUI IMAGE [B, H, W, 3] float32 on the CPU."""
    return x.detach().float().clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().contiguous()


def describe(cadc_file: CadcFile, file_bytes: int | None = None) -> str:
    """One line for the UI: size, bpp and file size."""
    header = cadc_file.header
    size = len(cadc_file.to_bytes()) if file_bytes is None else file_bytes
    return f"{header.width}x{header.height}  {cadc_file.bpp:.4f} bpp  {size} bytes"


def _inside(path: str | os.PathLike, folders: list[str]) -> bool:
    """Whether ``path``, with every symlink and ``..`` resolved, lies inside one of ``folders``."""
    real = os.path.realpath(path)
    for folder in folders:
        root = os.path.realpath(folder)
        if os.path.commonpath([real, root]) == root:
            return True
    return False


def _readable_folders() -> list[str]:
    """ComfyUI's input folder, plus output/temp (reachable with ``[output]`` / ``[temp]`` names)."""
    paths = host.folder_paths()
    getters = ("get_input_directory", "get_output_directory", "get_temp_directory")
    return [getattr(paths, name)() for name in getters if hasattr(paths, name)]


def input_file_path(name: str) -> str:
    """The path of an input ``.cadc`` file; ``ValueError`` if it resolves outside ComfyUI's folders.

    ``../``, absolute names and symlinks that lead out of the input/output/temp folders are refused,
    so a workflow cannot make the node read (or hash) arbitrary files.
    """
    path = host.folder_paths().get_annotated_filepath(name)
    if not _inside(path, _readable_folders()):
        raise ValueError(f"CADC: {name!r} is outside ComfyUI's input folder; refusing to read it")
    return path


def _same_size_batch(images: list[torch.Tensor], what: str) -> torch.Tensor:
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        raise ValueError(
            f"CADC: cannot batch {what} of different sizes {sorted(sizes)}; decode one file at a time"
        )
    return torch.cat(images)


class LoadCodec:
    """Load CADC Codec."""

    DESCRIPTION = (
        "Loads a CADC codec checkpoint (.safetensors) from models/cadc or the pack's models/ folder "
        f"({DEFAULT_MODEL_FILE} is the best shipped model). 'tiny-random' is an untrained test codec: "
        "its files are real but its images are noise."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (CODEC,)
    RETURN_NAMES = ("codec",)
    OUTPUT_TOOLTIPS = ("The codec, with the one-step denoiser's adapter weights if the checkpoint has them.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "codec_name": (
                    codec_choices(),
                    {"tooltip": "Checkpoint in models/cadc (or the shipped models), or 'tiny-random'."},
                )
            }
        }

    def load(self, codec_name: str) -> tuple[Checkpoint]:
        if codec_name == TINY_RANDOM:
            return (load_codec_checkpoint(TINY_RANDOM),)
        return (load_codec_checkpoint(host.folder_paths().get_full_path_or_raise(host.CODEC_FOLDER, codec_name)),)


class EncodeBitstream:
    """CADC Encode to Bitstream."""

    DESCRIPTION = "Compresses images with the CADC codec: one .cadc bitstream per image of the batch."
    CATEGORY = CATEGORY
    RETURN_TYPES = (BITSTREAM, "FLOAT")
    RETURN_NAMES = ("bitstream", "bpp")
    OUTPUT_TOOLTIPS = (
        "One .cadc file (in memory) per image; connect to Save CADC or Decode Latent.",
        "Mean bits per pixel of the entropy-coded payloads over the batch.",
    )
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "codec": (CODEC, {"tooltip": "The codec from Load CADC Codec."}),
                "image": ("IMAGE", {"tooltip": "Images to compress (any size; padded internally)."}),
            }
        }

    def encode(self, codec: Checkpoint, image: torch.Tensor) -> dict:
        from cadc.codec_io import encode_tensor

        x = image_to_tensor(image)
        progress = host.progress_bar(x.shape[0])
        files: list[CadcFile] = []
        for i in range(x.shape[0]):
            host.check_interrupted()
            files.append(encode_tensor(codec.codec, x[i : i + 1])[0].file)
            progress.update(1)
        bpp = [f.bpp for f in files]
        mean_bpp = sum(bpp) / len(bpp)
        return {"ui": {"cadc_info": [describe(f) for f in files]}, "result": (files, mean_bpp)}


class SaveBitstream:
    """Save CADC."""

    DESCRIPTION = (
        "Writes .cadc files into ComfyUI's output folder (prefix_00001_.cadc, ...) and shows size and bpp."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "bitstream": (BITSTREAM, {"tooltip": "The .cadc bitstreams to write, one file each."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "CADC/cadc",
                        "tooltip": "Prefix of the files, relative to the output folder; may contain a "
                        "subfolder and %date:yyyy-MM-dd%-style variables like SaveImage.",
                    },
                ),
            }
        }

    def save(self, bitstream: list[CadcFile], filename_prefix: str) -> dict:
        paths = host.folder_paths()
        first = bitstream[0].header
        output_dir = paths.get_output_directory()
        refusal = f"CADC: filename_prefix {filename_prefix!r} leads outside the output folder; refusing to write"
        # Checked before ComfyUI's own check, which raises a bare multi-line Exception for most of these.
        if not _inside(os.path.join(output_dir, os.path.dirname(os.path.normpath(filename_prefix))), [output_dir]):
            raise ValueError(refusal)
        folder, name, counter, subfolder, _ = paths.get_save_image_path(
            filename_prefix, output_dir, first.width, first.height
        )
        if not _inside(folder, [output_dir]) or os.sep in name or (os.altsep and os.altsep in name):
            raise ValueError(refusal)
        saved, lines = [], []
        for cadc_file in bitstream:
            filename = f"{name}_{counter:05}_{CADC_SUFFIX}"
            size = write_cadc(os.path.join(folder, filename), cadc_file)
            saved.append({"filename": filename, "subfolder": subfolder, "type": "output"})
            lines.append(f"{filename}: {describe(cadc_file, size)}")
            counter += 1
        return {"ui": {"cadc_info": lines, "cadc_files": saved}}


class LoadBitstream:
    """Load CADC."""

    DESCRIPTION = (
        "Reads a .cadc file from ComfyUI's input folder and loads the codec it was made with, found by "
        "the weights hash in its header among the checkpoints in models/cadc (and tiny-random). Use the "
        "upload button (or drop a file on the node) to copy a .cadc file there."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (BITSTREAM, CODEC)
    RETURN_NAMES = ("bitstream", "codec")
    OUTPUT_TOOLTIPS = (
        "The file's bitstream; connect to Decode Latent.",
        "The codec the file was made with (found by its weights hash); connect to Decode Latent.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        input_dir = Path(host.folder_paths().get_input_directory())
        files = sorted(
            p.name for p in input_dir.glob(f"*{CADC_SUFFIX}") if p.is_file() and _inside(p, [str(input_dir)])
        )
        return {
            "required": {
                "cadc_file": (files, {"tooltip": "A .cadc file in ComfyUI's input folder."}),
            }
        }

    def load(self, cadc_file: str) -> dict:
        from cadc.codec_io import check_decode_size

        path = input_file_path(cadc_file)
        loaded = read_cadc(path)
        check_decode_size(loaded.header)  # a tiny file claiming a huge image stops here
        match = find_file_model(loaded)
        checkpoint = load_codec_checkpoint(match.source)
        lines = [describe(loaded, os.path.getsize(path)), f"model: {Path(match.source).name}"]
        return {"ui": {"cadc_info": lines}, "result": ([loaded], checkpoint)}

    @classmethod
    def IS_CHANGED(cls, cadc_file: str) -> str:
        digest = hashlib.sha256()
        with open(input_file_path(cadc_file), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, cadc_file: str) -> bool | str:
        if not cadc_file.lower().endswith(CADC_SUFFIX):
            return f"Not a .cadc file: {cadc_file}"
        if not host.folder_paths().exists_annotated_filepath(cadc_file):
            return f"Invalid .cadc file: {cadc_file}"
        try:
            input_file_path(cadc_file)
        except ValueError as error:
            return str(error)
        return True


class DecodeLatent:
    """CADC Decode Latent."""

    DESCRIPTION = (
        "Entropy-decodes .cadc bitstreams into the denoiser's starting latent l_T and the auxiliary "
        "reconstruction. The codec must be the one that wrote the files."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (LATENT,)
    RETURN_NAMES = ("cadc_latent",)
    OUTPUT_TOOLTIPS = ("l_T and x̂_aux per file; connect to Aux Reconstruct, Caption and One-Step Denoise.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "codec": (
                    CODEC,
                    {"tooltip": "The codec that encoded the files (checked against the header)."},
                ),
                "bitstream": (BITSTREAM, {"tooltip": "Bitstreams from Load CADC or Encode to Bitstream."}),
            }
        }

    def decode(self, codec: Checkpoint, bitstream: list[CadcFile]) -> tuple[DecodedFiles]:
        from cadc.codec_io import decode_file

        progress = host.progress_bar(len(bitstream))
        host.load_small_model(codec, codec.codec)  # g_s, g_aux on ComfyUI's device; entropy path on the CPU
        decoded = []
        for cadc_file in bitstream:
            host.check_interrupted()
            decoded.append(decode_file(codec.codec, cadc_file))
            progress.update(1)
        return (DecodedFiles(decoded, codec),)


class AuxReconstruct:
    """CADC Aux Reconstruct."""

    DESCRIPTION = (
        "The codec's light auxiliary reconstruction x̂_aux (original size): a blurry preview, and the "
        "image the captioner describes."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("x̂_aux as a batch (all files must have the same size).",)
    FUNCTION = "reconstruct"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"cadc_latent": (LATENT, {"tooltip": "Output of Decode Latent."})}}

    def reconstruct(self, cadc_latent: DecodedFiles) -> tuple[torch.Tensor]:
        if any(d.x_aux is None for d in cadc_latent.images):
            raise ValueError("CADC: this codec has no auxiliary decoder (config aux=False)")
        return (tensor_to_image(_same_size_batch([d.x_aux for d in cadc_latent.images], "auxiliary images")),)


class CropToOriginal:
    """CADC Crop to Original Size."""

    DESCRIPTION = (
        "Crops decoded images (e.g. from VAE Decode after One-Step Denoise) to the size recorded in the "
        ".cadc header; the codec works on sizes padded to a multiple of 64."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The images at their original size.",)
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Decoded images at the padded size."}),
                "cadc_latent": (LATENT, {"tooltip": "The Decode Latent output the images came from."}),
            }
        }

    def crop(self, image: torch.Tensor, cadc_latent: DecodedFiles) -> tuple[torch.Tensor]:
        heights = {d.header.height for d in cadc_latent.images}
        widths = {d.header.width for d in cadc_latent.images}
        if len(heights) > 1 or len(widths) > 1:
            raise ValueError("CADC: cannot crop a batch whose files have different sizes")
        height, width = heights.pop(), widths.pop()
        if image.shape[1] < height or image.shape[2] < width:
            raise ValueError(
                f"CADC: image {image.shape[2]}x{image.shape[1]} is smaller than {width}x{height}"
            )
        return (image[:, :height, :width, :].contiguous(),)
