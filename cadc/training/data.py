"""Training data: folders of images, a held-out split, seeded random crops.

Nothing is downloaded. A training sample is addressed by a global sample number k; the image, the
crop position and the flip are drawn from ``numpy.random.default_rng([seed, k])``. Together with
:class:`StepSampler` (which numbers samples by step, micro-step, rank and batch slot) this makes
the data stream independent of the number of DataLoader workers and lets a resumed run see the
same crops it would have seen without the interruption.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import Dataset, Sampler

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}


def list_images(folders: Sequence[str | Path]) -> list[Path]:
    """Image files under ``folders`` (recursive), sorted; raises if there are none."""
    paths: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            paths.append(folder)
            continue
        if not folder.is_dir():
            raise FileNotFoundError(f"training data folder not found: {folder}")
        paths.extend(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    paths = sorted(set(paths))
    if not paths:
        raise ValueError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {list(map(str, folders))}"
        )
    return paths


def split_holdout(
    paths: Sequence[Path], count: int, names: Sequence[str] = (), seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """(train, held_out). ``names`` (file names or stems) pick the held-out images explicitly;
    otherwise ``count`` of them are drawn with ``seed``. At least one image stays for training."""
    if names:
        wanted = set(names)
        held = [p for p in paths if p.name in wanted or p.stem in wanted]
        found = {p.name for p in held} | {p.stem for p in held}
        missing = sorted(wanted - found)
        if missing:
            raise ValueError(f"held-out images not found in the data: {missing}")
    else:
        count = min(count, len(paths) - 1)
        order = np.random.default_rng(seed).permutation(len(paths))
        held = [paths[i] for i in sorted(order[:count])]
    train = [p for p in paths if p not in held]
    if not train:
        raise ValueError("every image is held out; nothing is left to train on")
    return train, held


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as uint8 [3, H, W] (grey and palette images become RGB, alpha is dropped)."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pad [..., H, W] at the bottom/right to at least ``height`` × ``width``."""
    pad_h, pad_w = max(0, height - x.shape[-2]), max(0, width - x.shape[-1])
    if not pad_h and not pad_w:
        return x
    squeeze = x.ndim == 3
    x = F.pad(x[None].float() if squeeze else x.float(), (0, pad_w, 0, pad_h), mode="replicate")
    return x[0] if squeeze else x


class CropDataset(Dataset):
    """Random ``crop`` × ``crop`` crops (plus a random horizontal flip) of the given images.

    ``dataset[k]`` is the k-th sample of the stream: float32 [3, crop, crop] in 0..1 (any k ≥ 0;
    :class:`StepSampler` picks which). Decoded images are cached in memory, up to
    ``cache_images`` files per process.
    """

    def __init__(self, paths: Sequence[Path], crop: int, seed: int, cache_images: int = 64) -> None:
        self.paths = list(paths)
        self.crop = crop
        self.seed = seed
        self.cache_images = cache_images
        self._cache: dict[int, torch.Tensor] = {}

    def _image(self, index: int) -> torch.Tensor:
        image = self._cache.get(index)
        if image is None:
            image = read_rgb(self.paths[index])
            if len(self._cache) < self.cache_images:
                self._cache[index] = image
        return image

    def __getitem__(self, k: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, k])
        image = pad_to(self._image(int(rng.integers(len(self.paths)))), self.crop, self.crop)
        top = int(rng.integers(image.shape[-2] - self.crop + 1))
        left = int(rng.integers(image.shape[-1] - self.crop + 1))
        crop = image[:, top : top + self.crop, left : left + self.crop].float() / 255.0
        return crop.flip(-1) if rng.random() < 0.5 else crop


@dataclass(frozen=True)
class StepSampler(Sampler[int]):
    """Sample numbers for one rank, from optimizer step ``start`` to ``steps``.

    Sample (step s, micro-step a, rank r, slot i) is k = ((s·accum + a)·world + r)·batch + i, so
    every rank draws different crops and the stream does not depend on where a run resumed.
    """

    start: int
    steps: int
    batch: int
    accum: int
    world: int
    rank: int

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.steps):
            for micro in range(self.accum):
                base = ((step * self.accum + micro) * self.world + self.rank) * self.batch
                yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.accum * self.batch


def load_eval_image(path: Path, multiple: int = 64) -> tuple[torch.Tensor, tuple[int, int]]:
    """A held-out image as ([1, 3, H', W'] float in 0..1, replicate-padded to ``multiple``, (H, W))."""
    image = read_rgb(path).float()[None] / 255.0
    height, width = image.shape[-2:]
    padded = pad_to(image, -(-height // multiple) * multiple, -(-width // multiple) * multiple)
    return padded, (height, width)
