"""The synthetic cohort written in the download layouts (brcatool.synth.layouts, `synth --layout`)."""

from __future__ import annotations

import gzip

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool.cli.app import app
from brcatool.errors import InputError
from brcatool.synth.layouts import GDC_HEADER, GDC_SUFFIX, SHEET_HEADER, write_layout


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from brcatool.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("c"), patients=8, seed=2, genes=80, slide_size=(256, 256),
                       progress=False)


def _tidy(cohort):
    df = pl.read_csv(cohort.expression, separator="\t")
    return df["gene"].to_list(), df.columns[1:], df.drop("gene").to_numpy()


def test_gdc_layout_files_are_laid_out_like_the_gdc_ships_them(tmp_path, cohort):
    lf = write_layout(cohort.expression, cohort.clinical, "gdc", tmp_path / "gdc")
    files = sorted(lf.expression.glob(f"*/*{GDC_SUFFIX}"))
    assert len(files) == len(cohort.expression_patients) + 1  # + one Solid Tissue Normal
    assert all(f.parent.name != f.name for f in files)
    lines = files[0].read_text().splitlines()
    assert lines[0] == "# gene-model: GENCODE v36" and lines[1].split("\t") == list(GDC_HEADER)
    assert [ln.split("\t")[0] for ln in lines[2:6]] == ["N_unmapped", "N_multimapping", "N_noFeature",
                                                         "N_ambiguous"]
    assert lines[2].split("\t")[6:] == ["", "", ""]  # summary rows have no TPM/FPKM
    sheet = pl.read_csv(lf.sample_sheet, separator="\t")
    assert tuple(sheet.columns) == SHEET_HEADER and sheet.height == len(files)
    assert sorted(sheet["Sample Type"].unique()) == ["Primary Tumor", "Primary Tumor, Primary Tumor",
                                                     "Solid Tissue Normal"]  # one row lists its sample twice
    assert all((f.parent / "logs" / f"{f.name}.parcel").is_file() for f in files)
    assert (lf.expression / "MANIFEST.txt").read_text().startswith("id\tfilename\tmd5\tsize\tstate\n")
    # unstranded is the count; stranded columns add up to it; TPM sums to 1e6
    genes, samples, counts = _tidy(cohort)
    row = sheet.filter(pl.col("Sample ID") == samples[0])
    star = pl.read_csv(lf.expression / row["File ID"][0] / row["File Name"][0], separator="\t",
                       comment_prefix="#").slice(4)
    np.testing.assert_array_equal(star["unstranded"].to_numpy(), counts[:, 0])
    np.testing.assert_array_equal(star["stranded_first"] + star["stranded_second"], star["unstranded"])
    assert star["tpm_unstranded"].sum() == pytest.approx(1e6, rel=1e-4)
    assert star["gene_name"].to_list() == genes
    assert lf.clinical.read_text().startswith('"","patient","BRCA_Subtype_PAM50"')


def test_cbioportal_and_xena_layouts(tmp_path, cohort):
    cb = write_layout(cohort.expression, cohort.clinical, "cbioportal", tmp_path / "cb")
    lines = cb.clinical.read_text().splitlines()
    assert all(ln.startswith("#") for ln in lines[:4])
    assert lines[4].split("\t")[:2] == ["PATIENT_ID", "SUBTYPE"]
    assert {ln.split("\t")[1] for ln in lines[5:]} <= {f"BRCA_{s}" for s in ("LumA", "LumB", "Her2", "Basal",
                                                                            "Normal")}
    head = cb.expression.read_text().splitlines()
    assert head[0].split("\t")[:2] == ["Hugo_Symbol", "Entrez_Gene_Id"] and head[1].startswith("\t")
    assert (tmp_path / "cb" / "data_clinical_sample.txt").is_file()
    xe = write_layout(cohort.expression, cohort.clinical, "xena", tmp_path / "xe")
    text = gzip.decompress(xe.expression.read_bytes()).decode().splitlines()
    genes, samples, counts = _tidy(cohort)
    assert text[0].split("\t") == ["sample", *[s[:15] for s in samples]]
    first = [float(v) for v in text[1].split("\t")[1:]]
    np.testing.assert_allclose(first, np.log2(counts[0] + 1.0), atol=1e-4)
    header = xe.clinical.read_text().splitlines()[0].split("\t")
    assert header[:3] == ["sampleID", "_PATIENT", "PAM50Call_RNAseq"]


def test_layout_refuses_unknown_names_and_busy_folders(tmp_path, cohort):
    with pytest.raises(InputError, match="unknown layout"):
        write_layout(cohort.expression, cohort.clinical, "geo", tmp_path / "x")
    write_layout(cohort.expression, cohort.clinical, "xena", tmp_path / "x")
    with pytest.raises(InputError, match="not empty"):
        write_layout(cohort.expression, cohort.clinical, "xena", tmp_path / "x")
    write_layout(cohort.expression, cohort.clinical, "xena", tmp_path / "x", overwrite=True)


def test_cli_synth_layouts(tmp_path):
    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["synth", str(out), "-n", "6", "--genes", "60", "--slide-size", "256x256",
                                   "--layout", "gdc,xena", "--layout", "cbioportal", "-q"])
    assert res.exit_code == 0, res.output
    assert (out / "gdc" / "gdc_sample_sheet.2024-06-01.tsv").is_file()
    assert (out / "xena" / "HiSeqV2.gz").is_file()
    assert (out / "cbioportal" / "data_mrna_seq_v2_rsem.txt").is_file()
