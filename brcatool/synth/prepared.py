"""A workdir as if tile, embed and prep-expr had run: the fast path for training tests and benchmarks.

Signal is planted with known strength: class-specific shifts on a quarter of the genes
(``gene_signal`` noise-sd per gene) and a class prototype added to half of each patient's patch
features (``image_signal`` x a vector of norm 3). Signal 0 makes labels independent of features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brcatool import artifacts, expression, stores, tiling
from brcatool.artifacts import Manifest, Workdir
from brcatool.errors import InputError
from brcatool.expression.recipe import Recipe
from brcatool.outputs import output_fingerprint
from brcatool.synth.counts import gene_names
from brcatool.synth.names import assign_subtypes, patient_barcodes, slide_name
from brcatool.tasks import SUBTYPES

BINARY = ("Luminal", "Basal/Her2")


@dataclass
class PreparedWorkdir:
    """What was written (ids in sorted order, as ``load_cohort`` sees them)."""

    workdir: Workdir
    patient_ids: list[str]
    classes: list[str]
    targets: dict[str, int]
    encoder: str
    genes: list[str]
    n_slides: int
    missing_expression: list[str]
    missing_slides: list[str]


def _labels(task: str, classes: Sequence[str] | None, n: int,
            rng: np.random.Generator) -> tuple[list[str], list[str], np.ndarray]:
    """(class names, per-patient label, per-patient target)."""
    if classes:
        names = list(classes)
        target = np.arange(n) % len(names)
        rng.shuffle(target)
        return names, [names[t] for t in target], target.astype(np.int64)
    subtypes = assign_subtypes(n, rng)
    if task == "pam50":
        names = list(SUBTYPES)
        target = np.array([names.index(s) for s in subtypes], dtype=np.int64)
        return names, subtypes, target
    if task == "luminal-vs-basalher2":
        target = np.array([0 if s in ("LumA", "LumB", "Normal") else 1 for s in subtypes], dtype=np.int64)
        return list(BINARY), [BINARY[t] for t in target], target
    raise InputError(f"unknown synthetic task {task!r}",
                     fix="use luminal-vs-basalher2 or pam50, or pass classes=[...]")


def make_prepared_workdir(
    workdir: str | Path | Workdir, *, patients: int = 60, patches: int = 8, dim: int = 32,
    genes: int = 40, views: int = 2, gene_signal: float = 1.0, image_signal: float = 1.0,
    task: str = "luminal-vs-basalher2", classes: Sequence[str] | None = None,
    missing_expression: int = 0, missing_slides: int = 0, slides_per_patient: int = 1,
    ragged: bool = False, seed: int = 0, encoder: str = "synthetic", signal_patches: int | None = None,
    weights: str = "synthetic-v1", recipe: dict | None = None, patient_ids: Sequence[str] | None = None,
) -> PreparedWorkdir:
    """Write features (store, index, manifest), expression, labels, recipe, cohort, slides, patches.

    ``ragged=True`` gives each slide between ``patches // 2`` and ``patches`` patches (exercises
    masks). ``missing_expression``/``missing_slides`` patients (disjoint) lack that modality.
    ``weights`` is the encoder-weights identity in the features manifest: cohorts made with
    other seeds but the same weights count as embedded by the same encoder.
    """
    import polars as pl
    import pyarrow as pa

    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    if patients < 2 or patches < 1 or dim < 1 or genes < 1 or views < 1:
        raise InputError("make_prepared_workdir needs patients >= 2 and positive sizes")
    if missing_expression + missing_slides >= patients:
        raise InputError("too many patients without a modality")
    rng = np.random.default_rng(seed)
    pids = sorted(patient_barcodes(patients, rng))
    if patient_ids is not None:  # e.g. hostile ids (brcatool.synth.hostile) for path-safety tests
        if len(set(patient_ids)) != patients:
            raise InputError("patient_ids must hold `patients` distinct ids")
        pids = sorted(str(p) for p in patient_ids)
    names, label, target = _labels(task, classes, patients, rng)
    C = len(names)
    order = rng.permutation(patients)
    no_expr = sorted(pids[i] for i in order[:missing_expression])
    no_slides = sorted(pids[i] for i in order[missing_expression:missing_expression + missing_slides])

    # expression: log2-like levels, class shifts on a quarter of the genes
    gnames = gene_names(genes) if genes >= 50 else [f"GENE{i:04d}" for i in range(1, genes + 1)]
    base = rng.uniform(3.0, 9.0, size=genes)
    informative = rng.choice(genes, size=max(2, genes // 4), replace=False)
    shift = np.zeros((C, genes))
    shift[:, informative] = rng.choice([-1.0, 1.0], size=(C, len(informative)))
    if C == 2:
        shift[0] = 0.0
    expr = base + rng.standard_normal((patients, genes)) + gene_signal * shift[target]
    expr = np.clip(expr, 0.0, None).astype(np.float32)
    no_expr_set = set(no_expr)
    keep = np.array([p not in no_expr_set for p in pids])
    expression.write_expression(wd.expression_table, [p for p in pids if p not in no_expr_set], gnames,
                                expr[keep].T)
    artifacts.write_parquet(pl.DataFrame({"patient_id": pids, "label": label, "target": target,
                                          "task": [task] * patients}), wd.labels_table, schema="labels")
    artifacts.write_json(wd.recipe_settings, Recipe.from_settings(recipe or {}).settings())

    # features: noise, plus the class prototype on half the patches; views = small perturbations
    protos = rng.standard_normal((C, dim))
    protos *= 3.0 / np.linalg.norm(protos, axis=1, keepdims=True)
    index_rows, slide_rows, patch_rows = [], [], []
    for i, pid in enumerate(pids):
        if pid in no_slides:
            continue
        for s in range(slides_per_patient):
            sid = slide_name(pid, s, rng)
            n = int(rng.integers(max(1, patches // 2), patches + 1)) if ragged else patches
            clean = rng.standard_normal((n, dim))
            signal_rows = rng.random(n) < 0.5
            if signal_patches is not None:  # the first k patches carry the signal (planted, known)
                signal_rows = np.arange(n) < signal_patches
            clean[signal_rows] += image_signal * protos[target[i]]
            feats = clean[None] + 0.1 * rng.standard_normal((views, n, dim))
            feats[0] = clean
            stores.write_features(wd, encoder, sid, feats.astype(np.float16))
            index_rows.append({"slide_id": sid, "patient_id": pid, "n_patches": n, "views": views,
                               "dim": dim})
            slide_rows.append({"slide_id": sid, "patient_id": pid, "path": f"slides/{sid}.tiff",
                               "status": "ok", "error": None, "width": 4096, "height": 4096,
                               "mpp": 0.5, "n_candidates": n, "n_patches": n, "seconds": 0.0})
            patch_rows += [{"slide_id": sid, "patient_id": pid, "patch_index": k, "x": (k % 16) * 256,
                            "y": (k // 16) * 256, "level": 0, "mpp": 0.5, "size": 224,
                            "tissue_fraction": 1.0} for k in range(n)]
    i64 = {"n_patches": pl.Int64, "views": pl.Int64, "dim": pl.Int64}
    artifacts.write_parquet(pl.DataFrame(index_rows, schema_overrides=i64), wd.features_index(encoder),
                            schema="features")
    embed_params = {"encoder": encoder, "weights": weights, "dim": dim, "views": views, "input_size": 224}
    Manifest("embed", embed_params).write(
        wd.features_dir(encoder) / "manifest.json", counts={"slides": len(index_rows)}, status="complete",
        fingerprint=output_fingerprint(embed_params, files=[wd.features_index(encoder)]))
    for rows, columns, path, schema in ((slide_rows, tiling.SLIDE_COLUMNS, wd.slides_table, "slides"),
                                        (patch_rows, tiling.PATCH_COLUMNS, wd.patches_table, "patches")):
        table = pa.Table.from_pylist(rows, schema=tiling.arrow_schema(columns))
        artifacts.write_parquet(table, path, schema=schema)
    # after slides.parquet: build_cohort reads it for has_slides
    cohort = expression.build_cohort(set(pids) - no_expr_set, set(pids), set(), wd)
    artifacts.write_parquet(cohort, wd.cohort_table, schema="cohort")
    # written last, as prep-expr does: train trusts expression/labels only once this exists
    Manifest("prep-expr", {"synthetic": True, "task": task, "seed": seed}).write(
        wd.stage_manifest("prep-expr"), counts={"patients": patients},
        fingerprint=output_fingerprint(files=[wd.expression_table, wd.labels_table, wd.recipe_settings]))
    return PreparedWorkdir(workdir=wd, patient_ids=pids, classes=names,
                           targets={p: int(t) for p, t in zip(pids, target, strict=True)},
                           encoder=encoder, genes=gnames, n_slides=len(index_rows),
                           missing_expression=no_expr, missing_slides=no_slides)


def add_feature_slide(pw: PreparedWorkdir, patient_id: str, slide_id: str, n_patches: int) -> None:
    """Give ``patient_id`` one more embedded slide (ones as features, ``n_patches`` rows), e.g. a
    frozen (TS) or normal-tissue (11A) slide to test which slides join a bag."""
    import polars as pl

    wd = pw.workdir
    index = artifacts.read_parquet(wd.features_index(pw.encoder), schema="features")
    views, _, dim = stores.read_features(wd, pw.encoder, index["slide_id"][0]).shape
    stores.write_features(wd, pw.encoder, slide_id, np.ones((views, n_patches, dim), dtype=np.float16))
    row = index.filter(pl.col("patient_id") == patient_id).head(1).with_columns(
        slide_id=pl.lit(slide_id), n_patches=pl.lit(n_patches, pl.Int64))
    artifacts.write_parquet(pl.concat([index, row]), wd.features_index(pw.encoder), schema="features")
