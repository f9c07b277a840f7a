"""The Provenance section: every stage's manifest and the command that repeats it from its YAML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brcatool.artifacts import Workdir
from brcatool.report.read import Notes, duration, json_file, text_file

#: Input fingerprints listed per stage before the rest is summarised as a count.
MAX_INPUTS = 12


def outputs(wd: Workdir, run_dirs: list[Path]) -> list[tuple[str, str, Path, Path]]:
    """(command, what, manifest, resolved-config YAML) of every stage output in the workdir."""
    found = [("tile", "patches", wd.stage_manifest("tile"), wd.stage_manifest("tile").with_suffix(".yaml"))]
    for enc in wd.available_encoders():
        found.append(("embed", f"features/{enc}", wd.features_dir(enc) / "manifest.json",
                      wd.features_dir(enc) / "config.yaml"))
    found.append(("prep-expr", "expression and labels", wd.stage_manifest("prep-expr"),
                  wd.stage_manifest("prep-expr").with_suffix(".yaml")))
    for run in run_dirs:
        found.append(("train", f"runs/{run.name}", run / "manifest.json", run / "config.yaml"))
        found.append(("evaluate", f"runs/{run.name}/eval", run / "eval" / "manifest.json",
                      run / "eval" / "config.yaml"))
        ext = run / "external"
        for d in sorted(ext.iterdir()) if ext.is_dir() else []:
            found.append(("evaluate", f"runs/{run.name}/external/{d.name}", d / "manifest.json",
                          d / "config.yaml"))
    if wd.ablations_dir.is_dir():
        for d in sorted(p for p in wd.ablations_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found.append(("ablate", f"ablations/{d.name}", d / "manifest.json", d / "config.yaml"))
    return [f for f in found if f[2].is_file()]


def provenance_section(wd: Workdir, notes: Notes, run_dirs: list[Path]) -> dict[str, Any]:
    stages = []
    for command, what, man_path, yaml_path in outputs(wd, run_dirs):
        man = json_file(man_path, notes)
        if man is None:
            continue
        inputs = [{"path": str(i.get("path", "?")), "size": i.get("size"), "mtime": i.get("mtime")}
                  for i in man.get("inputs") or [] if isinstance(i, dict)]
        versions = man.get("versions") if isinstance(man.get("versions"), dict) else {}
        yaml_text = text_file(yaml_path, notes)
        extra = {k: v for k, v in man.items()
                 if k not in ("stage", "params", "inputs", "versions", "started", "finished", "counts")}
        stages.append({
            "command": command, "what": what, "manifest": str(man_path), "stage": man.get("stage", command),
            "started": man.get("started"), "finished": man.get("finished"), "seconds": duration(man),
            "status": man.get("status"), "versions": versions, "brcatool": versions.get("brcatool"),
            "counts": man.get("counts") if isinstance(man.get("counts"), dict) else {},
            "params": json.dumps(man.get("params") or {}, indent=2, sort_keys=True, default=str),
            "inputs": inputs[:MAX_INPUTS], "more_inputs": max(0, len(inputs) - MAX_INPUTS),
            "extra": json.dumps(extra, indent=2, default=str) if extra else "",
            "yaml": yaml_text, "yaml_path": str(yaml_path),
            "repeat": (f"brcatool {command} -w {wd.root} --config {yaml_path}" if yaml_text is not None
                       else None),
        })
    if not stages:
        return {"ran": False, "hint": f"any stage, e.g. brcatool tile SLIDES_DIR -w {wd.root}"}
    return {"ran": True, "stages": stages,
            "brcatool_versions": sorted({str(s["brcatool"]) for s in stages if s["brcatool"]})}
