"""``--published``: the shipped Kodak CSV, and malformed files rejected in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadc.cli import main
from cadc.evaluation.published import METRICS, PublishedError, by_method, read_published

SHIPPED = Path(__file__).resolve().parents[1] / "docs" / "published_kodak.csv"
HEADER = "method,dataset,bpp,lpips,dists,fid,psnr,ms_ssim,source"
GOOD_ROW = "X,kodak,0.01,0.3,0.15,80,20.5,0.7,paper table 1"


def test_shipped_csv_parses_and_every_row_is_sourced() -> None:
    points = read_published(SHIPPED)
    groups = by_method(points)
    assert {"StableCodec", "DiffEIC"} <= set(groups)
    for point in points:
        assert point["dataset"] == "kodak" and point["source"] and 0 < point["bpp"] < 0.2
        assert any(point[m] is not None for m in METRICS)
    # Independent copy: the StableCodec numbers in the project's paper notes (4 digits).
    stable = {round(p["bpp"], 5): p for p in groups["StableCodec"]}
    for bpp, lpips, dists in [(0.00579, 0.3097, 0.1518), (0.00783, 0.2734, 0.1382), (0.01083, 0.2444, 0.1246)]:
        assert stable[bpp]["lpips"] == pytest.approx(lpips, abs=6e-5)
        assert stable[bpp]["dists"] == pytest.approx(dists, abs=6e-5)
    assert all(p["fid"] is None for p in groups["DiffEIC"])  # the source has no Kodak FID: left empty


def test_comments_blank_cells_and_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("# a comment\nmethod,bpp,psnr,source\n\nY,0.02,,fig. 3\n# trailing comment\nY,0.01,21.5,fig. 3\n")
    points = read_published(path)
    assert [p["bpp"] for p in by_method(points)["Y"]] == [0.01, 0.02]
    assert points[0]["psnr"] is None and points[1]["psnr"] == 21.5 and points[0]["lpips"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no header"),
        ("# only a comment\n", "no header"),
        (f"{HEADER}\n", "no data rows"),
        (HEADER.replace("ms_ssim", "msssim") + "\n" + GOOD_ROW + "\n", "unknown column"),
        (HEADER.replace("bpp,", "") + "\nX,kodak,0.3,0.15,80,20.5,0.7,t\n", "lacks column"),
        (f"{HEADER}\n{GOOD_ROW},extra\n", "line 2: 10 fields"),
        (f"{HEADER}\n{GOOD_ROW}\nX,kodak,0.02,0.3,abc,80,20.5,0.7,t\n", "line 3: dists 'abc' is not a number"),
        (f"{HEADER}\nX,kodak,-0.01,0.3,0.15,80,20.5,0.7,t\n", "bpp must be a positive"),
        (f"{HEADER}\nX,kodak,,0.3,0.15,80,20.5,0.7,t\n", "bpp must be a positive"),
        (f"{HEADER}\nX,kodak,0.01,0.3,0.15,nan,20.5,0.7,t\n", "not a finite number"),
        (f"{HEADER}\n,kodak,0.01,0.3,0.15,80,20.5,0.7,t\n", "empty method"),
        (f"{HEADER}\nX,kodak,0.01,0.3,0.15,80,20.5,0.7,\n", "empty source"),
        ("method,bpp,bpp,source\nX,0.1,0.1,t\n", "appears twice"),
    ],
)
def test_malformed_csv_is_rejected_in_one_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(PublishedError, match=message) as caught:
        read_published(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    # The CLI refuses it before any work: exit status 1, one line on stderr, nothing written.
    out = tmp_path / "out"
    argv = ["eval", "--data", str(tmp_path), "--sweep", "jpeg", "--published", str(path), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cadc: error:") and message.split(":")[-1].strip() in err
    assert not out.exists()


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PublishedError, match="no such file"):
        read_published(tmp_path / "nope.csv")
