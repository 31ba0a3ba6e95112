"""The dashboard in a real browser: Debian's chromium driven by Playwright against waitress on loopback.

Screenshots go to test-artifacts/ (overview, log and lists, in English and Italian).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from screener import config, store
from screener.store import Call, set_sip_status, utcnow
from web import create_app, make_server, stop_server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-quic", "--disable-gpu"]
PASSWORD = "correct horse battery"


def _seed(st: store.Store) -> None:
    now = utcnow()
    outcomes = ["blocked", "answered_elsewhere", "missed", "passed", "failed_challenge"]
    with st.write() as s:
        set_sip_status(s, "registered", now=now - timedelta(hours=3))
        for i in range(60):
            s.add(Call(started_at=now - timedelta(hours=11 * i + 1), e164=f"+39061234{i % 7:04d}",
                       caller_raw=f"061234{i % 7:04d}", name="", number_type="fixed_line", country="IT",
                       decision="block" if i % 5 == 0 else "screen", outcome=outcomes[i % 5], duration_s=4.0 + i))
        s.add(Call(started_at=now - timedelta(minutes=2), e164="+390212345678", caller_raw="0212345678",
                   name='Pizzeria <script>alert(1)</script>', number_type="fixed_line", country="IT",
                   decision="screen", outcome="missed", duration_s=12.0, rule="", reason="no rule matched"))


@pytest.fixture
def live_url(web_cfg: config.Config, web_store: store.Store) -> Iterator[str]:
    """The dashboard served by waitress on a free loopback port, in a thread, stopped at teardown."""
    _seed(web_store)
    cfg = replace(web_cfg, web=replace(web_cfg.web, port=0))
    server = make_server(cfg, app=create_app(cfg, store=web_store), threads=4)
    t = threading.Thread(target=server.run, name="test-web", daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop_server(server)
        t.join(10)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing (make test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            locale="en-GB", viewport={"width": 1280, "height": 900})
        try:
            p = ctx.pages[0] if ctx.pages else ctx.new_page()
            p.set_default_timeout(10_000)
            errors: list[str] = []
            p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            p.on("pageerror", lambda e: errors.append(str(e)))
            p.errors = errors  # type: ignore[attr-defined]
            yield p
        finally:
            ctx.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_dashboard_in_chromium(live_url: str, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(live_url + "/calls")
    expect(page).to_have_url(f"{live_url}/login?next=%2Fcalls")
    page.fill("input[name=login]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button.primary")
    expect(page).to_have_url(f"{live_url}/calls")

    # A seeded call, its hostile name shown as text.
    row = page.locator("tr", has_text="02 1234 5678")
    expect(row).to_have_count(1)
    expect(row.locator("td.name")).to_have_text("Pizzeria <script>alert(1)</script>")
    shot(page, "log_en")

    # Block it from the log: a flash with undo, and the row now shows the list.
    row.get_by_role("button", name="Block", exact=True).click()
    expect(page.locator(".flash.undo")).to_contain_text("+390212345678 is on the block list.")
    expect(page.locator("tr", has_text="02 1234 5678").locator(".badge.block")).to_have_text("block list")

    page.click("nav a:text('Lists')")
    entry = page.locator("table.entries tr", has_text="+390212345678")
    expect(entry.locator(".badge")).to_have_text("block")
    shot(page, "lists_en")

    # Import a CSV with a bad row: good rows land, the report names the bad line.
    page.select_option("form[action='/lists/import'] select[name=list]", "block")
    page.set_input_files("input[type=file][name=file]", files=[{
        "name": "spam.csv", "mimeType": "text/csv",
        "buffer": b"number,label\n0844 111 222,sales\nnot a number,oops\n+33 1 62 00 00 00,fr\n"}])
    page.click("form[action='/lists/import'] button")
    expect(page.locator("h1")).to_have_text("Import report")
    expect(page.locator("p.ok")).to_contain_text("2 entries imported into the block list from spam.csv")
    report = page.locator("table.report tbody tr")
    expect(report).to_have_count(1)
    expect(report.locator("td").first).to_have_text("3")
    expect(report.locator("td").nth(1)).to_contain_text("not a phone number")

    page.click("nav a:text('Overview')")
    expect(page.locator(".status")).to_contain_text("registered")
    expect(page.locator("svg.chart rect").first).to_be_visible()
    shot(page, "overview_en")

    # Switch to Italian: the choice sticks across pages.
    page.click("button[lang=it]")
    expect(page.locator("html")).to_have_attribute("lang", "it")
    expect(page.locator("h1")).to_have_text("Panoramica")
    shot(page, "overview_it")
    page.click("nav a:text('Chiamate')")
    expect(page.locator("h1")).to_have_text("Chiamate")
    expect(page.locator("tr", has_text="02 1234 5678").locator(".badge.block")).to_have_text("lista bloccati")
    shot(page, "log_it")
    page.click("nav a:text('Liste')")
    expect(page.locator("h1")).to_have_text("Liste")
    shot(page, "lists_it")

    # Log out: the log is behind the login again.
    page.click("text=Esci")
    page.goto(live_url + "/calls")
    expect(page).to_have_url(f"{live_url}/login?next=%2Fcalls")
    assert page.errors == []  # no CSP violation, no script error


def test_editing_a_setting_in_chromium(live_url: str, page: Any, web_cfg: config.Config) -> None:
    from playwright.sync_api import expect

    conf = Path(web_cfg.path)
    conf.write_text("# my own note, kept\n" + conf.read_text(encoding="utf-8"), encoding="utf-8")
    page.goto(live_url + "/settings")
    page.fill("input[name=login]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button.primary")
    expect(page).to_have_url(f"{live_url}/settings")

    # A bad value: named on the form, what was typed kept, nothing written.
    page.fill("input[name='screening.challenge_digit']", "55")
    page.fill("input[name='ring_through.target']", "sip:**9@fritz.box")
    page.click("form.settings-form button.primary")
    expect(page.locator("p.error")).to_contain_text("screening.challenge_digit")
    expect(page.locator("input[name='screening.challenge_digit']")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("input[name='ring_through.target']")).to_have_value("sip:**9@fritz.box")
    assert "ring_through" not in conf.read_text(encoding="utf-8")
    shot(page, "settings_error_en")

    # Fixed: saved into the file, the user's comment still there; the page shows the new values.
    page.fill("input[name='screening.challenge_digit']", "7")
    page.click("form.settings-form button.primary")
    expect(page.locator(".flash")).to_contain_text("Saved")
    text = conf.read_text(encoding="utf-8")
    assert "# my own note, kept" in text and 'challenge_digit = "7"' in text and 'target = "sip:**9@fritz.box"' in text
    assert config.load(conf).ring_through.target == "sip:**9@fritz.box"
    expect(page.locator("input[name='screening.challenge_digit']")).to_have_value("7")
    shot(page, "settings_saved_en")
    assert [e for e in page.errors if "status of 400" not in e] == []  # the refused form answers 400, as it should
