"""ComfyUI nodes for CADC: thin adapters over the ``cadc`` core package.

Data flow in a graph (custom types in capitals, stock ComfyUI nodes in brackets)::

    [Load Image] → Encode to Bitstream → CADC_BITSTREAM → Save CADC (.cadc in output/)
    Load CADC (.cadc + the codec found by its weights hash) → Decode Latent → CADC_LATENT
    CADC_LATENT → Aux Reconstruct → IMAGE (the light preview)
    CADC_LATENT (+ Load CADC Captioner) → Caption → one prompt per file → [CLIP Text Encode]
    [Load Checkpoint] MODEL + CONDITIONING + CADC_LATENT → One-Step Denoise → LATENT
    → [VAE Decode] → Crop to Original Size → [Save Image]

Importing the pack registers the ``cadc``/``blip`` model folders and copies the templates' sample
inputs into ComfyUI's input folder; the codec core, diffusers and transformers load only when a
node runs.
"""

from . import host
from .caption_nodes import Caption, LoadCaptioner
from .codec_nodes import (
    AuxReconstruct,
    CropToOriginal,
    DecodeLatent,
    EncodeBitstream,
    LoadBitstream,
    LoadCodec,
    SaveBitstream,
)
from .denoise_node import OneStepDenoise

host.register_model_folders()
host.install_sample_inputs()

_NODES = {
    "CADCLoadCodec": (LoadCodec, "Load CADC Codec"),
    "CADCEncode": (EncodeBitstream, "CADC Encode to Bitstream"),
    "CADCSave": (SaveBitstream, "Save CADC"),
    "CADCLoadBitstream": (LoadBitstream, "Load CADC"),
    "CADCDecodeLatent": (DecodeLatent, "CADC Decode Latent"),
    "CADCAuxReconstruct": (AuxReconstruct, "CADC Aux Reconstruct"),
    "CADCLoadCaptioner": (LoadCaptioner, "Load CADC Captioner"),
    "CADCCaption": (Caption, "CADC Caption"),
    "CADCOneStepDenoise": (OneStepDenoise, "CADC One-Step Denoise"),
    "CADCCropToOriginal": (CropToOriginal, "CADC Crop to Original Size"),
}

NODE_CLASS_MAPPINGS: dict[str, type] = {key: cls for key, (cls, _) in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {key: name for key, (_, name) in _NODES.items()}
