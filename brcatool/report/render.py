"""The collected dict -> one HTML page (jinja2 templates in ``templates/``, CSS and script inlined)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from brcatool.errors import InputError

TEMPLATES = Path(__file__).parent / "templates"


def fmt(x: Any, digits: int = 3, sign: bool = False) -> str:
    """A number for a table cell: ``n/a`` when missing, integers as they are, floats rounded."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:+d}" if sign else str(x)
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def seconds(x: Any) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    if x < 90:
        return f"{x:.1f} s"
    return f"{x / 60:.1f} min" if x < 5400 else f"{x / 3600:.1f} h"


def when(stamp: Any) -> str:
    """An ISO time stamp as ``YYYY-MM-DD HH:MM:SS`` (UTC offset dropped when it is UTC)."""
    if not stamp:
        return "–"
    text = str(stamp).replace("T", " ")
    text = text.split(".")[0] if "." in text else text
    return text[:-6] if text.endswith("+00:00") else text


def size(n: Any) -> str:
    if n is None:
        return "n/a"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def environment() -> Any:
    try:
        import jinja2
    except ImportError:
        raise InputError("the report needs jinja2, which is not installed",
                         fix="pip install 'brcatool[report]'") from None
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]),
                             # a manifest or JSON file without some key renders empty, never stops the page
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, seconds=seconds, size=size, when=when)
    return env


def render(data: dict[str, Any]) -> str:
    return environment().get_template("report.html.j2").render(**data)
