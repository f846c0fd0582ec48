"""T=1 host side against a card peer written here with framing's block functions.

The peer is test data: a minimal card side of ISO/IEC 7816-3 T=1 (chaining both ways,
R-block acknowledgements and retransmission, S(IFS), S(WTX), S(RESYNCH)) plus a wire
that can drop or corrupt chosen blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccid.errors import ProtocolError, UsageError
from ccid.framing import T1BlockError, T1Status, build_t1_block, check_t1_block
from ccid.protocol.t0 import parse_apdu
from ccid.protocol.t1 import (
    TRANSITIONS,
    BlockKind,
    Complete,
    SendBlock,
    T1Error,
    T1Protocol,
    T1State,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def echo_app(apdu: bytes) -> bytes:
    """The card's application: returns the command data reversed, then 90 00."""
    return parse_apdu(apdu).data[::-1] + h("90 00")


class CardPeer:
    """Card side of T=1. ``ifsc``: INF it accepts; ``ifsd``: INF it sends."""

    def __init__(self, app: Callable[[bytes], bytes] = echo_app, *, ifsc: int = 32,
                 ifsd: int = 32, crc: bool = False) -> None:
        self.app = app
        self.ifsc = ifsc
        self.ifsd = ifsd
        self.crc = crc
        self.ns = 0  # N(S) of the card's next new I-block
        self.nr = 0  # N(S) expected from the host
        self.rx = bytearray()
        self.tx = b""
        self.tx_off = 0
        self.tx_chunk = b""
        self.tx_more = False
        self.last_i: bytes | None = None
        self.last_i_ns = 0
        self.last: bytes | None = None
        self.pending_s: list[bytes] = []  # S requests to send before the next normal block
        self.deferred: bytes | None = None
        self.commands: list[bytes] = []
        self.host_blocks = 0
        self.inject: dict[int, list[bytes]] = {}  # host block number -> S requests then
        self.garble_until_resync = False
        self.ignore_resync = False
        self.received_pcbs: list[int] = []

    def block(self, pcb: int, inf: bytes = b"") -> bytes:
        return build_t1_block(0, pcb, inf, self.crc)

    def send(self, block: bytes) -> bytes:
        if self.pending_s:
            self.deferred = block
            block = self.pending_s.pop(0)
        self.last = block
        if self.garble_until_resync:
            return block[:-1] + bytes([block[-1] ^ 0xFF])
        return block

    def send_chunk(self) -> bytes:
        self.tx_chunk = self.tx[self.tx_off : self.tx_off + self.ifsd]
        self.tx_more = self.tx_off + len(self.tx_chunk) < len(self.tx)
        pcb = (self.ns << 6) | (0x20 if self.tx_more else 0)
        self.last_i = self.block(pcb, self.tx_chunk)
        self.last_i_ns = self.ns
        if not self.tx_more:
            self.ns ^= 1  # acknowledged implicitly by the host's next I-block
        return self.send(self.last_i)

    def resend_last(self) -> bytes:
        assert self.last is not None
        return self.send(self.last) if self.last is not None else b""

    def handle(self, block: bytes) -> bytes:
        self.host_blocks += 1
        self.pending_s += self.inject.pop(self.host_blocks, [])
        try:
            _nad, pcb, inf = check_t1_block(block, self.crc)
        except T1BlockError as exc:
            code = 1 if exc.status is T1Status.EDC else 2
            return self.send(self.block(0x80 | (self.nr << 4) | code))
        self.received_pcbs.append(pcb)
        if not pcb & 0x80:
            assert len(inf) <= self.ifsc, f"host sent INF {len(inf)} > card IFSC {self.ifsc}"
            if (pcb >> 6) & 1 != self.nr:
                return self.resend_last()
            self.nr ^= 1
            self.rx += inf
            if pcb & 0x20:
                return self.send(self.block(0x80 | (self.nr << 4)))
            command = bytes(self.rx)
            self.rx.clear()
            self.commands.append(command)
            self.tx, self.tx_off = self.app(command), 0
            return self.send_chunk()
        if pcb & 0xC0 == 0x80:
            host_nr = (pcb >> 4) & 1
            if self.last_i is not None and host_nr == self.last_i_ns:
                return self.send(self.last_i)
            if self.tx_more and not pcb & 0x0F:
                self.ns ^= 1
                self.tx_off += len(self.tx_chunk)
                return self.send_chunk()
            if self.last is not None and self.last[1] & 0xC0 == 0x80:
                return self.resend_last()
            return self.send(self.block(0x80 | (self.nr << 4)))
        kind = pcb & 0x3F
        if kind == 0x00:  # RESYNCH request
            if self.ignore_resync:
                return self.send(self.block(0x82))
            self.ns = self.nr = 0
            self.rx.clear()
            self.tx_more = False
            self.last_i = None
            self.garble_until_resync = False
            return self.send(self.block(0xE0))
        if kind == 0x01:  # IFS request (IFSD)
            self.ifsd = inf[0]
            return self.send(self.block(0xE1, inf))
        if kind in (0x21, 0x23):  # IFS or WTX response to our request
            if kind == 0x21:
                self.ifsc = inf[0]
            if self.pending_s:
                return self.send(self.pending_s.pop(0))
            assert self.deferred is not None
            block, self.deferred = self.deferred, None
            return self.send(block)
        raise AssertionError(f"card peer got unexpected PCB 0x{pcb:02X}")


