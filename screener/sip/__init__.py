"""SIP for screener: registration at the provider, incoming calls as plain values, G.711 media.

`core` (with `transactions`, `dialogs`, `registration`, `message`, `auth`) is the protocol, pure: datagrams,
times and commands in, datagrams and events out. `shell` is the I/O around it (the socket, the threads, the
clock, DNS, the RTP sockets); `agent` re-exports its names. `media` is the one module that imports pyVoIP.
"""

from screener.sip.shell import Call, Credentials, IncomingCall, Leg, RegStatus, SipAgent, Timing

__all__ = ["Call", "Credentials", "IncomingCall", "Leg", "RegStatus", "SipAgent", "Timing"]
