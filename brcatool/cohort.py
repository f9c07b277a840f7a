"""What `train` learns from: features, expression and labels joined by patient, and the CV split.

The split is made once over every labelled patient (stratified by label; one row per patient, so
a patient's slides never straddle folds), saved to ``splits.json`` and re-checked against the
cohort on every later use, so all runs and ablations share identical folds.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, outputs, stores
from brcatool.artifacts import Workdir
from brcatool.bags import RaggedBags, load_bags, slide_features
from brcatool.errors import ArtifactError, InputError
from brcatool.ids import parse_barcode, slide_type
from brcatool.splits import (  # noqa: F401 - the split lives in splits.py; importable from here too
    Splits,
    check_folds,
    check_splits,
    get_splits,
    load_splits,
    make_splits,
    save_splits,
)


@dataclass
class Cohort:
    """Patients in a fixed order (sorted ids) with everything a model needs, as arrays."""

    root: Path
    task: str
    classes: list[str]
    patient_ids: list[str]
    targets: np.ndarray  # (P,) int64
    genes: list[str]
    expression: np.ndarray  # (P, G) float32, zeros where has_expr is False
    has_expr: np.ndarray  # (P,) bool
    # (P, V, N, D) float16/32, or ragged bags of the same shape (big cohorts), or None (no images)
    features: np.ndarray | RaggedBags | None
    mask: np.ndarray  # (P, N) bool: valid patch positions
    has_img: np.ndarray  # (P,) bool
    slide_ids: list[str]  # slide names; patch_slide indexes into it
    patch_slide: np.ndarray  # (P, N) int32, -1 for padding
    patch_index: np.ndarray  # (P, N) int32, -1 for padding
    encoder: dict[str, Any] = field(default_factory=dict)  # encoder, weights, dim, views
    recipe_settings: dict[str, Any] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)  # slides not in any bag: reason -> count
    # sanity variants drawn once per repeat of a split (``for_repeat`` picks one; the arrays above
    # hold repeat 0's): (R, P) labels, and (R, P) bag order relative to this cohort's bags
    repeat_targets: np.ndarray | None = None
    repeat_bags: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.patient_ids)

    @property
    def feat_dim(self) -> int:
        return 0 if self.features is None else int(self.features.shape[-1])

    def available(self, *, gene: bool, image: bool) -> np.ndarray:
        """Patients having every modality in the request (the ``--missing drop`` rule)."""
        ok = np.ones(self.n, dtype=bool)
        if gene:
            ok &= self.has_expr
        if image:
            ok &= self.has_img
        return ok

    def hash(self) -> str:
        return cohort_hash(self.patient_ids, self.targets)

    def restrict(self, *, gene: bool, image: bool) -> Cohort:
        """This cohort as ``load_cohort(images=image, expression=gene)`` would have loaded it.

        Lets one cohort loaded with both modalities serve every fusion (ablate): a modality the
        model does not use is dropped, so eligibility (``--missing mask``) and sizes match.
        """
        out = self
        if not gene and (self.genes or self.has_expr.any()):
            out = dataclasses.replace(out, genes=[], expression=np.zeros((self.n, 0), dtype=np.float32),
                                      has_expr=np.zeros(self.n, dtype=bool), recipe_settings={})
        if not image and self.features is not None:
            out = dataclasses.replace(out, features=None)
        return out

    # ------------------------------------------------------------------ sanity-check variants
    def with_permuted_labels(self, seed: int, groups: np.ndarray | None = None,
                             among: np.ndarray | None = None) -> Cohort:
        """A copy with labels shuffled across patients (a chance-level control).

        ``groups`` (P, R), e.g. ``splits.fold.T``: one permutation per repeat r, within each of
        repeat r's validation folds, so every fold keeps its class counts (the split was stratified
        on the real labels; permuting across folds unbalances them and biases the null low);
        ``among`` (P,) bool: only these patients' labels move (the fusion's eligible ones).
        """
        rng = np.random.default_rng(seed)
        if groups is None:
            groups = np.zeros((self.n, 1), dtype=np.int64)
        groups = np.asarray(groups).reshape(self.n, -1)
        among = np.ones(self.n, dtype=bool) if among is None else np.asarray(among, dtype=bool)
        per = np.stack([self.targets[_within(groups[:, r], among, rng)] for r in range(groups.shape[1])])
        return dataclasses.replace(self, targets=per[0], repeat_targets=per if len(per) > 1 else None)

    def with_shuffled_images(self, seed: int, groups: np.ndarray | None = None) -> Cohort:
        """A copy whose image bags are shuffled among the patients that have images (what do the
        images add?), within each group, so bags never cross from training to validation and
        nobody gains or loses a modality. ``groups`` (P, R), e.g. ``splits.fold.T``: one shuffle
        per repeat r within repeat r's folds (``for_repeat(r)`` gives it)."""
        rng = np.random.default_rng(seed)
        if groups is None:
            groups = np.zeros((self.n, 1), dtype=np.int64)
        groups = np.asarray(groups).reshape(self.n, -1)
        perms = [_within(groups[:, r], self.has_img, rng) for r in range(groups.shape[1])]
        inv = np.argsort(perms[0])
        relative = np.stack([inv[q] for q in perms]) if len(perms) > 1 else None  # repeat 0: identity
        return dataclasses.replace(self._with_bags(perms[0]), repeat_bags=relative)

    def for_repeat(self, repeat: int) -> Cohort:
        """The cohort repeat ``repeat`` of a split trains and scores on (a per-repeat sanity variant),
        else this cohort."""
        if self.repeat_targets is None and self.repeat_bags is None:
            return self
        out = dataclasses.replace(self, repeat_targets=None, repeat_bags=None)
        if self.repeat_targets is not None:
            out = dataclasses.replace(out, targets=self.repeat_targets[repeat])
        return out if self.repeat_bags is None else out._with_bags(self.repeat_bags[repeat])

    def _with_bags(self, p: np.ndarray) -> Cohort:
        """Patient i gets the image bag of patient ``p[i]``."""
        return dataclasses.replace(
            self, features=None if self.features is None else self.features[p], mask=self.mask[p],
            patch_slide=self.patch_slide[p], patch_index=self.patch_index[p])


