"""The life cycle of a stage output beyond one atomic write: who may write it (stage locks),
what an interrupted run left behind (debris), how ``--overwrite`` replaces it (built beside, swapped
at the end) and whether what it was made from is still current (upstream fingerprints).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from brcatool.artifacts import Workdir, normalise, read_json, remove
from brcatool.errors import ArtifactError
from brcatool.names import file_name


# --------------------------------------------------------------------------- replacing outputs
def _stage_tmp(final: Path, tag: str, token: str) -> Path:
    return final.parent / f".{tag}.tmp-{token}" / final.name


@contextlib.contextmanager
def replacing(wd: Workdir, finals: Sequence[Path], *, enabled: bool = True,
              tag: str = "replace") -> Iterator[Workdir]:
    """Build new outputs beside the old ones; swap them in only when the block succeeds.

    Yields a ``Workdir`` whose paths for ``finals`` (files or folders) point into staging folders
    beside them (``.<tag>-<key>.tmp-<hex>/<name>``, same file system), while every other artifact is
    read in place. On success each final is replaced by its staged version (or removed when the
    new run made none); the old manifests (put them last in ``finals``) go first and the new ones
    come last, so an interruption mid-swap leaves an output that reads as unfinished, never a mix
    that looks finished. On failure the staging is removed and the old outputs are untouched.
    With ``enabled=False`` (no ``--overwrite``) it yields ``wd`` itself.
    """
    if not enabled:
        yield wd
        return
    # one replacement of these outputs at a time (a second refuses with one line); the staging a
    # killed replacement left beside them is removed first
    key = replace_key(finals)
    with stage_lock(wd, f"replace-{tag}-{key}"):
        for parent in {Path(f).parent for f in finals}:  # only this set's: others may be live
            clean_debris(parent, [f"{tag}-{key}"])
        with _replacing(wd, finals, f"{tag}-{key}") as staged:
            yield staged


def replace_key(finals: Sequence[Path]) -> str:
    """Names the lock and the staging folders of one set of outputs being replaced."""
    return hashlib.sha256("\n".join(sorted(str(f) for f in finals)).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _replacing(wd: Workdir, finals: Sequence[Path], tag: str) -> Iterator[Workdir]:
    token = uuid.uuid4().hex[:8]
    pairs = [(Path(f), _stage_tmp(Path(f), tag, token)) for f in finals]
    staged_wd = Workdir(wd.root, wd.redirects + tuple(pairs))
    new_parents = {f.parent for f, _ in pairs if not f.parent.exists()}
    try:
        yield staged_wd
        trash = []
        for final, _ in reversed(pairs):  # manifests (last) leave first
            if final.exists() or final.is_symlink():
                gone = final.parent / f".{tag}.tmp-{token}" / f".old-{final.name}"
                gone.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, gone)
                trash.append(gone)
        for final, staged in pairs:
            if staged.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
    finally:
        for parent in {staged.parent for _, staged in pairs}:
            remove(parent)
        for parent in new_parents:  # made only to hold the staging: leave no empty folder behind
            with contextlib.suppress(OSError):
                parent.rmdir()


#: Temporary names made by this module: ``.<name>.tmp-<8 hex>`` (atomic writes, staging folders).
_DEBRIS = re.compile(r"^\.(?P<final>.+)\.tmp-[0-9a-f]{8}$")


def clean_debris(directory: str | Path, finals: Iterable[str] | None = None) -> list[Path]:
    """Remove temporaries an interrupted run left in ``directory`` (only those of ``finals``).

    Call it at a stage's start, while holding the stage's lock, for folders the stage owns
    (``finals=None``: every temporary there) or for its own names in a shared folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    wanted = None if finals is None else set(finals)
    removed = []
    for p in directory.iterdir():
        m = _DEBRIS.match(p.name)
        if m and (wanted is None or m.group("final") in wanted):
            remove(p)
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- stage locks
def stage_lock(wd: Workdir, key: str, *, wait: float = 0.0):
    """A workdir-level lock for one output (``tile``, ``train-<run>``, ...): host, pid, time in the
    file; a lock whose process is gone is taken over. A second process refuses with one line
    (``LockBusy`` names the holder) instead of mixing its writes with the first one's."""
    from brcatool import locks

    return locks.locked(wd.root / ".locks" / f"{file_name(key)}.lock", wait=wait)


# --------------------------------------------------------------------------- upstream fingerprints
def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def output_fingerprint(*parts: Any, files: Iterable[str | Path] = ()) -> str:
    """What a stage output holds, in 16 hex digits: the bytes of ``files`` plus JSON ``parts``.

    Stages store it as ``fingerprint`` in their manifest; it changes exactly when the output's
    content does (a re-run that resumes and rewrites nothing keeps it).
    """
    h = hashlib.sha256(json.dumps(normalise(list(parts)), sort_keys=True).encode())
    for f in files:
        h.update(file_digest(f).encode() if Path(f).is_file() else b"-")
    return h.hexdigest()[:16]


def consumed(wd: Workdir, stage: str, manifest_path: str | Path) -> dict[str, Any]:
    """A record of the upstream output a stage reads: put a list of them under ``consumed``."""
    manifest_path = Path(manifest_path)
    fp = None
    if manifest_path.is_file():
        fp = read_json(manifest_path).get("fingerprint")
    try:
        rel = str(manifest_path.relative_to(wd.root))
    except ValueError:
        rel = str(manifest_path)
    return {"stage": stage, "manifest": rel, "fingerprint": fp}


def stale_inputs(wd: Workdir, manifest: Mapping[str, Any]) -> list[str]:
    """Upstream stages whose output changed since ``manifest``'s stage read it (empty: fresh)."""
    out = []
    for rec in manifest.get("consumed", []) or []:
        path = Path(rec.get("manifest", ""))
        path = path if path.is_absolute() else wd.root / path
        now = read_json(path).get("fingerprint") if path.is_file() else None
        if now != rec.get("fingerprint"):
            out.append(str(rec.get("stage")))
    return out


def check_fresh(wd: Workdir, manifest_path: str | Path, *, what: str, rerun: str) -> None:
    """Refuse to use an output made from upstream outputs that have changed since.

    ``rerun`` is the command that remakes it, e.g. ``embed --encoder resnet50 --overwrite``.
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        return
    stale = stale_inputs(wd, read_json(manifest_path))
    if stale:
        raise ArtifactError(
            f"{what} was made from an older {' and '.join(stale)} output (it changed since)",
            path=manifest_path.parent if manifest_path.name == "manifest.json" else manifest_path,
            fix=f"re-run `brcatool {rerun} -w {wd.root}`")


def params_digest(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as normalised JSON (keys sorted): a parameters key."""
    return hashlib.sha256(json.dumps(normalise(obj), sort_keys=True).encode()).hexdigest()[:16]
