"""Evidence for a complaint: the calls the log's filters select, as a printable report (with the company,
product and notes the user types in, never stored) and as CSV, both through screener.evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, abort, render_template, request
from sqlalchemy.orm import Session

from screener import evidence
from screener.store import OUTCOMES, Call, utcnow
from web import db
from web.calls import DECISIONS, CallFilter, filtered
from web.format import zone

bp = Blueprint("evidence", __name__)
MAX_ROWS = 5000
KINDS = ("operator", "recorded", "silent")
# Only for printing: the page itself uses the dashboard's stylesheet, and the CSP allows no inline style.
PRINT_CSS = """\
header.top, .no-print, .flashes { display: none !important; }
body, .card, .table-wrap { background: #fff; border: 0; }
main { max-width: none; padding: 0; }
.print-only { display: block !important; }
table.evidence { font-size: 8pt; }
table.evidence td, table.evidence th { padding: 2px 4px; }
table.evidence code { font-size: 7pt; }
a { color: inherit; }
"""


@dataclass(frozen=True)
class ReportDetails:
    """What the user types in for the complaint; shown on the page, printed, never stored."""

    line: str = ""
    company: str = ""
    product: str = ""
    kind: str = ""
    notes: str = ""

    @classmethod
    def from_args(cls, args: Any) -> ReportDetails:
        def text(name: str, size: int = 200) -> str:
            return (args.get(name) or "").replace("\r\n", "\n").strip()[:size]

        kind = args.get("kind", "")
        return cls(text("line", 64), text("company"), text("product"), kind if kind in KINDS else "",
                   text("notes", 2000))

    def args(self) -> dict[str, str]:
        out = {"line": self.line, "company": self.company, "product": self.product, "kind": self.kind,
               "notes": self.notes}
        return {k: v for k, v in out.items() if v}


def selected(s: Session, f: CallFilter, region: str) -> tuple[list[Call], bool]:
    """The newest MAX_ROWS calls `f` selects, oldest first, and whether there were more."""
    stmt = filtered(f, region).order_by(Call.started_at.desc(), Call.id.desc()).limit(MAX_ROWS + 1)
    calls = list(s.scalars(stmt))
    return calls[:MAX_ROWS][::-1], len(calls) > MAX_ROWS


@bp.get("/evidence")
def report() -> str:
    """The printable report."""
    cfg = db.config()
    f = CallFilter.from_args(request.args)
    details = ReportDetails.from_args(request.args)
    calls, truncated = selected(db.session(), f, cfg.screening.region)
    rows = evidence.evidence_rows(calls, zone(), details.line)
    csv_args = {**f.args(), **({"line": details.line} if details.line else {})}
    return render_template("evidence.html", f=f, details=details, rows=rows, summary=evidence.summarize(rows),
                           truncated=truncated, max_rows=MAX_ROWS, outcomes=OUTCOMES, decisions=DECISIONS,
                           kinds=KINDS, csv_args=csv_args, generated=utcnow())


@bp.get("/evidence.csv")
def csv() -> Response:
    """The same calls as a CSV download."""
    cfg = db.config()
    f = CallFilter.from_args(request.args)
    if f.errors:
        abort(400, description=" ".join(f.errors))  # a download must not quietly ignore a filter
    calls, _truncated = selected(db.session(), f, cfg.screening.region)
    rows = evidence.evidence_rows(calls, zone(), ReportDetails.from_args(request.args).line)
    return Response(evidence.evidence_csv(rows), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=screener-evidence.csv"})


@bp.get("/evidence/print.css")
def print_css() -> Response:
    """The report's print stylesheet."""
    return Response(PRINT_CSS, mimetype="text/css", headers={"Cache-Control": "private, max-age=3600"})


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