def _within(cells: np.ndarray, among: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of positions moving each position in ``among`` only to one of the same cell."""
    p = np.arange(len(cells))
    for c in np.unique(cells):
        members = np.flatnonzero((cells == c) & among)
        p[members] = members[rng.permutation(len(members))]
    return p


def cohort_hash(patient_ids: list[str], targets: np.ndarray) -> str:
    pairs = sorted(zip(patient_ids, (int(t) for t in targets), strict=True))
    return hashlib.sha256("\n".join(f"{p}\t{t}" for p, t in pairs).encode()).hexdigest()


# --------------------------------------------------------------------------- loading
def resolve_encoder(wd: Workdir, encoder: str | None, *, required: bool = True) -> str | None:
    """The encoder to use: the one named, or the only one present."""
    present = wd.available_encoders()
    if encoder:
        if encoder not in present:
            raise ArtifactError(
                f"no features for encoder {encoder!r}", path=wd.features_dir(encoder),
                fix=(f"use one of: {', '.join(present)}" if present
                     else f"run `brcatool embed -w {wd.root} --encoder {encoder}` first"))
        return encoder
    if not present:
        if not required:
            return None
        raise ArtifactError("no patch features in the workdir", path=wd.root / "features",
                            fix=f"run `brcatool embed -w {wd.root}` first")
    if len(present) > 1:
        raise InputError(f"several encoders have features: {', '.join(present)}",
                         fix="choose one with --encoder")
    return present[0]


def encoder_identity(wd: Workdir, encoder: str) -> dict[str, Any]:
    """Encoder name, weights identity, dim and views of a finished embed (refuses an unfinished one)."""
    from brcatool.embedding import feature_manifest

    path = wd.features_dir(encoder) / "manifest.json"
    params = feature_manifest(wd, encoder).get("params", {})
    outputs.check_fresh(wd, path, what=f"features of encoder {encoder!r}",
                        rerun=f"embed --encoder {encoder} --overwrite")
    missing = [k for k in ("encoder", "weights", "dim") if k not in params]
    if missing:
        raise ArtifactError(f"features manifest lacks {', '.join(missing)}", path=path,
                            fix=f"re-run `brcatool embed -w {wd.root} --encoder {encoder} --overwrite`")
    return {"encoder": str(params["encoder"]), "weights": str(params["weights"]),
            "dim": int(params["dim"]), "views": int(params.get("views", 1))}


RAGGED_BYTES = 2 << 30  # a dense feature array above this is held as ragged bags instead


def load_cohort(workdir: Path | Workdir, *, encoder: str | None = None, images: bool = True,
                expression: bool = True, dtype: Any = np.float16, progress: bool = False,
                slide_types: Sequence[str] | None = None, keep_all_samples: bool = False,
                ragged: bool | None = None) -> Cohort:
    """Join labels, expression and patch features by patient.

    ``images=False`` skips reading the feature store (gene-only models); the index still tells
    which patients have slides. Patients come from ``labels.parquet``. Slides named by TCGA
    barcodes join a patient's bag only when primary tumour (sample type 01; all sample types with
    ``keep_all_samples``) and of a slide type in ``slide_types`` (default DX, TS, BS); what was
    left out is counted in ``Cohort.left_out``. Other slide names always join.

    ``ragged`` holds the features as ``bags.RaggedBags`` (memory-mapped, never padded to the largest
    patient); ``None`` chooses it when the dense array would exceed ``RAGGED_BYTES``.
    """
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    if wd.labels_table.exists() and not wd.stage_manifest("prep-expr").exists():
        # prep-expr removes its manifest before rewriting its tables and writes it last
        raise ArtifactError("prep-expr did not finish: its tables may be half replaced",
                            path=wd.stage_manifest("prep-expr"),
                            fix=f"re-run `brcatool prep-expr -w {wd.root} ...` (with --overwrite)")
    labels = artifacts.read_parquet(wd.labels_table, schema="labels", made_by=f"prep-expr -w {wd.root}")
    labels = labels.sort("patient_id")
    if labels["patient_id"].n_unique() != labels.height:
        raise ArtifactError("has several rows for a patient", path=wd.labels_table,
                            fix="re-run `brcatool prep-expr --overwrite`")
    if labels.height == 0:
        raise ArtifactError("holds no labelled patients", path=wd.labels_table,
                            fix="check the clinical table and the --task given to prep-expr")
    tasks = labels["task"].unique().to_list()
    if len(tasks) != 1:
        raise ArtifactError(f"mixes tasks {tasks}", path=wd.labels_table, fix="re-run prep-expr")
    pids: list[str] = labels["patient_id"].cast(str).to_list()
    targets = labels["target"].to_numpy().astype(np.int64)
    classes = _class_names(labels, str(tasks[0]), wd.labels_table)
    if len(np.unique(targets)) < 2:
        raise ArtifactError(f"has only one class ({labels['label'][0]!r})", path=wd.labels_table,
                            fix="a classifier needs patients of at least two classes")
    pos = {p: i for i, p in enumerate(pids)}
    P = len(pids)

    genes: list[str] = []
    expr = np.zeros((P, 0), dtype=np.float32)
    has_expr = np.zeros(P, dtype=bool)
    recipe_settings: dict[str, Any] = {}
    if expression:
        table = artifacts.read_parquet(wd.expression_table, schema="expression",
                                       made_by=f"prep-expr -w {wd.root}")
        genes = [c for c in table.columns if c != "patient_id"]
        rows = [pos.get(str(p), -1) for p in table["patient_id"].to_list()]
        sel = np.array([r >= 0 for r in rows], dtype=bool)
        idx = np.array([r for r in rows if r >= 0], dtype=np.int64)
        expr = np.zeros((P, len(genes)), dtype=np.float32)
        if idx.size:
            expr[idx] = table.select(genes).to_numpy().astype(np.float32)[sel]
        has_expr[idx] = True
        bad = ~np.isfinite(expr[has_expr]).all(axis=1)
        if bad.any():
            raise ArtifactError(f"{int(bad.sum())} patients have NaN/inf expression values",
                                path=wd.expression_table, fix="re-run prep-expr")
        recipe_settings = artifacts.read_json(wd.require(wd.recipe_settings, made_by="prep-expr"))

    enc_name = resolve_encoder(wd, encoder, required=images)
    identity: dict[str, Any] = {}
    slide_ids: list[str] = []
    per_patient: dict[int, list[tuple[int, int]]] = {}  # patient -> [(slide k, n)]
    left_out: dict[str, int] = {}
    if enc_name is not None:
        identity = encoder_identity(wd, enc_name)
        index = artifacts.read_parquet(wd.features_index(enc_name), schema="features",
                                       made_by=f"embed -w {wd.root}").sort("slide_id")
        dims = set(index["dim"].to_list())
        if dims and dims != {identity["dim"]}:
            raise ArtifactError(f"feature dims {sorted(dims)} differ from the manifest's {identity['dim']}",
                                path=wd.features_index(enc_name),
                                fix="features of several encoders are mixed: re-run embed with --overwrite")
        views = min(index["views"].to_list()) if index.height else 1
        identity["views"] = int(views)
        for sid, pid, n in index.select("slide_id", "patient_id", "n_patches").iter_rows():
            why = slide_left_out(str(sid), slide_types, keep_all_samples) if n and str(pid) in pos else None
            if why:
                left_out[why] = left_out.get(why, 0) + 1
                continue
            if n and str(pid) in pos:
                per_patient.setdefault(pos[str(pid)], []).append((len(slide_ids), int(n)))
                slide_ids.append(str(sid))
    n_max = max((sum(n for _, n in v) for v in per_patient.values()), default=1)
    has_img = np.zeros(P, dtype=bool)
    mask = np.zeros((P, n_max), dtype=bool)
    patch_slide = np.full((P, n_max), -1, dtype=np.int32)
    patch_index = np.full((P, n_max), -1, dtype=np.int32)
    for p, items in per_patient.items():
        at = 0
        for k, n in items:
            patch_slide[p, at:at + n] = k
            patch_index[p, at:at + n] = np.arange(n)
            at += n
        mask[p, :at] = True
        has_img[p] = True

    features = None
    if images and enc_name is not None:
        dense_bytes = P * identity["views"] * n_max * identity["dim"] * np.dtype(dtype).itemsize
        if ragged or (ragged is None and dense_bytes > RAGGED_BYTES):
            features = load_bags(wd, enc_name, per_patient, slide_ids, identity, P, progress=progress)
        else:
            features = _read_features(wd, enc_name, per_patient, slide_ids, identity, n_max, P, dtype,
                                      progress)
    return Cohort(root=wd.root, task=str(tasks[0]), classes=classes, patient_ids=pids,
                  targets=targets, genes=genes, expression=expr, has_expr=has_expr,
                  features=features, mask=mask, has_img=has_img, slide_ids=slide_ids,
                  patch_slide=patch_slide, patch_index=patch_index, encoder=identity,
                  recipe_settings=recipe_settings, left_out=left_out)


SAMPLE_TYPES = {"01": "primary tumour", "02": "recurrent tumour", "06": "metastasis",
                "11": "solid tissue normal"}


def slide_left_out(slide_id: str, slide_types: Sequence[str] | None = None,
                   keep_all_samples: bool = False) -> str | None:
    """Why a TCGA slide stays out of its patient's bag (``"sample type 11 (solid tissue normal)"``,
    ``"slide type TS"``), or None when it joins (non-TCGA names always join)."""
    parsed = parse_barcode(slide_id)
    if parsed is None:
        return None
    stype = parsed[1]
    if stype and stype != "01" and not keep_all_samples:
        return f"sample type {stype} ({SAMPLE_TYPES.get(stype, 'not primary tumour')})"
    kind = slide_type(slide_id)
    if kind and slide_types is not None and kind not in {t.upper() for t in slide_types}:
        return f"slide type {kind}"
    return None


def _class_names(labels: Any, task: str, path: Path) -> list[str]:
    """Class names in target order: the task's own names, else the labels of each target."""
    targets = sorted(set(int(t) for t in labels["target"].to_list()))
    by_target: dict[int, set[str]] = {}
    for lab, t in labels.select("label", "target").iter_rows():
        by_target.setdefault(int(t), set()).add(str(lab))
    from brcatool.tasks import TASKS

    n = max(targets) + 1
    if task in ("luminal-vs-basalher2", "pam50"):
        names = list(TASKS[task]().classes)
        if n <= len(names):
            return names if task != "pam50" else names[:n]
    if targets != list(range(len(targets))):
        raise ArtifactError(f"targets {targets} are not 0..C-1", path=path, fix="re-run prep-expr")
    return ["/".join(sorted(by_target[t])) for t in targets]


def _read_features(wd: Workdir, encoder: str, per_patient: dict[int, list[tuple[int, int]]],
                   slide_ids: list[str], identity: dict[str, Any], n_max: int, P: int, dtype: Any,
                   progress: bool) -> np.ndarray:
    from rich.progress import Progress

    V, D = identity["views"], identity["dim"]
    out = np.zeros((P, V, n_max, D), dtype=dtype)
    group = stores.feature_group(wd, encoder)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("loading features", total=len(slide_ids))
        for p, items in per_patient.items():
            at = 0
            for k, n in items:
                arr = slide_features(wd, encoder, group, slide_ids[k], n, V, D)
                out[p, :, at:at + n] = arr[:V]
                at += n
                bar.advance(task)
    return out