def corrupt(block: bytes) -> bytes:
    return block[:-1] + bytes([block[-1] ^ 0x01])


def run(host: T1Protocol, card: CardPeer, first: bytes, faults: dict[int, str] | None = None,
        max_rounds: int = 200_000) -> tuple[bytes, list[int], list[bytes]]:
    """Carry blocks between host and card; returns (response, wtx list, host blocks)."""
    faults = faults or {}
    block = first
    sent = [block]
    wtx: list[int] = []
    for rnd in range(max_rounds):
        fault = faults.get(rnd)
        reply: bytes | None
        if fault == "drop_to_card":
            reply = None
        else:
            reply = card.handle(corrupt(block) if fault == "corrupt_to_card" else block)
            if fault == "drop_from_card":
                reply = None
            elif fault == "corrupt_from_card":
                reply = corrupt(reply)
        if reply is None:
            block = host.timeout_error()
        else:
            event = host.receive(reply)
            if isinstance(event, Complete):
                return event.response, wtx, sent
            if event.wtx:
                wtx.append(event.wtx)
            block = event.block
        sent.append(block)
    raise AssertionError("exchange did not complete")


def extended_apdu(data: bytes) -> bytes:
    if not data:
        return h("80 10 00 00 00 00 00")  # case 2E
    return h("80 10 00 00 00") + len(data).to_bytes(2, "big") + data + h("00 00")


# --- plain exchanges ----------------------------------------------------------------


def test_single_block_exchange() -> None:
    host, card = T1Protocol(), CardPeer()
    first = host.start(h("00 A4 04 00 02 3F 00 00"))
    assert first == build_t1_block(0, 0x00, h("00 A4 04 00 02 3F 00 00"), False)
    resp, _, sent = run(host, card, first)
    assert resp == h("00 3F 90 00")
    assert len(sent) == 1
    assert host.state is T1State.IDLE and host.ns == 1 and host.nr == 1
    # second exchange alternates N(S)
    resp, _, sent = run(host, card, host.start(h("00 A4 04 00 01 AA 00")))
    assert resp == h("AA 90 00") and sent[0][1] == 0x40


