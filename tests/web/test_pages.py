"""Overview, number page, voicemail, prompts, settings."""

from __future__ import annotations

import io
import wave
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from screener import config, store
from screener.store import Call, NumberNote, set_sip_status, utcnow
from web import create_app
from web.chart import _nice_max


def make_wav(rate: int = 44100, channels: int = 2, width: int = 2, seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(int(rate * seconds) * channels * width))
    return buf.getvalue()


# --- overview -------------------------------------------------------------------------------------------


def test_overview_shows_status_counts_chart_and_voicemail(auth: Any, add_call: Callable[..., int],
                                                         web_store: store.Store) -> None:
    with web_store.write() as s:
        set_sip_status(s, "failed", "403 Registration limit exceeded")
    add_call(outcome="blocked", decision="block", ago=timedelta(minutes=1))
    add_call(outcome="blocked", decision="block", ago=timedelta(minutes=2))
    add_call(outcome="passed", ago=timedelta(minutes=3), voicemail_path="vm/1.wav", name="Luigi")
    add_call(outcome="missed", ago=timedelta(days=10))
    body = auth.get("/").get_data(as_text=True)
    assert "failed" in body and "403 Registration limit exceeded" in body
    assert '<p class="big">3 <small>calls</small></p>' in body
    assert body.count('<svg class="chart"') == 1 and body.count("<rect ") >= 3
    assert "Luigi" in body and "/voicemail/" in body
    assert "http://" not in body.replace("http://www.w3.org/2000/svg", "")  # every asset local


def test_overview_without_status_or_calls(auth: Any) -> None:
    body = auth.get("/").get_data(as_text=True)
    assert "has not reported yet" in body and "No voicemails." in body


def test_chart_axis_maximum() -> None:
    assert [_nice_max(n) for n in (0, 4, 5, 11, 99, 101, 4999)] == [4, 4, 5, 20, 100, 200, 5000]


# --- number page ----------------------------------------------------------------------------------------


def test_number_page(auth: Any, add_call: Callable[..., int], web_store: store.Store) -> None:
    add_call("+390212345678", name="Pizzeria")
    add_call("+390299999999")
    with web_store.write() as s:
        store.put_entry(s, "block", "+3902*", label="Milan")
        store.put_entry(s, "screen", "class:mobile", label="mobiles")
    body = auth.get("/numbers/+390212345678").get_data(as_text=True)
    assert "02 1234 5678" in body and "Pizzeria" in body
    assert "+3902*" in body and "class:mobile" not in body  # only entries that match this number
    assert "landline" in body and "Milan" in body  # geocoder, loaded lazily
    assert "https://www.agcom.it/numerazionicallcenter" in body
    assert body.count('<td class="when">') == 1


def test_number_page_mobile_carrier_and_foreign_without_lookup(auth: Any) -> None:
    body = auth.get("/numbers/+393471234567").get_data(as_text=True)
    assert "Original carrier" in body
    body = auth.get("/numbers/+33162000000").get_data(as_text=True)
    assert "agcom" not in body


@pytest.mark.parametrize("bad", ["0212345678", "+39abc", "+", "%3Cscript%3E"])
def test_number_page_rejects_non_numbers(auth: Any, bad: str) -> None:
    assert auth.get(f"/numbers/{bad}").status_code == 404


def test_number_note(auth: Any, web_store: store.Store) -> None:
    auth.post("/numbers/+390212345678/note", {"note": "<b>dentist</b>"})
    with web_store.read() as s:
        assert s.get(NumberNote, "+390212345678").note == "<b>dentist</b>"
    assert "&lt;b&gt;dentist&lt;/b&gt;" in auth.get("/numbers/+390212345678").get_data(as_text=True)
    auth.post("/numbers/+390212345678/note", {"note": "  "})
    with web_store.read() as s:
        assert s.get(NumberNote, "+390212345678") is None


# --- voicemail ------------------------------------------------------------------------------------------


@pytest.fixture
def voicemail(web_cfg: config.Config, add_call: Callable[..., int]) -> tuple[int, Path]:
    root = web_cfg.resolve(web_cfg.data_dir) / "voicemail"
    root.mkdir(parents=True)
    path = root / "1.wav"
    path.write_bytes(make_wav(8000, 1))
    return add_call(voicemail_path=str(path), name="Luigi"), path


def test_voicemail_list_play_heard_delete(auth: Any, voicemail: tuple[int, Path], web_store: store.Store) -> None:
    call_id, path = voicemail
    body = auth.get("/voicemail").get_data(as_text=True)
    assert f'src="/voicemail/{call_id}/audio"' in body and "Mark heard" in body
    with auth.get(f"/voicemail/{call_id}/audio") as r:
        assert r.status_code == 200 and r.mimetype == "audio/wav" and r.data[:4] == b"RIFF"
    with auth.get(f"/voicemail/{call_id}/audio", headers={"Range": "bytes=0-3"}) as r:
        assert r.status_code == 206 and r.data == b"RIFF"
    auth.post(f"/voicemail/{call_id}/heard", {"heard": "1"})
    assert "Not heard yet" in auth.get("/voicemail?unheard=1").get_data(as_text=True)
    assert "Luigi" not in auth.get("/voicemail?unheard=1").get_data(as_text=True)
    auth.post(f"/voicemail/{call_id}/delete")
    assert not path.exists()
    with web_store.read() as s:
        c = s.get(Call, call_id)
        assert c is not None and c.voicemail_path is None
    assert auth.get(f"/voicemail/{call_id}/audio").status_code == 404


