"""Fuzz every parser of the sans-IO core with random and mutated input.

Each target takes one input (bytes), feeds it to a parser or a protocol state machine and
checks two things: only ``ccid.errors`` exceptions come out, and where a function exists
twice (C ``ccid._fast`` and its pure-Python twin ``ccid._framing_py``) both give the same
result. Inputs are random bytes or mutations (bit flips, byte sets, inserts, deletes,
splices, truncations) of the target's seeds.

    python tools/fuzz.py                         # every target, 10**4 inputs each
    python tools/fuzz.py -n 1000000 --seed 1     # the full run recorded in benchmarks/FUZZ.md
    python tools/fuzz.py t1 chain -n 100000      # some targets
    python tools/fuzz.py --list

Run from the repository root with ``PYTHONPATH=$PWD``. Exit status 1 when a target had a
finding; each finding is printed with the input that caused it (hex). The suite runs the
same targets at a small budget (tests/test_fuzz_targets.py).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ccid import _framing_py as py
from ccid.errors import CCIDError

try:
    from ccid import _fast as c
except ImportError:  # extension not built: the twin is fuzzed alone
    c = None  # type: ignore[assignment]


class Disagreement(AssertionError):
    """The C function and its twin gave different results."""


class Hang(Exception):
    """One input ran longer than the per-input limit."""


def agree(what: str, a: Any, b: Any) -> None:
    if a != b:
        raise Disagreement(f"{what}: C {a!r} != twin {b!r}")


def _outcome(fn: Callable[[], Any]) -> Any:
    """A call's result, or the class of what it raised (compared across twins)."""
    try:
        return ("ok", fn())
    except Exception as exc:  # the class is the result compared
        return ("raised", type(exc).__name__)


