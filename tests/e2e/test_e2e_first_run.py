"""The first run as a newcomer does it, in Chromium: `screener run` on a fresh config (the example, with only the
test's loopback ports set) prints the dashboard's address and a setup code; the browser makes the first user,
picks "FRITZ!Box in Italy", points it at kamailio on 127.0.0.1 and sees "registered" in words.

Screenshots of every step at 1280 and 390 px go to test-artifacts/first_run_*.png; the minutes and clicks from
the fresh config to "registered" to test-artifacts/first_run.txt.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import AOR_USER, HOST, PASSWORD, Kamailio, Ports, Proc, screener_command, wait_until

from screener import config_edit

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-quic", "--disable-gpu"]
WIDTHS = (1280, 390)


@pytest.fixture
def fresh_run(tmp_path: Path, ports: Ports) -> Iterator[tuple[Proc, Path, float]]:
    """`screener run` on the example config; only what must differ on a shared test machine is set (ports)."""
    work = tmp_path / "home"
    work.mkdir()
    conf = work / "config.toml"
    shutil.copyfile(ROOT / "config.example.toml", conf)
    config_edit.edit(conf, {"web.port": ports.web, "sip.sip_port": ports.screener_sip, "sip.local_address": HOST,
                            "sip.rtp_port_low": ports.rtp_low, "sip.rtp_port_high": ports.rtp_high})
    t0 = time.monotonic()
    proc = Proc([*screener_command(), "--config", conf, "run"], work / "screener.log",
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=work)
    init = Proc([*screener_command(), "--config", conf, "init"], work / "init.log", cwd=work)
    init.start()
    assert init.wait(60) == 0, init.output()
    proc.start()
    try:
        yield proc, conf, t0
    finally:
        rc, _took = proc.stop(timeout=5.0)
        assert rc is not None, "screener run ignored SIGTERM"


def _shots(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(ARTIFACTS / f"first_run_{name}_{width}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        wide = page.evaluate("""[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right
            > window.innerWidth).map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)""")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow} px at {width} px: {wide}"
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})


def test_first_run_to_registered_in_the_browser(fresh_run: tuple[Proc, Path, float], kamailio: Kamailio,
                                                ports: Ports, tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing (make test installs it: apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    proc, conf, t0 = fresh_run
    # what the console shows a newcomer: the address, the missing account, the setup code
    out = wait_until(lambda: re.search(r"setup code (\d{4}-\d{4})", proc.output()) and proc.output(), 60,
                     interval=0.1, what="the setup code on the console")
    url = f"http://{HOST}:{ports.web}/"
    assert f"dashboard: {url}" in out
    assert "SIP: not configured yet (sip.password is empty): the service waits" in out
    code = re.search(r"setup code (\d{4}-\d{4})", out)[1]  # type: ignore[index]
    wait_until(lambda: '"not_configured"' in _read(conf.parent / "data" / "heartbeat.json"), 30, interval=0.1,
               what="the service to say not_configured")
    clicks = 0
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium")), executable_path=str(CHROMIUM),
                                                    headless=True, args=FLAGS, locale="it-IT",
                                                    viewport={"width": 1280, "height": 900})
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(15_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            wait_until(lambda: _up(page, url), 30, interval=0.3, what="the dashboard")

            # 1. no user: the setup page, whatever the address
            page.goto(url + "calls")
            expect(page).to_have_url(url + "setup/first-user")
            page.fill("input[name=code]", code)
            page.fill("input[name=login]", "anna")
            page.fill("input[name=password]", "correct horse")
            page.fill("input[name=again]", "correct horse")
            _shots(page, "1_first_user")
            page.click("button.primary")
            clicks += 1

            # 2. the profiles
            expect(page).to_have_url(url + "setup")
            _shots(page, "2_profiles")
            page.click("a[href='/setup/line/fritzbox_it']")
            clicks += 1

            # 3. the FRITZ!Box's IP phone: here kamailio on loopback stands in for the box
            expect(page.locator("input[name='sip.server']")).to_have_value("fritz.box")
            page.fill("input[name='sip.server']", f"{HOST}:{kamailio.port}")
            page.fill("input[name='sip.username']", AOR_USER)
            page.fill("input[name='sip.password']", PASSWORD)
            _shots(page, "3_fritzbox")
            page.click("button.primary")
            clicks += 1

            # 4. the answer, in words (and in Italian: the profile switched the dashboard)
            result = page.locator("p.result")
            expect(result).to_have_class(re.compile(r"\bregistered\b"), timeout=30_000)
            took = time.monotonic() - t0
            expect(page.locator("html")).to_have_attribute("lang", "it")
            _shots(page, "4_registered")
            assert not errors, errors
        finally:
            ctx.close()
    assert kamailio.registrations_from(ports.screener_sip)
    status = Proc([*screener_command(), "--config", conf, "status"], tmp_path / "status.log")
    status.start()
    assert status.wait(30) == 0, status.output()
    assert "registered" in status.output()
    text = conf.read_text()
    assert "# The registrar: your home router" in text  # the comments are still there
    assert 'block_action = "hangup"' in text and 'presets = ["it"]' in text
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "first_run.txt").write_text(
        f"fresh config -> registered: {took:.1f} s ({took / 60:.2f} min) and {clicks} clicks "
        f"(plus typing: setup code, user, password twice, router address, SIP user, SIP password)\n")
    print(f"first run: {took:.1f} s, {clicks} clicks")


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _up(page: Any, url: str) -> bool:
    try:
        page.goto(url + "login")
    except Exception:
        return False
    return True