def test_voicemail_audio_needs_login(client: Any, voicemail: tuple[int, Path]) -> None:
    assert client.get(f"/voicemail/{voicemail[0]}/audio").status_code == 302


def test_voicemail_path_outside_data_dir_is_never_served(auth: Any, add_call: Callable[..., int],
                                                         tmp_path: Path) -> None:
    outside = tmp_path / "secret.wav"
    outside.write_bytes(make_wav())
    for p in (str(outside), "../secret.wav", "/etc/passwd"):
        call_id = add_call(voicemail_path=p)
        assert auth.get(f"/voicemail/{call_id}/audio").status_code == 404
        auth.post(f"/voicemail/{call_id}/delete")
    assert outside.exists()


# --- prompts --------------------------------------------------------------------------------------------


def test_prompt_upload_converts_and_restore(auth: Any, web_cfg: config.Config) -> None:
    r = auth.post("/prompts/challenge/it/upload", {"file": (io.BytesIO(make_wav(44100, 2)), "mine.wav")},
                  content_type="multipart/form-data", follow_redirects=True)
    assert "now uses your recording" in r.get_data(as_text=True)
    target = web_cfg.resolve(web_cfg.data_dir) / "prompts" / "challenge_it.wav"
    with wave.open(str(target)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        assert abs(w.getnframes() - 4000) <= 2
    with auth.get("/prompts/challenge/it/custom.wav") as r:
        assert r.status_code == 200
    auth.post("/prompts/challenge/it/restore")
    assert not target.exists()
    assert auth.get("/prompts/challenge/it/custom.wav").status_code == 404


@pytest.mark.parametrize("data", [b"not a wav", b"RIFF\x00\x00\x00\x00WAVEfmt ", b""])
def test_prompt_upload_rejects_non_wav(auth: Any, web_cfg: config.Config, data: bytes) -> None:
    r = auth.post("/prompts/failed/en/upload", {"file": (io.BytesIO(data), "x.wav")},
                  content_type="multipart/form-data", follow_redirects=True)
    assert "was not used" in r.get_data(as_text=True) or "Choose a WAV file" in r.get_data(as_text=True)
    assert not (web_cfg.resolve(web_cfg.data_dir) / "prompts" / "failed_en.wav").exists()


@pytest.mark.parametrize("url", ["/prompts/../../etc/passwd/shipped.wav", "/prompts/challenge/de/shipped.wav",
                                 "/prompts/nope/en/shipped.wav", "/prompts/challenge/en/other.wav"])
def test_prompt_audio_only_known_names(auth: Any, url: str) -> None:
    assert auth.get(url).status_code == 404


# --- settings and i18n ----------------------------------------------------------------------------------


def test_settings_mask_secrets(web_cfg: config.Config, web_store: store.Store, login: Callable[..., Any]) -> None:
    cfg = replace(web_cfg, sip=replace(web_cfg.sip, password="hunter2"),
                  web=replace(web_cfg.web, secret="websecret"),
                  database=replace(web_cfg.database, url="postgresql+psycopg://u:dbpass@host/db"))
    app: Flask = create_app(cfg, store=web_store)
    c = app.test_client()
    login(c)
    body = c.get("/settings").get_data(as_text=True)
    assert "sip.password" in body and "********" in body
    for secret in ("hunter2", "websecret", "dbpass"):
        assert secret not in body
    assert "screening.timezone" in body and "Europe/Rome" in body


def test_language_from_browser_and_switch(client: Any, login: Callable[..., Any], csrf_token: Any,
                                          add_call: Callable[..., int]) -> None:
    assert "Log in" in client.get("/login", headers={"Accept-Language": "de, en;q=0.5"}).get_data(as_text=True)
    assert "Accedi" in client.get("/login", headers={"Accept-Language": "it-IT,it;q=0.9"}).get_data(as_text=True)
    login(client)
    add_call(outcome="blocked")
    token = csrf_token(client, "/settings")
    r = client.post("/language", data={"lang": "it", "next": "/calls", "csrf_token": token})
    assert r.headers["Location"] == "/calls"
    body = client.get("/calls").get_data(as_text=True)
    assert '<html lang="it">' in body and "Chiamate" in body and "bloccata" in body
    client.post("/language", data={"lang": "en", "next": "//evil.example", "csrf_token": token})
    assert "Calls" in client.get("/calls").get_data(as_text=True)


def test_times_shown_in_the_configured_zone(auth: Any, add_call: Callable[..., int]) -> None:
    from datetime import UTC, datetime

    add_call(at=datetime(2025, 7, 1, 10, 0, tzinfo=UTC))
    add_call(at=datetime(2025, 1, 1, 10, 0, tzinfo=UTC))
    body = auth.get("/calls").get_data(as_text=True)
    assert "2025-07-01 12:00:00" in body and "2025-01-01 11:00:00" in body


def test_calls_recent_helper_matches_log_order(add_call: Callable[..., int], web_store: store.Store) -> None:
    a = add_call(ago=timedelta(minutes=2))
    b = add_call(ago=timedelta(minutes=1))
    with web_store.read() as s:
        assert [c.id for c in s.scalars(select(Call).order_by(Call.started_at.desc()))] == [b, a]
    assert utcnow()


def test_prompts_page_plays_the_shipped_prompts(auth: Any) -> None:
    body = auth.get("/prompts").get_data(as_text=True)
    assert 'src="/prompts/challenge/it/shipped.wav"' in body
    with auth.get("/prompts/challenge/it/shipped.wav") as r:
        assert r.status_code == 200 and r.mimetype == "audio/wav"