class Reader:
    """Consumes a fuzz input as a stream of small decisions (exhausted: zeros)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def number(self, hi: int) -> int:
        """0..hi."""
        v = self.byte() << 8 | self.byte()
        return v % (hi + 1)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(len(self.data))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


# --- targets -------------------------------------------------------------------------


def t_atr(data: bytes) -> None:
    from ccid.protocol.atr import parse_atr

    for check in (True, False):
        try:
            atr = parse_atr(data, check_tck=check)
        except CCIDError:
            continue
        str(atr), repr(atr)
        atr.ifsc, atr.edc, atr.protocols  # noqa: B018 - derived properties must not raise


def t_params(data: bytes) -> None:
    """ATR-derived parameters, timings and Fi/Di choice; SetParameters structures."""
    from ccid.protocol import params
    from ccid.protocol.atr import parse_atr

    r = Reader(data)
    clock = r.number(20_000)
    rates = tuple(r.number(1_000_000) for _ in range(r.byte() % 4))
    fi_di = r.byte() if r.byte() & 1 else None
    struct0, struct1 = r.take(5), r.take(7)
    for cls, raw in ((params.T0Parameters, struct0), (params.T1Parameters, struct1)):
        try:
            cls.from_bytes(raw)
        except CCIDError:
            pass
    try:
        atr = parse_atr(r.rest(), check_tck=False)
    except CCIDError:
        return
    calls: list[Callable[[], Any]] = [
        lambda: params.choose_fi_di(atr, clock_khz=clock, data_rates=rates,
                                    max_data_rate=max(rates, default=0)),
        lambda: params.effective_fi_di(atr, fi_di),
        lambda: params.t0_wwt_seconds(atr, clock, fi_di),
        lambda: params.t1_bwt_seconds(atr, clock, fi_di),
        lambda: params.t1_cwt_seconds(atr, clock, fi_di),
    ]
    calls += [partial(params.parameters_from_atr, atr, p, fi_di) for p in (0, 1)]
    for call in calls:
        try:
            call()
        except CCIDError:
            pass


def t_pps(data: bytes) -> None:
    from ccid.protocol.params import build_pps_request, check_pps_response

    r = Reader(data)
    protocol, fi_di = r.byte() % 16, r.byte()
    try:
        request = build_pps_request(protocol, fi_di if r.byte() & 1 else None)
    except CCIDError:
        request = r.take(6)
    response = r.rest()
    if r.byte() & 1 and response:  # sometimes the request itself, slightly changed
        response = request[:-1] + response[:1]
    for req in (request, response):
        try:
            check_pps_response(req, response)
        except CCIDError:
            pass


def t_descriptor(data: bytes) -> None:
    from ccid.descriptor import (
        parse_ccid_descriptor,
        parse_clock_frequencies,
        parse_data_rates,
    )

    try:
        d = parse_ccid_descriptor(data)
        repr(d)
    except CCIDError:
        pass
    declared = data[0] if data else None
    for fn in (parse_data_rates, parse_clock_frequencies):
        for n in (None, declared):
            try:
                fn(data[1:], n)
            except CCIDError:
                pass


def t_messages(data: bytes) -> None:
    from ccid.messages import parse_class_reply, parse_interrupt, parse_message

    try:
        repr(parse_message(data))
    except CCIDError:
        pass
    slots = (data[0] % 32) + 1 if data else 1
    try:
        parse_interrupt(data[1:], slots)
    except CCIDError:
        pass
    for request in (1, 2, 3):
        try:
            parse_class_reply(request, data[1:], data[0] if data else None)
        except CCIDError:
            pass


def t_interrupt(data: bytes) -> None:
    from ccid.messages import parse_interrupt

    slots = data[-1] % 40 + 1 if data else 1
    try:
        parse_interrupt(data, slots)
    except CCIDError:
        pass


_PENDING_KINDS = ((0x62, 0x80), (0x63, 0x81), (0x65, 0x81), (0x6F, 0x80), (0x6C, 0x82),
                  (0x6B, 0x83), (0x73, 0x84), (0x69, 0x80))


def t_engine(data: bytes) -> None:
    """Reply checks: a frame against a pending command, status to error, the read
    assembler fed in pieces, the chained-response assembler."""
    from ccid.engine import ChainedResponse, Engine, FrameAssembler, Pending

    r = Reader(data)
    limit = (0, 271, 65_544, 10, 11)[r.byte() % 5]
    engine = Engine(max_message_length=limit, max_stale=r.byte() % 4)
    msg_type, expect = _PENDING_KINDS[r.byte() % len(_PENDING_KINDS)]
    pending = Pending(msg_type, r.byte() % 3, r.byte() % 3, expect, b"")
    assembler = FrameAssembler(limit)
    chained = ChainedResponse(limit=r.number(300))
    while r.left:
        piece = r.take(r.byte() % 40)
        if r.byte() & 1 and len(piece) >= 10:  # a plausible header for this command
            piece = bytes((expect, (len(piece) - 10) & 0xFF, 0, 0, 0, pending.slot,
                           pending.seq)) + piece[7:]
        try:
            event = engine.receive(piece, pending)
            if hasattr(event, "bStatus"):
                try:
                    engine.raise_for_status(event, pending)  # type: ignore[arg-type]
                except CCIDError:
                    pass
        except CCIDError:
            pass
        try:
            assembler.feed(piece)
        except CCIDError:
            pass
        try:
            if chained.add(piece[0] if piece else 0, piece[1:]):
                chained.result()
        except CCIDError:
            pass


def t_framing(data: bytes) -> None:
    """C against twin: frame_size, check_reply, reply_header, reply_code, lrc, crc16,
    check_t1_block, build_t1_block, split_extended, join_chained, build_frame."""
    r = Reader(data)
    args = [(r.byte() if r.byte() & 3 else r.number(1 << 16) - 300) for _ in range(4)]
    body = r.rest()
    views = [body, bytearray(body), memoryview(body), memoryview(body + body)[::2]]
    for buf in views:
        for fn in ("frame_size", "lrc", "crc16"):
            _twins(fn, buf)
        for fn in ("check_reply", "reply_header"):
            _twins(fn, buf, *args)
        for crc in (False, True):
            _twins("check_t1_block", buf, crc)
    _twins("reply_code", body, len(body), *args)
    _twins("build_frame", *args, 0, 0, body)
    inf = body[:254]
    for crc in (False, True):
        nad, pcb = args[0] & 0xFF, args[1] & 0xFF
        agree("build_t1_block", c.build_t1_block(nad, pcb, inf, crc),
              py.build_t1_block(nad, pcb, inf, crc))
    chunk = args[2] if args[2] else 1
    _twins("split_extended", body, chunk)
    parts = [(body[i], body[i + 1 : i + 1 + (body[i] % 7)]) for i in range(0, len(body), 8)]
    _twins("join_chained", parts)
    _framing_public(buf=body, args=args)


def _twins(name: str, *args: Any) -> None:
    """``name`` of the C module and of the twin agree on ``args`` (result or error)."""
    agree(name, _outcome(partial(getattr(c, name), *args)),
          _outcome(partial(getattr(py, name), *args)))


def _framing_public(buf: bytes, args: list[int]) -> None:
    """The checked front: misuse is UsageError, wire faults ProtocolError, nothing else."""
    from ccid import framing

    calls: list[Callable[[], Any]] = [
        lambda: framing.frame_size(buf), lambda: framing.check_reply(buf, *args),
        lambda: framing.reply_header(buf, *args), lambda: framing.parse_header(buf),
        lambda: framing.check_t1_block(buf, bool(args[0] & 1)),
        lambda: framing.build_t1_block(args[0], args[1], buf, False),
        lambda: framing.build_frame(args[0], args[1], args[2], args[3], 0, 0, buf),
        lambda: framing.split_extended(buf, args[2]),
        lambda: framing.join_chained([(b, buf[:3]) for b in buf[:5]]),
    ]
    for call in calls:
        try:
            call()
        except CCIDError:
            pass


def _reply(seq: int, payload: bytes, chain: int = 0, status: int = 0) -> bytes:
    return py.build_frame(0x80, 0, seq, status, 0, chain, payload)


def t_chain(data: bytes) -> None:
    """The C Chain and its twin, driven by the same replies: same frames, same state."""
    r = Reader(data)
    mode = r.byte() & 1
    crc = bool(r.byte() & 1)
    chunk = r.number(60) + 1
    kwargs: dict[str, Any] = {"chunk": chunk, "crc": crc, "max_length": (0, 40, 300)[r.byte() % 3],
              "ifsd": r.number(254), "resp_cap": r.number(400)}
    chains: list[Any] = [c.Chain(mode, **kwargs), py.Chain(mode, **kwargs)]
    cmd = r.take(r.number(200))
    ns, nr = r.byte() & 1, r.byte() & 1
    new_chunk = r.number(70) if r.byte() & 1 else 0
    first_seq = r.byte() + (r.byte() & 1) * 200  # sometimes past 255
    got = [_outcome(partial(ch.first, first_seq, cmd, ns=ns, nr=nr, chunk=new_chunk))
           for ch in chains]
    agree("Chain.first", got[0], got[1])
    _chain_state(chains)
    seq = 1
    while r.left:
        kind = r.byte() % 4
        body = r.take(r.byte() % 24)
        if kind == 0:  # raw bytes
            reply = body
        elif mode == 1:  # a well-framed DataBlock around a T=1 block with a valid EDC
            pcb = body[0] if body else 0
            block = py.build_t1_block(0, pcb, body[1:], crc)
            reply = _reply(chains[1].seq, block if kind != 3 else block[:-1])
        else:
            reply = _reply(chains[1].seq, body, chain=(0x00, 0x01, 0x02, 0x03, 0x10)[kind])
        got = [_outcome(partial(ch.step, seq, reply)) for ch in chains]
        agree("Chain.step", got[0], got[1])
        _chain_state(chains)
        seq = (seq + 1) & 0xFF


def _chain_state(chains: list[Any]) -> None:
    fields = ("phase", "ns", "nr", "offset", "sent", "seq", "resp_len", "chunk", "ifsd")
    a, b = ([getattr(ch, f) for f in fields] + [ch.response()] for ch in chains)
    agree("Chain state", a, b)



def t_t1(data: bytes) -> None:
    """T1Protocol against arbitrary card blocks: only T1Error (a ProtocolError), every
    failure leaves it idle and able to start again, and the exchange is bounded."""
    from ccid.protocol.t1 import Complete, T1Protocol, T1State

    r = Reader(data)
    crc = bool(r.byte() & 1)
    host = T1Protocol(ifsc=r.number(253) + 1, ifsd=r.number(253) + 1, crc=crc)
    apdu = r.take(r.number(300)) or b"\x00"
    host.start(apdu)
    blocks = 0
    while r.left:
        op = r.byte() % 8
        body = r.take(r.byte() % 12)
        blocks += 1
        try:
            if op == 0:
                host.timeout_error()
                continue
            # raw bytes, or a valid block with the fuzzed PCB and INF
            block = body if op == 1 else py.build_t1_block(0, body[0] if body else 0,
                                                           body[1:], crc)
            event = host.receive(block)
        except CCIDError:
            if host.state is not T1State.IDLE:
                raise AssertionError("T1Protocol left busy after an error") from None
            host.start(apdu)  # the same object goes on
            continue
        if isinstance(event, Complete):
            host.start(apdu)


def t_t0(data: bytes) -> None:
    from ccid.protocol.t0 import T0Exchange, classify_apdu, parse_apdu

    r = Reader(data)
    apdu = r.take(r.number(40))
    for fn in (parse_apdu, classify_apdu):
        try:
            fn(apdu)
        except CCIDError:
            pass
    try:
        exchange = T0Exchange(apdu, auto_get_response=bool(r.byte() & 1),
                              max_rounds=r.number(300) + 1)
    except CCIDError:
        return
    rounds = 0
    while True:
        try:
            tpdu = exchange.next_tpdu()
        except CCIDError:
            return
        if tpdu is None:
            return
        rounds += 1
        if rounds > 400:
            raise AssertionError("T0Exchange sent more TPDUs than max_rounds allows")
        response = r.take(r.byte() % 6) if r.left else b"\x90\x00"
        if len(response) >= 2 and r.byte() & 1:
            response = response[:-2] + bytes((0x61, response[-1]))  # more to get
        try:
            exchange.receive(response)
        except CCIDError:
            return


_MINI_DB = """\
schema: 1
source: {repository: "r", commit: "c", commit_date: "d", release: "1"}
lines:
- {line: 1, section: supported, vid: 0x1111, pid: 0x2222, vendor: "V", name: "V Reader"}
devices: {}
rules:
- quirks: [no-pinpad]
  match:
  - {vid: 0x1111}
