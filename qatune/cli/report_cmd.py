"""``qatune report OUTPUT``: rebuild a comparison's report (csv, md, json, html, plots) from its finished runs.

Nothing is trained or measured: the report is read from OUTPUT/compare.json and OUTPUT/<method>/.
"""

from __future__ import annotations

import argparse

from qatune.cli.common import add_debug, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild a comparison report from finished runs", description=__doc__)
    p.add_argument("output", help="the --output directory of qatune compare")
    p.add_argument("--no-plots", action="store_true", help="CSV, Markdown and JSON only (no HTML/PNG)")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qatune.compare.report import REPORT_FILES, summary, write_report

    out = Path(args.output)
    rows = write_report(out, plots=not args.no_plots)
    files = [f for f in REPORT_FILES if (out / f).is_file()] + sorted(p.name for p in out.glob("*.png"))
    print_json({"output": str(out), "files": [str(out / f) for f in files], "methods": summary(rows)})
    return 0
