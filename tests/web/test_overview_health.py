"""The overview's registration card trusts only a fresh heartbeat: a killed service shows as not running."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from screener import store
from screener.store import utcnow


@pytest.mark.parametrize(("state", "age", "shown", "hidden"), [
    ("registered", 2, "registered", "not running"),
    ("registered", 60, "No heartbeat since", "registered"),
    ("failed", 2, "failed", "not running"),
    ("stopped", 2, "stopped since", "No heartbeat"),
])
def test_overview_judges_the_heartbeat(auth: Any, web_store: store.Store, state: str, age: int, shown: str,
                                       hidden: str) -> None:
    now = utcnow()
    with web_store.write() as s:
        store.write_heartbeat(s, state, "", now - timedelta(hours=1), 4242, now=now - timedelta(seconds=age))
    body = auth.get("/").get_data(as_text=True)
    card = body[body.index('<section class="card status'):].split("</section>", 1)[0]
    assert shown in card and hidden not in card, card
    assert ("not running" in card) == (state == "stopped" or age > 15), card


def test_overview_warns_of_untrusted_sip(auth: Any, web_store: store.Store) -> None:
    now = utcnow()
    with web_store.write() as s:
        store.write_heartbeat(s, "registered", "", now, 4242, (57, 3, "198.51.100.7:5060", now), now=now)
    body = auth.get("/").get_data(as_text=True)
    assert "57 SIP messages from 3 untrusted addresses dropped, the last from 198.51.100.7:5060 at " in body
