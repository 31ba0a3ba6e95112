"""A voicemail that cannot be written: no `.part` file may stay behind, and the call's row still closes as passed.

Both faults hold for root too (chmod does not): the voicemail folder replaced by a regular file (mkdir and open
fail), and a full disk, made by starting `screener run` under a file size limit (RLIMIT_FSIZE: a write past it
fails with EFBIG, and Python ignores SIGXFSZ) with the database on PostgreSQL, so only the recording grows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import (
    CallSpec,
    Kamailio,
    Play,
    Proc,
    Screener,
    Sipp,
    Wait,
    dtmf,
    encode_g711,
    screener_command,
    tone,
    write_rtp_pcap,
)

pytestmark = pytest.mark.e2e

UNKNOWN = "+390287654321"
FSIZE = 32 * 1024  # bytes: less than the 5 s recording (80 kB), more than anything else screener run writes


def _pass_and_speak(screener: Screener, call: Callable[..., Sipp], tmp_path: Path) -> dict[str, Any]:
    """An unknown caller presses the digit and speaks 3 s; returns the call's row once it is closed."""
    speech = write_rtp_pcap(tmp_path / "speech.pcap", encode_g711(tone(700.0, 3.0), 0), 0)
    sipp = call(CallSpec(number=UNKNOWN, media=[Wait(1400), *dtmf("5"), Play(speech), Wait(8000)]), timeout=25)
    rows = screener.wait_call(lambda r: r.get("e164") == UNKNOWN, timeout=15)
    print(f"\nsipp exit {sipp.proc.popen.returncode if sipp.proc.popen else None}; row: outcome "
          f"{rows[0]['outcome']}, digits {rows[0]['digits']!r}, voicemail {rows[0]['voicemail']!r}")
    return rows[0]


def _check(screener: Screener, row: dict[str, Any]) -> None:
    data = Path(screener.config["data_dir"])
    parts = sorted(str(p) for p in data.rglob("*.part"))
    errors = [ln for ln in screener.log_tail(20000).splitlines() if "voicemail" in ln.lower()]
    print(f"  .part files left: {parts}; log: {errors[:3]}")
    assert screener.alive(), screener.log_tail()
    assert parts == [], parts
    assert row["outcome"] == "passed", row
    assert row["digits"] == "5", row
    assert not row["voicemail"], row
    vm = data / "voicemail"
    if vm.is_dir():
        assert sorted(vm.iterdir()) == [], "a recording that could not be written left a file behind"


def test_voicemail_folder_replaced_by_a_file(make_screener: Callable[..., Screener], call: Callable[..., Sipp],
                                             tmp_path: Path) -> None:
    screener = make_screener(start=False)
    data = Path(screener.config["data_dir"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "voicemail").write_text("not a folder\n")
    screener.start()
    screener.wait_registered(timeout=15)
    row = _pass_and_speak(screener, call, tmp_path)
    _check(screener, row)
    assert (data / "voicemail").read_text() == "not a folder\n"


@pytest.mark.postgres
def test_voicemail_on_a_full_disk(pg_cluster: Any, make_screener: Callable[..., Screener],
                                  call: Callable[..., Sipp], kamailio: Kamailio, tmp_path: Path) -> None:
    screener = make_screener(start=False, database={"url": pg_cluster.create_database("screener")})
    screener.cli("db", "upgrade")
    screener.proc = Proc(["prlimit", f"--fsize={FSIZE}", "--", *screener_command(), "--config",
                          screener.config_path, "run"], screener.workdir / "screener.log",
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    screener.proc.start()
    screener.wait_registered(timeout=15, registrar=kamailio)
    row = _pass_and_speak(screener, call, tmp_path)
    _check(screener, row)
