"""Images for the report: files on disk -> ``data:`` URIs, checked to decode, shrunk when asked.

The page must open from a USB stick or an e-mail attachment, so every image is inlined. A file
that cannot be decoded is never inlined (a browser would show a broken image): it becomes
``None`` and the page says which file was unreadable.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Image:
    """One inlined image: what ``<img>`` needs, plus where it came from."""

    src: str  # data: URI
    width: int
    height: int
    path: str  # the file in the workdir (shown in captions and alt text)
    bytes: int  # size of the encoded image inside the page


def _decode(data: bytes) -> np.ndarray | None:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return arr if arr is not None and arr.size else None


def inline(path: str | Path, *, max_side: int | None = None, jpeg: bool = False,
           quality: int = 82) -> Image | None:
    """``path`` as a data URI; shrunk to ``max_side`` (and re-encoded as JPEG when ``jpeg``).

    PNG files that need no resizing are inlined byte for byte (plots stay exactly as written).
    Returns None when the file is missing or not a decodable image.
    """
    import cv2

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    arr = _decode(data)
    if arr is None:
        return None
    h, w = arr.shape[:2]
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    if scale >= 1.0 and not jpeg and data[:8] == b"\x89PNG\r\n\x1a\n":
        return Image(f"data:image/png;base64,{base64.b64encode(data).decode()}", w, h, str(path), len(data))
    if scale < 1.0:
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA)
    if jpeg:
        if arr.ndim == 3 and arr.shape[2] == 4:  # JPEG has no alpha: flatten onto white
            alpha = arr[..., 3:4].astype(np.float32) / 255.0
            arr = (arr[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        mime = "image/jpeg"
    else:
        ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        mime = "image/png"
    if not ok:
        return None
    raw = buf.tobytes()
    return Image(f"data:{mime};base64,{base64.b64encode(raw).decode()}", w, h, str(path), len(raw))
