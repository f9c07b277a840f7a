"""``evaluate --geojson``: one QuPath FeatureCollection per slide of patch weights and the prediction.

Each patch becomes a locked ``tile`` object (its level-0 square from ``patches.parquet``) with the
patch weight as a measurement named after the method (``attention weight`` or ``occlusion
contribution``), a colour from it (inferno, the slide's lowest to highest weight, as the PNG
heatmaps), and the slide's predicted probability as a second measurement. The collection's
``properties`` (and every tile's ``prediction`` property) hold the patient, the predicted class and
its probability, the true label and the run. Import in QuPath with File > Import objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.interop import geojson

MEASUREMENT = {"attention": "attention weight", "occlusion": "occlusion contribution"}


def patient_predictions(table: Any, classes: list[str]) -> dict[str, dict[str, Any]]:
    """patient -> predicted class, its probability and the true class, from an oof/predictions table
    (out-of-fold repeats averaged: binary, mean probability and majority decision; else arg-max)."""
    import polars as pl

    out: dict[str, dict[str, Any]] = {}
    cols = ["prob"] if len(classes) == 2 else [f"prob_{c}" for c in classes]
    agg = table.group_by("patient_id").agg([pl.col(c).mean() for c in cols] +
                                           [pl.col("pred").mean().alias("_pred"), pl.col("target").first()])
    for row in agg.iter_rows(named=True):
        if len(classes) == 2:
            k = int(row["_pred"] >= 0.5)
            prob = float(row["prob"]) if k == 1 else 1.0 - float(row["prob"])
        else:
            probs = np.array([row[c] for c in cols], dtype=np.float64)
            k, prob = int(probs.argmax()), float(probs.max())
        out[str(row["patient_id"])] = {"predicted_class": classes[k], "probability": round(prob, 6),
                                       "true_class": classes[int(row["target"])]}
    return out


def write_slide_collections(wd: Workdir, weights: Any, predictions: dict[str, dict[str, Any]], out: Path,
                            *, run: str, notes: list[str]) -> int:
    """``out/<slide>.geojson`` for every slide with weights; returns how many were written."""
    from brcatool.names import file_name

    if not wd.patches_table.is_file():
        notes.append("no GeoJSON: patches.parquet missing")
        return 0
    patches = artifacts.read_parquet(wd.patches_table, schema="patches")
    slides_t = artifacts.read_parquet(wd.slides_table, schema="slides") if wd.slides_table.is_file() else None
    mpp0 = dict(zip(slides_t["slide_id"], slides_t["mpp"], strict=True)) if slides_t is not None else {}
    method = str(weights["method"][0]) if "method" in weights.columns and weights.height else "attention"
    name = MEASUREMENT.get(method, f"{method} weight")
    joined = weights.join(patches.select("slide_id", "patch_index", "x", "y", "size", "mpp"),
                          on=["slide_id", "patch_index"], how="inner")
    written = 0
    for (sid,), part in sorted(joined.group_by("slide_id"), key=lambda g: g[0]):
        part = part.sort("patch_index")
        base = mpp0.get(sid) or float(part["mpp"][0])
        size0 = part["size"].to_numpy() * part["mpp"].to_numpy() / base
        pid = str(part["patient_id"][0])
        pred = predictions.get(pid, {})
        props = {"slide_id": sid, "patient_id": pid, "run": run, "method": method, **pred}
        extra = {"predicted probability": pred["probability"]} if pred else None
        coll = geojson.tile_collection(part.select("x", "y").to_numpy(), size0, part["weight"].to_numpy(),
                                       measurement=name, extra=extra, properties=props,
                                       names=[f"patch {i}" for i in part["patch_index"].to_list()])
        for f in coll["features"]:
            f["properties"]["prediction"] = pred
        geojson.write(out / f"{file_name(sid)}.geojson", coll)
        written += 1
    return written
