"""CADC: content-adaptive diffusion-based generative image compression (CVPR 2026).

The core package: networks, entropy coding, the ``.cadc`` container, image I/O and the CLI.
It never imports ComfyUI. See ARCHITECTURE.md for the data flow.
"""

__version__ = "0.1.0"
