"""Slide access: naming, mpp sanity, level choice, region reads and thumbnails on real TIFFs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest

from brcatool import slides
from brcatool.errors import InputError
from brcatool.synth.slides import SlideSpec, write_slide


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic pyramidal TIFF: 1024 x 768 px at 0.5 µm/px, levels 1, 4, 16."""
    path = tmp_path_factory.mktemp("pyramid") / "TCGA-AB-1234-01Z-00-DX1.tiff"
    write_slide(path, SlideSpec(width=1024, height=768, subtype="LumA", seed=(7,)))
    return path


def test_ids_from_names() -> None:
    sid = slides.slide_id_for(Path("/x/TCGA-A2-A0CM-01Z-00-DX1.AB12.svs"))
    assert sid == "TCGA-A2-A0CM-01Z-00-DX1.AB12"
    assert slides.patient_id_for(sid) == "TCGA-A2-A0CM"
    assert slides.patient_id_for("case_17") == "case_17"
    assert slides.slide_id_for(Path("a/b/scan.ome.tiff")) == "scan"


def test_mpp_metadata_fallback_and_implausible(slide_fixture) -> None:
    with openslide.OpenSlide(str(slide_fixture("small.svs"))) as s:
        assert slides.slide_mpp(s) == pytest.approx(0.499)
        assert slides.slide_mpp(s, fallback=0.25) == pytest.approx(0.499)  # metadata wins
    with openslide.OpenSlide(str(slide_fixture("boxes.tiff"))) as s:  # 72 dpi -> 352.8 µm/px
        with pytest.raises(InputError, match="implausible mpp.*mpp-fallback"):
            slides.slide_mpp(s)
        assert slides.slide_mpp(s, fallback=0.25) == 0.25


