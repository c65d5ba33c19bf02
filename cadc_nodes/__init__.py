"""ComfyUI nodes for CADC (thin adapters over the ``cadc`` core package)."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
