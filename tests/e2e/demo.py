"""`make demo`: screener on a stand-in line, three calls, then the call log.

Starts kamailio (the provider), a sipp household phone and `screener run` on loopback, places a blocked call,
an allowed call the household phone answers, and an unknown caller who presses the digit and leaves a message;
prints `screener calls` and stops everything by PID. Needs kamailio and sipp (`make system-deps`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # noqa: E402
    PASSWORD,
    CallSpec,
    Kamailio,
    Phone,
    Play,
    Ports,
    Screener,
    Wait,
    caller,
    dtmf,
    encode_g711,
    screener_config,
    tone,
    write_rtp_pcap,
)

BLOCKED, ALLOWED, UNKNOWN = "+390212345678", "+390298765432", "+393331234567"


def main() -> int:
    ports = Ports.for_worker()
    with tempfile.TemporaryDirectory(prefix="screener-demo-") as tmp:
        work = Path(tmp)
        kamailio = Kamailio(work / "kamailio", ports.kamailio, PASSWORD)
        household = Phone(work, kamailio, ports.household, ports.household_media, ring_ms=1000,
                          register_port=ports.registrar_client)
        screener = Screener(work / "screener", screener_config(work, ports, PASSWORD))
        try:
            kamailio.start()
            household.start()
            print(f"provider: kamailio on 127.0.0.1:{ports.kamailio}; household phone answers after 1 s")
            screener.cli("init")
            screener.cli("list", "add", "block", BLOCKED, "--label", "call centre")
            screener.cli("list", "add", "allow", ALLOWED, "--label", "family")
            screener.start()
            print(screener.wait_registered(timeout=20, registrar=kamailio))

            voice = write_rtp_pcap(work / "voice.pcap", encode_g711(tone(700, 2.5), 0), 0)
            calls = [
                ("blocked caller", CallSpec(number=BLOCKED, display="Call Centre", expect=603)),
                ("allowed caller", CallSpec(number=ALLOWED, display="Mamma", media=[Wait(1000)])),
                ("unknown caller pressing 5",
                 CallSpec(number=UNKNOWN, media=[Wait(1400), *dtmf("5"), Play(voice), Wait(2700)])),
            ]
            for i, (what, spec) in enumerate(calls, 1):
                sipp = caller(work, ports, spec, name=f"call{i}", timeout=20)
                rc = sipp.run(25)
                print(f"call {i}: {what}: sipp {'ok' if rc == 0 else f'FAILED (exit {rc})'}")
                screener.wait_call(count=i, timeout=15)
            print()
            print(screener.cli("calls").stdout)
            return 0
        finally:
            screener.stop()
            household.stop()
            kamailio.stop()


if __name__ == "__main__":
    sys.exit(main())