def test_open_errors_are_one_line(slide_fixture, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open slide"):
        slides.open_slide(slide_fixture("unopenable.tiff"))
    note = tmp_path / "notes.txt"
    note.write_text("not a slide")
    with pytest.raises(InputError, match="not a slide format"):
        slides.open_slide(note)


def test_find_slides_and_table(tmp_path: Path, slide_fixture) -> None:
    svs = slide_fixture("small.svs")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    tif = tmp_path / "deep" / "er" / "b.tiff"
    tif.write_bytes(svs.read_bytes())
    (tmp_path / "deep" / "readme.txt").write_text("x")
    found = slides.find_slides([tmp_path / "deep"])
    assert found == [tif.resolve()]
    assert slides.find_slides([tmp_path / "deep" / "readme.txt"])[0].name == "readme.txt"
    with pytest.raises(InputError, match="no such file"):
        slides.find_slides([tmp_path / "missing"])

    table = tmp_path / "slides.csv"
    table.write_text("path,patient_id\ndeep/er/b.tiff,P1\nfixtures/small.svs,\n")
    entries = slides.make_entries(slides.read_slides_table(table))
    assert [(e.slide_id, e.patient_id, e.path) for e in entries] == [
        ("b", "P1", tif.resolve()), ("small", "small", svs.resolve())]
    bad = tmp_path / "bad.tsv"
    bad.write_text("file\tpatient\nx\ty\n")
    with pytest.raises(InputError, match="'path' column"):
        slides.read_slides_table(bad)


def test_transparent_pixels_become_white() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    rgb = slides.to_rgb(rgba)
    assert rgb.tolist() == [[[10, 20, 30], [255, 255, 255], [127, 127, 127]]]


@pytest.mark.parametrize(("target", "level", "read"), [(0.5, 0, 256), (2.0, 1, 256), (1.0, 0, 512),
                                                       (0.25, 0, 128), (8.0, 2, 256)])
def test_plan_picks_matching_or_finer_level(pyramid: Path, target: float, level: int, read: int) -> None:
    with openslide.OpenSlide(str(pyramid)) as s:
        plan = slides.plan_read(s, 0.5, target, 256)
    assert (plan.level, plan.read_size, plan.out_size) == (level, read, 256)
    assert plan.mpp == pytest.approx(target)
    assert plan.size0 == pytest.approx(256 * target / 0.5)


def test_read_patch_matches_openslide(pyramid: Path) -> None:
    with openslide.OpenSlide(str(pyramid)) as s:
        exact = slides.read_patch(s, 128, 64, slides.plan_read(s, 0.5, 2.0, 256))
        ref = np.asarray(s.read_region((128, 64), 1, (256, 256)))  # runs past the slide's edge
        inside = ref[..., 3] == 255
        assert 0 < inside.mean() < 1 and exact.dtype == np.uint8
        assert np.array_equal(exact[inside], ref[..., :3][inside])
        assert (exact[~inside] == 255).all()  # outside the scan: white, not black
        resized = slides.read_patch(s, 0, 0, slides.plan_read(s, 0.5, 1.0, 128))
        full = np.asarray(s.read_region((0, 0), 0, (256, 256)))[..., :3]
        want = cv2.resize(full, (128, 128), interpolation=cv2.INTER_AREA)
        assert resized.shape == (128, 128, 3) and np.array_equal(resized, want)


def test_thumbnail_blockwise_equals_whole(pyramid: Path) -> None:
    with openslide.OpenSlide(str(pyramid)) as s:
        whole, ds = slides.read_thumbnail(s, max_side=256)
        blocks, ds2 = slides.read_thumbnail(s, max_side=256, block=100)
    assert max(whole.shape[:2]) <= 256 and ds == pytest.approx(4.0) and ds2 == ds
    assert whole.shape == blocks.shape == (192, 256, 3)
    # block seams may shift a pixel's interpolation; the picture must stay the same
    assert np.abs(whole.astype(int) - blocks.astype(int)).mean() < 2.0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_direct_and_banded_reads_equal_read_region(pyramid: Path, threads: int) -> None:
    """read_rgb reads openslide's buffer directly (and in bands on threads): the pixels must be
    read_region's exactly, transparent edges (composited onto white) and odd offsets included."""
    data = Path(__file__).parent / "data"
    cases = [(pyramid, 0, 0, 0, 1024, 768), (pyramid, 0, 100, 0, 1000, 700),  # band cuts off tile rows
             (pyramid, 512, 300, 0, 700, 600),  # runs past the right and bottom edges: alpha 0
             (pyramid, 0, 0, 1, 256, 192), (pyramid, 8, 10, 1, 300, 250),  # y: no whole level-1 row
             (data / "small.svs", 0, 0, 0, 16, 16), (data / "boxes.tiff", 0, 0, 0, 400, 300),
             (data / "boxes.tiff", 30, 50, 1, 180, 140)]
    for path, x, y, level, w, h in cases:
        with openslide.OpenSlide(str(path)) as s:
            want = slides.to_rgb(np.asarray(s.read_region((x, y), level, (w, h))))
            got = slides.read_rgb(s, x, y, level, w, h, threads=threads)
        assert got.dtype == np.uint8 and got.shape == (h, w, 3)
        assert np.array_equal(got, want), (path.name, x, y, level, w, h)


def test_direct_read_of_a_corrupt_tile_raises_like_read_region() -> None:
    bad = Path(__file__).parent / "data" / "unreadable.svs"
    with openslide.OpenSlide(str(bad)) as s:
        w, h = s.level_dimensions[0]
        with pytest.raises(openslide.OpenSlideError):
            s.read_region((0, 0), 0, (w, h))
    with openslide.OpenSlide(str(bad)) as s:
        with pytest.raises(openslide.OpenSlideError):
            slides.read_rgb(s, 0, 0, 0, w, h, threads=2)


def test_a_corrupt_tile_in_one_band_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """A band that fails must not leave the other bands reading while the caller closes the slide
    (openslide aborts the process when a handle is closed mid-read): run in a child process."""
    import subprocess
    import sys

    from brcatool.synth.slides import corrupt_tile

    path = tmp_path / "bad.tiff"
    write_slide(path, SlideSpec(width=2048, height=4096, subtype="Basal", seed=(3,)))
    corrupt_tile(path, page=0, tile=0)  # top-left: band 0 fails at once, band 1 has 32 tiles to decode
    code = ("import sys, openslide\nfrom brcatool import slides\n"
            "for _ in range(5):\n"
            "    s = openslide.OpenSlide(sys.argv[1])\n"
            "    try:\n"
            "        slides.read_rgb(s, 0, 0, 0, 2048, 4096, threads=2)\n"
            "    except openslide.OpenSlideError as exc:\n"
            "        print('error', type(exc).__name__)\n"
            "    finally:\n"
            "        s.close()\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-400:]
    assert out.stdout.split("\n")[:5] == ["error OpenSlideError"] * 5
