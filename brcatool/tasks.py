"""Label tasks: how a clinical column becomes integer targets.

A task is a fixed mapping from (normalised) label values to class names in target order, so
the same clinical table always gives the same targets. Built-in tasks come from a registry
(name -> factory); the generic task is built from the values of any column.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brcatool.errors import InputError
from brcatool.ids import parse_barcode, patient_of
from brcatool.tables import read_table

#: PAM50 subtypes in the fixed class order of the ``pam50`` task.
SUBTYPES: tuple[str, ...] = ("LumA", "LumB", "Her2", "Basal", "Normal")

#: Spellings found in TCGA, cBioPortal and GEO tables, after lower-casing and removing
#: separators, mapped to the canonical subtype.
_SUBTYPE_SPELLINGS: dict[str, str] = {
    "luma": "LumA", "luminala": "LumA",
    "lumb": "LumB", "luminalb": "LumB",
    "her2": "Her2", "her2e": "Her2", "her2enriched": "Her2", "erbb2": "Her2", "her2like": "Her2",
    "basal": "Basal", "basallike": "Basal",
    "normal": "Normal", "normallike": "Normal",
}
_PREFIX = re.compile(r"^(brca|pam50)[._\-: ]+", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s._\-/+]+")

#: Values that mean "no label" rather than a wrong one.
MISSING_VALUES = frozenset({
    "", "na", "n/a", "nan", "null", "none", "--", "-", "?", "unknown", "[unknown]",
    "[not available]", "[not evaluated]", "[not applicable]", "[discrepancy]", "not available",
})

#: Looked for in this order, case-insensitively: tidy tables, TCGA clinical XML exports, cBioPortal
#: (PATIENT_ID, SAMPLE_ID), TCGAbiolinks (patient; GDCprepare's colData: barcode, patient, sample),
#: UCSC Xena (sampleID), PanCancer Atlas (pan.samplesID). Labels: TCGAbiolinks' TCGAquery_subtype
#: ``BRCA_Subtype_PAM50``, its GDCprepare colData copy ``paper_BRCA_Subtype_PAM50``.
ID_COLUMNS = ("patient_id", "bcr_patient_barcode", "PATIENT", "Patient ID", "patient", "Sample ID",
              "SAMPLE_ID", "sampleID", "sample", "pan.samplesID")
#: Sample-barcode columns: the sample type (01 primary, 11 normal ...) of a row is read from these.
SAMPLE_COLUMNS = ("sampleID", "SAMPLE_ID", "Sample ID", "sample", "pan.samplesID", "bcr_sample_barcode")
LABEL_COLUMNS = ("PAM50", "Subtype", "TCGA Subtype", "BRCA_Subtype_PAM50", "paper_BRCA_Subtype_PAM50",
                 "PAM50Call_RNAseq", "Subtype_mRNA")

#: Above this many distinct values a column is not a plausible class label.
MAX_CLASSES = 50


def is_missing(value: object) -> bool:
    """True for null-like cells (None, NaN, "NA", "[Not Available]", ...)."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return str(value).strip().lower() in MISSING_VALUES


def normalise_subtype(value: object) -> str | None:
    """Canonical PAM50 name for any common spelling (``BRCA.LumA``, ``Luminal A``), else None."""
    if is_missing(value):
        return None
    text = _PREFIX.sub("", str(value).strip())
    return _SUBTYPE_SPELLINGS.get(_SEPARATORS.sub("", text).lower())


def looks_like_pam50(values: Sequence[object]) -> bool:
    """Whether at least half of the non-missing values of a column are PAM50 subtypes."""
    present = [v for v in values if not is_missing(v)]
    if not present:
        return False
    hits = sum(normalise_subtype(v) is not None for v in present)
    return hits >= 0.5 * len(present)


@dataclass
class Assignment:
    """Targets for one column of values; ``target`` is -1 where a row has no class."""

    labels: list[str | None]
    target: np.ndarray
    missing: int = 0
    dropped: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)

    @property
    def n_labelled(self) -> int:
        return int((self.target >= 0).sum())


@dataclass(frozen=True)
class Task:
    """A named mapping of label values to classes (``classes[i]`` is target ``i``)."""

    name: str
    classes: tuple[str, ...]
    mapping: Mapping[str, str | None]
    subtypes: bool = False
    column: str | None = None

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def canonical(self, value: object) -> str | None:
        """Spelling used for lookups: the PAM50 name for subtype tasks, stripped text otherwise."""
        if is_missing(value):
            return None
        if self.subtypes:
            return normalise_subtype(value) or str(value).strip()
        return str(value).strip()

    def assign(self, values: Sequence[object]) -> Assignment:
        """Map values to classes; missing, dropped (e.g. Normal) and unknown values are counted."""
        index = {c: i for i, c in enumerate(self.classes)}
        labels: list[str | None] = []
        target = np.full(len(values), -1, dtype=np.int64)
        out = Assignment(labels=labels, target=target)
        for i, value in enumerate(values):
            key = self.canonical(value)
            if key is None:
                out.missing += 1
                labels.append(None)
            elif key not in self.mapping:
                out.unknown[str(value).strip()] += 1
                labels.append(None)
            elif self.mapping[key] is None:
                out.dropped[key] += 1
                labels.append(None)
            else:
                cls = self.mapping[key]
                labels.append(cls)
                target[i] = index[cls]
        return out


