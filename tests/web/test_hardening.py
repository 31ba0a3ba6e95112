"""Findings of the security review: query parameters out of range, bidi overrides in old rows, voicemail
files outside their folder, passwords in URLs on the settings page, the 'error' outcome's label."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import insert

from screener import config, store
from screener.store import Call, ListEntry, utcnow
from web import create_app
from web.settings import mask_url

# --- query parameters -------------------------------------------------------------------------------------

BAD_DATE = "Dates must lie between 1970-01-01 and 9998-12-31, written like 2025-01-31."
BAD_CURSOR = "This page link is not valid"
HUGE = "9" * 40


@pytest.mark.parametrize(("url", "status", "message"), [
    ("/calls?to=9999-12-31", 200, BAD_DATE),
    ("/calls?from=0001-01-01", 200, BAD_DATE),
    ("/calls?from=0001-01-01&to=9999-12-31&q=Rossi", 200, BAD_DATE),
    ("/calls?from=2025-13-01", 200, BAD_DATE),
    ("/calls?from=yesterday", 200, BAD_DATE),
    ("/calls?from=%00", 200, BAD_DATE),
    ("/evidence?to=9999-12-31", 200, BAD_DATE),
    ("/evidence?from=0001-01-01", 200, BAD_DATE),
    ("/evidence.csv?to=9999-12-31", 400, BAD_DATE),
    ("/calls?before=9999-12-31T23:59:59_1", 400, BAD_CURSOR),
    ("/calls?after=9999-12-31T23:59:59.999999_1", 400, BAD_CURSOR),
    ("/calls?before=0001-01-01T00:00:00_1&q=Rossi", 400, BAD_CURSOR),
    ("/calls?after=0001-01-01T00:00:00_1&q=Rossi", 400, BAD_CURSOR),
    (f"/calls?before=2025-01-01T00:00:00_{HUGE}", 400, BAD_CURSOR),
    ("/calls?before=2025-01-01T00:00:00_abc", 400, BAD_CURSOR),
    ("/calls?after=x", 400, BAD_CURSOR),
    ("/calls?after=2025-02-30T00:00:00_1", 400, BAD_CURSOR),
    ("/voicemail?before=9999-12-31T23:59:59_1", 400, BAD_CURSOR),
    (f"/voicemail?after=2025-01-01T00:00:00_{HUGE}", 400, BAD_CURSOR),
    ("/voicemail?before=nonsense", 400, BAD_CURSOR),
    ("/numbers/+390212345678?before=0001-01-01T00:00:00_1", 400, BAD_CURSOR),
    (f"/numbers/+390212345678?after=2025-01-01T00:00:00_{HUGE}", 400, BAD_CURSOR),
    ("/calls?q=%00Rossi", 200, None),
    ("/calls?q=%2B39%0002", 200, None),
    ("/calls?outcome=%00&decision=%00", 200, None),
    ("/lists?after=%00", 200, None),
    ("/lists?after=" + "9" * 5000, 200, None),
    ("/lists?q=%00&list=%00", 200, None),
    (f"/lists?q={HUGE}", 200, None),
    ("/evidence?q=%00&line=%00&company=%00&kind=%00", 200, None),
    ("/voicemail?unheard=%00", 200, None),
    ("/?from=0001-01-01", 200, None),
    (f"/numbers/+{HUGE}", 404, None),
])
def test_bad_query_parameters_get_a_message_not_a_500(auth: Any, url: str, status: int,
                                                       message: str | None) -> None:
    r = auth.get(url)
    assert r.status_code == status, r.get_data(as_text=True)[-2000:]
    if message:
        assert message in r.get_data(as_text=True)


def test_the_log_shows_calls_at_the_edges_of_the_date_range(auth: Any, add_call: Callable[..., int]) -> None:
    add_call(name="Luigi")
    body = auth.get("/calls?from=1970-01-01&to=9998-12-31").get_data(as_text=True)
    assert "Luigi" in body and BAD_DATE not in body


# --- bidirectional overrides ------------------------------------------------------------------------------

RLO, LRI, PDI = "\u202e", "\u2066", "\u2069"


@pytest.fixture
def old_bidi_rows(web_store: store.Store) -> int:
    """A call and a list entry written as before text.clean existed (Core inserts skip the ORM's cleaning)."""
    with web_store.write() as s:
        s.execute(insert(ListEntry).values(list="block", pattern="+390299999999", label=f"{RLO}evil label{PDI}",
                                           source=f"{LRI}csv", created_at=utcnow(), hit_count=0))
        return s.execute(insert(Call).values(
            started_at=utcnow(), decision="block", outcome="blocked", e164="+390299999999",
            caller_raw=f"{RLO}0299999999", name=f"{RLO}Mario{PDI} Rossi", from_raw=f"<sip:{LRI}x@y>",
            pai_raw=f"{RLO}pai", rule=f"{RLO}rule", reason=f"{RLO}reason", call_id=f"{RLO}id", withheld=False,
            called_line="", number_type="unknown", digits="", voicemail_heard=False,
        ).returning(Call.id)).scalar_one()


@pytest.mark.parametrize("url", ["/calls", "/", "/numbers/+390299999999", "/lists", "/evidence", "/evidence.csv",
                                 "/lists/export.csv", "/calls?q=Mario"])
def test_bidi_controls_never_reach_a_page_or_an_export(auth: Any, old_bidi_rows: int, url: str) -> None:
    body = auth.get(url).get_data(as_text=True)
    assert not any(ch in body for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    if url not in ("/", "/lists", "/lists/export.csv"):
        assert "Mario Rossi" in body


def test_strip_bidi_is_a_template_filter(app: Flask) -> None:
    with app.test_request_context():
        assert app.jinja_env.from_string("{{ x|strip_bidi }}").render(x=f"{RLO}ab") == "ab"


# --- voicemail files --------------------------------------------------------------------------------------


@pytest.fixture
def data_dir(web_cfg: config.Config) -> Path:
    root = web_cfg.data_path
    (root / "voicemail").mkdir(parents=True, exist_ok=True)
    return root


def test_voicemail_audio_is_never_cached(auth: Any, add_call: Callable[..., int], data_dir: Path) -> None:
    (data_dir / "voicemail" / "1.wav").write_bytes(b"RIFF0000WAVE")
    call_id = add_call(voicemail_path="voicemail/1.wav")
    with auth.get(f"/voicemail/{call_id}/audio") as r:
        assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    with auth.get(f"/voicemail/{call_id}/audio", headers={"Range": "bytes=0-3"}) as r:
        assert r.status_code == 206 and r.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("stored", [
    "web_secret",  # in the data directory, but not a recording
    "voicemail/../web_secret",
    "voicemail",
    "../../etc/passwd",
    "/etc/passwd",
    "{data}/web_secret",
    "{data}/voicemail/../web_secret",
    "voicemail/link.wav",  # a symlink out of the folder
])
def test_voicemail_outside_its_folder_is_refused(auth: Any, add_call: Callable[..., int], data_dir: Path,
                                                 stored: str) -> None:
    (data_dir / "voicemail" / "link.wav").unlink(missing_ok=True)
    (data_dir / "voicemail" / "link.wav").symlink_to(data_dir / "web_secret")
    call_id = add_call(voicemail_path=stored.format(data=data_dir), name_path=stored.format(data=data_dir))
    assert auth.get(f"/voicemail/{call_id}/audio").status_code == 404
    assert auth.get(f"/voicemail/{call_id}/name").status_code == 404
    auth.post(f"/voicemail/{call_id}/delete")
    assert (data_dir / "web_secret").is_file()


def test_a_put_through_call_shows_its_talk_time_and_the_name_said(auth: Any, add_call: Callable[..., int],
                                                                   data_dir: Path) -> None:
    (data_dir / "voicemail" / "1_name.wav").write_bytes(b"RIFF0000WAVE")
    call_id = add_call(outcome="connected", talk_s=151.0, name_path="voicemail/1_name.wav")
    page = auth.get("/calls").get_data(as_text=True)
    assert "talked 2:31" in page and f"/voicemail/{call_id}/name" in page
    with auth.get(f"/voicemail/{call_id}/name") as r:
        assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"


# --- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:secret@h/db?password=x", "postgresql://u:********@h/db?password=********"),
    ("postgresql://u@h/db?sslmode=require&password=x", "postgresql://u@h/db?sslmode=require&password=********"),
    ("postgresql+psycopg://u:p%40ss@[::1]:5432/db", "postgresql+psycopg://u:********@[::1]:5432/db"),
    ("https://ntfy.example/topic?auth=tk&title=Call", "https://ntfy.example/topic?auth=********&title=Call"),
    ("https://hooks.example/x?api_key=1&token=2&Secret=3&pwd=4",
     "https://hooks.example/x?api_key=********&token=********&Secret=********&pwd=********"),
    ("https://user:pw@ntfy.example/t", "https://user:********@ntfy.example/t"),
    ("https://user@ntfy.example/t?x=1", "https://user@ntfy.example/t?x=1"),
    ("sqlite:///screener.db", "sqlite:///screener.db"),
    ("sqlite:////var/lib/screener/db.sqlite", "sqlite:////var/lib/screener/db.sqlite"),
    ("Europe/Rome", "Europe/Rome"),
    ("http://[::1/x?password=p", "********"),
])
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_settings_page_masks_a_password_in_the_database_url(tmp_path: Path, web_store: store.Store,
                                                            login: Callable[..., Any]) -> None:

    p = tmp_path / "masked.toml"
    p.write_text(f'data_dir = "{tmp_path / "data"}"\n[database]\n'
                 'url = "postgresql://u:hunter2@db.example/screener?password=hunter3"\n', encoding="utf-8")
    app = create_app(config.load(p), store=web_store, testing=True)
    client = app.test_client()
    assert login(client).status_code == 302
    body = client.get("/settings").get_data(as_text=True)
    assert "hunter2" not in body and "hunter3" not in body
    assert "postgresql://u:********@db.example/screener?password=********" in body


# --- the 'error' outcome ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("lang", "text"), [("en", "handler error"), ("it", "errore del gestore")])
def test_error_outcome_has_a_label(auth: Any, add_call: Callable[..., int], lang: str, text: str) -> None:
    add_call(outcome="error", name="Luigi")
    body = auth.get("/calls", headers={"Accept-Language": lang}).get_data(as_text=True)
    assert text in body
