"""The pure transaction state machines (RFC 3261 17): timers as times, datagrams as return values."""

from __future__ import annotations

import pytest

from screener.sip.transactions import (
    CLIENT_INVITE,
    CLIENT_NON_INVITE,
    SERVER_INVITE,
    SERVER_NON_INVITE,
    CIState,
    ClientInviteTransaction,
    ClientTransaction,
    InvalidTransition,
    NCState,
    NSState,
    ServerInviteTransaction,
    ServerTransaction,
    SIState,
    Timing,
)

T = Timing(t1=0.5, t2=4.0, t4=5.0)


def run_timers(tx, until: float) -> list[tuple[float, bytes]]:
    """Fire tx's timers up to `until`; the datagrams sent, with their times."""
    sent = []
    while tx.timer_at is not None and tx.timer_at <= until:
        now = tx.timer_at
        sent += [(now, d) for d in tx.on_timer(now)]
    return sent


def test_invite_server_non_2xx_timer_g_doubles_to_t2_until_timer_h():
    tx = ServerInviteTransaction("z9hG4bK1", T)
    assert tx.respond(100, b"100", 0.0) == [b"100"]
    assert tx.retransmission() == b"100"
    assert tx.respond(603, b"603", 0.0) == [b"603"]
    assert tx.state is SIState.COMPLETED
    sent = run_timers(tx, 100.0)
    gaps = [b - a for (a, _), (b, _) in zip([(0.0, b"")] + sent, sent, strict=False)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0] and max(gaps) == 4.0
    assert tx.state is SIState.TERMINATED and tx.timed_out and tx.timer_at is None
    assert sent[-1][0] < 64 * T.t1


def test_invite_server_ack_stops_retransmissions_and_timer_i_ends_it():
    tx = ServerInviteTransaction("z9hG4bK1", T)
    tx.respond(486, b"486", 1.0)
    assert tx.ack(1.2) is True
    assert tx.state is SIState.CONFIRMED and tx.timer_at == pytest.approx(1.2 + T.t4)
    assert tx.ack(1.3) is False  # a retransmitted ACK is absorbed
    assert run_timers(tx, 100.0) == []
    assert tx.state is SIState.TERMINATED and not tx.timed_out


def test_invite_server_2xx_is_retransmitted_until_its_ack():
    tx = ServerInviteTransaction("z9hG4bK1", T)
    tx.respond(200, b"200", 0.0)
    assert tx.state is SIState.ACCEPTED
    assert [d for _, d in run_timers(tx, 0.6)] == [b"200"]
    assert tx.ack(0.7) and tx.state is SIState.TERMINATED and tx.timer_at is None


def test_invite_server_refuses_a_second_final():
    tx = ServerInviteTransaction("z9hG4bK1", T)
    tx.respond(603, b"603", 0.0)
    with pytest.raises(InvalidTransition):
        tx.respond(200, b"200", 0.1)


def test_non_invite_server_timer_j():
    tx = ServerTransaction("z9hG4bK2", "BYE", T)
    assert tx.retransmission() == b""
    tx.respond(b"200", 3.0)
    assert tx.state is NSState.COMPLETED and tx.retransmission() == b"200"
    assert tx.timer_at == pytest.approx(3.0 + 64 * T.t1)
    tx.on_timer(tx.timer_at)
    assert tx.state is NSState.TERMINATED and tx.timer_at is None


def test_non_invite_client_timer_e_f_and_provisional():
    tx = ClientTransaction(b"REG", ("192.0.2.1", 5060), "z9hG4bK3", T, 8.0, 0.0)
    assert tx.start() == [b"REG"]
    sent = run_timers(tx, 2.0)
    assert [t for t, _ in sent] == [0.5, 1.5]  # E: T1, 2*T1 ...
    assert tx.on_response(100, 1.6) is False and tx.state is NCState.PROCEEDING
    sent = run_timers(tx, 100.0)
    assert all(b - a == pytest.approx(T.t2) for (a, _), (b, _) in zip(sent, sent[1:], strict=False))
    assert tx.state is NCState.TERMINATED and tx.timed_out  # Timer F at 8 s
    assert sent[-1][0] < 8.0


def test_non_invite_client_final_then_timer_k():
    tx = ClientTransaction(b"OPT", ("192.0.2.1", 5060), "z9hG4bK4", T, 4.0, 0.0)
    assert tx.on_response(200, 0.1) is True and tx.final_code == 200
    assert tx.on_response(200, 0.2) is False  # a retransmitted final is absorbed
    assert run_timers(tx, 100.0) == []
    assert tx.state is NCState.TERMINATED and not tx.timed_out


def test_invite_client_timer_a_b_and_ack_of_non_2xx():
    tx = ClientInviteTransaction(b"INV", ("192.0.2.1", 5060), "z9hG4bK5", T, 0.0)
    sent = run_timers(tx, 100.0)
    assert [t for t, _ in sent][:3] == [0.5, 1.5, 3.5]
    assert tx.state is CIState.TERMINATED and tx.timed_out

    tx = ClientInviteTransaction(b"INV", ("192.0.2.1", 5060), "z9hG4bK6", T, 0.0)
    assert tx.on_response(180, b"", 0.2) == ([], True)
    assert tx.timer_at is None and tx.state is CIState.PROCEEDING
    assert tx.on_response(486, b"ACK", 1.0) == ([b"ACK"], True)
    assert tx.on_response(486, b"ACK2", 1.1) == ([b"ACK"], False)  # a retransmitted final: the same ACK again
    run_timers(tx, 100.0)
    assert tx.state is CIState.TERMINATED and not tx.timed_out


@pytest.mark.parametrize("table", [SERVER_INVITE, SERVER_NON_INVITE, CLIENT_NON_INVITE, CLIENT_INVITE])
def test_transition_tables_never_leave_terminated(table):
    assert not [k for k in table if k[0].name == "TERMINATED"]
    assert all(v.name in type(v).__members__ for v in table.values())
