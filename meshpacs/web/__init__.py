"""What the node shows an administrator over HTTP: a dashboard, Prometheus metrics, status.

::

    metrics.py    the status document as Prometheus text (format 0.0.4), sans I/O
    dashboard.py  the status document as one HTML page (inline CSS and SVG), sans I/O
    history.py    protection over time: PHI-free snapshots in state/history.jsonl
    figures.py    counts the status document lacks, read-only from the node's SQLite files
    token.py      the access token in state/dashboard.token (0600)
    server.py     a small asyncio HTTP/1.1 server: GET only, bounded, token-protected

This room imports nothing of the node: the daemon passes the server its status document
as a callable (``site_status`` bound to the config), so the page and the metrics show
exactly what ``meshpacs status --json`` prints.
"""

from __future__ import annotations

from meshpacs.web.dashboard import render_dashboard
from meshpacs.web.figures import catalog_figures
from meshpacs.web.history import HISTORY_FILE, keep_history, read_history
from meshpacs.web.metrics import render_metrics
from meshpacs.web.server import DashboardServer, Limits
from meshpacs.web.token import TOKEN_FILE, ensure_token, read_token

__all__ = [
    "HISTORY_FILE",
    "TOKEN_FILE",
    "DashboardServer",
    "Limits",
    "catalog_figures",
    "ensure_token",
    "keep_history",
    "read_history",
    "read_token",
    "render_dashboard",
    "render_metrics",
]
