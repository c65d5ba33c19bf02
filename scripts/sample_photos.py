"""Copy the photos that ship with scikit-image and matplotlib into one folder (as PNG).

These are the training and held-out images of the former shipped model ``cadc-tiny``
(see docs/training.md). Nothing is downloaded: only files already inside the installed packages
are read.

    python scripts/sample_photos.py data/sample-photos
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import skimage
from PIL import Image

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "grass.png",
    "gravel.png",
    "brick.png",
)
"""Colour photos, then greyscale photos/textures (converted to RGB)."""
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)


def sources() -> list[Path]:
    skimage_dir = Path(skimage.__file__).resolve().parent / "data"
    matplotlib_dir = Path(matplotlib.get_data_path()) / "sample_data"
    return [skimage_dir / n for n in SKIMAGE_PHOTOS] + [matplotlib_dir / n for n in MATPLOTLIB_PHOTOS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for path in sources():
        with Image.open(path) as image:
            image.convert("RGB").save(out / f"{path.stem}.png")
        print(out / f"{path.stem}.png")


if __name__ == "__main__":
    main()
