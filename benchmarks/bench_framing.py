"""Framing throughput: the C fast path (cffi) beside the pure-Python twin and construct.

One process, same inputs for every implementation, best of several rounds:

* frames: build a PC_to_RDR_XfrBlock frame and check an RDR_to_PC_DataBlock reply of the
  same size (payloads of 5, 261 and 65,546 bytes), two ways: the status only
  (``check_reply``), and the status with bStatus, bError and bChainParameter in one call
  (``reply_header``, what the engine and the reader call per received frame);
* T=1: build and check a block with a 254-byte INF, with LRC and with CRC;
* extended APDU: split a 65,535-byte APDU into chunks (65,536 - 10 and 261 bytes), then
  join the pieces again.

Run: ``python benchmarks/bench_framing.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine

from ccid import _framing_py as twin

try:
    from ccid import _fast as fast
except ImportError:
    fast = None  # type: ignore[assignment]

try:  # the executable spec, when messages.py is present
    from ccid.messages import FRAME

    CONSTRUCT_SOURCE = "ccid.messages.FRAME"
except ImportError:  # pragma: no cover - only before messages.py exists
    from construct import Bytes, Int8ub, Int32ul, Rebuild, Struct, Terminated, len_, this

    FRAME = Struct(
        "bMessageType" / Int8ub, "dwLength" / Rebuild(Int32ul, len_(this.abData)),
        "bSlot" / Int8ub, "bSeq" / Int8ub, "abParameters" / Bytes(3),
        "abData" / Bytes(this.dwLength), Terminated)
    CONSTRUCT_SOURCE = "inline construct.Struct (ccid.messages absent)"


def _batch(fn: Callable[[], Any], min_time: float) -> int:
    """Calls per timed round so that one round lasts about ``min_time`` seconds."""
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - start >= min_time / 4 or batch >= 1 << 22:
            return batch * 4
        batch *= 2


def measure(impls: dict[str, Callable[[], Any]], min_time: float,
            rounds: int) -> dict[str, float]:
    """Best ns per call of each implementation; rounds interleave the implementations so a
    burst of load elsewhere on the machine hits all of them alike."""
    batches = {name: _batch(fn, min_time) for name, fn in impls.items()}
    best = dict.fromkeys(impls, float("inf"))
    for _ in range(rounds):
        for name, fn in impls.items():
            n = batches[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / n * 1e9)
    return best


def frame_cases() -> dict[str, dict[str, Callable[[], Any]]]:
    cases: dict[str, dict[str, Callable[[], Any]]] = {}
    for size in (5, 261, 65_546):
        payload = bytes(i & 0xFF for i in range(size))
        reply = twin.build_frame(0x80, 0, 7, 0, 0, 0, payload)

        def with_impl(m: Any, payload: bytes = payload, reply: bytes = reply) -> Callable[[], Any]:
            build, check = m.build_frame, m.check_reply

            def run() -> None:
                build(0x6F, 0, 7, 4, 0, 0, payload)
                if check(reply, 0x80, 0, 7, 0):
                    raise AssertionError("reply rejected")
            return run

        def with_code(m: Any, payload: bytes = payload, reply: bytes = reply
                      ) -> Callable[[], Any]:
            build, code = m.build_frame, m.reply_code

            def run() -> None:
                build(0x6F, 0, 7, 4, 0, 0, payload)
                if code(reply, len(reply), 0x80, 0, 7, 0) & 0xC0FF:
                    raise AssertionError("reply rejected")
            return run

        code_impls = {"python": with_code(twin)}
        if fast is not None:
            code_impls["cffi"] = with_code(fast)
        cases[f"frame build+reply_code (the library's per-frame calls), {size:,}-byte "
              "payload"] = code_impls

        def with_construct(payload: bytes = payload, reply: bytes = reply) -> Callable[[], Any]:
            build, parse = FRAME.build, FRAME.parse

            def run() -> None:
                build({"bMessageType": 0x6F, "bSlot": 0, "bSeq": 7,
                       "abParameters": b"\x04\x00\x00", "abData": payload})
                frame = parse(reply)
                if frame.bSeq != 7 or frame.bSlot != 0 or frame.bMessageType != 0x80:
                    raise AssertionError("reply rejected")
            return run

        impls = {"python": with_impl(twin), "construct": with_construct()}
        if fast is not None:
            impls["cffi"] = with_impl(fast)

            def c_builder(payload: bytes = payload, reply: bytes = reply) -> None:
                fast._build_frame_cffi(0x6F, 0, 7, 4, 0, 0, payload)
                fast.check_reply(reply, 0x80, 0, 7, 0)
            impls["cffi (C builder)"] = c_builder
        cases[f"frame build+check, {size:,}-byte payload"] = impls
    return cases


def t1_cases() -> dict[str, dict[str, Callable[[], Any]]]:
    inf = bytes((i * 7) & 0xFF for i in range(254))
    cases: dict[str, dict[str, Callable[[], Any]]] = {}
    for crc in (False, True):
        def with_impl(m: Any, crc: bool = crc) -> Callable[[], Any]:
            build, check = m.build_t1_block, m.check_t1_block

            def run() -> None:
                if check(build(0x00, 0x20, inf, crc), crc)[0]:
                    raise AssertionError("block rejected")
            return run
        impls = {"python": with_impl(twin)}
        if fast is not None:
            impls["cffi"] = with_impl(fast)
        cases[f"T=1 build+check, 254-byte INF, {'CRC' if crc else 'LRC'}"] = impls
    return cases


def apdu_cases() -> dict[str, dict[str, Callable[[], Any]]]:
    apdu = bytes((i * 13) & 0xFF for i in range(65_535))
    cases: dict[str, dict[str, Callable[[], Any]]] = {}
    for chunk in (65_536 - 10, 261):
        def with_impl(m: Any, chunk: int = chunk) -> Callable[[], Any]:
            split, join = m.split_extended, m.join_chained

            def run() -> None:
                if join(split(apdu, chunk))[0]:
                    raise AssertionError("chain rejected")
            return run
        impls = {"python": with_impl(twin)}
        if fast is not None:
            impls["cffi"] = with_impl(fast)
        cases[f"extended APDU split+join, 65,535 bytes, chunk {chunk:,}"] = impls
    return cases


def _data_block(seq: int, data: bytes = b"", chain: int = 0) -> bytes:
    return twin.build_frame(0x80, 0, seq, 0, 0, chain, data)


def _exchange(mode_name: str, chunk: int, crc: bool, apdu: bytes, answer: bytes,
              replies: list[bytes]) -> dict[str, Callable[[], Any]]:
    """One whole exchange per call, for each implementation of ``Chain``."""

    def with_impl(m: Any) -> Callable[[], Any]:
        chain = m.Chain(getattr(m, mode_name), chunk=chunk, crc=crc)

        def run() -> None:
            chain.first(7, apdu)
            step = chain.step
            for reply in replies:
                step(7, reply)
            if chain.response() != answer:
                raise AssertionError("response not rebuilt")
        return run
    impls = {"python": with_impl(twin)}
    if fast is not None:
        impls["cffi"] = with_impl(fast)
    return impls


def chain_cases() -> dict[str, dict[str, Callable[[], Any]]]:
    """Whole exchanges as the reader drives them (``framing.Chain``): every reply checked
    and every next frame built by one call. The replies are made beforehand (constant
    bSeq 7), so only the framing work is timed."""
    cases: dict[str, dict[str, Callable[[], Any]]] = {}
    apdu = bytes((i * 13) & 0xFF for i in range(65_535))
    answer = bytes((i * 7) & 0xFF for i in range(65_535))
    for chunk in (65_536 - 10, 261):
        pieces = -(-len(apdu) // chunk)
        acks = [_data_block(7, chain=0x10)] * (pieces - 1)
        parts = [answer[i : i + chunk] for i in range(0, len(answer), chunk)]
        flags = [0x00] if len(parts) == 1 else \
            [0x01] + [0x03] * (len(parts) - 2) + [0x02]
        replies = acks + [_data_block(7, p, f) for p, f in zip(parts, flags)]
        cases[f"extended APDU exchange (Chain: split into frames + join the response), "
              f"65,535 bytes each way, chunk {chunk:,}"] = _exchange(
                  "CHAIN_EXTENDED", chunk, False, apdu, answer, replies)
    for crc in (False, True):
        cases[f"T=1 exchange (Chain), 65,535 bytes each way, IFSC/IFSD 254, "
              f"{'CRC' if crc else 'LRC'}"] = _exchange(
                  "CHAIN_T1", 254, crc, apdu, answer, _t1_replies(apdu, answer, crc))
    return cases


def _t1_replies(apdu: bytes, answer: bytes, crc: bool) -> list[bytes]:
    """The card's blocks for a T=1 exchange from N(S) = N(R) = 0: an R-block for each of
    our chained I-blocks, then the answer in chained I-blocks."""
    blocks, ns = [], 0
    for _ in range(254, len(apdu), 254):  # every I-block but the last is chained
        ns ^= 1
        blocks.append(twin.build_t1_block(0, 0x80 | (ns << 4), b"", crc))
    card_ns = 0
    for start in range(0, len(answer), 254):
        more = start + 254 < len(answer)
        blocks.append(twin.build_t1_block(0, (card_ns << 6) | (0x20 if more else 0),
                                          answer[start : start + 254], crc))
        card_ns ^= 1
    return [_data_block(7, block) for block in blocks]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per case")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per round")
    args = parser.parse_args()
    rounds, min_time = (2, 0.02) if args.quick else (args.rounds, args.min_time)

    print(f"machine: {machine()}")
    print(f"construct baseline: {CONSTRUCT_SOURCE}")
    if fast is None:
        print("ccid._fast_cffi is not built: only the twin and construct are measured")
    for group in (frame_cases(), t1_cases(), apdu_cases(), chain_cases()):
        for title, impls in group.items():
            print(f"\n{title}")
            times = measure(impls, min_time, rounds)
            base = times["python"]
            for name, ns in times.items():
                print(f"  {name:18s} {ns / 1000:10.2f} µs/op {1e9 / ns:14,.0f} op/s"
                      f"   x{base / ns:6.2f} vs python")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
