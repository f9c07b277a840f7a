"""prep-expr reads TCGA-BRCA as users download it: GDC STAR-count folders + sample sheet, cBioPortal
matrices and clinical files, UCSC Xena matrices and clinicalMatrix, TCGAbiolinks/PanCancer PAM50 tables.

Each test file copies the source's layout exactly (comment lines, summary rows, column names, gzip);
values are checked against numbers computed by hand here.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool.artifacts import Workdir, read_json, read_parquet
from brcatool.cli.app import app
from brcatool.errors import InputError
from brcatool.expression import PrepExprConfig, run_prep_expr
from brcatool.expression.sources import SOURCES, ReadOptions, detect_source, read_source

A, B, C = "TCGA-A1-A0SB", "TCGA-A2-A04P", "TCGA-A2-A04Q"
STAR_HEADER = ("gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\t"
               "tpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded")
STAR_SUMMARY = ("N_unmapped\t\t\t2421792\t2421792\t2421792\t\t\t\n"
                "N_multimapping\t\t\t4591519\t4591519\t4591519\t\t\t\n"
                "N_noFeature\t\t\t1771906\t29526018\t29678143\t\t\t\n"
                "N_ambiguous\t\t\t2908165\t698697\t696929\t\t\t\n")
STAR_GENES = (("ENSG00000000003.15", "TSPAN6"), ("ENSG00000000005.6", "TNMD"), ("ENSG00000000419.13", "DPM1"),
              ("ENSG00000002586.20", "CD99"), ("ENSG00000002586.20_PAR_Y", "CD99"))
SHEET_HEADER = ("File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type\t"
                "Tissue Type\tTumor Descriptor\tSpecimen Type\tPreservation Method")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _gz(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()))
    return path


def _run(tmp_path: Path, name: str = "work", **kw):
    result = run_prep_expr(tmp_path / name, PrepExprConfig(**kw), progress=False)
    wd = Workdir(tmp_path / name)
    return result, read_parquet(wd.expression_table, schema="expression"), \
        read_parquet(wd.labels_table, schema="labels"), read_json(wd.stage_manifest("prep-expr"))


def _column(df: pl.DataFrame, gene: str) -> list[float]:
    return df.sort("patient_id")[gene].to_list()


# --------------------------------------------------------------------------- GDC
def _star(path: Path, tpm: list[float], counts: list[int]) -> Path:
    rows = [f"{gid}\t{name}\tprotein_coding\t{c}\t{c // 2}\t{c - c // 2}\t{t:.4f}\t{t / 2:.4f}\t{t * 2:.4f}"
            for (gid, name), t, c in zip(STAR_GENES, tpm, counts, strict=True)]
    return _write(path, f"# gene-model: GENCODE v36\n{STAR_HEADER}\n{STAR_SUMMARY}" + "\n".join(rows) + "\n")


def _sheet_row(file_id: str, name: str, sample: str, kind: str = "Primary Tumor") -> str:
    tissue = "Normal" if "Normal" in kind else "Tumor"
    return (f"{file_id}\t{name}\tTranscriptome Profiling\tGene Expression Quantification\tTCGA-BRCA\t"
            f"{sample[:12]}\t{sample}\t{kind}\t{tissue}\tPrimary\tSolid Tissue\tUnknown")


@pytest.fixture
def gdc(tmp_path):
    """A GDC download: 2 tumours, 1 normal, 1 file not in the sheet, 1 sheet row without a file."""
    root = tmp_path / "gdc_download_20240601"
    suffix = ".rna_seq.augmented_star_gene_counts.tsv"
    files = {  # file id -> (sample, tpm, counts)
        "0a1b": (f"{A}-01A", [1, 0, 3, 7, 0], [10, 0, 30, 70, 0]),
        "1c2d": (f"{B}-01A", [15, 255, 0, 3, 0], [150, 2550, 0, 30, 0]),
        "2e3f": (f"{A}-11A", [0, 0, 0, 0, 0], [5, 5, 5, 5, 0]),
        "3a4b": (f"{C}-01A", [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]),  # on disk, not in the sheet
    }
    for fid, (_, tpm, counts) in files.items():
        _star(root / fid / f"{fid}-uuid{suffix}", tpm, counts)
    rows = [_sheet_row(fid, f"{fid}-uuid{suffix}", s, "Solid Tissue Normal" if s.endswith("11A") else
                       "Primary Tumor") for fid, (s, *_rest) in files.items() if fid != "3a4b"]
    rows.append(_sheet_row("9f9f", f"9f9f-uuid{suffix}", f"{C}-01A"))  # in the sheet, no file
    sheet = _write(tmp_path / "gdc_sample_sheet.2024-06-01.tsv", SHEET_HEADER + "\n" + "\n".join(rows) + "\n")
    clinical = _write(tmp_path / "pam50.csv", '"","patient","BRCA_Subtype_PAM50"\n'
                      f'"1","{A}","LumA"\n"2","{B}","Basal"\n"3","{C}",NA\n')
    return root, sheet, clinical


def test_gdc_folder_tpm_default_exact(tmp_path, gdc):
    root, sheet, clinical = gdc
    assert detect_source(root) == "gdc"
    result, expr, labels, manifest = _run(tmp_path, expression=root, clinical=clinical, max_zero_frac=0.5)
    # tpm_unstranded by default, log2(tpm + 1); versions stripped; summary rows and the all-zero PAR_Y gone
    assert expr.columns == ["patient_id", "ENSG00000000003", "ENSG00000000005", "ENSG00000000419",
                            "ENSG00000002586"]
    assert expr.sort("patient_id")["patient_id"].to_list() == [A, B]
    assert _column(expr, "ENSG00000000003") == [1.0, 4.0]
    assert _column(expr, "ENSG00000000005") == [0.0, 8.0]
    assert _column(expr, "ENSG00000000419") == [2.0, 0.0]
    assert _column(expr, "ENSG00000002586") == [3.0, 2.0]
    assert dict(zip(labels["patient_id"], labels["label"], strict=True)) == {A: "Luminal", B: "Basal/Her2"}
    d = manifest["dropped"]
    assert d["gdc_files"] == {"summary_rows": 4, "sheet_rows_without_file": 1, "files_not_in_sheet": 1,
                              "files_with_several_samples": 0}
    assert d["sample_columns"]["not_primary"] == 1 and d["sample_columns"]["types"] == {"11": 1}
    assert d["gene_rows"]["zero_or_missing"] == 1  # the PAR_Y copy
    assert d["label_rows"]["blank"] == 1  # C's NA
    assert manifest["source"]["format"] == "gdc" and "GENCODE v36" in manifest["source"]["layout"]
    assert manifest["source"]["log_applied"] is True
    assert manifest["params"]["inputs"]["expression"]["files"] == 4
    warned = " ".join(result.warnings)
    assert "1 sample-sheet row(s) have no file" in warned
    assert "1 file(s) are not in the sample sheet" in warned
    assert "1 row(s) with no 'BRCA_Subtype_PAM50' value" in warned


def test_gdc_counts_and_gene_names(tmp_path, gdc):
    root, sheet, _ = gdc
    _, expr, _, m = _run(tmp_path, expression=root, sample_sheet=sheet, gdc_value="unstranded",
                         gene_names=True, max_zero_frac=0.5)
    # gene_name ids: CD99 twice (X and PAR_Y copies) -> the first row (X) kept and reported
    assert expr.columns == ["patient_id", "TSPAN6", "TNMD", "DPM1", "CD99"]
    assert _column(expr, "TSPAN6") == pytest.approx([math.log2(11), math.log2(151)])
    assert _column(expr, "CD99") == pytest.approx([math.log2(71), math.log2(31)])
    assert m["dropped"]["duplicate_genes"] == {"policy": "first", "genes": 1, "names": ["CD99"]}


def test_gdc_files_in_parallel_match_one_by_one(tmp_path, gdc):
    root, sheet, _ = gdc
    one, _ = read_source(root, "gdc", ReadOptions(sample_sheet=sheet, workers=1))
    many, _ = read_source(root, "gdc", ReadOptions(sample_sheet=sheet, workers=4))
    assert one.samples == many.samples == [f"{A}-01A", f"{A}-11A", f"{B}-01A"]
    np.testing.assert_array_equal(one.values, many.values)


def test_gdc_sample_with_two_files_keeps_one_deterministically(tmp_path, gdc):
    root, sheet, _ = gdc
    suffix = ".rna_seq.augmented_star_gene_counts.tsv"
    _star(root / "ffff" / f"ffff-uuid{suffix}", [63, 63, 63, 63, 0], [1, 1, 1, 1, 0])
    sheet.write_text(sheet.read_text() + _sheet_row("ffff", f"ffff-uuid{suffix}", f"{A}-01A") + "\n")
    table, _ = read_source(root, "gdc", ReadOptions(sample_sheet=sheet))
    assert f"{A}-01A 0a1b" in table.samples and f"{A}-01A ffff" in table.samples
    result, expr, _, _ = _run(tmp_path, expression=root, sample_sheet=sheet, max_zero_frac=0.5)
    assert _column(expr, "ENSG00000000003")[0] == 1.0  # file 0a1b sorts first
    assert result.counts["samples_dropped_duplicates"] == 1


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_text(p.read_text()[:-40]), "without a 'tpm_unstranded' value|gene ids differ"),
    (lambda p: p.write_text(p.read_text().replace("ENSG00000000419.13", "ENSG00000000999.1")),
     "gene ids differ"),
    (lambda p: p.write_text(p.read_text().replace("tpm_unstranded", "tpm")), "no column 'tpm_unstranded'"),
    (lambda p: p.write_text(p.read_text().replace("3.0000", "high")), "cannot be read as a STAR"),
])
def test_gdc_broken_file_is_one_line_naming_it(tmp_path, gdc, damage, match):
    root, sheet, _ = gdc
    target = next((root / "1c2d").glob("*.tsv"))
    damage(target)
    with pytest.raises(InputError, match=match) as info:
        _run(tmp_path, expression=root, sample_sheet=sheet)
    assert info.value.path == str(target)


def test_gdc_sheet_found_or_asked_for(tmp_path, gdc):
    root, sheet, _ = gdc
    _write(tmp_path / "gdc_sample_sheet.2024-07-01.tsv", sheet.read_text())
    with pytest.raises(InputError, match="2 GDC sample sheet"):
        read_source(root, "auto")
    with pytest.raises(InputError, match="not a GDC sample sheet"):
        read_source(root, "gdc", ReadOptions(sample_sheet=_write(tmp_path / "x.tsv", "a\tb\n1\t2\n")))
    with pytest.raises(InputError, match="one GDC STAR-count file"):
        detect_source(next((root / "0a1b").glob("*.tsv")))


# --------------------------------------------------------------------------- cBioPortal
RSEM = (f"Hugo_Symbol\tEntrez_Gene_Id\t{A}-01\t{B}-01\t{C}-01\n"
        "\t100130426\t0\t0\t0\n"
        "\t100133144\t16.3644\t9.2659\t3\n"
        "UBE2Q2P2\t100134869\t12.9316\t17.379\t9.2\n"
        "ESR1\t2099\t1\t3\t7\n"
        "ERBB2\t2064\t15\t0\t255\n"
        "SLC35E2\t728661\t1\t1\t1\n"
        "SLC35E2\t9906\t3\t7\t15\n")
CLINICAL_PATIENT = ("#Patient Identifier\tSubtype\tDiagnosis Age\n"
                    "#Identifier to uniquely specify a patient.\tSubtype\t"
                    "Age at which a condition or disease was first diagnosed.\n"
                    "#STRING\tSTRING\tNUMBER\n"
                    "#1\t1\t1\n"
                    "PATIENT_ID\tSUBTYPE\tAGE\n"
                    f"{A}\tBRCA_LumA\t70\n{B}\tBRCA_Basal\t36\n{C}\t\t34\n")


@pytest.fixture
def cbio(tmp_path):
    return (_write(tmp_path / "data_mrna_seq_v2_rsem.txt", RSEM),
            _write(tmp_path / "data_clinical_patient.txt", CLINICAL_PATIENT))


def test_cbioportal_rsem_and_clinical_exact(tmp_path, cbio):
    matrix, clinical = cbio
    assert detect_source(matrix) == "cbioportal"
    result, expr, labels, m = _run(tmp_path, expression=matrix, clinical=clinical, max_zero_frac=0.5)
    assert expr.columns == ["patient_id", "UBE2Q2P2", "ESR1", "ERBB2", "SLC35E2"]
    assert _column(expr, "ESR1") == [1.0, 2.0, 3.0]
    assert _column(expr, "ERBB2") == [4.0, 0.0, 8.0]
    assert _column(expr, "SLC35E2") == [1.0, 1.0, 1.0]  # the first of the two rows
    assert _column(expr, "UBE2Q2P2") == pytest.approx(np.log2(np.array([12.9316, 17.379, 9.2]) + 1).tolist())
    assert dict(zip(labels["patient_id"], labels["label"], strict=True)) == {A: "Luminal", B: "Basal/Her2"}
    assert m["dropped"]["gene_rows"]["empty_gene_ids"] == 2
    assert m["dropped"]["duplicate_genes"] == {"policy": "first", "genes": 1, "names": ["SLC35E2"]}
    assert m["dropped"]["label_rows"]["blank"] == 1
    warned = " ".join(result.warnings)
    assert "2 row(s) with an empty gene id" in warned
    assert "SLC35E2" in warned and "--duplicate-genes" in warned


@pytest.mark.parametrize("policy, expected", [
    ("first", [1.0, 1.0, 1.0]),
    ("max-variance", [2.0, 3.0, 4.0]),  # the (3, 7, 15) row
    ("mean", [math.log2(3), math.log2(5), math.log2(9)]),  # rows averaged on the input scale: 2, 4, 8
])
def test_duplicate_gene_policies(tmp_path, cbio, policy, expected):
    _, expr, _, _ = _run(tmp_path, expression=cbio[0], duplicate_genes=policy, max_zero_frac=0.5)
    assert _column(expr, "SLC35E2") == pytest.approx(expected)


def test_duplicate_genes_error_names_them(tmp_path, cbio):
    with pytest.raises(InputError, match=r"1 gene id\(s\) found in several rows, e.g. \['SLC35E2'\]") as info:
        _run(tmp_path, expression=cbio[0], duplicate_genes="error")
    assert "--duplicate-genes" in info.value.fix


def test_cbioportal_entrez_ids_keep_rows_without_symbol(tmp_path, cbio):
    _, expr, _, m = _run(tmp_path, expression=cbio[0], gene_id="entrez", max_zero_frac=0.5)
    assert expr.columns == ["patient_id", "100133144", "100134869", "2099", "2064", "728661", "9906"]
    assert _column(expr, "100133144") == pytest.approx(np.log2(np.array([16.3644, 9.2659, 3]) + 1).tolist())
    assert m["dropped"]["gene_rows"]["empty_gene_ids"] == 0 and m["dropped"]["duplicate_genes"]["genes"] == 0


def test_cbioportal_zscores_never_logged(tmp_path):
    z = _write(tmp_path / "data_mrna_seq_v2_rsem_zscores_ref_all_samples.txt",
               f"Hugo_Symbol\tEntrez_Gene_Id\t{A}-01\t{B}-01\t{C}-01\n"
               "ESR1\t2099\t-1.2\t0.3\t0.9\nERBB2\t2064\t1.5\t-0.5\tNA\nGATA3\t2625\t-0.1\t0.8\t-0.7\n")
    result, expr, _, m = _run(tmp_path, expression=z, max_zero_frac=0.5)
    assert result.counts["log_applied"] is False and "zscore" in result.counts["input_scale"]
    assert _column(expr, "ESR1") == pytest.approx([-1.2, 0.3, 0.9])
    assert _column(expr, "ERBB2") == pytest.approx([1.5, -0.5, 0.0])  # the NA cell: set to 0, counted
    assert m["dropped"]["missing_cells_set_to_0"] == {"cells": 1, "genes": 1}
    # the same values under another name (no hint): recognised as centred from the values
    plain = _write(tmp_path / "z.tsv", z.read_text())
    again, _, _, _ = _run(tmp_path, "w2", expression=plain, format="matrix", max_zero_frac=0.5)
    assert again.counts["log_applied"] is False and "centred" in again.counts["input_scale"]
    with pytest.raises(InputError, match="--log yes but 3 value"):
        _run(tmp_path, "w3", expression=z, log="yes")  # ERBB2 (1 of 3 missing) dropped: 3 negatives left


# --------------------------------------------------------------------------- UCSC Xena
def test_xena_hiseqv2_gzip_and_clinical_matrix(tmp_path):
    hiseq = _gz(tmp_path / "HiSeqV2.gz", f"sample\t{A}-01\t{B}-01\t{B}-11\n"
                                        "ESR1\t1.5\t2.25\t10.0\nERBB2\t12.0\t0.5\t3.0\n")
    # bcr_patient_barcode (patient level) is the id column found first; sampleID still gives each
    # row's sample type
    clinical = _write(tmp_path / "BRCA_clinicalMatrix",
                      "sampleID\tAJCC_Stage_nature2012\tPAM50Call_RNAseq\t_PATIENT\tbcr_patient_barcode\n"
                      f"{A}-01\tStage I\tLumA\t{A}\t{A}\n{B}-01\tStage IIA\tBasal\t{B}\t{B}\n"
                      f"{B}-11\t\tNormal\t{B}\t{B}\n")
    assert detect_source(hiseq) == "xena"
    result, expr, labels, m = _run(tmp_path, expression=hiseq, clinical=clinical, task="pam50")
    assert result.counts["log_applied"] is False and "log2(x+1)" in result.counts["input_scale"]
    assert _column(expr, "ESR1") == [1.5, 2.25] and _column(expr, "ERBB2") == [12.0, 0.5]
    # B's normal sample calls "Normal": its tumour row (Basal) wins instead of a conflict
    assert dict(zip(labels["patient_id"], labels["label"], strict=True)) == {A: "LumA", B: "Basal"}
    assert m["dropped"]["label_rows"]["non_primary_sample_rows"] == 1
    assert m["dropped"]["sample_columns"]["not_primary"] == 1


def test_xena_gdc_hub_star_tpm(tmp_path):
    path = _gz(tmp_path / "TCGA-BRCA.star_tpm.tsv.gz", f"Ensembl_ID\t{A}-01A\t{B}-01A\n"
                                                     "ENSG00000000003.15\t1.25\t2.5\nENSG00000000005.6\t0.5\t4.0\n")
    assert detect_source(path) == "xena"
    result, expr, _, m = _run(tmp_path, expression=path, max_zero_frac=0.5)
    assert expr.columns == ["patient_id", "ENSG00000000003", "ENSG00000000005"]
    assert _column(expr, "ENSG00000000003") == [1.25, 2.5]
    assert "GDC hub" in m["source"]["layout"] and "log2(tpm+1)" in m["source"]["layout"]
    with pytest.raises(InputError, match="Ensembl ids only"):
        _run(tmp_path, "w2", expression=path, gene_names=True)


# --------------------------------------------------------------------------- PAM50 tables
@pytest.mark.parametrize("text, name", [
    (f'"","patient","BRCA_Subtype_PAM50"\n"1","{A}","LumB"\n"2","{B}","Her2"\n"3","{C}",NA\n',
     "biolinks.csv"),
    (f"pan.samplesID\tcancer.type\tSubtype_mRNA\tSubtype_Selected\n{A}-01\tBRCA\tLumB\tBRCA.LumB\n"
     f"{B}-01\tBRCA\tHer2\tBRCA.Her2\n{C}-01\tBRCA\tNA\tNA\n", "pancan.tsv"),
])
def test_pam50_tables_without_label_column(tmp_path, cbio, text, name):
    clinical = _write(tmp_path / name, text)
    _, _, labels, m = _run(tmp_path, expression=cbio[0], clinical=clinical, max_zero_frac=0.5)
    assert dict(zip(labels["patient_id"], labels["label"], strict=True)) == {A: "Luminal", B: "Basal/Her2"}
    assert labels["task"].unique().to_list() == ["luminal-vs-basalher2"]
    assert m["dropped"]["label_rows"]["blank"] == 1


# --------------------------------------------------------------------------- registry, options, CLI
@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    from brcatool.synth import make_cohort
    from brcatool.synth.layouts import LAYOUTS, write_layout

    root = tmp_path_factory.mktemp("layouts")
    cohort = make_cohort(root / "cohort", patients=12, seed=5, genes=120, slide_size=(256, 256),
                         progress=False)
    files = {name: write_layout(cohort.expression, cohort.clinical, name, root / name) for name in LAYOUTS}
    return cohort, files


def test_every_registered_source_detects_and_reads_its_layout(layouts):
    cohort, files = layouts
    paths = {name: f.expression for name, f in files.items()} | {"matrix": cohort.expression}
    assert set(paths) == set(SOURCES)  # a new source must come with a synthetic layout
    for name, source in SOURCES.items():
        assert detect_source(paths[name]) == name, name
        opts = ReadOptions(**files[name].prep_options) if name in files else ReadOptions()
        table, fmt = read_source(paths[name], name, opts)
        assert fmt == name and table.layout.startswith(name) and source.description
        patients = {s[:12] for s in table.samples}
        assert set(cohort.expression_patients) <= patients, name
        assert table.values.shape == (len(table.samples), len(table.genes))


def test_same_patients_genes_and_labels_from_every_layout(tmp_path, layouts):
    cohort, files = layouts
    out = {}
    for name, f in files.items():
        result, expr, labels, m = _run(tmp_path, name, expression=f.expression, clinical=f.clinical,
                                       sample_sheet=f.sample_sheet, **f.prep_options)
        assert m["source"]["format"] == name
        out[name] = (sorted(expr["patient_id"].to_list()), expr.columns[1:],
                     labels.sort("patient_id").rows())
    # the same GDC download read from the folder above gdc_download_<ts>/ (as the cart's tar.gz
    # unpacks: DIR/gdc_download_<ts>/<uuid>/<file>), with GDCprepare's colData as the clinical table
    gdc = files["gdc"]
    _, expr, labels, m = _run(tmp_path, "gdc-up", expression=gdc.expression.parent, clinical=gdc.coldata,
                              sample_sheet=gdc.sample_sheet, **gdc.prep_options)
    coldata = (sorted(expr["patient_id"].to_list()), expr.columns[1:], labels.sort("patient_id").rows())
    assert m["dropped"]["gdc_files"]["files_with_several_samples"] == 0  # "X-01A, X-01A" is one sample
    tidy, expr, labels, _ = _run(tmp_path, "tidy", expression=cohort.expression, clinical=cohort.clinical)
    expected = (sorted(expr["patient_id"].to_list()), expr.columns[1:], labels.sort("patient_id").rows())
    assert expected[0] == cohort.expression_patients
    for name, got in out.items():
        assert got == expected, name
    # colData lists the downloaded samples only: the labels of the patients with expression
    assert coldata == (*expected[:2], [r for r in expected[2] if r[0] in expected[0]])
    assert len(coldata[2]) < len(expected[2])  # the cohort has labelled patients without expression


def test_gdc_download_is_found_three_levels_down_never_in_logs(tmp_path, layouts):
    from brcatool.expression.sources.gdc import count_files, find_sheet, sheet_samples

    gdc = layouts[1]["gdc"]
    sheet = gdc.sample_sheet.read_text()
    assert "logs" in {p.name for p in gdc.expression.glob("*/*")}  # the cart's logs/ folders
    doubled = [ln for ln in sheet.splitlines() if ", " in ln]
    assert len(doubled) == 1 and doubled[0].split("\t")[6].count(", ") == 1  # "X-01A, X-01A", as the GDC
    deep = count_files(gdc.expression.parent)
    assert deep == count_files(gdc.expression) and len(deep) == sheet.count("\n") - 1
    assert not any("logs" in p.parts for p in deep)
    assert sheet_samples("TCGA-AC-A2FB-01A, TCGA-AC-A2FB-01A") == ["TCGA-AC-A2FB-01A"]
    assert sheet_samples(" A ,B, A") == ["A", "B"] and sheet_samples("") == []
    inside = _write(tmp_path / "cart" / "gdc_sample_sheet.2024-05-01.tsv", sheet)
    _write(tmp_path / "gdc_sample_sheet.2024-04-01.tsv", sheet)  # another cart's sheet beside the folder
    assert find_sheet(tmp_path / "cart", None) == inside  # the folder's own sheet wins
    empty = tmp_path / "empty"
    (empty / "gdc_download_1" / "abc" / "logs").mkdir(parents=True)
    with pytest.raises(InputError) as info:
        read_source(empty, "gdc", ReadOptions(sample_sheet=gdc.sample_sheet))
    text = info.value.one_line()
    assert (f"looked for {empty}/*{'.rna_seq.augmented_star_gene_counts.tsv'}, {empty}/*/*" in text
            and f"{empty}/*/*/*.rna_seq" in text and "not in logs/" in text and "\n" not in text)


@pytest.mark.parametrize("kw, match", [
    ({"sample_sheet": Path("sheet.tsv")}, "--sample-sheet do"),
    ({"gene_names": True}, "--gene-names do"),
    ({"gdc_value": "unstranded"}, "--gdc-value do"),
])
def test_options_of_another_layout_are_refused(tmp_path, cbio, kw, match):
    with pytest.raises(InputError, match=match):
        _run(tmp_path, expression=cbio[0], **kw)


def test_forced_format_and_unknown_values(tmp_path, cbio):
    with pytest.raises(InputError, match="--format must be one of"):
        _run(tmp_path, expression=cbio[0], format="geo")
    with pytest.raises(InputError, match="--format gdc reads a download folder"):
        _run(tmp_path, expression=cbio[0], format="gdc")
    with pytest.raises(InputError, match="--gdc-value must be one of"):
        _run(tmp_path, expression=cbio[0], gdc_value="tpm")
    with pytest.raises(InputError, match="no 'Hugo_Symbol' column"):
        _run(tmp_path, expression=_write(tmp_path / "m.tsv", f"gene\t{A}-01\nESR1\t1\n"), format="cbioportal")


def test_cli_reads_a_gdc_folder(tmp_path, gdc):
    root, sheet, clinical = gdc
    res = CliRunner().invoke(app, ["prep-expr", "--expression", str(root), "--sample-sheet", str(sheet),
                                   "--clinical", str(clinical), "--gene-names", "--max-zero-frac", "0.5",
                                   "-w", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    assert "read: gdc: 3 STAR-count files" in res.output and "tpm_unstranded" in res.output
    res = CliRunner().invoke(app, ["prep-expr", "--expression", str(root), "--duplicate-genes", "nope",
                                   "-w", str(tmp_path / "w2")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert [ln for ln in res.output.splitlines() if ln.strip()][0].startswith("error")


def test_gdc_sheet_rows_of_other_files_or_several_samples(tmp_path, gdc):
    root, sheet, _ = gdc
    suffix = ".rna_seq.augmented_star_gene_counts.tsv"
    _star(root / "5c5c" / f"5c5c-uuid{suffix}", [1, 1, 1, 1, 0], [1, 1, 1, 1, 0])
    sheet.write_text(sheet.read_text()
                     + _sheet_row("5c5c", f"5c5c-uuid{suffix}", f"{C}-01A, {C}-11A") + "\n"
                     + _sheet_row("6d6d", "TCGA-A1-A0SB-01Z-00-DX1.svs", f"{A}-01Z") + "\n")  # a slide row
    _star(root / "7e7e" / f"7e7e-uuid{suffix}", [2, 2, 2, 2, 0], [2, 2, 2, 2, 0])
    twice = _sheet_row("7e7e", f"7e7e-uuid{suffix}", f"{C}-01A, {C}-01A ")
    sheet.write_text(sheet.read_text() + twice + "\n")
    table, _ = read_source(root, "gdc", ReadOptions(sample_sheet=sheet))
    assert table.dropped["gdc_files_with_several_samples"] == 1  # two distinct ones; one sample twice is kept
    assert table.dropped["gdc_sheet_rows_without_file"] == 1  # only the STAR-count row 9f9f, not the slide
    assert f"{C}-01A" in table.samples and f"{C}-11A" not in table.samples  # from 7e7e, not 5c5c
    assert table.values[table.samples.index(f"{C}-01A")].tolist()[:2] == [2.0, 2.0]
    assert any("list several samples" in n for n in table.notes)
