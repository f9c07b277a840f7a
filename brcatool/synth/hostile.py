"""A seeded generator of hostile names: what an id or a run name may hold when it comes from data.

Used by the ``tests/test_guarantees_*`` property tests (hypothesis is not a dependency): the fixed list
covers each known class (traversal, separators, NUL, dots, Unicode direction and combining marks,
Windows device names, names brcatool uses itself, very long names), the random part mixes them.
"""

from __future__ import annotations

import random

FIXED = [
    "..", ".", "/", "a/../b", "../../precious", "/etc/passwd", "C:\\Windows\\x", "a\\b", "\x00",
    "a\x00b", ".hidden", ".tmp-x", ".x.tmp-0123abcd", "-rf", "~", "a~b", "", " ", " lead", "trail ",
    "a.", "a..b", "..tiff", "x" * 300, "é", "e\u0301", "\u202eevil.exe", "שלום", "名前", "🙂",
    "CON", "con.txt", "nul", "LPT1", "com9.json", "aux", "params", "params.json", "manifest",
    "manifest.json", "zarr.json", ".zattrs", "zarr", "TCGA-A1-A0SB-01Z-00-DX1", "tcga-a1-a0sb",
    "a:b", "a*b?", "<x>", "a|b", "new\nline", "tab\tbed", "%2e%2e", "a/b/c", "//", "./a",
]
_POOL = list("abcXYZ019._-~/\\:*?\"<>| \x00\t\n") + ["..", "é", "e\u0301", "\u202e", "名", "🙂", "CON"]


def hostile_names(n: int = 300, seed: int = 0) -> list[str]:
    """The fixed list plus ``n`` random names (lengths 1-40, a few very long), deterministic."""
    rng = random.Random(seed)
    out = list(FIXED)
    for i in range(n):
        length = rng.choice([1, 2, 3, 5, 8, 13, 40]) if i % 25 else rng.randint(200, 400)
        out.append("".join(rng.choice(_POOL) for _ in range(length)))
    seen, unique = set(), []
    for name in out:
        if name not in seen:
            seen.add(name)
            unique.append(name)
    return unique
