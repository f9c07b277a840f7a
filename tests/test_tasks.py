"""Label tasks: subtype spellings, each task's mapping, the default task and clinical tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from brcatool.errors import InputError
from brcatool.tasks import (
    SUBTYPES,
    TASKS,
    default_task_name,
    is_missing,
    normalise_subtype,
    prepare_labels,
    resolve_task,
)


@pytest.mark.parametrize("raw, canonical", [
    ("BRCA.LumA", "LumA"), ("LumA", "LumA"), ("Luminal A", "LumA"), ("luminal a", "LumA"),
    ("Luminal_B", "LumB"), ("BRCA_LumB", "LumB"), ("HER2-enriched", "Her2"), ("Her2", "Her2"),
    ("BRCA.Her2", "Her2"), ("Basal-like", "Basal"), ("basal", "Basal"), ("Normal-like", "Normal"),
    ("BRCA.Normal", "Normal"), (" PAM50: LumB ", "LumB"),
])
def test_subtype_spellings(raw, canonical):
    assert normalise_subtype(raw) == canonical


@pytest.mark.parametrize("raw", ["Claudin-low", "Luminal", "ER+", "LumC"])
def test_non_subtypes_are_not_guessed(raw):
    assert normalise_subtype(raw) is None


@pytest.mark.parametrize("raw", [None, float("nan"), "", "NA", "[Not Available]", " nan "])
def test_missing_values(raw):
    assert is_missing(raw) and normalise_subtype(raw) is None


def test_every_registered_task_resolves_and_unknown_names_are_refused():
    values = ["LumA", "Basal", "Her2", "LumB"]
    for name in TASKS:
        assert resolve_task(name, values).assign(values).n_labelled == len(values)
    with pytest.raises(InputError, match="unknown task 'pam5'") as info:
        resolve_task("pam5", values)
    assert all(name in info.value.one_line() for name in TASKS)


def test_luminal_vs_basalher2_mapping():
    task = resolve_task("luminal-vs-basalher2", [])
    values = ["BRCA.LumA", "LumB", "Basal-like", "HER2-enriched", "Normal", "NA", "Claudin-low"]
    a = task.assign(values)
    assert task.classes == ("Luminal", "Basal/Her2") and task.binary
    assert a.target.tolist() == [0, 0, 1, 1, -1, -1, -1]
    assert a.labels == ["Luminal", "Luminal", "Basal/Her2", "Basal/Her2", None, None, None]
    assert a.dropped == {"Normal": 1} and a.missing == 1 and a.unknown == {"Claudin-low": 1}
    assert a.n_labelled == 4


def test_pam50_mapping_fixed_order():
    task = resolve_task("pam50", [])
    assert task.classes == SUBTYPES == ("LumA", "LumB", "Her2", "Basal", "Normal")
    a = task.assign(["Normal", "Basal", "Her2", "LumB", "LumA", "luminal a"])
    assert a.target.tolist() == [4, 3, 2, 1, 0, 0]


def test_generic_multiclass_sorted_classes():
    values = ["Positive", "Negative", "Indeterminate", "Negative", None]
    task = resolve_task("generic", values, column="ER")
    assert task.name == "generic:ER"
    assert task.classes == ("Indeterminate", "Negative", "Positive")
    assert task.assign(values).target.tolist() == [2, 1, 0, 1, -1]


def test_generic_binary_positive():
    values = ["Positive", "Negative", "Indeterminate", "Negative"]
    task = resolve_task(None, values, column="ER", positive=["Positive"])
    assert task.classes == ("Indeterminate/Negative", "Positive")
    assert task.assign(values).target.tolist() == [1, 0, 0, 0]


def test_generic_on_subtypes_normalises_positive():
    values = ["BRCA.Basal", "BRCA.LumA", "BRCA.Her2"]
    task = resolve_task(None, values, column="PAM50", positive=["basal-like"])
    assert task.classes == ("Her2/LumA", "Basal")
    assert task.assign(values).target.tolist() == [1, 0, 0]


def test_default_task():
    assert default_task_name(["BRCA.LumA", "BRCA.Basal", "NA"]) == "luminal-vs-basalher2"
    assert default_task_name(["Positive", "Negative"]) == "generic"
    assert default_task_name(["BRCA.LumA"], positive=["LumA"]) == "generic"


@pytest.mark.parametrize("name, values, positive, match", [
    ("nope", ["a", "b"], (), "unknown task"),
    ("pam50", ["LumA"], ("LumA",), "--positive does not apply"),
    ("generic", ["a", "a"], (), "1 distinct"),
    ("generic", ["a", "b"], ("c",), "not found"),
    ("generic", [str(i) for i in range(60)], (), "too many"),
])
def test_task_errors(name, values, positive, match):
    with pytest.raises(InputError, match=match):
        resolve_task(name, values, positive=positive)


def _clinical(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clinical.tsv"
    path.write_text(text)
    return path


def test_prepare_labels_detects_columns_and_barcodes(tmp_path):
    path = _clinical(tmp_path, "bcr_patient_barcode\tage\tSubtype\n"
                     "TCGA-AA-0001-01A\t50\tBRCA.LumA\nTCGA-AA-0002\t60\tBasal\n"
                     "TCGA-AA-0003\t70\tNormal\nTCGA-AA-0004\t40\tweird\nTCGA-AA-0004\t40\tweird\n")
    warnings: list[str] = []
    labels, task, clinical = prepare_labels(path, ["TCGA-AA-0001", "TCGA-AA-0002"], warnings)
    assert task.name == "luminal-vs-basalher2"
    assert labels["patient_id"].to_list() == ["TCGA-AA-0001", "TCGA-AA-0002"]
    assert labels["label"].to_list() == ["Luminal", "Basal/Her2"]
    assert labels["target"].to_list() == [0, 1]
    assert clinical == ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003", "TCGA-AA-0004"]
    assert any("2 unknown" in w and "'weird' x2" in w for w in warnings)
    assert any("Normal" in w for w in warnings)


def test_prepare_labels_unknown_as_error(tmp_path):
    path = _clinical(tmp_path, "patient_id\tPAM50\nP1\tLumA\nP2\tweird\n")
    with pytest.raises(InputError, match="1 unknown 'PAM50' value"):
        prepare_labels(path, ["P1"], [], unknown="error")


def test_prepare_labels_conflicting_duplicates_left_unlabelled(tmp_path):
    path = _clinical(tmp_path, "patient_id\tPAM50\nP1\tLumA\nP1\tBasal\nP2\tLumB\nP2\tLumB\nP3\tHer2\n")
    warnings: list[str] = []
    labels, _, _ = prepare_labels(path, ["P1", "P2", "P3"], warnings)
    assert labels["patient_id"].to_list() == ["P2", "P3"]
    assert any("conflicting" in w for w in warnings)


@pytest.mark.parametrize("text, kwargs, match", [
    ("patient_id\tPAM50\nX1\tLumA\n", {}, "no patient id in column 'patient_id' matches"),
    ("who\tPAM50\nP1\tLumA\n", {}, "no patient id column found"),
    ("patient_id\tPAM50\nP1\tLumA\n", {"label_column": "grade"}, "label column 'grade' not found"),
    ("patient_id\tPAM50\nP1\tfoo\n", {}, "no usable labels"),
    ("patient_id\tPAM50\n", {}, "no rows"),
])
def test_prepare_labels_bad_input(tmp_path, text, kwargs, match):
    path = _clinical(tmp_path, text)
    with pytest.raises(InputError, match=match) as info:
        prepare_labels(path, ["P1"], [], task="pam50" if "foo" in text else None, **kwargs)
    assert info.value.path == str(path) and "\n" not in info.value.one_line()



def test_prepare_labels_reads_tcgabiolinks_coldata(tmp_path):
    """GDCprepare's colData (write.csv): barcode, patient, sample, ..., paper_BRCA_Subtype_PAM50; a normal
    sample's row carries its patient's subtype and is ignored beside the tumour's row."""
    from brcatool.synth.layouts import write_coldata

    path = write_coldata(tmp_path / "colData.csv", [
        ("TCGA-A1-A0SB-01A", "Primary Tumor", "LumA"), ("TCGA-A7-A0DB-01A", "Primary Tumor", "Basal"),
        ("TCGA-A7-A0DB-11A", "Solid Tissue Normal", "Basal"), ("TCGA-E2-A15K-01A", "Primary Tumor", None)])
    assert path.read_text().splitlines()[0].endswith('"definition","paper_BRCA_Subtype_PAM50"')
    report: dict = {}
    warnings: list[str] = []
    labels, task, clinical = prepare_labels(path, ["TCGA-A1-A0SB", "TCGA-A7-A0DB"], warnings, report=report)
    assert task.name == "luminal-vs-basalher2" and task.column == "paper_BRCA_Subtype_PAM50"
    assert labels.rows() == [("TCGA-A1-A0SB", "Luminal", 0, task.name),
                             ("TCGA-A7-A0DB", "Basal/Her2", 1, task.name)]
    assert clinical == ["TCGA-A1-A0SB", "TCGA-A7-A0DB", "TCGA-E2-A15K"]
    assert report["non_primary_sample_rows"] == 1 and report["blank"] == 1
