"""Input semantics of prep-expr (issue 18, class 6): each rule tried over many inputs of its class.

Rules (README "Input rules"): raw-looking values with negatives are an error under --log auto (never a
silent switch-off of the log); missing cells are set to 0 on the output scale and counted, genes
missing in more than --max-zero-frac of samples dropped and counted; blank labels are counted and
said; a row cut short is an error naming the row; a corrupt .gz is one line naming the file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from brcatool.artifacts import Workdir, read_json, read_parquet
from brcatool.cli.app import app
from brcatool.errors import InputError
from brcatool.expression import PrepExprConfig, run_prep_expr

S = [f"TCGA-AA-{i:04d}-01A" for i in range(1, 7)]


def _table(tmp_path: Path, rows: list[list], name: str = "expr.tsv") -> Path:
    path = tmp_path / name
    header = ["gene", *S[:len(rows[0]) - 1]]
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


def _run(tmp_path: Path, **kw):
    wd = tmp_path / "work"
    result = run_prep_expr(wd, PrepExprConfig(**kw), progress=False, overwrite=True)
    return result, read_parquet(Workdir(wd).expression_table, schema="expression"), \
        read_json(Workdir(wd).stage_manifest("prep-expr"))


# --------------------------------------------------------------------------- negative values
RAW = [[120, 300, 0, 55, 999, 18], [3, 0, 7, 1, 2, 4], [800, 650, 720, 900, 1000, 555]]


@pytest.mark.parametrize("cells", [[(0, 0)], [(1, 3)], [(0, 0), (2, 5)], [(0, 1), (1, 1), (2, 1)]])
def test_raw_counts_with_negatives_are_refused_under_auto(tmp_path, cells):
    rows = [list(r) for r in RAW]
    for r, c in cells:
        rows[r][c] = -abs(rows[r][c]) - 1
    path = _table(tmp_path, [[f"G{i}", *r] for i, r in enumerate(rows)])
    with pytest.raises(InputError, match=f"--log auto: {len(cells)} negative value") as info:
        _run(tmp_path, expression=path, max_zero_frac=0.5)
    assert info.value.path == str(path) and "--log no" in info.value.fix
    with pytest.raises(InputError, match="--log yes but"):
        _run(tmp_path, expression=path, log="yes", max_zero_frac=0.5)
    _, expr, _ = _run(tmp_path, expression=path, log="no", max_zero_frac=0.5)  # the user's explicit word
    assert expr["G0"].min() < 0 or expr["G1"].min() < 0 or expr["G2"].min() < 0


@pytest.mark.parametrize("values, scale", [
    (np.log2(np.array(RAW, dtype=float) + 0.001), "log scale"),  # log2(x + 0.001): zeros become -9.97
    (np.log2(np.array(RAW, dtype=float) + 1), "log scale"),
    ((lambda a: (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True))(np.array(RAW, dtype=float)),
     "centred"),
])
def test_transformed_inputs_are_recognised_and_kept(tmp_path, values, scale):
    path = _table(tmp_path, [[f"G{i}", *(f"{v:.6f}" for v in r)] for i, r in enumerate(values)])
    result, expr, m = _run(tmp_path, expression=path, max_zero_frac=1.0)
    assert result.counts["log_applied"] is False and scale in result.counts["input_scale"]
    np.testing.assert_allclose(expr.drop("patient_id").to_numpy().T, values, atol=1e-5)
    assert m["source"]["log_applied"] is False


# --------------------------------------------------------------------------- missing cells
@pytest.mark.parametrize("spelling", ["", "NA", "NaN", "nan", "null", "N/A"])
def test_missing_cells_set_to_zero_and_counted(tmp_path, spelling):
    rows = [["A", 1, spelling, 3, 7, 15, 0], ["B", spelling, spelling, spelling, 1, 1, 1],
            ["C", 3, 3, 3, 3, 3, 3]]
    result, expr, m = _run(tmp_path, expression=_table(tmp_path, rows), log="yes", max_zero_frac=0.34)
    # A: 1 missing + 1 zero of 6 (0.33) kept, its missing cell 0 after the log; B: 3 of 6 missing -> dropped
    assert expr.columns == ["patient_id", "A", "C"]
    assert expr.sort("patient_id")["A"].to_list() == [1.0, 0.0, 2.0, 3.0, 4.0, 0.0]
    assert m["dropped"]["missing_cells_set_to_0"] == {"cells": 1, "genes": 1}
    assert m["dropped"]["gene_rows"]["zero_or_missing"] == 1
    assert any("1 missing value(s) in 1 kept gene(s) set to 0 after the log" in w for w in result.warnings)


# --------------------------------------------------------------------------- blank labels
@pytest.mark.parametrize("blank", ["", "NA", "[Not Available]", "null", "--", "Unknown"])
def test_blank_labels_counted_and_said(tmp_path, blank):
    expr = _table(tmp_path, [["A", 10, 200, 3, 4], ["B", 1, 2, 3, 4]])
    clinical = tmp_path / "clinical.tsv"
    clinical.write_text("patient_id\tPAM50\n" + "\n".join(
        f"{s[:12]}\t{v}" for s, v in zip(S[:4], ["LumA", blank, "Basal", blank], strict=True)) + "\n")
    result, _, m = _run(tmp_path, expression=expr, clinical=clinical)
    assert m["dropped"]["label_rows"]["blank"] == 2 and m["dropped"]["label_rows"]["patients_labelled"] == 2
    assert any("2 row(s) with no 'PAM50' value (blank or NA)" in w for w in result.warnings)
    assert read_parquet(Workdir(tmp_path / "work").labels_table, schema="labels").height == 2


# --------------------------------------------------------------------------- truncated tables
def test_a_table_cut_anywhere_is_refused_or_said(tmp_path):
    full = _table(tmp_path, [[f"G{i}", *(v + i for v in (1, 22, 333, 4444))] for i in range(4)]).read_bytes()
    last_rows = full.rfind(b"\n", 0, full.rfind(b"\n", 0, len(full) - 1))
    for cut in range(last_rows + 1, len(full)):
        path = tmp_path / "cut.tsv"
        path.write_bytes(full[:cut])
        try:
            result, _, m = _run(tmp_path, expression=path, max_zero_frac=1.0)
        except InputError as exc:
            assert exc.path == str(path), cut
            assert "field(s) but the header has" in str(exc) and "truncated" in str(exc), (cut, str(exc))
            continue
        if full[cut - 1:cut] == b"\n":
            continue  # a whole file with fewer rows: nothing to tell
        assert any("does not end with a line end" in w for w in result.warnings), cut
        assert m["dropped"]["no_final_line_end"] is True


def test_a_short_row_in_the_middle_is_refused(tmp_path):
    path = tmp_path / "expr.tsv"
    path.write_text(f"gene\t{S[0]}\t{S[1]}\nA\t1\t2\nB\t3\nC\t5\t6\n")
    with pytest.raises(InputError, match=r"row 2 \('B'\) has 2 field\(s\) but the header has 3"):
        _run(tmp_path, expression=path)


# --------------------------------------------------------------------------- corrupt gzip
def test_corrupt_gzip_is_one_line_naming_the_file(tmp_path):
    text = "\n".join("\t".join(map(str, r)) for r in [["gene", *S[:3]], *[[f"G{i}", i, 2 * i, 3 * i]
                                                                         for i in range(200)]]) + "\n"
    good = gzip.compress(text.encode(), mtime=0)
    rng = np.random.default_rng(0)
    variants = [good[:n] for n in (5, 20, len(good) // 2, len(good) - 4)]
    for _ in range(12):
        bad = bytearray(good)
        for i in rng.integers(10, len(good) - 8, 3):
            bad[i] ^= 0xFF
        variants.append(bytes(bad))
    for k, data in enumerate(variants):
        path = tmp_path / f"expr{k}.tsv.gz"
        path.write_bytes(data)
        with pytest.raises(InputError) as info:
            _run(tmp_path, expression=path)
        assert info.value.path == str(path), k


def test_cli_error_paths_print_no_traceback(tmp_path):
    cases = {"negative.tsv": f"gene\t{S[0]}\t{S[1]}\nA\t-1\t900\nB\t3\t4\n",
             "short.tsv": f"gene\t{S[0]}\t{S[1]}\nA\t1\t2\nB\t3\n"}
    runner = CliRunner()
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        res = runner.invoke(app, ["prep-expr", "--expression", str(path), "-w", str(tmp_path / "w")])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1 and name in res.output
    gz = tmp_path / "bad.tsv.gz"
    gz.write_bytes(gzip.compress(cases["short.tsv"].encode())[:25])
    res = runner.invoke(app, ["prep-expr", "--expression", str(gz), "-w", str(tmp_path / "w")])
    assert res.exit_code == 1 and "corrupt or truncated gzip" in res.output and "Traceback" not in res.output


def test_excel_byte_order_mark_and_crlf_are_ignored(tmp_path):
    matrix = tmp_path / "data_mrna_seq_v2_rsem.txt"
    samples = "\t".join(s[:15] for s in S[:3]).encode()
    matrix.write_bytes(b"\xef\xbb\xbfHugo_Symbol\tEntrez_Gene_Id\t" + samples
                       + b"\r\nESR1\t2099\t1\t3\t7\r\nPGR\t5241\t15\t0\t255\r\n")
    clinical = tmp_path / "clinical.tsv"
    clinical.write_bytes(b"\xef\xbb\xbfpatient_id\tPAM50\r\n" + "".join(
        f"{s[:12]}\t{v}\r\n" for s, v in zip(S[:3], ["LumA", "Basal", "Her2"], strict=True)).encode())
    result, expr, m = _run(tmp_path, expression=matrix, clinical=clinical, max_zero_frac=0.5)
    assert m["source"]["format"] == "cbioportal"
    assert expr.sort("patient_id")["ESR1"].to_list() == [1.0, 2.0, 3.0]
    assert expr.sort("patient_id")["PGR"].to_list() == [4.0, 0.0, 8.0]
    assert result.class_counts == {"Luminal": 1, "Basal/Her2": 2}
