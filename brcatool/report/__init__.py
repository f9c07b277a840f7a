"""``brcatool report``: one self-contained HTML page per workdir, built from its artifacts alone.

``collect`` reads each stage's outputs into plain dicts (sections of stages not run yet say so),
``render`` turns them into HTML with the jinja2 templates in ``templates/`` (CSS and the small
sorting/filtering script inlined, images as data URIs: nothing is fetched from the network).
"""

from brcatool.report.stage import ReportConfig, ReportResult, run_report

__all__ = ["ReportConfig", "ReportResult", "run_report"]
