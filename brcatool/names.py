"""Ids and names that become file names: one mapping, used wherever an id reaches the file system.

Slide ids, patient ids and encoder names come from data (file names, clinical tables, model
hubs); they may hold ``/``, ``..``, NUL, Unicode, Windows device names or a name brcatool uses
itself (``zarr.json``, ``params``). ``file_name`` maps any id to one path component that is safe
on Linux, macOS and Windows and never equals the name of another id or an internal file:

- a *plain* id (ASCII letters, digits, ``.``, ``_``, ``-``; not starting with a dot or dash; at
  most ``PLAIN_MAX`` characters; not reserved) is its own file name, so TCGA barcodes stay readable;
- any other id becomes ``<readable part>~<12 hex digits of its sha256>``; ``~`` never occurs in a
  plain name, so the two forms cannot meet, and the hash tells different ids apart.

The id itself is kept unchanged in every table; only paths use ``file_name``. Names the user
chooses for outputs (``--name`` of a run or ablation) are checked with ``check_name`` instead:
a refusal is clearer than a folder under an unexpected name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from brcatool.errors import InputError

PLAIN_MAX = 120
HASH_CHARS = 12
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Windows device names (with or without an extension they still name the device there).
WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                              *(f"lpt{i}" for i in range(10))})
#: Names brcatool itself uses beside id-named files (Zarr metadata, records, manifests).
INTERNAL = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", "zarr", "manifest", "manifest.json",
                      "params", "params.json"})


def is_plain(name: str) -> bool:
    """Whether ``name`` is its own file name (see the module doc)."""
    return (0 < len(name) <= PLAIN_MAX and bool(_PLAIN.match(name)) and not name.endswith(".")
            and ".." not in name and name.split(".")[0].lower() not in WINDOWS_RESERVED
            and name.lower() not in INTERNAL)


def file_name(id_: str) -> str:
    """The one path component that stands for ``id_`` (injective; see the module doc)."""
    id_ = str(id_)
    if is_plain(id_):
        return id_
    readable = _UNSAFE.sub("_", id_).strip("._-")[:64].rstrip("._-") or "id"
    if readable.split(".")[0].lower() in WINDOWS_RESERVED:  # `con.txt~...` still names a device
        readable = f"_{readable}"
    digest = hashlib.sha256(id_.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{readable}~{digest}"


def check_name(name: str, *, what: str) -> str:
    """A user-chosen output name that must be plain; anything else is refused with one line."""
    if not is_plain(str(name)):
        shown = repr(str(name))[:80]
        raise InputError(
            f"{what} {shown} cannot be used as a folder name",
            fix=f"use 1-{PLAIN_MAX} ASCII letters, digits, '.', '_' or '-', starting with a letter, "
            "digit or '_', without '..' (and not a reserved name such as 'manifest' or 'con')")
    return str(name)


def check_distinct(ids: Iterable[str], *, what: str) -> None:
    """Refuse ids whose file names differ only in case (they would meet on macOS and Windows)."""
    seen: dict[str, str] = {}
    for id_ in ids:
        key = file_name(id_).casefold()
        if key in seen and seen[key] != id_:
            raise InputError(f"{what} {seen[key]!r} and {id_!r} differ only in letter case",
                             fix=f"rename one; {what}s name files, and case-insensitive file "
                             "systems (macOS, Windows) cannot tell them apart")
        seen.setdefault(key, id_)