# --------------------------------------------------------------------------- factories
TaskFactory = Callable[..., Task]


def luminal_vs_basalher2(values: Sequence[object] = (), *, column: str | None = None,
                         positive: Sequence[str] = ()) -> Task:
    """The paper's task: LumA+LumB (0, "Luminal") vs Basal+Her2 (1, "Basal/Her2"); Normal dropped."""
    _no_positive("luminal-vs-basalher2", positive)
    return Task(
        name="luminal-vs-basalher2",
        classes=("Luminal", "Basal/Her2"),
        mapping={"LumA": "Luminal", "LumB": "Luminal", "Basal": "Basal/Her2", "Her2": "Basal/Her2",
                 "Normal": None},
        subtypes=True, column=column,
    )


def pam50(values: Sequence[object] = (), *, column: str | None = None,
          positive: Sequence[str] = ()) -> Task:
    """All five PAM50 subtypes in the fixed order LumA, LumB, Her2, Basal, Normal."""
    _no_positive("pam50", positive)
    return Task(name="pam50", classes=SUBTYPES, mapping={s: s for s in SUBTYPES}, subtypes=True,
                column=column)


def generic(values: Sequence[object], *, column: str | None = None,
            positive: Sequence[str] = ()) -> Task:
    """A task from any column: binary with ``positive`` values as class 1, else sorted classes."""
    subtypes = looks_like_pam50(values)
    probe = Task(name="probe", classes=(), mapping={}, subtypes=subtypes)
    observed = sorted({k for v in values if (k := probe.canonical(v)) is not None})
    name = f"generic:{column}" if column else "generic"
    where = f"label column {column!r}" if column else "the label column"
    if positive:
        pos = [probe.canonical(p) or str(p) for p in positive]
        absent = [p for p in pos if p not in observed]
        if absent:
            raise InputError(
                f"--positive value(s) {absent} not found in {where}",
                fix=f"use values present there: {', '.join(observed[:12]) or '(none)'}")
        neg = [v for v in observed if v not in pos]
        if not neg:
            raise InputError(f"every value of {where} is --positive; nothing is left for class 0",
                             fix="name fewer --positive values")
        neg_name = "/".join(neg) if len(neg) <= 3 else "other"
        pos_name = "/".join(pos)
        mapping: dict[str, str | None] = {v: (pos_name if v in pos else neg_name) for v in observed}
        return Task(name=name, classes=(neg_name, pos_name), mapping=mapping, subtypes=subtypes,
                    column=column)
    if len(observed) < 2:
        raise InputError(f"{where} has {len(observed)} distinct value(s); a task needs at least 2",
                         fix="choose another --label-column")
    if len(observed) > MAX_CLASSES:
        raise InputError(f"{where} has {len(observed)} distinct values, too many for class labels",
                         fix="choose a categorical --label-column, or --positive VALUE for a binary task")
    return Task(name=name, classes=tuple(observed), mapping={v: v for v in observed},
                subtypes=subtypes, column=column)


def _no_positive(task: str, positive: Sequence[str]) -> None:
    if positive:
        raise InputError(f"--positive does not apply to the {task!r} task",
                         fix="drop --positive, or use --task generic")


#: Registry: task name -> factory(values, column=..., positive=...).
TASKS: dict[str, TaskFactory] = {
    "luminal-vs-basalher2": luminal_vs_basalher2,
    "pam50": pam50,
    "generic": generic,
}


def default_task_name(values: Sequence[object], *, column: str | None = None,
                      positive: Sequence[str] = ()) -> str:
    """The paper's task when the column is named PAM50 or mostly holds subtypes, else generic."""
    if not positive and ("pam50" in (column or "").lower() or looks_like_pam50(values)):
        return "luminal-vs-basalher2"
    return "generic"


def resolve_task(name: str | None, values: Sequence[object], *, column: str | None = None,
                 positive: Sequence[str] = ()) -> Task:
    """Build the task called ``name`` (None: the default for these values)."""
    name = name or default_task_name(values, column=column, positive=positive)
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}", fix=f"use one of: {', '.join(TASKS)}")
    return TASKS[name](values, column=column, positive=tuple(positive))


# --------------------------------------------------------------------------- clinical table
def _pick_column(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str,
                 option: str, path: Path) -> str:
    if given is not None:
        if given not in columns:
            raise InputError(f"{what} column {given!r} not found; columns: {', '.join(columns[:12])}",
                             path=path, fix=f"pass {option} with one of those names")
        return given
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand.lower() in lower:
            return lower[cand.lower()]
    raise InputError(f"no {what} column found (looked for {', '.join(candidates)})", path=path,
                     fix=f"pass {option} NAME")


