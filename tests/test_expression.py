"""prep-expr: readers, barcodes, fixed transforms, the per-fold Recipe, the stage and its CLI.

Numeric tests use tiny matrices whose results are computed by hand in the test (as scanpy does).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool.artifacts import Workdir, read_json, read_parquet, write_parquet
from brcatool.cli.app import app
from brcatool.errors import ArtifactError, BrcaError, InputError
from brcatool.expression import (
    PAM50_GENES,
    PrepExprConfig,
    Recipe,
    clean_gene_id,
    load_panel,
    log_transform,
    looks_logged,
    panel_columns,
    parse_barcode,
    patient_of,
    read_expression,
    run_prep_expr,
    select_samples,
)

S1, S2, S3 = "TCGA-AA-0001-01A", "TCGA-AA-0002-01A", "TCGA-AA-0003-01A"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tsv(tmp_path: Path, rows: list[list], name: str = "expr.tsv", sep: str = "\t") -> Path:
    return _write(tmp_path / name, "\n".join(sep.join(map(str, r)) for r in rows) + "\n")


def _clinical(tmp_path: Path, pairs: dict[str, str]) -> Path:
    lines = ["patient_id\tPAM50", *(f"{p}\t{s}" for p, s in pairs.items())]
    return _write(tmp_path / "clinical.tsv", "\n".join(lines) + "\n")


def _run(tmp_path: Path, **kw) -> tuple:
    wd = tmp_path / "work"
    overwrite = kw.pop("_ow", False)
    result = run_prep_expr(wd, PrepExprConfig(**kw), progress=False, overwrite=overwrite)
    return result, Workdir(wd)


# --------------------------------------------------------------------------- ids
def test_gene_id_cleaning():
    assert clean_gene_id("ENSG00000141510.16") == "ENSG00000141510"
    assert clean_gene_id("ENSG00000002586.20_PAR_Y") == "ENSG00000002586_PAR_Y"
    assert clean_gene_id(" TP53|7157 ") == "TP53"
    assert clean_gene_id("?|100130426") == "?|100130426"
    assert clean_gene_id("ESR1") == "ESR1"


def test_barcodes():
    assert parse_barcode("TCGA-A1-A0SB-01A-11R-A144-07") == ("TCGA-A1-A0SB", "01", "A")
    assert parse_barcode("tcga.a1.a0sb.11b") == ("TCGA-A1-A0SB", "11", "B")
    assert parse_barcode("TCGA-A1-A0SB") == ("TCGA-A1-A0SB", None, "")
    assert parse_barcode("GSM1234") is None
    assert patient_of("TCGA.A1.A0SB.01") == "TCGA-A1-A0SB"
    assert patient_of(" GSM1234 ") == "GSM1234"


def test_select_samples_primary_and_duplicates():
    samples = ["TCGA-AA-0002-01B", "TCGA-AA-0001-11A", "TCGA-AA-0001-01A", "TCGA-AA-0002-01A",
               "TCGA-AA-0003-06A", "GSM9"]
    idx, patients, report = select_samples(samples)
    assert patients == ["GSM9", "TCGA-AA-0001", "TCGA-AA-0002"]
    assert [samples[i] for i in idx] == ["GSM9", "TCGA-AA-0001-01A", "TCGA-AA-0002-01A"]
    assert report["dropped_not_primary"] == 2 and report["dropped_types"] == {"06": 1, "11": 1}
    assert report["patients_with_duplicates"] == 1 and report["dropped_duplicates"] == 1
    # same choice whatever the column order
    idx2, patients2, _ = select_samples(samples[::-1])
    assert [samples[::-1][i] for i in idx2] == [samples[i] for i in idx]
    # keep-all: metastasis-only patient kept, primary still preferred
    idx3, patients3, report3 = select_samples(samples, keep_all=True)
    chosen = [samples[i] for i in idx3]
    assert "TCGA-AA-0003-06A" in chosen and "TCGA-AA-0001-01A" in chosen
    assert report3["dropped_not_primary"] == 0 and report3["dropped_duplicates"] == 2


# --------------------------------------------------------------------------- readers / orientation
def test_genes_by_samples_detected(tmp_path):
    path = _tsv(tmp_path, [["gene", S1, S2], ["ESR1", 1, 2], ["ERBB2", 3, 4], ["X.1", 5, 6]])
    t = read_expression(path)
    assert t.orientation == "genes x samples"
    assert t.samples == [S1, S2] and t.genes == ["ESR1", "ERBB2", "X.1"]
    np.testing.assert_array_equal(t.values, [[1, 3, 5], [2, 4, 6]])


def test_samples_by_genes_detected_csv_gzip(tmp_path):
    path = tmp_path / "expr.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(f"sample,ESR1,ERBB2\n{S1},1,2\n{S2},3,4\n{S3},5,6\n")
    t = read_expression(path)
    assert t.orientation == "samples x genes"
    assert t.samples == [S1, S2, S3] and t.genes == ["ESR1", "ERBB2"]
    np.testing.assert_array_equal(t.values, [[1, 2], [3, 4], [5, 6]])


def test_orientation_flag_and_ensembl_header(tmp_path):
    path = _tsv(tmp_path, [["id", "ENSG00000091831.2", "ENSG00000141736.14"], ["s1", 1, 2], ["s2", 3, 4]])
    assert read_expression(path).orientation == "samples x genes"  # Ensembl ids in the header
    forced = read_expression(path, samples_as_rows=False)
    assert forced.samples == ["ENSG00000091831.2", "ENSG00000141736.14"] and forced.genes == ["s1", "s2"]


def test_parquet_and_annotation_columns(tmp_path):
    path = tmp_path / "expr.parquet"
    pl.DataFrame({"Hugo_Symbol": ["ESR1", "PGR"], "Entrez_Gene_Id": [2099, 5241],
                  S1: [1, 2], S2: [3.5, 4.5]}).write_parquet(path)
    t = read_expression(path)
    assert t.samples == [S1, S2] and t.genes == ["ESR1", "PGR"]
    np.testing.assert_array_equal(t.values, [[1, 2], [3.5, 4.5]])


# --------------------------------------------------------------------------- fixed transforms
def test_log_exact_and_detection():
    X = np.array([[0.0, 1.0, 3.0], [7.0, 15.0, 255.0]])
    out, applied = log_transform(X, "yes")
    assert applied
    np.testing.assert_array_equal(out, [[0, 1, 2], [3, 4, 8]])
    assert looks_logged(np.array([[0.0, 12.5], [3.0, 50.0]]))
    assert not looks_logged(np.array([[0.0, 12.5], [3.0, 51.0]]))
    assert looks_logged(np.array([[-1.0, 4.0], [0.5, 9.0]]))  # log2(x + 0.001)-like: a few negatives
    assert looks_logged(np.array([[-1.0, 1.0], [-2.0, 2.0]]))  # z-scores: centred
    assert not looks_logged(np.array([[-1.0, 400.0]]))  # raw counts with a stray negative: not logged...
    with pytest.raises(InputError, match="--log auto: 1 negative value"):
        log_transform(np.array([[-1.0, 400.0], [3.0, 7.0]]), "auto")  # ... and not silently kept raw
    assert log_transform(X, "auto")[1] and not log_transform(X, "no")[1]
    with pytest.raises(InputError, match="negative"):
        log_transform(np.array([[-1.0, 100.0]]), "yes")


def test_stage_fixed_transforms_exact(tmp_path):
    # g_zero is zero in 2 of 4 samples (> 0.25): dropped; g_one in 1 of 4 (= 0.25): kept
    rows = [["gene", S1, S2, S3, "TCGA-AA-0004-01A"],
            ["ENSG00000000001.5", 0, 1, 3, 7], ["g_zero", 0, 0, 5, 5], ["g_one", 0, 15, 255, 63]]
    expr = _tsv(tmp_path, rows)
    result, wd = _run(tmp_path, expression=expr, log="yes", max_zero_frac=0.25)
    df = read_parquet(wd.expression_table, schema="expression")
    assert df.columns == ["patient_id", "ENSG00000000001", "g_one"]
    assert df.schema["g_one"] == pl.Float32
    assert df["patient_id"].to_list() == ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003", "TCGA-AA-0004"]
    np.testing.assert_array_equal(df["ENSG00000000001"].to_numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(df["g_one"].to_numpy(), [0, 4, 8, 6])
    assert result.counts["genes_dropped_zero"] == 1 and result.counts["log_applied"] is True


def test_gene_panel(tmp_path):
    assert len(PAM50_GENES) == 50 and len(set(PAM50_GENES)) == 50
    assert load_panel("PAM50") == list(PAM50_GENES)
    panel = _write(tmp_path / "panel.txt", "# my genes\nESR1\nENSG00000141736.3,extra\n\nNOPE\n")
    assert load_panel(str(panel)) == ["ESR1", "ENSG00000141736", "NOPE"]
    idx, missing = panel_columns(["esr1", "ORC6L", "TP53"], ["ESR1", "ORC6", "MKI67"])
    assert idx == [0, 1] and missing == ["MKI67"]
    binary = tmp_path / "panel.bin"
    binary.write_bytes(b"\xff\xfe\x00GENE")
    with pytest.raises(InputError, match="not text"):
        load_panel(str(binary))


# --------------------------------------------------------------------------- recipe
X5 = np.array([[0, 2, 1], [1, 2, 2], [2, 2, 3], [3, 2, 4], [100, 2, 5]], dtype=np.float32)
G3 = ["a", "b", "c"]


def test_recipe_iqr_clip_and_zscore_exact():
    r = Recipe(iqr_k=1.5, iqr_mode="clip").fit(X5, G3)
    # a: Q1=1, Q3=3 -> fences [-2, 6]; 100 clipped to 6; mean 2.4, var 21.2/5
    np.testing.assert_allclose(r.lo, [-2, 2, -1])
    np.testing.assert_allclose(r.hi, [6, 2, 7])
    out = r.transform(X5)
    assert out.dtype == np.float32 and out.shape == (5, 3)
    np.testing.assert_allclose(out[:, 0], (np.array([0, 1, 2, 3, 6]) - 2.4) / math.sqrt(4.24), rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], 0)  # constant gene: std 0 treated as 1
    np.testing.assert_allclose(out[:, 2], (np.arange(1, 6) - 3) / math.sqrt(2), rtol=1e-6)
    assert r.keep_rows(X5).all()


def test_recipe_none_mode_plain_zscore():
    out = Recipe(iqr_mode="none").fit(X5, G3).transform(X5)
    a = X5[:, 0].astype(float)
    np.testing.assert_allclose(out[:, 0], (a - a.mean()) / a.std(), rtol=1e-5)


def test_recipe_top_genes_by_variance_keeps_input_order():
    r = Recipe(top_genes=2, iqr_mode="none").fit(X5, G3)
    assert r.genes_out == ["a", "c"] and r.transform(X5).shape == (5, 2)
    assert Recipe(top_genes=1).fit(X5, G3).genes_out == ["a"]
    assert Recipe(top_genes=10).fit(X5, G3).genes_out == G3


def test_recipe_statistics_come_from_fit_rows_only():
    train, held_out = X5[:4], X5[4:]
    r = Recipe(iqr_k=1.5, iqr_mode="clip").fit(train, G3)
    # a on [0,1,2,3]: Q1=0.75, Q3=2.25 -> fences [-1.5, 4.5]; mean 1.5, var 1.25
    np.testing.assert_allclose([r.lo[0], r.hi[0], r.mean[0]], [-1.5, 4.5, 1.5])
    expected = (4.5 - 1.5) / math.sqrt(1.25)
    assert r.transform(held_out)[0, 0] == pytest.approx(expected, rel=1e-6)
    leaky = Recipe(iqr_k=1.5, iqr_mode="clip").fit(X5, G3).transform(held_out)[0, 0]
    assert abs(leaky - expected) > 0.5  # statistics from all rows would give another value
    assert r.n_fit == 4


def test_recipe_drop_mode():
    X = np.array([[v] * 4 for v in (1, 2, 3, 4, 5)] + [[100, 100, 100, 3]], dtype=np.float32)
    r = Recipe(iqr_mode="drop", drop_frac=0.5).fit(X, list("wxyz"))
    keep = r.keep_rows(X)
    assert keep.tolist() == [True] * 5 + [False]  # 3 of 4 genes outside the fences
    assert r.n_kept == 5
    np.testing.assert_allclose(r.mean, 3.0)  # statistics of the kept rows
    np.testing.assert_allclose(r.std, math.sqrt(2))
    assert r.transform(X)[5, 0] == pytest.approx(97 / math.sqrt(2), rel=1e-6)  # not clipped
    with pytest.raises(BrcaError, match="raise --drop-frac"):
        # 3 rows, fences at the quartiles: only the middle row is inside
        Recipe(iqr_mode="drop", drop_frac=0.0, iqr_k=0.0).fit(np.arange(9.0).reshape(3, 3), G3)


def test_recipe_matches_numpy_reference_on_random_data():
    rng = np.random.default_rng(0)
    X = rng.lognormal(0, 1, (37, 60)).astype(np.float32)
    genes = [f"g{i}" for i in range(60)]
    r = Recipe(top_genes=20, iqr_k=1.0).fit(X, genes)
    top = np.sort(np.argsort(-X.astype(np.float64).var(axis=0), kind="stable")[:20])
    assert r.index.tolist() == top.tolist()
    q1, q3 = np.percentile(X[:, top].astype(np.float64), [25, 75], axis=0)
    np.testing.assert_allclose(r.lo, q1 - (q3 - q1), rtol=1e-6)
    np.testing.assert_allclose(r.hi, q3 + (q3 - q1), rtol=1e-6)
    clipped = np.clip(X[:, top].astype(np.float64), r.lo, r.hi)
    np.testing.assert_allclose(r.transform(X), (clipped - clipped.mean(0)) / clipped.std(0), atol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 37])
def test_quantiles_match_numpy(n):
    from brcatool.expression.recipe import _quantiles

    rng = np.random.default_rng(n)
    T = rng.integers(0, 4, (6, n)).astype(np.float32)  # many ties
    expected = np.percentile(T.astype(np.float64), [10, 25, 50, 75, 100], axis=1)
    got = _quantiles(T.copy(), (0.1, 0.25, 0.5, 0.75, 1.0))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_recipe_json_round_trip_and_name_alignment():
    r = Recipe(top_genes=2).fit(X5, G3)
    d = json.loads(json.dumps(r.to_dict()))
    r2 = Recipe.from_dict(d)
    np.testing.assert_array_equal(r2.transform(X5), r.transform(X5))
    assert r2.genes_out == r.genes_out
    shuffled = X5[:, [2, 0, 1]]
    np.testing.assert_array_equal(r2.transform(shuffled, genes=["c", "a", "b"]), r.transform(X5))
    with pytest.raises(InputError, match="missing from the table"):
        r2.transform(X5[:, :2], genes=["a", "b"])
    with pytest.raises(InputError, match="fitted on 3 genes"):
        r2.transform(X5[:, :2])


def test_recipe_settings_validation():
    assert Recipe.from_settings({"top_genes": None, "iqr_k": 1.5, "iqr_mode": "clip", "drop_frac": 0.1,
                                 "zscore": True}).settings()["iqr_mode"] == "clip"
    for bad in ({"iqr_mode": "winsor"}, {"top_genes": 0}, {"drop_frac": 2}, {"iqr_k": -1}, {"nope": 1}):
        with pytest.raises(InputError):
            Recipe.from_settings(bad)
    with pytest.raises(BrcaError, match="not fitted"):
        Recipe().transform(X5)
    with pytest.raises(InputError, match="NaN"):
        Recipe().fit(np.array([[1, np.nan], [2, 3]]), ["a", "b"])


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("rows, match", [
    ([["gene", S1, S2], ["ESR1", 1, "high"]], "1 non-numeric cell.*'high' in column 'TCGA-AA-0002-01A'"),
    ([["gene", S1, S2], ["ESR1", 1, "inf"]], "1 infinite value"),
    ([["gene", S1, S1], ["ESR1", 1, 2]], "duplicate column name"),
    ([["gene", S1, S2]], "no data rows"),
    ([["gene"], ["ESR1"]], "empty or has 1 column"),
])
def test_bad_expression_tables(tmp_path, rows, match):
    path = _tsv(tmp_path, rows)
    with pytest.raises(InputError, match=match) as info:
        _run(tmp_path, expression=path)
    assert info.value.path == str(path) and info.value.fix
    assert not (tmp_path / "work").exists()  # nothing written


def test_missing_values_counted_and_reported(tmp_path):
    rows = [["gene", S1, S2, S3], ["A", 0, "NA", 3], ["B", "", "NaN", 1], ["C", 1, 1, ""]]
    result, wd = _run(tmp_path, expression=_tsv(tmp_path, rows), log="yes", max_zero_frac=0.4)
    df = read_parquet(wd.expression_table, schema="expression")
    assert df.columns == ["patient_id", "C"]  # A: 2/3 zero or missing, B: 2/3 missing
    np.testing.assert_array_equal(df["C"].to_numpy(), [1, 1, 0])
    assert any("1 missing value" in w for w in result.warnings)


def test_negative_values_with_log_yes(tmp_path):
    path = _tsv(tmp_path, [["gene", S1, S2], ["A", -1.5, 2], ["B", 1, 2]])
    with pytest.raises(InputError, match="--log yes but 1 value"):
        _run(tmp_path, expression=path, log="yes")
    result, _ = _run(tmp_path, expression=path)  # auto: looks logged, kept as is
    assert result.counts["log_applied"] is False


def test_bad_clinical_and_nothing_half_written(tmp_path):
    expr = _tsv(tmp_path, [["gene", S1, S2], ["A", 10, 200], ["B", 1, 2]])
    good = _clinical(tmp_path, {"TCGA-AA-0001": "BRCA.LumA", "TCGA-AA-0002": "BRCA.Basal"})
    _, wd = _run(tmp_path, expression=expr, clinical=good)
    outputs = (wd.expression_table, wd.labels_table, wd.stage_manifest("prep-expr"))
    before = {p: p.read_bytes() for p in outputs}
    wrong = _write(tmp_path / "other.tsv", "patient_id\tPAM50\nTCGA-ZZ-0001\tLumA\n")
    with pytest.raises(InputError, match="no patient id .* matches the expression table"):
        _run(tmp_path, expression=expr, clinical=wrong, _ow=True)
    with pytest.raises(InputError, match="label column 'grade' not found"):
        _run(tmp_path, expression=expr, clinical=good, label_column="grade", _ow=True)
    assert {p: p.read_bytes() for p in before} == before  # old outputs untouched


def test_unknown_subtypes_warn_or_error(tmp_path):
    expr = _tsv(tmp_path, [["gene", S1, S2, S3], ["A", 10, 200, 3], ["B", 1, 2, 3]])
    clin = _clinical(tmp_path, {"TCGA-AA-0001": "LumA", "TCGA-AA-0002": "Basal", "TCGA-AA-0003": "Claudin"})
    result, wd = _run(tmp_path, expression=expr, clinical=clin)
    assert any("1 unknown 'PAM50' value" in w and "'Claudin' x1" in w for w in result.warnings)
    assert read_parquet(wd.labels_table, schema="labels").height == 2
    with pytest.raises(InputError, match="unknown 'PAM50'"):
        _run(tmp_path, expression=expr, clinical=clin, unknown_labels="error", _ow=True)


# --------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from brcatool.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), patients=12, seed=3, genes=200,
                       slide_size=(256, 256), progress=False)


def test_stage_on_synthetic_cohort(tmp_path, cohort):
    cfg = PrepExprConfig(expression=cohort.expression, clinical=cohort.clinical)
    result = run_prep_expr(tmp_path, cfg, progress=False)
    wd = Workdir(tmp_path)
    expr = read_parquet(wd.expression_table, schema="expression")
    labels = read_parquet(wd.labels_table, schema="labels")
    cohort_df = read_parquet(wd.cohort_table, schema="cohort")
    assert sorted(expr["patient_id"].to_list()) == cohort.expression_patients
    assert all(expr.schema[c] == pl.Float32 for c in expr.columns[1:])
    assert result.counts["log_applied"] and result.counts["genes_dropped_zero"] >= 1
    assert labels.columns == ["patient_id", "label", "target", "task"]
    assert set(labels["task"]) == {"luminal-vs-basalher2"}
    truth = {p: s for p, s in cohort.subtypes.items() if s != "Normal"}
    assert dict(zip(labels["patient_id"], labels["label"], strict=True)) == {
        p: ("Luminal" if s in ("LumA", "LumB") else "Basal/Her2") for p, s in truth.items()}
    assert (labels.sort("target")["target"].unique().to_list()) == [0, 1]
    inc = cohort_df.filter("included")["patient_id"].to_list()
    assert inc == sorted(set(truth) & set(cohort.expression_patients))
    assert result.alignment["included"] == len(inc)
    assert read_json(wd.recipe_settings) == {"top_genes": None, "iqr_k": 1.5, "iqr_mode": "clip",
                                            "drop_frac": 0.1, "zscore": True}
    manifest = read_json(wd.stage_manifest("prep-expr"))
    assert manifest["counts"]["included"] == len(inc) and manifest["task"] == "luminal-vs-basalher2"
    assert (tmp_path / "manifests" / "prep-expr.yaml").is_file()

    # a recipe from the artifacts runs end to end, as train will use it
    X = expr.drop("patient_id").to_numpy()
    r = Recipe.from_settings(read_json(wd.recipe_settings)).fit(X[:8], expr.columns[1:])
    assert np.isfinite(r.transform(X[8:])).all()

    # same parameters: skipped; other parameters: refused unless overwrite
    assert run_prep_expr(tmp_path, cfg, progress=False).skipped
    other = PrepExprConfig(expression=cohort.expression, clinical=cohort.clinical, task="pam50")
    with pytest.raises(ArtifactError, match="other parameters"):
        run_prep_expr(tmp_path, other, progress=False)
    again = run_prep_expr(tmp_path, other, progress=False, overwrite=True)
    assert again.classes == ["LumA", "LumB", "Her2", "Basal", "Normal"] and not again.skipped


def test_cohort_uses_slides_table(tmp_path):
    expr = _tsv(tmp_path, [["gene", S1, S2], ["A", 10, 200], ["B", 1, 2]])
    clin = _clinical(tmp_path, {"TCGA-AA-0001": "LumA", "TCGA-AA-0003": "Basal", "TCGA-AA-0004": "Her2"})
    cfg = PrepExprConfig(expression=expr, clinical=clin)
    wd = Workdir(tmp_path / "work")
    run_prep_expr(wd, cfg, progress=False)
    slides = pl.DataFrame({"slide_id": ["s1", "s3", "s4"],
                           "patient_id": ["TCGA-AA-0001", "TCGA-AA-0003", "TCGA-AA-0004"],
                           "status": ["ok", "ok", "no_tissue"]})
    write_parquet(slides, wd.slides_table, schema="slides")
    result = run_prep_expr(wd, cfg, progress=False)  # same params: only the cohort is refreshed
    assert result.skipped
    c = read_parquet(wd.cohort_table, schema="cohort").sort("patient_id")
    assert c["patient_id"].to_list() == ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003", "TCGA-AA-0004"]
    assert c["has_expression"].to_list() == [True, True, False, False]
    assert c["has_slides"].to_list() == [True, False, True, False]
    assert c["has_label"].to_list() == [True, False, True, True]
    assert c["included"].to_list() == [True, False, True, False]
    assert result.alignment["slides + label"] == 2 and result.alignment["included"] == 2


# --------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_prints_alignment_table(tmp_path, cohort):
    res = runner.invoke(app, ["prep-expr", "--expression", str(cohort.expression), "--clinical",
                              str(cohort.clinical), "-w", str(tmp_path / "w"), "--top-genes", "50",
                              "--task", "generic", "--positive", "Basal,Her2"])
    assert res.exit_code == 0, res.output
    assert "Cohort alignment" in res.output and "included" in res.output
    assert read_json(tmp_path / "w" / "recipe.json")["top_genes"] == 50
    labels = read_parquet(tmp_path / "w" / "labels.parquet", schema="labels")
    assert set(labels["label"]) <= {"Basal/Her2", "LumA/LumB/Normal"}


def test_cli_resolved_config_reruns(tmp_path, cohort):
    first = tmp_path / "a"
    res = runner.invoke(app, ["prep-expr", "--expression", str(cohort.expression), "--clinical",
                              str(cohort.clinical), "-w", str(first), "--genes", "pam50", "-q"])
    assert res.exit_code == 0, res.output
    assert "Cohort alignment" not in res.output  # --quiet
    res = runner.invoke(app, ["prep-expr", "--config", str(first / "manifests" / "prep-expr.yaml"),
                              "-w", str(tmp_path / "b"), "-q"])
    assert res.exit_code == 0, res.output
    a = (first / "expression.parquet").read_bytes()
    assert a == (tmp_path / "b" / "expression.parquet").read_bytes()
    assert read_parquet(first / "expression.parquet", schema="expression").width == 51


def test_cli_bad_input_one_line(tmp_path):
    path = _tsv(tmp_path, [["gene", S1, S2], ["ESR1", 1, "high"]])
    res = runner.invoke(app, ["prep-expr", "--expression", str(path), "-w", str(tmp_path / "w")])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "non-numeric" in lines[0] and str(path.name) in lines[0]
    assert not (tmp_path / "w").exists()
