"""ComfyUI entry point for the CADC node pack.

ComfyUI imports this file as a package (``custom_nodes/<folder>/__init__.py``). The codec core is
the plain Python package ``cadc`` that lives next to this file; when the pack has not been
``pip install``-ed, this folder is put on ``sys.path`` so that ``import cadc`` finds it.
Importing this file never fails for lack of ComfyUI: the node classes import ComfyUI lazily.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

if __package__:  # ComfyUI: custom_nodes/<folder> imported as a package
    from .cadc_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # a plain module, e.g. pytest collecting a checkout whose folder name is no identifier (comfyui-cadc)
    from cadc_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
