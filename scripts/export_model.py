"""Export a training run's model as a shipped model: a unique name (the model id) and a rate tag.

``cadc train`` names its codec after the preset (``photo``), so every rate point of a family would
share the model id ``cadc-photo``. This writes a copy whose config carries its own name, e.g.
``photo-2`` (id ``cadc-photo-2``), keeping the weights, CDF tables (hence the weights hash) and the
run's provenance untouched::

    python scripts/export_model.py runs/photo-2/model.safetensors models/cadc-photo-2.safetensors \
        --name photo-2

``--captioner-id none`` clears the captioner hint of a model whose UNet step was not trained with
captions (``cadc train`` now writes the right hint itself; models trained before it did need this).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open

from cadc.weights import load_checkpoint, save_codec, weights_hash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run's model.safetensors")
    parser.add_argument("target", help="where to write the shipped checkpoint")
    parser.add_argument("--name", required=True, help="config name; the model id becomes cadc-<name>")
    parser.add_argument("--rate-tag", help="replace the config's rate tag (default: keep it)")
    parser.add_argument("--captioner-id", help="replace the captioner hint; 'none' clears it (default: keep it)")
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.source)
    codec = checkpoint.codec
    before = weights_hash(codec)
    changes: dict[str, str | None] = {"name": args.name}
    if args.rate_tag:
        changes["rate_tag"] = args.rate_tag
    if args.captioner_id:
        changes["captioner_id"] = None if args.captioner_id.lower() == "none" else args.captioner_id
    codec.config = codec.config.replace(**changes)
    with safe_open(args.source, framework="pt") as handle:
        provenance = json.loads((handle.metadata() or {}).get("cadc.provenance", "{}"))
    if Path(args.source).resolve() != Path(args.target).resolve():
        provenance["exported_from"] = args.source
    save_codec(args.target, codec, checkpoint.adapter_state or None, checkpoint.adapter_config, provenance)
    after = weights_hash(load_checkpoint(args.target).codec)
    if after != before:
        raise SystemExit(f"weights hash changed on export: {before.hex()} -> {after.hex()}")
    print(json.dumps({"target": args.target, "model_id": codec.config.model_id, "weights_hash": after.hex()}))


if __name__ == "__main__":
    main()