minimum_firmware: []
notes: {}
"""


def t_database(data: bytes) -> None:
    from ccid.database import Database, parse_yaml

    text = data.decode("utf-8", "replace")
    try:
        Database.from_data(parse_yaml(text, "fuzz.yaml"), "fuzz.yaml")
    except CCIDError:
        pass


def t_trace(data: bytes) -> None:
    from ccid import trace

    try:
        for rec in trace.loads(data.decode("utf-8", "replace")):
            trace.format_record(rec)
    except CCIDError:
        pass


# --- seeds ---------------------------------------------------------------------------


def _h(text: str) -> bytes:
    return bytes.fromhex(text)


def _seeds() -> dict[str, list[bytes]]:
    t1 = py.build_t1_block
    atrs = [_h("3B 02 14 50"), _h("3B 8E 80 01 80 31 80 66 B0 84 12 01 6E 01 83 00 90 00 1C"),
            _h("3B FF 13 00 00 81 31 FE 45 43 44 31 69 A9 00 00 20 20 20 20 20 20 00 BB"),
            _h("3B DC 18 FF 81 91 FE 1F C3 80 73 C8 21 13 66 01 0B 03 52 00 05 38"),
            _h("3F 65 25 08 36 04 6C 90 00")]
    desc = _h("36 21 10 01 00 07 03 00 00 00 A0 0F 00 00 A0 0F 00 00 00 00 80 25 00 00 00 "
              "B0 04 00 01 FE 00 00 00 00 00 00 00 00 00 00 00 BA 06 04 00 0F 01 00 00 00 "
              "00 00 00 00 01")
    replies = [py.build_frame(0x80, 0, 0, 0, 0, 0, _h("90 00")),
               py.build_frame(0x81, 0, 1, 0x01, 0, 0, b""),
               py.build_frame(0x82, 0, 2, 0, 0, 1, bytes(7)),
               py.build_frame(0x80, 0, 3, 0x80, 0x02, 0, b""),
               py.build_frame(0x80, 0, 4, 0x40, 0xFE, 0, b"")]
    framing = [bytes((i % 5, 0x10, 0, 2, 3)) + r for i, r in enumerate(replies)]
    t1_blocks = [t1(0, 0x00, _h("90 00"), False), t1(0, 0xC1, b"\x20", False),
                 t1(0, 0xC3, b"\x02", False), t1(0, 0x90, b"", False), t1(0, 0xE0, b"", False)]
    return {
        "atr": atrs,
        "params": [bytes(12) + a for a in atrs] + [_h("0F A0 02 00 01 96 00 00 00 00 00 00")
                                                 + atrs[3]],
        "pps": [_h("00 13 01 FF 10 13 FC"), _h("01 96 01 FF 11 96 78"), _h("00 00 00 FF 00 FF")],
        "descriptor": [b"\x02" + desc, desc],
        "messages": [*replies, _h("50 03"), _h("51 00 01 02"),
                     _h("62 00 00 00 00 00 01 00 00 00")],
        "interrupt": [_h("50 03 01"), _h("50 FF FF 00"), _h("51 00 03 02 00")],
        "engine": [_h("00 00 00 00") + r for r in replies],
        "framing": framing,
        "chain": [_h("01 00 10 00 05 00 00 00 00 02 00 05 00 A4 04 00 00 00 01 01 05 00 90 00"),
                  _h("00 00 00 10 00 00 00 01 00 40 00 04 01 02 03 04 00 00 00 02 10 02 01 01")],
        "t1": [_h("00 00 20 00 FE 00 05 00 A4 04 00") + bytes((2, 3)) + b[:-1]
               for b in t1_blocks],
        "t0": [_h("00 05 00 A4 04 00 00 01 02 61 10 03 90 00"),
               _h("00 05 00 B0 00 00 10 00 02 6C 08 01 02 90 00")],
        "database": [_MINI_DB.encode()],
        "trace": [b'{"t": 1796397539.669903, "m": 1071.80018, "reader": "r", "dir": "meta", '
                  b'"name": "reader", "info": {"a": 1}}\n{"t": 1796397539.669957, "m": 1071.8, '
                  b'"reader": "r", "dir": "->", "slot": 0, "hex": "6F 00 00 00 00 00 01 00 00 '
                  b'00"}\n',
                  b'00000000 2026-12-04T15:18:59.669903 [r] meta {"a":1}\n00000057 '
                  b"2026-12-04T15:18:59.669957 [r] -> 000000 6F 00 00 00 00 00 01 00 00 00\n",
                  b"-> 000000 65 00 00 00 00 00 01 00 00 00\n<- 000000 81 00 00 00 00 00 01 00 "
                  b"00 00\n"],
    }


#: Text fragments spliced into the text targets' inputs (JSON and YAML edge cases).
TEXT_TOKENS = (b"Infinity", b"-Infinity", b"NaN", b"1e18", b"-1e400", b"99999999999999999999",
               b"[" * 64, b"{" * 64, b"&a ", b"*a", b"<<: ", b'"', b"\\u0000", b"\xff\xfe",
               b"!!python/object ", b"null", b"true", b"-1", b"0x", b": ", b"\n- ", b"\t")


@dataclass
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: list[bytes]
    max_len: int = 300
    needs_c: bool = False
    tokens: tuple[bytes, ...] = ()


@dataclass
class Result:
    name: str
    inputs: int = 0
    seconds: float = 0.0
    findings: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def targets() -> dict[str, Target]:
    seeds = _seeds()
    table = [("atr", t_atr, 40, False), ("params", t_params, 60, False),
             ("pps", t_pps, 12, False), ("descriptor", t_descriptor, 80, False),
             ("messages", t_messages, 80, False), ("interrupt", t_interrupt, 20, False),
             ("engine", t_engine, 200, False), ("framing", t_framing, 80, True),
             ("chain", t_chain, 200, True), ("t1", t_t1, 200, False), ("t0", t_t0, 60, False),
             ("database", t_database, 1200, False), ("trace", t_trace, 300, False)]
    text = {"database", "trace"}
    return {name: Target(name, fn, seeds[name], max_len, needs_c,
                         TEXT_TOKENS if name in text else ())
            for name, fn, max_len, needs_c in table}


# --- the driver ----------------------------------------------------------------------


def mutate(rng: random.Random, seed: bytes, max_len: int,
           tokens: tuple[bytes, ...] = ()) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8 if tokens else 7)
        pos = rng.randrange(len(data) + 1)
        if op == 7:  # splice in a token, replacing what was there
            token = rng.choice(tokens)
            data[pos : pos + rng.randint(0, len(token))] = token
        elif op == 0 and data:  # flip a bit
            data[pos % len(data)] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # set a byte to an interesting value
            data[pos % len(data)] = rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF, rng.randrange(256)))
        elif op == 2:  # insert random bytes
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:  # delete a run
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 4:  # truncate
            del data[pos:]
        elif op == 5 and data:  # duplicate a run
            start = rng.randrange(len(data))
            data[pos:pos] = data[start : start + rng.randint(1, 16)]
        else:  # overwrite a run with random bytes
            n = rng.randint(1, 8)
            data[pos : pos + n] = rng.randbytes(n)
    return bytes(data[: max(max_len, len(seed) + 64)])


def generate(rng: random.Random, target: Target) -> bytes:
    if target.seeds and rng.random() < 0.7:
        return mutate(rng, rng.choice(target.seeds), target.max_len, target.tokens)
    return rng.randbytes(rng.randint(0, target.max_len))


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise Hang("input ran past the per-input limit")


def run_target(target: Target, n: int, seed: int = 0, *, hang_seconds: float = 10.0,
               max_findings: int = 20) -> Result:
    """Feed ``n`` inputs to ``target``; findings keyed by exception type and place."""
    rng = random.Random(f"{seed}:{target.name}")
    result = Result(target.name)
    alarm = hasattr(signal, "setitimer") and threading.current_thread() is \
        threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _on_alarm) if alarm else None
    start = time.perf_counter()
    try:
        for i in range(n):
            data = target.seeds[i] if i < len(target.seeds) else generate(rng, target)
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, hang_seconds)
            try:
                target.run(data)
            except CCIDError:
                pass  # a parser may raise at the top level too: ccid.errors is the contract
            except (Exception, RecursionError, Hang) as exc:  # a finding
                tb = traceback.extract_tb(exc.__traceback__)
                where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
                key = f"{type(exc).__name__} at {where}"
                if key not in result.findings:
                    result.findings[key] = (f"{type(exc).__name__}: {exc}"[:300], data)
                    if len(result.findings) >= max_findings:
                        result.inputs = i + 1
                        break
            finally:
                if alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            result.inputs = i + 1
    finally:
        result.seconds = time.perf_counter() - start
        if alarm:
            signal.signal(signal.SIGALRM, previous)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="target names (default: all)")
    parser.add_argument("-n", type=int, default=10_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true", help="list the targets")
    args = parser.parse_args(argv)
    table = targets()
    if args.list:
        print("\n".join(table))
        return 0
    unknown = [t for t in args.targets if t not in table]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; --list shows them")
    bad = 0
    print("| target | inputs | inputs/s | findings |\n|---|---:|---:|---:|")
    for name in args.targets or list(table):
        target = table[name]
        if target.needs_c and c is None:
            print(f"| {name} | skipped: ccid._fast not built | | |")
            continue
        res = run_target(target, args.n, args.seed)
        bad += bool(res.findings)
        print(f"| {name} | {res.inputs} | {res.rate:,.0f} | {len(res.findings)} |", flush=True)
        for key, (message, data) in res.findings.items():
            print(f"    {key}: {message}\n      input: {data.hex()}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
