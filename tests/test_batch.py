"""Folder mode: ``cadc compress DIR -o OUTDIR`` / ``cadc decompress DIR -o OUTDIR`` (cadc.batch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cadc.batch import FolderReport, Job, run_jobs
from cadc.cli import main

TINY = ("--model", "tiny-random")


def _photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def photos(tmp_path) -> Path:
    """photos/{a.png, b.jpg, trip/c.png, notes.txt, .hidden.png}."""
    folder = tmp_path / "photos"
    _photo(folder / "a.png", (96, 64), 0)
    _photo(folder / "b.jpg", (70, 50), 1)
    _photo(folder / "trip" / "c.png", (64, 80), 2)
    (folder / "notes.txt").write_text("not an image")
    _photo(folder / ".hidden.png", (64, 64), 3)
    return folder


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compress_folder_mirrors_the_tree(capsys, tmp_path, photos):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "compress", str(photos), "-o", str(out), *TINY, "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert sorted(_files(out)) == ["a.cadc", "b.cadc", "trip/c.cadc"]
    assert (report["inputs"], report["done"], report["skipped"], report["failed"]) == (3, 3, 0, [])
    assert report["images_per_s"] > 0 and report["megapixels_per_s"] > 0
    single = tmp_path / "single.cadc"
    assert main(["compress", str(photos / "trip" / "c.png"), "-o", str(single), *TINY]) == 0
    assert (out / "trip" / "c.cadc").read_bytes() == single.read_bytes()  # same file as one by one


def test_existing_outputs_are_skipped_unless_overwrite(capsys, tmp_path, photos):
    out = tmp_path / "out"
    assert _run(capsys, "compress", str(photos), "-o", str(out), *TINY)[0] == 0
    (out / "a.cadc").write_bytes(b"placeholder")
    code, stdout, _ = _run(capsys, "compress", str(photos), "-o", str(out), *TINY, "--json")
    assert code == 0 and json.loads(stdout)["skipped"] == 3 and json.loads(stdout)["done"] == 0
    assert (out / "a.cadc").read_bytes() == b"placeholder"
    code, stdout, _ = _run(capsys, "compress", str(photos), "-o", str(out), *TINY, "--json", "--overwrite")
    assert code == 0 and json.loads(stdout)["done"] == 3
    assert (out / "a.cadc").read_bytes()[:4] != b"plac"


def test_one_line_per_failed_file_and_non_zero_exit(capsys, tmp_path, photos):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _photo(photos / "a.jpg", (64, 64), 9)  # a.png and a.jpg would both write a.cadc
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, "compress", str(photos), "-o", str(out), *TINY)
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("cadc: error:")]
    assert len(errors) == 3
    assert sum("broken.png" in line for line in errors) == 1
    assert sum(line.startswith("cadc: error: a.jpg:") or line.startswith("cadc: error: a.png:") for line in errors) == 2
    assert sorted(_files(out)) == ["b.cadc", "trip/c.cadc"]  # the others are done, nothing half-written
    assert "2 written" in stderr.splitlines()[-1] and "3 failed" in stderr.splitlines()[-1]


def test_jobs_give_the_same_files(capsys, tmp_path, photos):
    assert _run(capsys, "compress", str(photos), "-o", str(tmp_path / "one"), *TINY)[0] == 0
    assert _run(capsys, "compress", str(photos), "-o", str(tmp_path / "two"), *TINY, "--jobs", "3")[0] == 0
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_decompress_folder_aux_and_generative(capsys, tmp_path, photos):
    cadc_dir, aux_dir, gen_dir = tmp_path / "cadc", tmp_path / "aux", tmp_path / "gen"
    assert _run(capsys, "compress", str(photos), "-o", str(cadc_dir), *TINY)[0] == 0
    (cadc_dir / "garbage.cadc").write_bytes(b"CADC not a file")
    code, _, stderr = _run(capsys, "decompress", str(cadc_dir), "-o", str(aux_dir), "--aux-only", *TINY)
    assert code == 1 and sum(line.startswith("cadc: error: garbage.cadc:") for line in stderr.splitlines()) == 1
    with Image.open(aux_dir / "b.png") as image:
        assert image.size == (70, 50)
    (cadc_dir / "garbage.cadc").unlink()
    code, _, stderr = _run(capsys, "decompress", str(cadc_dir), "-o", str(gen_dir), "--sd-turbo", "tiny-random",
                           "--no-caption", "--jobs", "2", *TINY)
    assert code == 0, stderr
    single = tmp_path / "single.png"
    assert main(["decompress", str(cadc_dir / "trip" / "c.cadc"), "-o", str(single), "--sd-turbo", "tiny-random",
                 "--no-caption", *TINY]) == 0
    assert (gen_dir / "trip" / "c.png").read_bytes() == single.read_bytes()  # as `cadc decompress FILE` decodes


def test_folder_without_output_is_one_clear_error(capsys, photos):
    code, _, stderr = _run(capsys, "compress", str(photos), *TINY)
    assert code == 1
    assert stderr.strip().splitlines() == [f"cadc: error: {photos} is a folder: pass -o OUTDIR for the outputs"]


def test_interrupt_leaves_only_complete_files(tmp_path):
    jobs = [Job(tmp_path / f"in{i}", tmp_path / "out" / f"{i}.bin", f"in{i}") for i in range(4)]

    def work(job: Job) -> int:
        if job.name == "in2":
            raise KeyboardInterrupt
        from cadc.container import atomic_write_bytes

        atomic_write_bytes(job.output, b"x" * 1000)
        return 1

    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, work, 1, False, "test", FolderReport(inputs=4))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["0.bin", "1.bin"] and all((tmp_path / "out" / n).stat().st_size == 1000 for n in written)
