"""Reports of a gated run: one record type, and renderers that each take a list of records.

``record``: ``GateRecord`` (one gated test as plain data, what xdist workers send home), the
JSON report's schema (in its docstring) and the run's overall outcome; ``json_report`` writes and
reads the report file; ``files``: atomic writes. ``terminal``,
``markdown``, ``plot`` (PNG) and ``junit`` (XML properties) render records (and their forgetting
curves, whose rows and sentences ``curve`` words once for all formats); ``summary`` holds the
wording they share. ``flips`` writes every lost and gained example (JSON Lines). No pytest
import; matplotlib is imported only when a chart is written.
"""

from __future__ import annotations

from pytest_ftgate.reporting.flips import flip_rows, write_flips
from pytest_ftgate.reporting.junit import junit_properties
from pytest_ftgate.reporting.markdown import to_markdown, write_markdown
from pytest_ftgate.reporting.plot import PLOT_INSTALL_HINT, require_matplotlib, write_curve_plot, write_plot
from pytest_ftgate.reporting.json_report import load_json, make_meta, to_json, write_json
from pytest_ftgate.reporting.record import SCHEMA, SCHEMA_VERSION, GateRecord, collate, overall_outcome
from pytest_ftgate.reporting.summary import advice, headline, outcome_note
from pytest_ftgate.reporting.terminal import summary_lines, write_summary

__all__ = [
    "PLOT_INSTALL_HINT",
    "SCHEMA",
    "SCHEMA_VERSION",
    "GateRecord",
    "advice",
    "collate",
    "flip_rows",
    "headline",
    "junit_properties",
    "load_json",
    "make_meta",
    "outcome_note",
    "overall_outcome",
    "require_matplotlib",
    "summary_lines",
    "to_json",
    "to_markdown",
    "write_flips",
    "write_json",
    "write_markdown",
    "write_curve_plot",
    "write_plot",
    "write_summary",
]
