"""The Cohort and Slides sections: who is in the study, who was dropped and why, what tile saw."""

from __future__ import annotations

from typing import Any

from brcatool.artifacts import Workdir
from brcatool.report.images import inline
from brcatool.report.read import Notes, json_file, number, table

#: Slide statuses in the order the grid's filter lists them; others found are appended.
STATUSES = ("ok", "no_tissue", "failed")
#: prep-expr's ``counts["dropped"]`` entries that leave something out: (group, key) -> (what, why).
NESTED_DROPS = {
    ("sample_columns", "not_primary"): ("non-primary samples", "TCGA sample type other than 01 primary "
                                        "tumour (e.g. 06 metastasis, 11 normal tissue)"),
    ("sample_columns", "second_sample_of_a_patient"): ("extra samples of a patient",
                                                       "one sample is kept per patient"),
    ("label_rows", "dropped_by_task"): ("labels the task drops", "not a class of the task"),
    ("label_rows", "unknown"): ("unknown label values", "not a value the task knows"),
    ("label_rows", "blank"): ("blank labels", "no label value"),
    ("label_rows", "non_primary_sample_rows"): ("clinical rows of non-primary samples",
                                                "labels follow the primary tumour sample"),
    ("label_rows", "patients_conflicting"): ("patients with conflicting labels", "left unlabelled"),
    ("gene_rows", "zero_or_missing"): ("genes zero or missing in too many samples",
                                       "more such samples than --max-zero-frac allows"),
    ("gene_rows", "empty_gene_ids"): ("gene rows without an id", "no gene to name"),
    ("gene_rows", "non_gene_rows"): ("rows that are not genes", "e.g. HTSeq/STAR summary rows"),
    ("gene_rows", "duplicate_gene_rows"): ("duplicate gene rows", "resolved by --duplicate-genes"),
}
#: Why the older flat ``*dropped*`` counts dropped something (other keys are shown by name).
DROP_REASONS = {
    "samples_dropped_not_primary": "non-primary samples: TCGA sample type other than 01 (e.g. 06 metastasis, "
                                   "11 normal tissue)",
    "samples_dropped_duplicates": "extra samples of a patient: one sample is kept per patient",
    "genes_dropped_zero": "genes zero in too many samples (--max-zero-frac)",
}


def cohort_section(wd: Workdir, notes: Notes) -> dict[str, Any]:
    """Alignment counts, class balance and every reason a patient or sample was left out."""
    man = json_file(wd.stage_manifest("prep-expr"), notes)
    cohort = table(wd.cohort_table, notes)
    if man is None and cohort is None:
        return {"ran": False,
                "hint": f"brcatool prep-expr --expression EXPR.tsv --clinical CLINICAL.tsv -w {wd.root}"}
    man = man or {}
    labels = table(wd.labels_table, notes)
    classes = [str(c) for c in man.get("classes") or []]
    included = _included(cohort)
    balance = []
    if labels is not None and "label" in labels.columns:
        counts: dict[str, int] = {}
        for pid, lab in zip(labels["patient_id"].to_list(), labels["label"].to_list(), strict=True):
            if included is None or pid in included:
                counts[str(lab)] = counts.get(str(lab), 0) + 1
        order = classes + sorted(set(counts) - set(classes))
        total = sum(counts.values()) or 1
        labelled = man.get("class_counts") or {}
        balance = [{"label": c, "n": counts.get(c, 0), "share": counts.get(c, 0) / total,
                    "labelled": labelled.get(c)} for c in order]
    return {"ran": True, "task": man.get("task"), "classes": classes,
            "alignment": [{"what": k, "n": v} for k, v in (man.get("alignment") or {}).items()],
            "n_patients": cohort.height if cohort is not None else None,
            "n_included": len(included) if included is not None else None,
            "balance": balance, "dropped": _dropped(wd, man, cohort, notes),
            "warnings": [str(w) for w in man.get("warnings") or []],
            "counts": {k: v for k, v in (man.get("counts") or {}).items()}}


def _included(cohort: Any) -> set[str] | None:
    if cohort is None or "included" not in cohort.columns:
        return None
    return set(cohort.filter(cohort["included"])["patient_id"].to_list())


