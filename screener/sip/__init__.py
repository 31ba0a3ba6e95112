"""SIP for screener: registration at the provider, incoming calls as plain values, G.711 media.

`agent` owns the socket and the protocol, `message` and `auth` are pure, `media` is the one module that
imports pyVoIP (for its RTP session state) and fixes the RTP bugs listed in PYVOIP.md.
"""

from screener.sip.shell import Call, IncomingCall, RegStatus, SipAgent, Timing

__all__ = ["Call", "IncomingCall", "RegStatus", "SipAgent", "Timing"]
