"""The synthetic cohort factory: determinism, readable slides, aligned barcodes, truth, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import openslide
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool.cli.app import app
from brcatool.errors import InputError
from brcatool.expression import PAM50_GENES
from brcatool.slides import patient_id_for, slide_id_for
from brcatool.synth import CohortFiles, make_cohort
from brcatool.synth.names import assign_subtypes
from brcatool.synth.slides import SlideSpec, write_slide

SMALL = dict(slide_size=(1024, 768), genes=200, progress=False)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortFiles:
    """12 patients (so both missing-modality groups exist), one .svs share, one blank slide."""
    return make_cohort(tmp_path_factory.mktemp("synth") / "c", patients=12, seed=1,
                       svs_fraction=0.25, no_tissue_slides=1, **SMALL)


def _tables(files: CohortFiles) -> tuple[pl.DataFrame, pl.DataFrame]:
    expr = pl.read_csv(files.expression, separator="\t")
    clin = pl.read_csv(files.clinical, separator="\t")
    return expr, clin


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, cohort: CohortFiles) -> None:
    again = make_cohort(tmp_path / "again", patients=12, seed=1, svs_fraction=0.25,
                        no_tissue_slides=1, **SMALL)
    other = make_cohort(tmp_path / "other", patients=12, seed=2, svs_fraction=0.25,
                        no_tissue_slides=1, slides_per_patient=(1, 1), **SMALL)
    for name in ("expression.tsv", "clinical.tsv"):
        assert (cohort.root / name).read_bytes() == (again.root / name).read_bytes()
        assert (cohort.root / name).read_bytes() != (other.root / name).read_bytes()
    assert [s.slide_id for s in again.slides] == [s.slide_id for s in cohort.slides]
    a, b = cohort.slides[0], again.slides[0]
    with openslide.OpenSlide(a.path) as sa, openslide.OpenSlide(b.path) as sb:
        pa = np.asarray(sa.read_region((0, 0), 0, sa.dimensions))
        pb = np.asarray(sb.read_region((0, 0), 0, sb.dimensions))
    assert np.array_equal(pa, pb)
    assert set(other.subtypes).isdisjoint(cohort.subtypes)  # new seed, new barcodes


def test_every_slide_opens_with_levels_and_mpp(cohort: CohortFiles) -> None:
    files = sorted(cohort.slides_dir.iterdir())
    assert len(files) == len(cohort.slides) >= 12
    vendors = []
    for s in cohort.slides:
        with openslide.OpenSlide(s.path) as slide:
            props = slide.properties
            vendors.append(props["openslide.vendor"])
            assert props["openslide.vendor"] == s.vendor
            assert slide.level_count == s.levels >= 3
            assert slide.dimensions == (s.width, s.height)
            assert max(slide.level_dimensions[-1]) <= 512
            assert float(props["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
            assert float(props["openslide.mpp-y"]) == pytest.approx(0.5, rel=1e-3)
            assert slide.level_downsamples[1] == pytest.approx(4, rel=0.01)
            thumb = np.asarray(slide.get_thumbnail((128, 128)).convert("RGB"))
            assert thumb.mean() > 150  # mostly white glass
        assert s.path.suffix == (".svs" if s.vendor == "aperio" else ".tiff")
    assert vendors.count("aperio") == round(0.25 * len(cohort.slides))
    assert "generic-tiff" in vendors


def test_names_look_like_tcga(cohort: CohortFiles) -> None:
    for s in cohort.slides:
        pid, rest = s.slide_id[:12], s.slide_id[12:]
        assert pid == s.patient_id and len(pid) == 12 and pid.startswith("TCGA-")
        assert pid[7] == "-" and rest[:11] in ("-01Z-00-DX1", "-01Z-00-DX2")
        uid = rest.split(".", 1)[1]
        assert len(uid) == 36 and uid == uid.upper()
    assert len(cohort.subtypes) == 12


def test_expression_table_like_tcga(cohort: CohortFiles) -> None:
    expr, _ = _tables(cohort)
    assert expr.columns[0] == "gene" and expr.height == 200
    genes = expr["gene"].to_list()
    assert set(PAM50_GENES) <= set(genes) and len(set(genes)) == len(genes)
    samples = expr.columns[1:]
    assert all(c.endswith("-01A") and len(c) == 16 for c in samples)
    counts = expr.drop("gene").to_numpy()
    assert counts.dtype.kind == "i" and counts.min() >= 0
    zero = expr.filter(pl.sum_horizontal(pl.exclude("gene")) == 0)["gene"].to_list()
    assert set(cohort.zero_genes) <= set(zero) and len(cohort.zero_genes) >= 1
    # an outlier sample has values far beyond every gene's usual range
    log = np.log2(counts + 1.0)
    z = (log - np.median(log, axis=1, keepdims=True)).max(axis=0)
    worst = samples[int(np.argmax(z))]
    assert cohort.outlier_samples and worst in cohort.outlier_samples


def test_subtype_programmes_follow_gene_signal(tmp_path: Path) -> None:
    def luminal_gap(signal: float) -> float:
        files = make_cohort(tmp_path / str(signal), patients=40, seed=4, gene_signal=signal,
                            slides_per_patient=(1, 1), slide_size=(256, 256), genes=80,
                            progress=False)
        expr = pl.read_csv(files.expression, separator="\t")
        row = dict(zip(expr["gene"], expr.drop("gene").to_numpy(), strict=True))
        esr1 = dict(zip(expr.columns[1:], np.log2(row["ESR1"] + 1.0), strict=True))
        krt5 = dict(zip(expr.columns[1:], np.log2(row["KRT5"] + 1.0), strict=True))
        sub = {f"{p}-01A": s for p, s in files.subtypes.items()}
        lum = [esr1[c] - krt5[c] for c in esr1 if sub[c] in ("LumA", "LumB")]
        bas = [esr1[c] - krt5[c] for c in esr1 if sub[c] == "Basal"]
        return float(np.mean(lum) - np.mean(bas))

    assert luminal_gap(1.0) > 4.0
    assert abs(luminal_gap(0.0)) < 2.0


def test_barcodes_line_up_with_missing_modalities(cohort: CohortFiles) -> None:
    expr, clin = _tables(cohort)
    assert clin.columns == ["patient_id", "PAM50"]
    patients = set(clin["patient_id"])
    assert patients == set(cohort.subtypes)
    assert set(clin["PAM50"]) <= {f"BRCA.{s}" for s in ("LumA", "LumB", "Her2", "Basal", "Normal")}
    expr_patients = {c[:12] for c in expr.columns[1:]}
    slide_patients = {p.name[:12] for p in cohort.slides_dir.iterdir()}
    assert expr_patients == set(cohort.expression_patients)
    assert slide_patients == set(cohort.slide_patients)
    assert expr_patients <= patients and slide_patients <= patients
    assert slide_patients - expr_patients and expr_patients - slide_patients
    assert expr_patients | slide_patients == patients
    both = expr_patients & slide_patients
    kinds = {cohort.subtypes[p] for p in both}
    assert kinds & {"LumA", "LumB"} and kinds & {"Basal", "Her2"}


def test_small_cohorts_keep_both_classes_and_proportions_are_tcga_like() -> None:
    rng = np.random.default_rng(0)
    six = assign_subtypes(6, rng)
    assert {"LumA", "LumB"} & set(six) and {"Basal", "Her2"} & set(six)
    big = assign_subtypes(1000, rng)
    assert 0.40 < big.count("LumA") / 1000 < 0.50 and 0.15 < big.count("Basal") / 1000 < 0.21


def test_truth_masks_match_slides(cohort: CohortFiles) -> None:
    meta = json.loads(cohort.truth_json.read_text())
    # truth.json against the files on disk: one entry per slide file, ids as tile derives them
    assert set(meta) == {slide_id_for(p) for p in cohort.slides_dir.iterdir()}
    for s in cohort.slides:
        info = meta[s.slide_id]
        ds = info["downsample"]
        assert info["patient_id"] == patient_id_for(slide_id_for(Path(s.path)))
        mask = cv2.imread(str(s.truth_mask), cv2.IMREAD_GRAYSCALE)
        with openslide.OpenSlide(s.path) as slide:
            w0, h0 = slide.dimensions
        assert mask.shape == (-(-h0 // ds), -(-w0 // ds))
        frac = (mask > 0).mean()
        if s.blank:
            assert frac == 0
            continue
        assert 0.03 < frac < 0.8
        # pixels agree with the mask: tissue is darker/pinker than glass
        with openslide.OpenSlide(s.path) as slide:
            lvl = slide.get_best_level_for_downsample(ds)
            small = np.asarray(slide.read_region((0, 0), lvl, slide.level_dimensions[lvl])
                               .convert("RGB")).astype(float)
        mask_l = cv2.resize(mask, small.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        grey = small.mean(axis=2)
        assert grey[mask_l].mean() < grey[~mask_l].mean() - 40


def test_blank_slide_is_background_only(cohort: CohortFiles) -> None:
    blank = [s for s in cohort.slides if s.blank]
    assert len(blank) == 1
    with openslide.OpenSlide(blank[0].path) as slide:
        img = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
    assert (img.mean(axis=2) > 200).mean() > 0.99


def test_image_signal_changes_nuclear_density(tmp_path: Path) -> None:
    """Same seed, other subtype: Basal has more nuclei (purple) than LumA; none at signal 0."""

    def purple(subtype: str, signal: float) -> tuple[float, np.ndarray]:
        path = tmp_path / f"{subtype}-{signal}.tiff"
        write_slide(path, SlideSpec(width=768, height=768, subtype=subtype, seed=(9,),
                                    image_signal=signal))
        with openslide.OpenSlide(path) as slide:
            img = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        tissue = img.mean(axis=2) < 225
        nuclei = img.mean(axis=2) < 130
        return nuclei.sum() / tissue.sum(), img

    basal, _ = purple("Basal", 1.0)
    luma, _ = purple("LumA", 1.0)
    assert basal > 1.3 * luma
    _, basal0 = purple("Basal", 0.0)
    _, luma0 = purple("LumA", 0.0)
    assert np.array_equal(basal0, luma0)


def test_odd_sizes_and_level_factor_two(tmp_path: Path) -> None:
    """A last band of a single row and a factor-2 pyramid still give a readable slide."""
    path = tmp_path / "odd.tiff"
    result, truth = write_slide(path, SlideSpec(width=700, height=1025, subtype="Her2", seed=(3,),
                                                level_downsample=2))
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (700, 1025)
        assert slide.level_count == len(result.levels) >= 3
        assert slide.level_downsamples[1] == pytest.approx(2, rel=0.01)
        assert max(slide.level_dimensions[-1]) <= 512
    assert truth.shape == (65, 44)


def test_bad_arguments_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no_tissue_slides"):
        make_cohort(tmp_path / "x", patients=2, no_tissue_slides=9, **SMALL)
    with pytest.raises(InputError, match="genes"):
        make_cohort(tmp_path / "y", patients=2, genes=10, progress=False)


def test_cli_writes_and_refuses_non_empty(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synth", str(out), "--patients", "3", "--seed", "2", "--slide-size", "512x512",
            "--genes", "60", "--svs-fraction", "0.5"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "patients" in res.output and (out / "expression.tsv").is_file()
    assert any(p.suffix == ".svs" for p in (out / "slides").iterdir())
    again = runner.invoke(app, args)
    assert again.exit_code == 1
    lines = [ln for ln in again.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not empty" in lines[0] and "--overwrite" in lines[0]
    before = (out / "clinical.tsv").read_bytes()
    res = runner.invoke(app, [*args, "--overwrite", "--quiet", "--patients", "4"])
    assert res.exit_code == 0 and res.output.strip() == ""
    assert (out / "clinical.tsv").read_bytes() != before
    assert len(pl.read_csv(out / "clinical.tsv", separator="\t")) == 4
    bad = runner.invoke(app, ["synth", str(tmp_path / "z"), "--slide-size", "big"])
    assert bad.exit_code == 1 and "WIDTHxHEIGHT" in bad.output


def test_shared_small_cohort_fixture(small_cohort: CohortFiles) -> None:
    assert len(small_cohort.subtypes) == 6 and len(small_cohort.slides) >= 6
    kinds = set(small_cohort.subtypes.values())
    assert kinds & {"LumA", "LumB"} and kinds & {"Basal", "Her2"}
    assert set(small_cohort.expression_patients) == set(small_cohort.slide_patients)
