"""The evidence report and its CSV: login, the log's filters, the row limit, neutralised cells, escaped names."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from screener.evidence import FIELDS
from screener.store import utcnow
from web import evidence as evidence_view

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "bell\x07 nul\x00 esc\x1b[31m",
]


def rows(body: str) -> int:
    return body.count("<time datetime=")


def csv_rows(auth: Any, **args: str) -> list[dict[str, str]]:
    r = auth.get("/evidence.csv", query_string=args)
    assert r.status_code == 200
    return list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))


@pytest.mark.parametrize("url", ["/evidence", "/evidence.csv", "/evidence?q=%2B390212345678", "/evidence/print.css"])
def test_login_required(client: FlaskClient, add_call: Callable[..., int], url: str) -> None:
    add_call(name="Secret Caller")
    r = client.get(url)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/login?next=")
    assert b"Secret Caller" not in r.data


def test_report_page(auth: Any, add_call: Callable[..., int]) -> None:
    add_call("+390212345678", name="Energia Srl", at=datetime(2026, 3, 7, 18, 30, tzinfo=UTC),  # Sat 19:30
             called_line="<sip:0298765432@fritz.box>", call_id="abc@carrier", from_raw="<sip:0212345678@fritz.box>")
    add_call(None, withheld=True, caller_raw="anonymous", at=datetime(2026, 3, 4, 11, 0, tzinfo=UTC))
    r = auth.get("/evidence")
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    assert rows(body) == 2
    assert body.index("2026-03-04") < body.index("2026-03-07")  # oldest first, as a complaint lists them
    assert '<time datetime="2026-03-07T19:30:00+01:00">19:30:00</time>' in body
    assert "0298765432" in body and "abc@carrier" in body and "Energia Srl" in body
    assert "Segnalazione telefonate indesiderate" in body
    assert 'href="/evidence.csv"' in body
    assert 'href="/evidence/print.css" media="print"' in body


def test_report_details_are_printed_not_stored(auth: Any, add_call: Callable[..., int]) -> None:
    add_call(called_line="")
    r = auth.get("/evidence", query_string={"line": "02 9876 5432", "company": "Acme Energia", "product": "luce",
                                            "kind": "silent", "notes": "first line\nsecond line"})
    body = r.get_data(as_text=True)
    assert "Acme Energia" in body and "luce" in body and "silent call" in body
    assert "first line<br>second line" in body
    assert body.count("02 9876 5432") >= 2  # the input and the report header (and the row)
    assert 'href="/evidence.csv?line=02+9876+5432"' in body
    assert csv_rows(auth, line="02 9876 5432")[0]["line"] == "02 9876 5432"
    # an unknown kind is dropped, not echoed
    body = auth.get("/evidence", query_string={"kind": "bogus"}).get_data(as_text=True)
    assert "<dt>Kind of call</dt>" not in body and 'value="bogus"' not in body


def test_filters(auth: Any, add_call: Callable[..., int]) -> None:
    add_call("+390212345678", name="Mario Rossi", outcome="blocked", decision="block")
    add_call("+390212345678", name="Mario Rossi", outcome="missed", decision="screen", ago=timedelta(days=3))
    add_call("+393471234567", name="Anna", outcome="passed", decision="screen")
    add_call("+33162000000", name="Vendeur", outcome="missed", decision="screen", ago=timedelta(days=40))

    def count(**args: str) -> int:
        n = rows(auth.get("/evidence", query_string=args).get_data(as_text=True))
        assert n == len(csv_rows(auth, **args))
        return n

    assert count() == 4
    assert count(q="+390212345678") == 2
    assert count(q="02 1234 5678") == 2
    assert count(q="rossi") == 2
    assert count(outcome="blocked") == 1
    assert count(decision="screen") == 3
    assert count(decision="screen", outcome="missed") == 2
    today = utcnow().date()
    assert count(**{"from": (today - timedelta(days=2)).isoformat()}) == 2
    assert count(to=(today - timedelta(days=30)).isoformat()) == 1
    assert count(outcome="nonsense") == 4
    assert "Dates must lie between" in auth.get("/evidence", query_string={"from": "31/01/2025"}).get_data(as_text=True)


def test_csv_download(auth: Any, add_call: Callable[..., int]) -> None:
    add_call("+390212345678", name="=cmd|' /C calc'!A0", at=datetime(2026, 3, 8, 10, 0, tzinfo=UTC),
             digits="@5", pai_raw="<sip:+390212345678@carrier>", voicemail_path="voicemail/x.wav")
    add_call(None, withheld=True, caller_raw="anonymous", at=datetime(2026, 3, 9, 10, 0, tzinfo=UTC))
    r = auth.get("/evidence.csv")
    assert r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"] == "attachment; filename=screener-evidence.csv"
    assert r.headers["Cache-Control"] == "no-store"
    text = r.get_data(as_text=True)
    assert text.splitlines()[0] == ",".join(f'"{f}"' for f in FIELDS)
    first, second = list(csv.DictReader(io.StringIO(text)))
    assert first["name"] == "'=cmd|' /C calc'!A0"
    assert (first["e164"], first["digits"], first["pai_raw"]) == ("+390212345678", "'@5",
                                                                 "<sip:+390212345678@carrier>")
    assert (first["local_time"], first["utc_time"]) == ("2026-03-08T11:00:00+01:00", "2026-03-08T10:00:00Z")
    assert (first["outside_code_hours"], first["voicemail"], first["withheld"]) == ("yes", "yes", "no")  # Sunday
    assert (second["withheld"], second["e164"], second["outside_code_hours"]) == ("yes", "", "no")


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_values_are_escaped(auth: Any, add_call: Callable[..., int], name: str) -> None:
    add_call(name=name, caller_raw=name, rule=name, reason=name, from_raw=name, pai_raw=name, call_id=name,
             called_line=name, digits=name[:32])
    r = auth.get("/evidence", query_string={"company": name, "product": name, "notes": name, "line": name})
    body = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "<script>alert" not in body and "<img src=x" not in body
    assert "\x00" not in body and "\x07" not in body
    if name.startswith("<script>"):
        assert body.count(html.escape(name, quote=False)) >= 5


def test_row_limit_keeps_the_newest_and_says_so(auth: Any, add_call: Callable[..., int],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evidence_view, "MAX_ROWS", 2)
    for n in range(3):
        add_call(call_id=f"call-{n}", ago=timedelta(hours=3 - n))
    body = auth.get("/evidence").get_data(as_text=True)
    assert rows(body) == 2
    assert "Only the newest 2 calls are in this report" in body
    assert "call-0" not in body and body.index("call-1") < body.index("call-2")
    assert [r["call_id"] for r in csv_rows(auth)] == ["call-1", "call-2"]
    monkeypatch.setattr(evidence_view, "MAX_ROWS", 3)
    assert "Only the newest" not in auth.get("/evidence").get_data(as_text=True)


def test_links_carry_the_filters(auth: Any, add_call: Callable[..., int]) -> None:
    add_call("+390212345678")
    body = auth.get("/calls", query_string={"outcome": "missed", "q": "0212"}).get_data(as_text=True)
    assert 'href="/evidence?outcome=missed&amp;q=0212"' in body
    body = auth.get("/numbers/+390212345678").get_data(as_text=True)
    assert 'href="/evidence?q=%2B390212345678"' in body


def test_print_stylesheet(auth: Any) -> None:
    r = auth.get("/evidence/print.css")
    assert (r.status_code, r.mimetype) == (200, "text/css")
    assert b"header.top" in r.data


def test_italian(auth: Any, add_call: Callable[..., int]) -> None:
    add_call()
    auth.post("/language", data={"lang": "it", "next": "/evidence"})
    body = auth.get("/evidence").get_data(as_text=True)
    assert "Prove per una segnalazione" in body and "Linea chiamata" in body
