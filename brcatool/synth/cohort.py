"""``make_cohort``: a deterministic synthetic TCGA-BRCA-like cohort on disk.

Layout (as real TCGA downloads come):
``slides/*.tiff|.svs`` (pyramidal JPEG TIFFs, mpp 0.5), ``expression.tsv`` (genes x samples),
``clinical.tsv`` (patient_id, PAM50), and the ground truth the tests check against:
``truth/<slide_id>.png`` (tissue mask, one pixel per ``GRID`` px) and ``truth/truth.json``.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool.artifacts import Manifest, atomic_path, write_json, write_text
from brcatool.errors import InputError
from brcatool.synth import names
from brcatool.synth.counts import simulate_counts
from brcatool.synth.slides import GRID, SlideSpec, write_slide

#: Files and folders make_cohort writes inside OUT (and removes on overwrite).
OUTPUTS = ("slides", "truth", "expression.tsv", "clinical.tsv", "manifest.json")


@dataclass(frozen=True)
class SlideTruth:
    """One synthetic slide and what is true about it."""

    slide_id: str  # file name without extension
    patient_id: str
    subtype: str  # PAM50 subtype without the "BRCA." prefix
    path: Path
    width: int
    height: int
    levels: int
    vendor: str  # "generic-tiff" or "aperio", as openslide reports it
    blank: bool  # background only (no tissue)
    tissue_fraction: float  # share of truth-mask pixels that are tissue
    truth_mask: Path  # PNG, one pixel per `truth_downsample` x `truth_downsample` block


@dataclass
class CohortFiles:
    """Paths and ground truth of a cohort written by :func:`make_cohort`."""

    root: Path
    slides_dir: Path
    truth_dir: Path
    expression: Path
    clinical: Path
    truth_json: Path
    slides: list[SlideTruth]
    subtypes: dict[str, str]  # patient_id -> PAM50 subtype (e.g. "LumA") of every patient
    expression_patients: list[str]  # patients with a column in expression.tsv
    slide_patients: list[str]  # patients with at least one slide
    genes: list[str]
    outlier_samples: list[str] = field(default_factory=list)  # sample barcodes
    zero_genes: list[str] = field(default_factory=list)
    truth_downsample: int = GRID
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def patients(self) -> list[str]:
        return sorted(self.subtypes)


def _default_missing(patients: int) -> int:
    return max(1, round(0.05 * patients)) if patients >= 12 else 0


def _check(ok: bool, message: str, fix: str) -> None:
    if not ok:
        raise InputError(message, fix=fix)


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("synth", total=total)
        yield lambda: bar.advance(task)


#: Bounds on what a synthetic cohort may ask for (it is drawn in memory on one machine).
MAX_SLIDE_SIDE = 16384
MAX_PATIENTS = 5000
MAX_GENES = 60000


def make_cohort(
    out: str | Path,
    *,
    patients: int = 24,
    seed: int = 0,
    slides_per_patient: tuple[int, int] = (1, 2),
    slide_size: tuple[int, int] = (3072, 2304),
    mpp: float = 0.5,
    svs_fraction: float = 0.0,
    image_signal: float = 1.0,
    gene_signal: float = 1.0,
    genes: int = 2000,
    missing_expression: int | None = None,
    missing_slides: int | None = None,
    no_tissue_slides: int = 0,
    outlier_samples: int | None = None,
    zero_genes: int | None = None,
    level_downsample: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> CohortFiles:
    """Write a synthetic cohort into ``out`` and return its paths and ground truth.

    Same arguments, same bytes of the tables and same slide pixels. ``missing_expression``
    patients have slides but no expression column, ``missing_slides`` have expression but no
    slide (defaults: ~5 % each from 12 patients on, else none). Slide sizes vary down to 80 %
    of ``slide_size`` (width, height). ``image_signal``/``gene_signal`` scale how much the
    subtype shows in the pixels/counts (0 = independent). ``no_tissue_slides`` slides are
    background only. A non-empty ``out`` is refused unless ``overwrite``.
    """
    out = Path(out)
    lo, hi = slides_per_patient
    _check(patients >= 1, f"--patients must be >= 1, got {patients}", "pass a positive count")
    _check(1 <= lo <= hi, f"slides per patient must satisfy 1 <= min <= max, got {lo}..{hi}",
           "use e.g. (1, 2)")
    _check(min(slide_size) >= 256, f"slide size must be >= 256 px per side, got {slide_size}",
           "use e.g. 3072x2304")
    _check(max(slide_size) <= MAX_SLIDE_SIDE, f"slide size must be <= {MAX_SLIDE_SIDE} px per side "
           f"(a synthetic slide is drawn in memory), got {slide_size}", "use e.g. 3072x2304")
    _check(patients <= MAX_PATIENTS and genes <= MAX_GENES,
           f"at most {MAX_PATIENTS} patients and {MAX_GENES} genes, got {patients} and {genes}",
           "a synthetic cohort is for tests and demos: use e.g. --patients 24 --genes 2000")
    _check(0.0 <= svs_fraction <= 1.0, f"svs fraction must be in [0, 1], got {svs_fraction}",
           "use e.g. 0.25")
    _check(genes >= 60, f"need >= 60 genes (50 PAM50 + filler), got {genes}", "use e.g. 2000")
    _check(mpp > 0, f"mpp must be > 0, got {mpp}", "use e.g. 0.5")
    _check(level_downsample in (2, 4), "level downsample must be 2 or 4", "use 4")
    miss_e = _default_missing(patients) if missing_expression is None else missing_expression
    miss_s = _default_missing(patients) if missing_slides is None else missing_slides
    _check(miss_e >= 0 and miss_s >= 0 and miss_e + miss_s < patients,
           f"{miss_e} + {miss_s} patients missing a modality leave none with both",
           "lower missing_expression/missing_slides or add patients")
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", path=out, fix="choose a folder path")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError("output folder is not empty", path=out,
                             fix="pass --overwrite or choose an empty folder")
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    params: dict[str, Any] = dict(
        patients=patients, seed=seed, slides_per_patient=list(slides_per_patient),
        slide_size=list(slide_size), mpp=mpp, svs_fraction=svs_fraction,
        image_signal=image_signal, gene_signal=gene_signal, genes=genes,
        no_tissue_slides=no_tissue_slides, outlier_samples=outlier_samples,
        zero_genes=zero_genes, level_downsample=level_downsample)
    params.update(missing_expression=miss_e, missing_slides=miss_s)

    # --- who is who (one RNG stream per concern, so changing one part keeps the others)
    rng = np.random.default_rng([seed, 0])
    ids = names.patient_barcodes(patients, rng)
    subtypes = names.assign_subtypes(patients, rng)
    subtype_of = dict(zip(ids, subtypes, strict=True))
    # keep the first patient of every subtype complete, so no class loses a modality entirely
    keep = {ids[subtypes.index(s)] for s in set(subtypes)}
    candidates = [p for p in ids if p not in keep]
    if len(candidates) < miss_e + miss_s:
        candidates = ids
    picked = [candidates[i] for i in rng.permutation(len(candidates))[: miss_e + miss_s]]
    no_expr, no_slides = set(picked[:miss_e]), set(picked[miss_e:])

    slides: list[tuple[str, str, int, int, bool]] = []  # (slide_id, patient, w, h, svs)
    for p in ids:
        if p in no_slides:
            continue
        for k in range(int(rng.integers(lo, hi + 1))):
            w = int(slide_size[0] * rng.uniform(0.8, 1.0))
            h = int(slide_size[1] * rng.uniform(0.8, 1.0))
            slides.append((names.slide_name(p, k, rng), p, w, h, False))
    n_svs = round(svs_fraction * len(slides))
    if svs_fraction > 0:
        n_svs = max(1, n_svs)
    for i in rng.permutation(len(slides))[:n_svs]:
        slides[i] = (*slides[i][:4], True)
    _check(0 <= no_tissue_slides <= len(slides),
           f"no_tissue_slides={no_tissue_slides} but the cohort has {len(slides)} slides",
           "lower no_tissue_slides")
    blank = {int(i) for i in rng.permutation(len(slides))[:no_tissue_slides]}

    # --- tables
    expr_ids = [p for p in ids if p not in no_expr]
    order = rng.permutation(len(expr_ids))  # columns not in patient order: join by name
    expr_ids = [expr_ids[i] for i in order]
    n_out = (max(1, round(0.03 * len(expr_ids))) if len(expr_ids) >= 6 else 0) \
        if outlier_samples is None else outlier_samples
    n_zero = (5 if genes >= 200 else 1) if zero_genes is None else zero_genes
    counts = simulate_counts([subtype_of[p] for p in expr_ids], n_genes=genes,
                             gene_signal=gene_signal, rng=np.random.default_rng([seed, 1]),
                             outliers=n_out, zero_genes=n_zero)
    samples = [names.sample_barcode(p) for p in expr_ids]
    lines = ["\t".join(["gene", *samples])]
    lines += [gene + "\t" + "\t".join(map(str, row.tolist()))
              for gene, row in zip(counts.genes, counts.counts, strict=True)]
    write_text(out / "expression.tsv", "\n".join(lines) + "\n")
    clinical = ["patient_id\tPAM50"] + [f"{p}\tBRCA.{subtype_of[p]}" for p in sorted(ids)]
    write_text(out / "clinical.tsv", "\n".join(clinical) + "\n")

    # --- slides
    import cv2

    slides_dir, truth_dir = out / "slides", out / "truth"
    slides_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    made: list[SlideTruth] = []
    with _progress(progress, len(slides)) as step:
        for i, (sid, p, w, h, svs) in enumerate(slides):
            spec = SlideSpec(width=w, height=h, subtype=subtype_of[p], seed=(seed, 2, i),
                             image_signal=image_signal, blank=i in blank, mpp=mpp,
                             level_downsample=level_downsample)
            path = slides_dir / f"{sid}.{'svs' if svs else 'tiff'}"
            with atomic_path(path) as tmp:
                result, truth = write_slide(tmp, spec, svs=svs)
            mask_path = truth_dir / f"{sid}.png"
            with atomic_path(mask_path) as tmp:
                tmp.write_bytes(cv2.imencode(".png", truth)[1].tobytes())
            made.append(SlideTruth(
                slide_id=sid, patient_id=p, subtype=subtype_of[p], path=path, width=w, height=h,
                levels=len(result.levels), vendor="aperio" if svs else "generic-tiff",
                blank=i in blank, tissue_fraction=round(result.tissue_fraction, 4),
                truth_mask=mask_path))
            step()

    truth_json = write_json(truth_dir / "truth.json", {
        s.slide_id: {"downsample": GRID, "patient_id": s.patient_id, "subtype": s.subtype,
                     "file": s.path.name, "width": s.width, "height": s.height,
                     "vendor": s.vendor, "blank": s.blank, "tissue_fraction": s.tissue_fraction}
        for s in made})
    files = CohortFiles(
        root=out, slides_dir=slides_dir, truth_dir=truth_dir, expression=out / "expression.tsv",
        clinical=out / "clinical.tsv", truth_json=truth_json, slides=made, subtypes=subtype_of,
        expression_patients=sorted(expr_ids), slide_patients=sorted({s.patient_id for s in made}),
        genes=counts.genes, outlier_samples=[samples[c] for c in counts.outlier_samples],
        zero_genes=counts.zero_genes, params=params)
    Manifest("synth", params).write(out / "manifest.json", counts=summary(files))
    return files


def summary(files: CohortFiles) -> dict[str, int]:
    """Counts for the CLI table and the manifest."""
    return {
        "patients": len(files.subtypes),
        "slides": len(files.slides),
        "svs_slides": sum(s.vendor == "aperio" for s in files.slides),
        "blank_slides": sum(s.blank for s in files.slides),
        "genes": len(files.genes),
        "expression_samples": len(files.expression_patients),
        "patients_without_expression": len(set(files.subtypes) - set(files.expression_patients)),
        "patients_without_slides": len(set(files.subtypes) - set(files.slide_patients)),
    }