def prepare_labels(path: Path, expr_patients: Sequence[str], warnings: list[str], *,
                   id_column: str | None = None, label_column: str | None = None, task: str | None = None,
                   positive: Sequence[str] = (), unknown: str = "warn", report: dict | None = None):
    """Labels of the task: (labels frame, task, clinical patient ids).

    Sample-level tables (Xena's clinicalMatrix, PanCancer Atlas): a patient's primary-tumour rows
    (sample type 01) win over its other samples' rows (a normal sample's "Normal" call is not the
    tumour's subtype). Rows without a label, with an unknown one, of a dropped class, or of a
    patient with conflicting labels are counted in ``report`` and said in ``warnings``.
    """
    import polars as pl

    path = Path(path)
    df = read_table(path, numeric=False)
    id_col = _pick_column(df.columns, id_column, ID_COLUMNS, "patient id", "--id-column", path)
    label_col = _pick_column(df.columns, label_column, LABEL_COLUMNS, "label", "--label-column", path)
    if df.height == 0:
        raise InputError("clinical table has no rows", path=path, fix="pass a non-empty table")
    raw_ids = ["" if v is None else str(v) for v in df[id_col].to_list()]
    ids = [patient_of(v) if v else "" for v in raw_ids]
    values = df[label_col].to_list()
    lower = {c.lower(): c for c in df.columns}
    sample_col = next((lower[c.lower()] for c in SAMPLE_COLUMNS if c.lower() in lower), id_col)
    samples = ["" if v is None else str(v) for v in df[sample_col].to_list()]
    stypes = [(parse_barcode(v) or ("", None, ""))[1] for v in samples]
    has_primary = {p for p, t in zip(ids, stypes, strict=True) if t == "01"}
    other = [i for i, (p, t) in enumerate(zip(ids, stypes, strict=True))
             if t not in (None, "01") and p in has_primary]
    if other:
        warnings.append(f"{path.name}: {len(other)} row(s) of non-primary samples "
                        f"(e.g. {samples[other[0]]!r}) ignored: their patients have a primary (01) row")
        skip = set(other)
        ids = [p for i, p in enumerate(ids) if i not in skip]
        values = [v for i, v in enumerate(values) if i not in skip]
    overlap = set(ids) & set(expr_patients)
    if not overlap:
        raise InputError(f"no patient id in column {id_col!r} matches the expression table "
                         f"(clinical e.g. {ids[:2]}, expression e.g. {list(expr_patients)[:2]})", path=path,
                         fix="check --id-column and that both files describe the same cohort")
    spec = resolve_task(task, values, column=label_col, positive=positive)
    a = spec.assign(values)
    if a.unknown:
        shown = ", ".join(f"{k!r} x{v}" for k, v in a.unknown.most_common(5))
        msg = f"{sum(a.unknown.values())} unknown {label_col!r} value(s) for task {spec.name}: {shown}"
        if unknown == "error":
            raise InputError(msg, path=path, fix="fix the values, or pass --unknown-labels warn to skip them")
        warnings.append(f"{path.name}: {msg}; those patients have no label")
    if a.dropped:
        warnings.append(f"{path.name}: task {spec.name} drops {dict(a.dropped)}")
    if a.missing:
        warnings.append(f"{path.name}: {a.missing} row(s) with no {label_col!r} value (blank or NA): "
                        "those patients have no label")
    by_patient: dict[str, set] = {}
    for pid, lab, t in zip(ids, a.labels, a.target.tolist(), strict=True):
        if pid and t >= 0:
            by_patient.setdefault(pid, set()).add((lab, t))
    conflicts = sorted(p for p, s in by_patient.items() if len(s) > 1)
    if conflicts:
        warnings.append(f"{path.name}: {len(conflicts)} patient(s) with conflicting labels left unlabelled, "
                        f"e.g. {conflicts[:3]}")
    rows = sorted((p, *next(iter(s))) for p, s in by_patient.items() if len(s) == 1)
    if report is not None:
        report.update(rows=df.height, non_primary_sample_rows=len(other), blank=a.missing,
                      unknown=sum(a.unknown.values()), dropped_by_task=dict(a.dropped),
                      patients_conflicting=len(conflicts), patients_labelled=len(rows))
    if not rows:
        raise InputError(f"no usable labels in column {label_col!r} for task {spec.name}", path=path,
                         fix="check --label-column and --task")
    labels = pl.DataFrame({"patient_id": [r[0] for r in rows], "label": [r[1] for r in rows],
                           "target": [r[2] for r in rows], "task": spec.name},
                          schema={"patient_id": pl.String, "label": pl.String, "target": pl.Int64,
                                  "task": pl.String})
    return labels, spec, sorted({p for p in ids if p})
