"""Expression: reading the matrices users download, fixed transforms, the per-fold recipe, the stage.

Modules (each imports its siblings directly, never this ``__init__``):
``genes`` (gene ids, PAM50, panels), ``readers`` (a matrix -> ExpressionTable), ``sources/`` (one
reader per download layout behind a registry: gdc, cbioportal, xena, matrix), ``transforms``
(label-free per-value transforms), ``recipe`` (the per-fold Recipe train fits), ``stage``
(prep-expr: config, run, outputs, cohort alignment). Public names are re-exported here.
"""

from brcatool.expression.genes import GENE_ALIASES, PAM50_GENES, clean_gene_id, load_panel, panel_columns
from brcatool.expression.readers import ExpressionTable, read_expression
from brcatool.expression.recipe import Recipe
from brcatool.expression.sources import SOURCES, ReadOptions, detect_source, read_source
from brcatool.expression.stage import (
    PrepExprConfig,
    PrepExprResult,
    alignment_counts,
    build_cohort,
    prepare_expression,
    run_prep_expr,
    write_expression,
)
from brcatool.expression.transforms import (
    DUPLICATE_POLICIES,
    LOGGED_MAX,
    clean_genes,
    decide_log,
    log_transform,
    looks_logged,
    select_samples,
    value_scale,
    zero_fraction,
)
from brcatool.ids import parse_barcode, patient_of
from brcatool.tables import NULL_VALUES, read_table

__all__ = [
    "DUPLICATE_POLICIES", "GENE_ALIASES", "LOGGED_MAX", "NULL_VALUES", "PAM50_GENES", "SOURCES",
    "ExpressionTable", "PrepExprConfig", "PrepExprResult", "ReadOptions", "Recipe", "alignment_counts",
    "build_cohort", "clean_gene_id", "clean_genes", "decide_log", "detect_source", "load_panel",
    "log_transform", "looks_logged", "panel_columns", "parse_barcode", "patient_of", "prepare_expression",
    "read_expression", "read_source", "read_table", "run_prep_expr", "select_samples", "value_scale",
    "write_expression", "zero_fraction",
]
