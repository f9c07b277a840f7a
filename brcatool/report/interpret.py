"""The Interpretability section: evaluate's top-weighted patches and heatmaps for a few patients.

Reads only what evaluate wrote under ``runs/<name>/eval/``: ``topk/<patient>.png`` montages and
``heatmaps/<slide>.png`` (any model that writes them there is shown), with ``oof.parquet`` for the
patient's label and prediction. Patients are picked class by class, most confident first, so the
page shows every class and, where the model erred, its errors too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brcatool.artifacts import Workdir
from brcatool.names import file_name
from brcatool.report.images import inline
from brcatool.report.read import Notes, json_file, number, pngs, table


def interpret_section(wd: Workdir, notes: Notes, run_dirs: list[Path], n_patients: int) -> dict[str, Any]:
    runs = []
    slide_owner = _slide_owners(wd, run_dirs, notes)
    for run_dir in run_dirs:
        info = _run(run_dir, notes, slide_owner, n_patients)
        if info is not None:
            runs.append(info)
    if not runs:
        return {"ran": False,
                "hint": f"brcatool evaluate -w {wd.root} --run NAME --heatmaps   (a model that weighs "
                        "patches, e.g. --fusion xattn or --aggregator abmil)"}
    return {"ran": True, "runs": runs, "n_patients": n_patients}


def _slide_owners(wd: Workdir, run_dirs: list[Path], notes: Notes) -> dict[str, tuple[str, str]]:
    """File name of a slide's heatmap -> (slide_id, patient_id), from the tile table, else from
    evaluate's patch-weight tables (figures are named by ``names.file_name`` of the id)."""
    owners: dict[str, tuple[str, str]] = {}
    sources = [wd.slides_table] + [d / "eval" / "attention.parquet" for d in run_dirs]
    for path in sources:
        t = table(path, notes) if path.is_file() else None
        if t is not None and {"slide_id", "patient_id"} <= set(t.columns):
            for sid, pid in t.select("slide_id", "patient_id").unique().iter_rows():
                owners.setdefault(file_name(str(sid)), (str(sid), str(pid)))
    return owners


def _run(run_dir: Path, notes: Notes, slide_owner: dict[str, tuple[str, str]],
         n: int) -> dict[str, Any] | None:
    out = run_dir / "eval"
    mets = json_file(run_dir / "metrics.json", notes) or {}
    classes = [str(c) for c in mets.get("classes") or []]
    preds = _predictions(run_dir, classes, notes)
    patient_of = {file_name(pid): pid for pid in preds}
    topk = {patient_of.get(p.stem, p.stem): p for p in pngs(out / "topk")}
    heat: dict[str, list[tuple[str, Path]]] = {}
    for p in pngs(out / "heatmaps"):
        sid, pid = slide_owner.get(p.stem, (p.stem, p.stem))
        heat.setdefault(pid, []).append((sid, p))
    if not topk and not heat:
        return None
    have = sorted(set(topk) | set(heat))
    chosen = pick(have, preds, n)
    patients = []
    for pid in chosen:
        p = preds.get(pid, {})
        patients.append({
            "patient_id": pid, **p,
            "topk": inline(topk[pid]) if pid in topk else None,
            "heatmaps": [{"slide_id": sid, "image": inline(h, max_side=560, jpeg=True)}
                         for sid, h in heat.get(pid, [])],
        })
    return {"name": run_dir.name, "classes": classes, "patients": patients, "available": len(have),
            "methods": _methods(out / "attention.parquet", notes)}


def _methods(path: Path, notes: Notes) -> list[str]:
    """How the patch weights were made (``attention``, ``occlusion``, ...), when the table says."""
    t = table(path, notes) if path.is_file() else None
    if t is None or "method" not in t.columns:
        return ["attention"] if t is not None else []
    return sorted(str(m) for m in t["method"].unique().to_list() if m is not None)


def _predictions(run_dir: Path, classes: list[str], notes: Notes) -> dict[str, dict[str, Any]]:
    """patient -> label, predicted class and the probability of the predicted class (first repeat)."""
    oof = table(run_dir / "oof.parquet", notes)
    if oof is None or not {"patient_id", "target", "pred"} <= set(oof.columns):
        return {}
    if "repeat" in oof.columns:
        oof = oof.filter(oof["repeat"] == oof["repeat"].min())

    def name(i: Any) -> str:
        return classes[int(i)] if i is not None and 0 <= int(i) < len(classes) else str(i)

    out = {}
    for r in oof.to_dicts():
        pred = int(r["pred"])
        if "prob" in r:  # binary: probability of the second class
            p1 = number(r["prob"])
            conf = None if p1 is None else (p1 if pred == 1 else 1 - p1)
        else:
            conf = number(r.get(f"prob_{name(pred)}"))
        out[str(r["patient_id"])] = {"label": name(r["target"]), "predicted": name(pred),
                                     "correct": int(r["target"]) == pred, "confidence": conf}
    return out


def pick(patients: list[str], preds: dict[str, dict[str, Any]], n: int) -> list[str]:
    """Up to ``n`` patients, round robin over true classes; in each, confident errors and hits alternate."""
    by_class: dict[str, list[str]] = {}
    for pid in patients:
        by_class.setdefault(preds.get(pid, {}).get("label", ""), []).append(pid)

    def conf(pid: str) -> float:
        return -(preds.get(pid, {}).get("confidence") or 0.0)

    queues = []
    for lab in sorted(by_class):
        right = sorted((p for p in by_class[lab] if preds.get(p, {}).get("correct", True)), key=conf)
        wrong = sorted((p for p in by_class[lab] if not preds.get(p, {}).get("correct", True)), key=conf)
        q: list[str] = []
        while right or wrong:
            for src in (right, wrong):
                if src:
                    q.append(src.pop(0))
        queues.append(q)
    chosen: list[str] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen
