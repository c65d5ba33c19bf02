"""Rate–distortion points that papers report, read from a CSV for ``cadc eval --published FILE``.

Format (``docs/published_kodak.csv`` is an example)::

    # comment lines start with '#'
    method,dataset,bpp,lpips,dists,fid,psnr,ms_ssim,source
    StableCodec,kodak,0.00579,0.30967,0.15184,90.61,20.26975,0.64343,"LuizScarlet/StableCodec results/results.txt"

Required columns: ``method``, ``bpp`` (> 0, the paper's bits per pixel: entropy-coded bitstream),
``source`` (where the row comes from). Optional: ``dataset``, ``note`` and the metric columns
:data:`METRICS`; an empty cell means the source gives no number. Any other column, a field that is
not a number, a row of the wrong length, or a file without rows is rejected with one line naming
the file and line.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

METRICS = ("lpips", "dists", "fid", "kid", "psnr", "ms_ssim")
REQUIRED = ("method", "bpp", "source")
TEXT = ("method", "dataset", "source", "note")


class PublishedError(ValueError):
    """A malformed published-results CSV (the message is one line naming file and line)."""


def _number(text: str, column: str, where: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise PublishedError(f"{where}: {column} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise PublishedError(f"{where}: {column} {text.strip()!r} is not a finite number")
    return value


def read_published(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of the CSV as dicts: text columns as str, ``bpp`` and metrics as float or None."""
    path = Path(path)
    if not path.is_file():
        raise PublishedError(f"--published {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise PublishedError(f"{path}: not UTF-8 text ({error.reason})") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise PublishedError(f"{path}: no header line")
    try:
        parsed = [(n, next(csv.reader([line]))) for n, line in numbered]  # one record per line
    except csv.Error as error:
        raise PublishedError(f"{path}: not a CSV file ({error})") from None
    (_, header), rows = parsed[0], parsed[1:]
    header = [column.strip().lower() for column in header]
    unknown = [c for c in header if c not in (*TEXT, "bpp", *METRICS)]
    if unknown:
        known = ", ".join((*TEXT, "bpp", *METRICS))
        raise PublishedError(f"{path}: unknown column(s) {', '.join(unknown)}; known: {known}")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise PublishedError(f"{path}: header lacks column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise PublishedError(f"{path}: a column appears twice in the header")
    if not rows:
        raise PublishedError(f"{path}: no data rows")
    points = []
    for number, row in rows:
        where = f"{path} line {number}"
        if len(row) != len(header):
            raise PublishedError(f"{where}: {len(row)} fields, the header has {len(header)}")
        cells = dict(zip(header, row, strict=True))
        point: dict[str, Any] = {c: cells.get(c, "").strip() for c in TEXT}
        for column in ("method", "source"):
            if not point[column]:
                raise PublishedError(f"{where}: empty {column}")
        point["bpp"] = _number(cells["bpp"], "bpp", where)
        if point["bpp"] is None or point["bpp"] <= 0:
            raise PublishedError(f"{where}: bpp must be a positive number")
        for metric in METRICS:
            point[metric] = _number(cells.get(metric, ""), metric, where)
        points.append(point)
    return points


def by_method(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Points grouped by method (file order kept), each group sorted by bpp."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault(point["method"], []).append(point)
    return {method: sorted(group, key=lambda p: p["bpp"]) for method, group in groups.items()}
