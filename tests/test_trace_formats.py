"""Malformed traces: every one gives ccid.errors.TraceFormatError naming the line, never a
JSONDecodeError, OverflowError, RecursionError or ValueError from inside."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccid import trace
from ccid.errors import CCIDError, TraceFormatError
from ccid.framing import build_frame, build_t1_block
from ccid.testing.replay import replay
from ccid.trace.formats import to_json

STAMP = "00000000 2024-05-01T12:00:00.000000 [R]"
GOOD = {"t": 1714557600.0, "m": 1.0, "reader": "R", "dir": "->", "slot": 0,
        "hex": "65 00 00 00 00 00 01 00 00 00"}


@pytest.fixture(autouse=True)
def _tracing_off() -> Iterator[None]:
    trace.disable()
    yield
    trace.disable()


def jline(**changes: object) -> str:
    return json.dumps({**GOOD, **changes})


@pytest.mark.parametrize("text,line", [
    (f"{STAMP} -> 000000 65 00 00 00 00 00 00 00 00 00\n{STAMP} meta {{x\n", 2),
    (jline() + "\n" + jline().replace('"slot": 0', '"slot": Infinity') + "\n", 2),
    (jline() + "\n" + jline().replace('"slot": 0', '"slot": NaN') + "\n", 2),
    (jline(t=1e18) + "\n", 1),
    (jline(t=-1e300) + "\n", 1),
    (jline(m=1e308) + "\n", 1),
    (jline(slot=300) + "\n", 1),
    (jline(slot=True) + "\n", 1),
    (jline(slot="0") + "\n", 1),
    (jline(hex="6G 00") + "\n", 1),
    (jline(hex="100") + "\n", 1),
    (jline(hex=5) + "\n", 1),
    (jline(reader=["R"]) + "\n", 1),
    (jline(dir=None) + "\n", 1),
    (jline() + "\n[1, 2]\n", 2),
    (jline() + "\n" + jline() + "x\n", 2),
    (jline(dir="meta", info=[1]) + "\n", 1),
    (jline(dir="api", dur="slow") + "\n", 1),
    ("{" + "[" * 100_000 + "]" * 100_000 + "}\n", 1),
    ("[" * 100_000 + "\n", None),  # not JSON lines, and no frame line in it
    (f"{STAMP} meta " + "[" * 100_000 + "\n", 1),
    (f"{STAMP} -> 1000000 65\n", None),  # not a frame line: skipped, not an error
])
def test_malformed_trace_raises_trace_format_error(text: str, line: int | None) -> None:
    if line is None:
        assert trace.loads(text) == []
        return
    with pytest.raises(TraceFormatError) as info:
        trace.loads(text)
    assert info.value.line == line
    assert f"trace line {line}" in str(info.value)


def test_time_far_in_the_future_formats_without_error() -> None:
    rec = trace.TraceRecord(1e18, float("inf"), "R", "->", bytes(10), 0)
    line = trace.format_record(rec, 0.0)
    assert "-> 000000 00" in line


@pytest.mark.parametrize("descriptor", ["zz", "3621", 5, "36" * 54, ""])
def test_replay_with_bad_reader_facts_names_the_line(descriptor: object) -> None:
    meta = json.dumps({"t": 1.0, "m": 1.0, "reader": "R", "dir": "meta", "name": "reader",
                       "info": {"ccid_descriptor": descriptor, "vid": 0x1234}})
    text = jline() + "\n" + meta + "\n"
    if descriptor == "":
        replay(trace.loads(text))  # no descriptor: the generic reader
        return
    with pytest.raises(TraceFormatError) as info:
        replay(trace.loads(text))
    assert info.value.line == 2


@pytest.mark.parametrize("fact,value", [("vid", 1 << 20), ("pid", -1), ("vid", "0x1234"),
                                        ("interface", 3.5), ("bcdDevice", True)])
def test_replay_with_bad_ids_names_the_line(fact: str, value: object) -> None:
    meta = json.dumps({"t": 1.0, "m": 1.0, "reader": "R", "dir": "meta", "name": "reader",
                       "info": {fact: value}})
    with pytest.raises(TraceFormatError) as info:
        replay(trace.loads(meta + "\n" + jline() + "\n"))
    assert info.value.line == 1


# --- mutated traces ------------------------------------------------------------------


def _session() -> tuple[str, str]:
    frames = [
        ("->", build_frame(0x62, 0, 1)), ("<-", build_frame(0x80, 0, 1, 0, 0, 0, b"\x3b\x00")),
        ("->", build_frame(0x6F, 0, 2, payload=build_t1_block(0, 0, b"\x00\xa4\x04\x00",
                                                              False))),
        ("<-", build_frame(0x80, 0, 2, payload=build_t1_block(0, 0, b"\x90\x00", False))),
        ("int<-", b"\x50\x03"), ("ctrl->", bytes.fromhex("A103000001000001")),
        ("ctrl<-", bytes.fromhex("80250000")),
        ("->", build_frame(0x6F, 0, 3, payload=bytes.fromhex("0020008104") + b"1234")),
    ]
    texts = []
    for fmt in ("text", "jsonl"):
        out = io.StringIO()
        trace.enable(out, fmt=fmt)  # type: ignore[arg-type]
        trace.describe("R", {"vid": 0x08E6, "pid": 0x3437, "interrupt": True})
        with trace.span("R", "Card.transmit"):
            for direction, frame in frames:
                trace.record("R", direction, frame)
        trace.disable()
        texts.append(out.getvalue())
    return texts[0], texts[1]


TEXT, JSONL = _session()

PIECES = [*'0123456789{}[]":,.- eE*\n', "Infinity", "NaN", "1e999", "null", "\x00", "\udcff"]
mutation = st.tuples(st.sampled_from(["replace", "insert", "delete", "dup-line", "cut"]),
                     st.integers(0, 10_000), st.sampled_from(PIECES))


def mutate(text: str, mutations: list[tuple[str, int, str]]) -> str:
    for kind, pos, piece in mutations:
        if not text:
            break
        i = pos % len(text)
        if kind == "replace":
            text = text[:i] + piece + text[i + 1:]
        elif kind == "insert":
            text = text[:i] + piece + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + len(piece):]
        elif kind == "dup-line":
            lines = text.splitlines(keepends=True)
            j = pos % len(lines)
            text = "".join(lines[:j + 1] + lines[j:])
        else:
            text = text[:i]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([TEXT, JSONL]), mutations=st.lists(mutation, min_size=1,
                                                               max_size=6))
def test_mutated_traces_load_or_raise_trace_format_error(base: str,
                                                         mutations: list[tuple[str, int, str]]
                                                         ) -> None:
    text = mutate(base, mutations)
    try:
        records = trace.loads(text)
    except TraceFormatError as exc:
        assert exc.line is None or 1 <= exc.line <= len(text.splitlines())
        return
    # what loads accepts, everything else takes
    str(trace.summarize(records))
    json.dumps(trace.summarize(records).as_dict())
    for rec in records:
        trace.format_record(rec, 0.0)
        json.dumps(to_json(rec))
    try:
        replay(records)
    except CCIDError:
        pass


# --- the same kind of trouble elsewhere ----------------------------------------------


def test_recording_bad_arguments_gives_usage_errors() -> None:
    from ccid.errors import UsageError

    with trace.capture():
        with pytest.raises(UsageError):
            trace.record("R", "->", 5)  # type: ignore[arg-type]
        with pytest.raises(UsageError):
            trace.describe("R", [1, 2])  # type: ignore[arg-type]
        nested: dict[str, object] = {}
        nested["self"] = nested
        with pytest.raises(UsageError):
            trace.describe("R", nested)


def test_summary_reports_a_command_whose_bseq_came_round_unanswered() -> None:
    def rec(mono: float, direction: str, frame: bytes) -> trace.TraceRecord:
        return trace.TraceRecord(1e9 + mono, mono, "R", direction, frame, 0)

    records = [rec(0.0, "->", build_frame(0x6B, 0, 7, payload=b"\x01")),  # never answered
               rec(1.0, "->", build_frame(0x65, 0, 7)),
               rec(1.1, "<-", build_frame(0x81, 0, 7))]
    summary = trace.summarize(records)
    assert [e.command for e in summary.errors] == ["Escape"]
    assert {c.name for c in summary.calls} == {"GetSlotStatus"}


def test_summary_names_after_a_failed_chain() -> None:
    def rec(mono: float, direction: str, frame: bytes) -> trace.TraceRecord:
        return trace.TraceRecord(1e9 + mono, mono, "R", direction, frame, 0)

    first = build_t1_block(0, 0x20, bytes.fromhex("00D6000000012C") + b"\xa5" * 10, False)
    select = build_t1_block(0, 0x40, bytes.fromhex("00A4040002") + b"\x3f\x00", False)
    records = [rec(0.0, "->", build_frame(0x6F, 0, 1, payload=first)),
               rec(0.1, "<-", build_frame(0x80, 0, 1, 0x40, 0x00)),  # refused mid-chain
               rec(0.2, "->", build_frame(0x6F, 0, 2, payload=select)),
               rec(0.3, "<-", build_frame(0x80, 0, 2, payload=build_t1_block(
                   0, 0x00, b"\x90\x00", False)))]
    names = {c.name for c in trace.summarize(records).calls}
    assert "XfrBlock A4 SELECT" in names
