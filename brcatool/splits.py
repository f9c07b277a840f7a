"""The cross-validation split: made once, saved, re-checked against the cohort on every use.

``by="patient"`` (default, ``splits.json``): stratified K-fold over patients (one row per patient,
so a patient's slides never straddle folds). ``by="site"`` (``splits-site.json``): whole tissue-
source sites (TCGA barcode characters 6-7, or a site/batch column) go to one fold each, balanced
by label as far as the sites allow, so no site is in both training and validation (the preserved-
site cross-validation of Howard et al., Nat Commun 2021). A split saved with R repeats serves any
run asking for R or fewer (the first ones); asking for more extends it, keeping the saved repeats.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.errors import ArtifactError, InputError
from brcatool.ids import TCGA_BARCODE

if TYPE_CHECKING:
    from brcatool.cohort import Cohort

SPLIT_KINDS = ("patient", "site")


def splits_path(wd: Workdir, by: str = "patient") -> Path:
    """``splits.json`` for the patient split, ``splits-<by>.json`` beside it for the others."""
    return wd.splits if by == "patient" else wd.splits.with_name(f"splits-{by}.json")


def tcga_site(patient_id: str) -> str | None:
    """Tissue-source site of a TCGA barcode (characters 6-7: ``TCGA-A2-...`` -> ``A2``), else None."""
    m = TCGA_BARCODE.match(patient_id)
    return m.group(1).upper() if m else None

@dataclass
class Splits:
    """Fold of every patient for every repeat; ``fold[r][i]`` belongs to ``patient_ids[i]``."""

    folds: int
    repeats: int
    seed: int
    task: str
    patient_ids: list[str]
    fold: np.ndarray  # (R, P) int
    cohort_hash: str
    path: Path | None = None
    by: str = "patient"
    sites: list[str] = field(default_factory=list)  # by="site": the site of every patient

    def head(self, repeats: int) -> Splits:
        """The first ``repeats`` repeats (a run asking for fewer than the saved split holds)."""
        return self if repeats == self.repeats else replace(self, repeats=repeats, fold=self.fold[:repeats])

    def indices(self, repeat: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) patient positions of one fold."""
        f = self.fold[repeat]
        return np.flatnonzero(f != k), np.flatnonzero(f == k)

    def to_json(self) -> dict[str, Any]:
        out = {
            "folds": self.folds, "repeats": self.repeats, "seed": self.seed, "task": self.task,
            "assignments": [{"patient_id": p, "repeat": r, "fold": int(self.fold[r, i])}
                            for r in range(self.repeats) for i, p in enumerate(self.patient_ids)],
            "cohort_hash": self.cohort_hash,
        }
        if self.by != "patient":  # a patient split's file (and sha) stay as they always were
            out.update(by=self.by, sites=list(self.sites))
        return out

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def make_splits(cohort: Cohort, *, folds: int, repeats: int = 1, seed: int = 0, by: str = "patient",
                sites: list[str] | None = None) -> Splits:
    """Stratified K-fold over patients (repeated R times with different shuffles), seeded;
    ``by="site"``: whole sites per fold (``sites``: one per patient, see ``patient_sites``)."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    if folds < 2:
        raise InputError(f"--folds must be at least 2, got {folds}")
    if repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}")
    if by not in SPLIT_KINDS:
        raise InputError(f"unknown --split {by!r}", fix="use patient or site")
    check_folds(cohort, folds)
    if by == "site":
        sites = list(sites) if sites is not None else patient_sites(cohort)
        fold = _distinct_site_repeats(sites, cohort.targets, len(cohort.classes), folds, seed, repeats)
        return Splits(folds=folds, repeats=repeats, seed=seed, task=cohort.task,
                      patient_ids=list(cohort.patient_ids), fold=fold, cohort_hash=cohort.hash(),
                      by="site", sites=sites)
    rskf = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    fold = np.full((repeats, cohort.n), -1, dtype=np.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes smaller than K: sklearn spreads them as it can
        for i, (_, val) in enumerate(rskf.split(np.zeros(cohort.n), cohort.targets)):
            fold[i // folds, val] = i % folds
    return Splits(folds=folds, repeats=repeats, seed=seed, task=cohort.task,
                  patient_ids=list(cohort.patient_ids), fold=fold, cohort_hash=cohort.hash())


def check_folds(cohort: Cohort, folds: int, usable: np.ndarray | None = None, *,
                why: str = "") -> None:
    """Refuse, naming the class, when the (usable) patients cannot fill ``folds`` stratified folds.

    Every class needs 2 patients (one can then sit in training while another is validated; with
    stratification a class of n >= 2 patients lands in n different folds), and the largest class
    needs ``folds`` so that no validation fold is empty.
    """
    targets = cohort.targets if usable is None else cohort.targets[usable]
    counts = np.bincount(targets, minlength=len(cohort.classes))
    small = [(cohort.classes[c], int(n)) for c, n in enumerate(counts) if n < 2]
    if small:
        shown = ", ".join(f"{name!r} has {n} patient{'s' if n != 1 else ''}" for name, n in small)
        raise InputError(f"class {shown}{why}: a class needs at least 2 patients to be both trained "
                         f"on and validated in {folds}-fold cross-validation",
                         fix="add patients of that class, or choose a task without it "
                             "(prep-expr --task)")
    if counts.max() < folds:
        raise InputError(f"{len(targets)} patients{why} (largest class {counts.max()}) cannot fill "
                         f"{folds} folds", fix=f"use --folds {max(2, int(counts.max()))} or fewer")


def check_training_folds(splits: Splits, targets: np.ndarray, classes: list[str], usable: np.ndarray, *,
                         why: str = "") -> None:
    """Refuse in one line, before anything trains, a split with a (repeat, fold) whose usable
    training side lacks a class the cohort has, or whose validation side is empty (a class in one
    site under --split site, or a rare class after dropping missing modalities)."""
    present_all = sorted(set(np.unique(targets[usable]).tolist()))
    for r in range(splits.repeats):
        for k in range(splits.folds):
            tr, va = splits.indices(r, k)
            tr, va = tr[usable[tr]], va[usable[va]]
            lacking = [c for c in present_all if not (targets[tr] == c).any()]
            if len(va) and not lacking:
                continue
            where = f"fold {k}{f' (repeat {r})' if splits.repeats > 1 else ''}{why}"
            fewer = f"use --folds {max(2, splits.folds - 1)} or fewer"
            if not len(va):
                raise InputError(f"{where} has no usable validation patients", path=splits.path, fix=fewer)
            name = classes[lacking[0]]
            if splits.by == "site":
                arr = np.asarray(splits.sites)
                at = sorted(set(arr[usable & (targets == lacking[0])].tolist()))
                raise InputError(f"{where}: no {name!r} patient left to train on (class {name!r} is only "
                                 f"at site(s) {', '.join(at[:5])}, all validated in this fold)",
                                 path=splits.path, fix=(
                                     "use --split patient, or add patients of that class from other sites"
                                     if len(at) < 2 else f"use --folds {min(len(at), splits.folds - 1)} "
                                     "(its sites can then sit in different folds), or --split patient"))
            raise InputError(f"{where}: no {name!r} patient left to train on", path=splits.path, fix=fewer)


def save_splits(splits: Splits, path: Path) -> Path:
    artifacts.write_json(path, splits.to_json())
    splits.path = Path(path)
    return Path(path)


def load_splits(path: Path) -> Splits:
    data = artifacts.read_json(path)
    try:
        folds, repeats = int(data["folds"]), int(data["repeats"])
        rows = data["assignments"]
        pids = sorted({str(a["patient_id"]) for a in rows})
        pos = {p: i for i, p in enumerate(pids)}
        fold = np.full((repeats, len(pids)), -1, dtype=np.int64)
        for a in rows:
            fold[int(a["repeat"]), pos[str(a["patient_id"])]] = int(a["fold"])
        by = str(data.get("by", "patient"))
        sites = [str(x) for x in data.get("sites", [])]
        splits = Splits(folds=folds, repeats=repeats, seed=int(data["seed"]), task=str(data["task"]),
                        patient_ids=pids, fold=fold, cohort_hash=str(data["cohort_hash"]),
                        path=Path(path), by=by, sites=sites)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ArtifactError(f"is not a brcatool split ({exc!r})", path=path,
                            fix="delete it; the next `brcatool train` makes a new one") from None
    if (fold < 0).any() or (fold >= folds).any():
        raise ArtifactError("has missing or out-of-range fold numbers", path=path,
                            fix="delete it; the next `brcatool train` makes a new one")
    return splits


def check_splits(splits: Splits, cohort: Cohort, *, folds: int | None = None,
                 repeats: int | None = None) -> None:
    """Refuse a split made for another cohort (patients or labels changed) or other fold counts."""
    where = splits.path
    fix = ("delete splits.json to make a new split (runs made with the old one stop being "
           "comparable with new ones)")
    if splits.task != cohort.task or splits.cohort_hash != cohort.hash() \
            or splits.patient_ids != cohort.patient_ids:
        gone = len(set(splits.patient_ids) - set(cohort.patient_ids))
        new = len(set(cohort.patient_ids) - set(splits.patient_ids))
        raise ArtifactError(
            f"is stale: made for task {splits.task!r} with {len(splits.patient_ids)} patients; the "
            f"cohort now has task {cohort.task!r}, {cohort.n} patients ({new} new, {gone} gone) "
            "or changed labels", path=where, fix=fix)
    if (folds is not None and folds != splits.folds) or (repeats is not None and repeats > splits.repeats):
        raise ArtifactError(
            f"has {splits.folds} folds x {splits.repeats} repeats, asked for {folds} x {repeats}",
            path=where, fix=f"pass --folds {splits.folds} --repeats {splits.repeats} to reuse it, or {fix}")


def get_splits(workdir: Path | Workdir, cohort: Cohort, *, folds: int, repeats: int = 1,
               seed: int = 0, save: bool = True, by: str = "patient",
               site_column: str | None = None) -> tuple[Splits, bool]:
    """The saved split, checked against the cohort, or a new one. Returns (splits, created).

    A saved split with more repeats serves the first ``repeats``; one with fewer is extended (the
    saved repeats kept, checked) and saved again. ``save=False`` leaves a new split unsaved
    (``splits.path`` None): the caller saves it with ``save_splits`` once its run succeeded, so a
    failed first run leaves no split behind.
    """
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    path = splits_path(wd, by)
    sites = patient_sites(cohort, site_column, wd) if by == "site" else None
    if path.exists():
        splits = load_splits(path)
        check_splits(splits, cohort, folds=folds)
        if by == "site" and splits.sites != sites:
            raise ArtifactError("was made with other sites per patient", path=path,
                                fix=f"delete {path.name} to make a new site split")
        if repeats <= splits.repeats:
            return splits.head(repeats), False
        more = make_splits(cohort, folds=folds, repeats=repeats, seed=splits.seed, by=by, sites=sites)
        if not np.array_equal(more.fold[:splits.repeats], splits.fold):
            raise ArtifactError(f"cannot be extended to {repeats} repeats: its first repeats differ from "
                                "a fresh split with its seed", path=path,
                                fix=f"pass --repeats {splits.repeats}, or delete it to make a new split")
        if save:
            save_splits(more, path)
        return more, True
    splits = make_splits(cohort, folds=folds, repeats=repeats, seed=seed, by=by, sites=sites)
    if save:
        save_splits(splits, path)
    return splits, True


# --------------------------------------------------------------------------- sites
def patient_sites(cohort: Cohort, site_column: str | None = None, wd: Workdir | None = None) -> list[str]:
    """The site of every patient: a column of ``labels.parquet`` or of a table (``FILE:COLUMN``,
    first column = patient id) when ``site_column`` is given, else the TCGA tissue-source site."""
    if site_column:
        return _site_table(cohort, site_column, wd)
    sites = [tcga_site(p) for p in cohort.patient_ids]
    bad = [p for p, s in zip(cohort.patient_ids, sites, strict=True) if s is None]
    if bad:
        raise InputError(f"--split site: {len(bad)} patient ids are not TCGA barcodes (e.g. {bad[0]!r}), so "
                         "their tissue-source site is unknown",
                         fix="name a site/batch column: --site-column COLUMN (of labels.parquet) or "
                             "--site-column CLINICAL.tsv:COLUMN")
    return [str(s) for s in sites]


def _site_table(cohort: Cohort, spec: str, wd: Workdir | None) -> list[str]:
    from brcatool.ids import patient_of

    path, _, column = spec.rpartition(":") if ":" in spec else ("", "", spec)
    if path:
        from brcatool.tables import read_table

        table = read_table(Path(path), numeric=False)
        where: Path = Path(path)
    else:
        if wd is None:
            raise InputError(f"--site-column {column!r} needs the workdir's labels table")
        table = artifacts.read_parquet(wd.labels_table, schema="labels")
        where = wd.labels_table
    if column not in table.columns:
        raise InputError(f"has no column {column!r} (columns: {', '.join(table.columns[:12])})", path=where,
                         fix="name the site/batch column, or FILE:COLUMN for another clinical table")
    ids = [patient_of(str(v)) for v in table[table.columns[0]].to_list()]
    of = {i: str(v) for i, v in zip(ids, table[column].to_list(), strict=True) if v is not None}
    missing = [p for p in cohort.patient_ids if p not in of]
    if missing:
        raise InputError(f"gives no {column!r} for {len(missing)} patients (e.g. {missing[0]!r})", path=where,
                         fix="fill the column for every labelled patient")
    return [of[p] for p in cohort.patient_ids]


def site_partition(fold: np.ndarray, sites: list[str]) -> frozenset[frozenset[str]]:
    """The partition of the sites one repeat's folds make (fold labels ignored)."""
    arr = np.asarray(sites)
    return frozenset(frozenset(arr[fold == k].tolist()) for k in np.unique(fold))


