"""Training options: ``TrainSettings`` (shared by ``train`` and ``ablate``) and ``TrainConfig``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from brcatool import config
from brcatool.errors import InputError

MISSING_MODES = ("drop", "mask")
OPTIMIZERS = ("adamw", "adam")
SPLITS = ("patient", "site")
SLIDE_TYPES = ("DX", "TS", "BS")
# ``--paper``: the study's protocol in one flag (Adam without weight decay, no class weighting,
# mean pooling, 35 patches per patient, 5 folds); any option given explicitly still wins
PAPER = {"optimizer": "adam", "weight_decay": 0.0, "pos_weight": "none", "aggregator": "mean",
         "aggregators": ["mean"], "bag_size": 35, "folds": 5}


@dataclass
class TrainSettings:
    """Training options shared by ``train`` and ``ablate``: one definition, so they cannot drift."""

    encoder: str | None = None
    folds: int = 5
    repeats: int = 1
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    patience: int = 6
    hidden: int = 128
    dropout: float = 0.25
    heads: int = 4
    missing: str = "drop"
    threshold: str = "0.5"
    pos_weight: str = "auto"
    optimizer: str = "adamw"
    bag_size: int = 0  # > 0: patches drawn per patient per training step (prediction uses every patch)
    split: str = "patient"  # or "site": no tissue-source site in both training and validation
    site_column: str | None = None  # --split site on a non-TCGA cohort: a column of the clinical table
    slide_types: str = "DX,TS,BS"
    keep_all_samples: bool = False  # else only primary-tumour (01) slides join a patient's bag
    device: str = "auto"
    dask: str | None = None  # run the fold fits as Dask tasks: a scheduler address or "local:N"
    seed: int = 0
    overwrite: bool = False

    def shared(self) -> dict[str, Any]:
        """These settings alone, to build a TrainConfig from any subclass."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainSettings)}

    def slide_filter(self) -> dict[str, Any]:
        """``load_cohort``'s slide selection from these settings."""
        return {"slide_types": self.slide_type_list(), "keep_all_samples": self.keep_all_samples}

    def slide_type_list(self) -> list[str]:
        types = [t.strip().upper() for t in str(self.slide_types).split(",") if t.strip()]
        bad = [t for t in types if t not in SLIDE_TYPES]
        if not types or bad:
            raise InputError(f"--slide-types {self.slide_types!r}: unknown {', '.join(bad) or 'empty list'}",
                             fix=f"a comma-separated subset of {','.join(SLIDE_TYPES)}")
        return types

    def check_shared(self) -> None:
        """The checks of the shared settings (``train`` and ``ablate`` alike)."""
        checks = [
            (self.optimizer in OPTIMIZERS, f"--optimizer must be adamw or adam, got {self.optimizer!r}"),
            (self.split in SPLITS, f"--split must be patient or site, got {self.split!r}"),
            (self.bag_size >= 0, "--bag-size must be >= 0 (0 = every patch)"),
            (self.dask is None or bool(self.dask.strip()), "--dask needs a scheduler address or local:N"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        self.slide_type_list()

    def apply_paper(self, explicit: set[str] = frozenset()) -> None:
        """Set the ``--paper`` protocol on every field not in ``explicit`` (given by the user)."""
        for k, v in PAPER.items():
            if hasattr(self, k) and k not in explicit:
                setattr(self, k, list(v) if isinstance(v, list) else v)


@dataclass
class TrainConfig(TrainSettings):
    """Options of ``brcatool train`` (defaults = the CLI's)."""

    fusion: str = "xattn"
    aggregator: str = "abmil"
    gene_tokens: int = 4
    xattn_dir: str = "gene2img"
    patch_dropout: float = 0.0
    modality_dropout: float = 0.0
    val_frac: float = 0.2
    name: str | None = None

    def validate(self) -> None:
        from brcatool.models import AGGREGATORS, FUSIONS

        FUSIONS.get(self.fusion)
        AGGREGATORS.get(self.aggregator)
        self.check_shared()
        checks = [
            (self.missing in MISSING_MODES, f"--missing must be drop or mask, got {self.missing!r}"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.patience >= 1,
             "--epochs, --batch-size and --patience must be at least 1"),
            (self.lr > 0 and self.weight_decay >= 0, "--lr must be > 0 and --weight-decay >= 0"),
            (0 <= self.patch_dropout < 1 and 0 <= self.dropout < 1 and 0 <= self.modality_dropout < 1,
             "dropout rates must be in [0, 1)"),
            (0 < self.val_frac < 0.5, "val_frac must be in (0, 0.5)"),
            (self.hidden >= 1 and self.heads >= 1, "--hidden and --heads must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        self.threshold_value()
        self.pos_weight_value()

    def threshold_value(self) -> float | None:
        """None = tuned on the inner validation split."""
        if str(self.threshold) == "tuned":
            return None
        try:
            t = float(self.threshold)
        except ValueError:
            t = math.nan
        if not 0 < t < 1:
            raise InputError(f"--threshold must be a number in (0, 1) or 'tuned', got {self.threshold!r}")
        return t

    def pos_weight_value(self) -> float | str | None:
        if str(self.pos_weight) in ("auto", "none"):
            return None if self.pos_weight == "none" else "auto"
        try:
            w = float(self.pos_weight)
        except ValueError:
            w = -1.0
        if w <= 0:
            raise InputError(f"--pos-weight must be auto, none or a number > 0, got {self.pos_weight!r}")
        return w

    def params(self) -> dict[str, Any]:
        """What decides the result (compared on re-runs): not the name, device or --overwrite."""
        d = config.to_dict(self)
        for k in ("name", "device", "overwrite", "dask"):  # where it runs does not change the result
            d.pop(k)
        return d