def _dropped(wd: Workdir, man: dict[str, Any], cohort: Any, notes: Notes) -> list[dict[str, Any]]:
    """(what, how many, why) rows: samples, labels, slides and patients left out."""
    counts = man.get("counts") or {}
    nested = counts.get("dropped")
    rows = _nested_drops(nested) if isinstance(nested, dict) else [
        {"what": key.replace("_", " "), "n": int(value), "examples": [],
         "why": DROP_REASONS.get(key, "prep-expr (see its warnings below)")}
        for key, value in counts.items() if "dropped" in key and (number(value) or 0) > 0]
    if cohort is not None and {"included", "has_label"} <= set(cohort.columns):
        out = cohort.filter(~cohort["included"])
        no_label = out.filter(~out["has_label"])["patient_id"].to_list()
        no_data = out.filter(out["has_label"])["patient_id"].to_list()
        if no_label:
            said = [str(w).split(": ", 1)[-1] for w in man.get("warnings") or [] if " drops " in str(w)]
            rows.append({"what": "patients without a label", "n": len(no_label), "examples": no_label[:8],
                         "why": "no usable label for the task: " + ("; ".join(said) if said else
                                "a subtype the task drops (e.g. Normal), or absent from the clinical table")})
        if no_data:
            rows.append({"what": "labelled patients without data", "n": len(no_data), "examples": no_data[:8],
                         "why": "neither an expression profile nor a slide with tissue"})
    slides = table(wd.slides_table, notes)
    if slides is not None and "status" in slides.columns:
        for status in sorted(set(slides["status"].to_list()) - {"ok"}):
            part = slides.filter(slides["status"] == status)
            errors = part["error"].to_list() if "error" in part.columns else [None] * part.height
            rows.append({"what": f"slides {status.replace('_', ' ')}", "n": part.height,
                         "examples": part["slide_id"].to_list()[:8],
                         "why": "; ".join(sorted({str(e) for e in errors if e})[:3]) or status})
    return rows


def _nested_drops(dropped: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for (group, key), (what, why) in NESTED_DROPS.items():
        grp = dropped.get(group) if isinstance(dropped.get(group), dict) else {}
        value = grp.get(key)
        for sub, n in value.items() if isinstance(value, dict) else [(None, value)]:  # per label value
            if (number(n) or 0) > 0:
                types = grp.get("types") if key == "not_primary" else None
                rows.append({"what": what if sub is None else f"{what}: {sub}", "n": int(n), "examples": [],
                             "why": why + (f" (sample types {types})" if types else "")})
    return rows


def slides_section(wd: Workdir, notes: Notes, *, thumb_side: int = 320) -> dict[str, Any]:
    """One card per slide: QC thumbnail (mask outline and chosen patches), status, counts."""
    slides = table(wd.slides_table, notes)
    man = json_file(wd.stage_manifest("tile"), notes)
    if slides is None:
        return {"ran": False, "hint": f"brcatool tile SLIDES_DIR -w {wd.root}"}
    cards = []
    for row in slides.to_dicts():
        sid = str(row.get("slide_id"))
        thumb = inline(wd.qc_image(sid), max_side=thumb_side, jpeg=True)
        cards.append({"slide_id": sid, "patient_id": row.get("patient_id") or "",
                      "status": row.get("status") or "unknown", "error": row.get("error") or "",
                      "n_patches": int(row.get("n_patches") or 0),
                      "n_candidates": None if row.get("n_candidates") is None else int(row["n_candidates"]),
                      "width": row.get("width"), "height": row.get("height"), "mpp": number(row.get("mpp")),
                      "seconds": number(row.get("seconds")), "thumb": thumb})
    found = {c["status"] for c in cards}
    statuses = [s for s in STATUSES if s in found] + sorted(found - set(STATUSES))
    ok = sorted(c["n_patches"] for c in cards if c["status"] == "ok")
    params = (man or {}).get("params", {})
    return {"ran": True, "cards": cards,
            "status_counts": {s: sum(c["status"] == s for c in cards) for s in statuses},
            "n_patients": len({c["patient_id"] for c in cards}),
            "n_patches": sum(c["n_patches"] for c in cards),
            "patches_min": ok[0] if ok else None, "patches_median": ok[len(ok) // 2] if ok else None,
            "patches_max": ok[-1] if ok else None,
            "settings": {k: params[k] for k in ("patches", "patch_size", "target_mpp", "min_tissue",
                                                "tissue_method", "sampling") if k in params},
            "missing_thumbs": sum(c["thumb"] is None for c in cards)}