def _distinct_site_repeats(sites: list[str], targets: np.ndarray, n_classes: int, folds: int, seed: int,
                           repeats: int, tries: int = 100) -> np.ndarray:
    """``repeats`` site fold assignments that are different partitions of the sites: a repeat that
    only relabels the folds of an earlier one adds no information, and the corrected t-test would
    count its folds twice. Redrawn (deterministically) until new, else refused."""
    rows: list[np.ndarray] = []
    seen: set[frozenset[frozenset[str]]] = set()
    for r in range(repeats):
        for attempt in range(tries):
            f = _site_folds(sites, targets, n_classes, folds, seed, r, attempt)
            if site_partition(f, sites) not in seen:
                break
        else:
            raise InputError(f"--split site: {len(set(sites))} sites make only {len(seen)} different "
                             f"{folds}-fold partition(s) (tried {tries} draws); --repeats {repeats} would "
                             "repeat one, and the t-test would count its folds twice",
                             fix=f"use --repeats {len(seen)}, fewer --folds, or --split patient")
        seen.add(site_partition(f, sites))
        rows.append(f)
    return np.stack(rows)


def _site_folds(sites: list[str], targets: np.ndarray, n_classes: int, folds: int, seed: int,
                repeat: int, attempt: int = 0) -> np.ndarray:
    """Whole sites to folds, greedily balancing each fold's label counts (repeat 0: largest sites
    first; later repeats and redraws: the sites in a random order, ties between folds drawn)."""
    names, inverse = np.unique(np.asarray(sites), return_inverse=True)
    if len(names) < folds:
        raise InputError(f"--split site: only {len(names)} sites for {folds} folds",
                         fix=f"use --folds {max(2, len(names))} or fewer, or --split patient")
    counts = np.zeros((len(names), n_classes))
    np.add.at(counts, (inverse, targets), 1.0)
    rng = np.random.default_rng([seed, repeat] if attempt == 0 else [seed, repeat, attempt])
    jitter = rng.random(len(names))
    # repeat 0: largest first (the best balance); later repeats: a random order, else a size jitter
    # alone mostly reproduced repeat 0's partition with other fold labels
    first = repeat == 0 and attempt == 0
    order = np.lexsort((jitter, -counts.sum(1))) if first else rng.permutation(len(names))
    target = counts.sum(0) / folds
    load = np.zeros((folds, n_classes))
    site_fold = np.full(len(names), -1, dtype=np.int64)
    for s in order:
        cost = ((load + counts[s] - target) ** 2).sum(1) - ((load - target) ** 2).sum(1)
        empty = load.sum(1) == 0
        cost = np.where(empty, cost - 1e9, cost)  # every fold gets a site first
        best = np.flatnonzero(np.isclose(cost, cost.min()))
        f = int(best[rng.integers(len(best))])
        site_fold[s] = f
        load[f] += counts[s]
    return site_fold[inverse]
