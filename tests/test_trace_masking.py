"""PIN masking under failure: no PIN byte reaches a trace (text or JSON lines), a log or an
error message, whatever failed before it.

The property test drives real sessions: a virtual reader through pyusb, random PIN and
plain commands (chained ones among them), reader faults aimed at pieces of chained
commands, card faults that make T=1 resend blocks, card removals and resets.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ccid
from ccid import trace
from ccid.errors import CCIDError
from ccid.framing import build_frame, build_t1_block
from ccid.testing import CardRemoved, Refuse, Stall, VirtualCard, WrongSeq, preset
from ccid.trace.formats import to_json

XFR = frozenset({0x6F})


@pytest.fixture(autouse=True)
def _tracing_off() -> Iterator[None]:
    trace.disable()
    yield
    trace.disable()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _windows(pin: bytes, size: int = 5) -> list[bytes]:
    return [pin[i:i + size] for i in range(len(pin) - size + 1)] or [pin]


def assert_no_pin(pins: list[bytes], records: list[trace.TraceRecord], text: str,
                  texts: list[str]) -> None:
    """No window of 5 PIN bytes in any record, any trace line (text, JSON) or message."""
    jsonl = "\n".join(json.dumps(to_json(r)) for r in records)
    rendered = "\n".join(trace.format_record(r) for r in records)
    for pin in pins:
        for piece in _windows(pin):
            hexed = piece.hex(" ").upper()
            for r in records:
                assert piece not in r.data, (pin, trace.format_record(r))
            for where, body in (("text", text), ("jsonl", jsonl), ("rendered", rendered)):
                assert hexed not in body, (where, hexed, body[-3000:])
            for message in texts:
                assert hexed not in message.upper() and piece.hex() not in message \
                    and repr(piece)[2:-1] not in message, message


def pin_of(digits: str) -> bytes:
    raw = digits.encode()
    return raw + b"\xff" * (8 - len(raw)) if len(raw) < 8 else raw


# Commands: (kind, PIN digits). The PIN kinds carry the PIN; "plain-long" is chained
# (over T=1 blocks or extended-APDU pieces) and is where faults are aimed.
KINDS = ["verify", "verify-21", "change", "reset-counter", "verify-long", "plain-long",
         "plain"]


def command(kind: str, pin: bytes) -> bytes:
    if kind == "verify":
        return bytes.fromhex("0020008108") + pin
    if kind == "verify-21":  # BER-TLV PIN data
        body = bytes((0x5F, 0x2E, len(pin))) + pin
        return bytes((0x00, 0x21, 0x00, 0x81, len(body))) + body
    if kind == "change":
        body = pin + pin[::-1]
        return bytes((0x00, 0x24, 0x00, 0x81, len(body))) + body
    if kind == "reset-counter":
        body = b"\x31" * 8 + pin
        return bytes((0x00, 0x2C, 0x00, 0x81, len(body))) + body
    if kind == "verify-long":  # chained: the PIN sits in a continuation piece
        body = b"\xa5" * 280 + pin
        return bytes((0x00, 0x21, 0x00, 0x81, 0x00)) + len(body).to_bytes(2, "big") + body
    if kind == "plain-long":
        body = b"\xa5" * 300
        return bytes((0x00, 0xD6, 0x00, 0x00, 0x00)) + len(body).to_bytes(2, "big") + body
    return bytes.fromhex("00A4040006A000000018FF")


# Faults on the next command's frames: first T=1 blocks of a chain (M bit, N(S) 0 or 1),
# extended-APDU continuation pieces (they start with the 0xA5 filler), or any XfrBlock.
PREFIXES = [None, b"\x00\x20", b"\x00\x60", b"\xa5\xa5"]
FAULTS = ["none", "refuse", "removed", "stall", "wrong-seq", "bad-edc", "lose", "reset",
          "swap-card"]

step = st.tuples(st.sampled_from(FAULTS), st.sampled_from(PREFIXES), st.sampled_from(KINDS),
                 st.text("0123456789", min_size=4, max_size=8))


def arm(vr: Any, card: Any, fault: str, prefix: bytes | None) -> None:
    if fault == "refuse":
        vr.inject(Refuse(commands=XFR, prefix=prefix))
    elif fault == "removed":
        vr.inject(CardRemoved(commands=XFR, prefix=prefix))
    elif fault == "stall":
        vr.inject(Stall(commands=XFR, prefix=prefix, endpoint="out"))
    elif fault == "wrong-seq":
        vr.inject(WrongSeq(commands=XFR, prefix=prefix))
    elif fault == "bad-edc" and card is not None:
        card.faults.t1_bad_edc(1)
    elif fault == "lose" and card is not None:
        card.faults.t1_lose(1)


def run_session(name: str, protocol: str | None,
                steps: list[tuple[str, bytes | None, str, str]]) -> None:
    backend = preset(name)
    vr = backend.readers[0]
    out = io.StringIO()
    messages: list[str] = []
    handler = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    pins: list[bytes] = []
    trace.enable(out)
    try:
        with trace.capture() as records, ccid.open_reader(backend=backend,
                                                          quirks=False) as reader:
            card = None
            for fault, prefix, kind, digits in steps:
                pin = pin_of(digits)
                if kind not in ("plain", "plain-long"):
                    pins.append(pin)
                try:
                    if card is None:
                        if vr.card(0) is None:
                            vr.insert(VirtualCard(), 0)
                        card = reader.connect(protocol=protocol)
                    if fault == "reset":
                        card.reset()
                    elif fault == "swap-card":
                        vr.remove(0)
                        vr.insert(VirtualCard(), 0)
                    arm(vr, vr.card(0), fault, prefix)
                    card.transmit(command(kind, pin), timeout=2.0)
                except CCIDError as exc:
                    messages += [str(exc), repr(exc), str(exc.__cause__ or "")]
                    card = None
                finally:
                    vr.clear_faults()
                    if vr.card(0) is not None:
                        vr.card(0).faults.clear()
            trace.disable()
    finally:
        trace.disable()
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert_no_pin(pins, records, out.getvalue(), messages + handler.messages)


READERS = [("gemalto-pc-twin", "T=1"), ("gemalto-pc-twin", "T=0"), ("extended-apdu", None),
           ("short-apdu", None)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,protocol", READERS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_no_pin_in_any_trace_after_any_failure(name: str, protocol: str | None,
                                               steps: list[Any]) -> None:
    run_session(name, protocol, steps)


# --- the cases found by the adversarial trial, one by one ------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefix", [b"\x00\x20", b"\x00\x60"])
def test_verify_after_a_chain_refused_mid_way_is_masked(prefix: bytes) -> None:
    # The reader refuses a block with the M bit set, so the chain never ends: the VERIFY
    # that follows must not be taken for its continuation.
    steps = [("none", None, "plain", "0000"), ("refuse", prefix, "plain-long", "0000"),
             ("none", None, "verify", "98765432")]
    run_session("gemalto-pc-twin", "T=1", steps)


@pytest.mark.timeout(60)
def test_verify_after_the_card_was_swapped_mid_chain_is_masked() -> None:
    steps = [("removed", b"\x00\x20", "plain-long", "0000"),
             ("none", None, "verify", "98765432")]
    run_session("gemalto-pc-twin", "T=1", steps)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,protocol", READERS)
def test_verify_with_ber_tlv_data_is_masked(name: str, protocol: str | None) -> None:
    run_session(name, protocol, [("none", None, "verify-21", "4711")])


@pytest.mark.timeout(60)
def test_pin_in_a_continuation_block_is_masked() -> None:
    run_session("gemalto-pc-twin", "T=1", [("none", None, "verify-long", "24681357")])
    run_session("extended-apdu", None, [("none", None, "verify-long", "24681357")])


# --- frame-level rules ------------------------------------------------------------------


def xfr(seq: int, payload: bytes, level: int = 0) -> bytes:
    return build_frame(0x6F, 0, seq, 0, level & 0xFF, level >> 8, payload)


def reply(seq: int, payload: bytes, status: int = 0, error: int = 0) -> bytes:
    return build_frame(0x80, 0, seq, status, error, 0, payload)


def recorded(frames: list[tuple[str, bytes]]) -> str:
    out = io.StringIO()
    trace.enable(out)
    for direction, frame in frames:
        trace.record("R", direction, frame)
    trace.disable()
    return out.getvalue()


PIN = b"97531864"
VERIFY_BLOCK = build_t1_block(0, 0x00, bytes.fromhex("0020008108") + PIN, False)
POWER_ON = [("->", build_frame(0x62, 0, 0)), ("<-", reply(0, b"\x3b\x00"))]


@pytest.mark.parametrize("trouble", [
    [("<-", reply(1, b"", status=0x40, error=0x00))],  # the chain's block refused
    [],  # the chain's block never answered
    [("<-", reply(1, b"", status=0x42, error=0xFE))],  # card gone
    [("<-", reply(1, build_t1_block(0, 0x80, b"", False))),
     ("int<-", b"\x50\x03")],  # card swapped
    [("<-", reply(9, build_t1_block(0, 0x80, b"", False)))],  # a reply for another bSeq
])
def test_stale_chain_state_never_unmasks(trouble: list[tuple[str, bytes]]) -> None:
    first = build_t1_block(0, 0x20, bytes.fromhex("00D6000000012C") + b"\xa5" * 20, False)
    text = recorded([*POWER_ON, ("->", xfr(1, first)), *trouble, ("->", xfr(2, VERIFY_BLOCK))])
    assert PIN.hex(" ").upper()[:8] not in text
    assert "** ** ** **" in text.splitlines()[-1]


def test_mask_spans_alone_masks_what_it_cannot_judge() -> None:
    # A T=1 I-block that is not a PIN command's start may continue one: masked whole.
    block = build_t1_block(0, 0x40, b"\x01\x02" + PIN, False)
    spans = trace.mask_spans(xfr(1, block))
    assert spans == ((13, 10 + len(block)),)
    # An extended-APDU continuation piece: masked whole.
    assert trace.mask_spans(xfr(1, PIN, level=3)) == ((10, 10 + len(PIN)),)
    # A plain APDU, judged by its INS: left readable.
    assert trace.mask_spans(xfr(1, bytes.fromhex("00A4040002") + PIN)) == ()


def test_plain_chain_after_power_on_stays_readable() -> None:
    first = build_t1_block(0, 0x20, bytes.fromhex("00D6000000012C") + b"\xa5" * 20, False)
    second = build_t1_block(0, 0x40, b"\xa5" * 20, False)
    text = recorded([
        *POWER_ON,
        ("->", xfr(1, first)), ("<-", reply(1, build_t1_block(0, 0x90, b"", False))),
        ("->", xfr(2, second)), ("<-", reply(2, build_t1_block(0, 0x00, b"\x90\x00", False))),
        ("->", xfr(3, build_t1_block(0, 0x40, bytes.fromhex("00A4040002") + b"\x3f\x00",
                                     False)))])
    assert "**" not in text


def test_envelope_data_is_masked() -> None:
    apdu = bytes.fromhex("00C2000008") + PIN
    assert trace.mask_spans(xfr(1, apdu)) == ((15, 15 + len(PIN)),)