@pytest.mark.parametrize("crc", [False, True])
def test_chaining_both_ways(crc: bool) -> None:
    data = bytes(i & 0xFF for i in range(1000))
    host = T1Protocol(ifsc=32, ifsd=20, crc=crc)
    card = CardPeer(ifsc=32, ifsd=20, crc=crc)
    resp, _, sent = run(host, card, host.start(extended_apdu(data)))
    assert resp == data[::-1] + h("90 00")
    assert card.commands == [extended_apdu(data)]
    apdu_len = len(extended_apdu(data))
    acks = -(-(len(data) + 2) // 20) - 1
    assert len(sent) == -(-apdu_len // 32) + acks
    # our chained I-blocks carry M=1 and alternate N(S)
    i_pcbs = [p for p in card.received_pcbs if not p & 0x80]
    assert all(p & 0x20 for p in i_pcbs[:-1]) and not i_pcbs[-1] & 0x20
    assert [(p >> 6) & 1 for p in i_pcbs[:4]] == [0, 1, 0, 1]


def test_ifsd_negotiation() -> None:
    host, card = T1Protocol(ifsd=254), CardPeer(ifsd=32)
    req = host.ifs_request(200)
    assert req == build_t1_block(0, 0xC1, bytes([200]), False)
    event = host.receive(card.handle(req))
    assert event == Complete(b"")
    assert host.ifsd == 200 and card.ifsd == 200
    data = bytes(600)
    resp, _, sent = run(host, card, host.start(extended_apdu(data)))
    assert resp == data + h("90 00")
    # 609-byte APDU in 32-byte blocks, then 602 response bytes in 200-byte blocks (3 acks)
    assert len(sent) == -(-609 // 32) + 3


# --- S-blocks from the card -----------------------------------------------------------


def test_wtx_request() -> None:
    host, card = T1Protocol(), CardPeer()
    wtx_req = card.block(0xC3, b"\x05")
    card.pending_s = [wtx_req]
    resp, wtx, sent = run(host, card, host.start(h("00 A4 04 00 01 AA 00")))
    assert resp == h("AA 90 00")
    assert wtx == [5]
    assert sent[1] == build_t1_block(0, 0xE3, b"\x05", False)


def test_ifs_request_from_card_mid_chain() -> None:
    host = T1Protocol(ifsc=32)
    card = CardPeer(ifsc=32)
    # after the card's second block from us, it asks for IFSC 10
    card.inject[2] = [card.block(0xC1, b"\x0a")]
    data = bytes(range(200))
    resp, _, sent = run(host, card, host.start(extended_apdu(data)))
    assert resp == data[::-1] + h("90 00")
    assert host.ifsc == 10
    assert build_t1_block(0, 0xE1, b"\x0a", False) in sent
    after = sent[sent.index(build_t1_block(0, 0xE1, b"\x0a", False)) + 1 :]
    assert all(b[2] <= 10 for b in after if not b[1] & 0x80)


def test_abort_from_card_raises() -> None:
    host = T1Protocol()
    host.start(h("00 A4 04 00 01 AA 00"))
    with pytest.raises(T1Error, match="ABORT"):
        host.receive(build_t1_block(0, 0xC2, b"", False))
    assert host.state is T1State.IDLE


# --- error recovery -------------------------------------------------------------------


def test_edc_error_from_card_gives_r_block() -> None:
    host = T1Protocol()
    host.start(h("00 A4 04 00 01 AA 00"))
    good = build_t1_block(0, 0x00, h("90 00"), False)
    reply = host.receive(corrupt(good))
    assert isinstance(reply, SendBlock)
    assert reply.block == build_t1_block(0, 0x81, b"", False)  # R(N(R)=0), EDC error
    assert host.receive(good) == Complete(h("90 00"))


def test_other_error_code_for_bad_length() -> None:
    host = T1Protocol()
    host.start(h("00 A4 04 00 01 AA 00"))
    reply = host.receive(h("00 00 05 90 00 90"))
    assert isinstance(reply, SendBlock) and reply.block[1] == 0x82


@pytest.mark.parametrize(
    "faults",
    [
        {0: "corrupt_from_card"},
        {0: "corrupt_to_card"},
        {0: "drop_from_card"},
        {0: "drop_to_card"},
        {2: "corrupt_from_card", 3: "corrupt_from_card"},
        {1: "drop_to_card", 5: "corrupt_to_card", 9: "drop_from_card"},
        {12: "corrupt_from_card", 14: "corrupt_to_card"},
    ],
)
def test_recovers_from_faults(faults: dict[int, str]) -> None:
    data = bytes(range(100))
    host = T1Protocol(ifsc=16, ifsd=16)
    card = CardPeer(ifsc=16, ifsd=16)
    resp, _, _ = run(host, card, host.start(extended_apdu(data)), faults)
    assert resp == data[::-1] + h("90 00")
    assert card.commands == [extended_apdu(data)]  # executed once, no resync needed
    # and the next exchange still works
    resp, _, _ = run(host, card, host.start(h("00 A4 04 00 01 AA 00")))
    assert resp == h("AA 90 00")


def test_lost_block_timeout_error_is_r_block() -> None:
    host = T1Protocol()
    host.start(h("00 A4 04 00 01 AA 00"))
    assert host.timeout_error() == build_t1_block(0, 0x82, b"", False)


def test_card_inf_larger_than_ifsd() -> None:
    host = T1Protocol(ifsd=8)
    host.start(h("00 A4 04 00 01 AA 00"))
    big = build_t1_block(0, 0x00, bytes(9) + h("90 00"), False)
    reply = host.receive(big)
    assert isinstance(reply, SendBlock) and reply.block[1] == 0x82  # R, other error
    with pytest.raises(T1Error):
        for _ in range(20):
            ev = host.receive(big)
            if ev.block[1] == 0xC0:  # resync: the card answers, the APDU restarts
                host.receive(build_t1_block(0, 0xE0, b"", False))


def test_resync_after_retries_restarts_apdu() -> None:
    host, card = T1Protocol(max_retries=3), CardPeer()
    card.garble_until_resync = True
    apdu = h("00 A4 04 00 02 12 34 00")
    resp, _, sent = run(host, card, host.start(apdu))
    assert resp == h("34 12 90 00")
    resync = build_t1_block(0, 0xC0, b"", False)
    assert sent.count(resync) == 1
    assert sent.index(resync) == 4  # first I-block + 3 R-blocks, then resync
    assert card.commands == [apdu, apdu]  # the APDU was sent again after resync


def test_resync_unanswered_raises() -> None:
    host, card = T1Protocol(max_retries=2), CardPeer()
    card.garble_until_resync = True
    card.ignore_resync = True
    with pytest.raises(T1Error, match="RESYNCH"):
        run(host, card, host.start(h("00 A4 04 00 01 AA 00")))
    assert host.state is T1State.IDLE


def test_explicit_resync() -> None:
    host, card = T1Protocol(ifsc=32), CardPeer()
    run(host, card, host.start(h("00 A4 04 00 01 AA 00")))
    assert host.ns == 1
    event = host.receive(card.handle(host.resync_request()))
    assert event == Complete(b"")
    assert host.ns == 0 and host.nr == 0
    resp, _, _ = run(host, card, host.start(h("00 A4 04 00 01 AA 00")))
    assert resp == h("AA 90 00")


def test_timeouts_exhaust_to_error() -> None:
    host = T1Protocol(max_retries=3)
    host.start(h("00 A4 04 00 01 AA 00"))
    blocks = []
    with pytest.raises(T1Error):
        for _ in range(50):
            blocks.append(host.timeout_error())
    pcbs = [b[1] for b in blocks]
    assert pcbs == [0x82, 0x82, 0x82, 0xC0, 0xC0, 0xC0]


def test_ifs_request_retried_then_fails() -> None:
    host = T1Protocol(max_retries=2)
    req = host.ifs_request(100)
    assert host.receive(build_t1_block(0, 0xE1, b"\x63", False)).block == req  # wrong value
    assert host.timeout_error() == req
    with pytest.raises(T1Error, match="IFS"):
        host.timeout_error()


def test_api_misuse() -> None:
    host = T1Protocol()
    with pytest.raises(UsageError):
        host.receive(h("00 00 00 00"))
    with pytest.raises(UsageError):
        host.timeout_error()
    with pytest.raises(UsageError):
        host.start(b"")
    host.start(h("00 A4 04 00"))
    with pytest.raises(UsageError):
        host.start(h("00 A4 04 00"))
    with pytest.raises(UsageError):
        host.ifs_request(32)
    for bad in (dict(ifsc=0), dict(ifsd=255), dict(nad=256), dict(max_retries=0)):
        with pytest.raises(UsageError):
            T1Protocol(**bad)  # type: ignore[arg-type]


def test_transition_table_is_explicit() -> None:
    # Nothing is accepted when idle; the IFS/RESYNCH states accept only their response.
    assert not any(state is T1State.IDLE for state, _ in TRANSITIONS)
    assert {k for s, k in TRANSITIONS if s is T1State.IFS_PENDING} == {BlockKind.S_IFS_RESP}
    assert {k for s, k in TRANSITIONS if s is T1State.RESYNC_PENDING} == {
        BlockKind.S_RESYNCH_RESP}
    assert issubclass(T1Error, ProtocolError)


def test_largest_extended_apdu() -> None:
    data = bytes(i & 0xFF for i in range(65535))
    host = T1Protocol(ifsc=254, ifsd=254)
    card = CardPeer(ifsc=254, ifsd=254)
    resp, _, sent = run(host, card, host.start(extended_apdu(data)))
    assert resp == data[::-1] + h("90 00")
    assert len(sent) == -(-(65535 + 9) // 254) + -(-(65535 + 2) // 254) - 1


def test_response_size_is_capped() -> None:
    host = T1Protocol(ifsd=254)
    host.start(h("00 B0 00 00 00 00 00"))
    block = host.timeout_error()  # just to show the state survives a timeout
    assert block[1] == 0x82
    with pytest.raises(T1Error, match="exceeds"):
        for i in range(400):
            host.receive(build_t1_block(0, ((i & 1) << 6) | 0x20, bytes(254), False))


# --- properties -----------------------------------------------------------------------


@st.composite
def sizes_and_ifs(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.one_of(st.integers(0, 600), st.integers(0, 65535)))
    low = max(1, min(254, size // 1500))  # keeps block counts (and run time) bounded
    return size, draw(st.integers(low, 254)), draw(st.integers(low, 254))


@settings(max_examples=60)
@given(sizes_and_ifs(), st.booleans())
def test_chaining_roundtrip(params: tuple[int, int, int], crc: bool) -> None:
    size, ifsc, ifsd = params
    data = bytes((i * 7 + size) & 0xFF for i in range(size))
    host = T1Protocol(ifsc=ifsc, ifsd=254, crc=crc)
    card = CardPeer(ifsc=ifsc, ifsd=32, crc=crc)
    assert host.receive(card.handle(host.ifs_request(ifsd))) == Complete(b"")
    apdu = extended_apdu(data)
    resp, _, sent = run(host, card, host.start(apdu))
    assert resp == data[::-1] + h("90 00")
    assert card.commands == [apdu]
    overhead = 3 + (2 if crc else 1)
    assert all(len(b) - overhead <= ifsc for b in sent)


@given(st.data())
def test_random_faults_recover_or_fail_cleanly(data: st.DataObject) -> None:
    host = T1Protocol(ifsc=8, ifsd=8)
    card = CardPeer(ifsc=8, ifsd=8)
    kinds = ["drop_to_card", "corrupt_to_card", "drop_from_card", "corrupt_from_card"]
    faults = data.draw(st.dictionaries(st.integers(0, 40), st.sampled_from(kinds), max_size=6))
    payload = bytes(range(40))
    try:
        resp, _, _ = run(host, card, host.start(extended_apdu(payload)), faults, max_rounds=500)
    except T1Error:
        assert host.state is T1State.IDLE
        return
    assert resp == payload[::-1] + h("90 00")


@given(st.lists(st.binary(max_size=12), max_size=12), st.booleans())
def test_receive_fuzz(blocks: list[bytes], chained: bool) -> None:
    host = T1Protocol(ifsc=4 if chained else 32)
    host.start(h("00 A4 04 00 05 01 02 03 04 05 00"))
    for block in blocks:
        try:
            event = host.receive(block)
        except T1Error:
            return
        if isinstance(event, Complete):
            return
        assert isinstance(event, SendBlock)
        check_t1_block(event.block, False)


# --- bounded S-block exchanges, clean failure, resend after IFSC change ---------------

IFS_REQ_10 = build_t1_block(0, 0xC1, b"\x0a", False)


def test_card_asking_ifs_forever_is_stopped_by_the_protocol() -> None:
    host = T1Protocol()
    host.start(h("00 A4 04 00 01 AA 00"))
    with pytest.raises(T1Error, match="S\\(IFS request\\)") as info:
        for _ in range(1000):
            host.receive(IFS_REQ_10)
    assert not isinstance(info.value, UsageError)
    assert isinstance(info.value, ProtocolError)
    assert host.state is T1State.IDLE
    # the same object runs the next exchange to its end
    resp, _, _ = run(host, CardPeer(), host.start(h("00 A4 04 00 02 AA BB 00")))
    assert resp == h("BB AA 90 00")


def test_ifs_requests_between_progress_are_fine() -> None:
    # one S(IFS request) per block the host sends: the exchange moves on in between
    host, card = T1Protocol(ifsc=8), CardPeer(ifsc=8)
    for n in range(2, 24, 2):  # host blocks: I, S(IFS response), I, ...
        card.inject[n] = [card.block(0xC1, bytes([8]))]
    data = bytes(range(60))
    resp, _, _ = run(host, card, host.start(extended_apdu(data)))
    assert resp == data[::-1] + h("90 00")


S_AND_R = st.sampled_from([
    IFS_REQ_10,
    build_t1_block(0, 0xC1, b"\x01", False),  # S(IFS request 1)
    build_t1_block(0, 0xC3, b"\x01", False),  # S(WTX request)
    build_t1_block(0, 0x80, b"", False),  # R(0)
    build_t1_block(0, 0x90, b"", False),  # R(1)
    build_t1_block(0, 0x81, b"", False),  # R(0) EDC error
    build_t1_block(0, 0xE1, b"\x0a", False),  # unsolicited S(IFS response)
    build_t1_block(0, 0xE0, b"", False),  # unsolicited S(RESYNCH response)
    b"\x00\x00",  # garbage
])


@settings(max_examples=150)
@given(st.lists(S_AND_R, min_size=1, max_size=6), st.booleans(), st.integers(1, 300))
def test_a_card_repeating_any_blocks_forever_is_stopped(
        pattern: list[bytes], timeouts: bool, size: int) -> None:
    """Any cycle of non-I blocks (and timeouts) ends in T1Error within a bound, leaving
    the protocol idle and able to start again."""
    host = T1Protocol(ifsc=16)
    host.start(extended_apdu(bytes(size)))
    blocks = 0
    with pytest.raises(T1Error):
        while blocks < 20_000:
            for block in pattern:
                blocks += 1
                if timeouts and blocks % 3 == 0:
                    host.timeout_error()
                else:
                    host.receive(block)
    assert host.state is T1State.IDLE
    first = host.start(h("00 A4 04 00 01 AA 00"))
    check_t1_block(first, False)


def test_resend_after_card_lowers_ifsc_fits_the_new_ifsc() -> None:
    host = T1Protocol(ifsc=32)
    data = bytes(range(100))
    first = host.start(extended_apdu(data))
    assert first[2] == 32
    answer = host.receive(IFS_REQ_10)
    assert isinstance(answer, SendBlock) and answer.block == build_t1_block(0, 0xE1, b"\x0a",
                                                                            False)
    # the card NAKs the pending I-block (R(N(R)=0): it still expects N(S)=0)
    resent = host.receive(build_t1_block(0, 0x82, b"", False))
    assert isinstance(resent, SendBlock)
    _nad, pcb, inf = check_t1_block(resent.block, False)
    assert pcb == 0x20 and inf == extended_apdu(data)[:10]  # N(S)=0, M=1, 10 bytes


def test_resend_after_ifsc_change_completes_against_the_card() -> None:
    host, card = T1Protocol(ifsc=32), CardPeer(ifsc=32)
    data = bytes(range(100))
    first = host.start(extended_apdu(data))
    # the card lowers its IFSC, then asks again for the pending block: it must get one
    # that fits (the peer asserts INF <= its IFSC)
    answer = host.receive(IFS_REQ_10)
    assert isinstance(answer, SendBlock)
    card.ifsc = 10
    card.last = build_t1_block(0, 0x80, b"", False)
    resent = host.receive(build_t1_block(0, 0x80, b"", False))  # R(0): send N(S)=0 again
    assert isinstance(resent, SendBlock)
    del first
    resp, _, _ = run(host, card, resent.block)
    assert resp == data[::-1] + h("90 00")
    assert card.commands == [extended_apdu(data)]
