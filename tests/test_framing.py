"""ccid.framing: the C fast path and the pure-Python twin agree byte for byte.

Every function of ``ccid._fast`` (cffi over ``ccid/_fast.c``) is run against
``ccid._framing_py`` on the same random, truncated and malformed input; outcomes (value or
exception type) must be equal. Known vectors pin both to real bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import ccid.framing as framing
from ccid import _framing_py as py
from ccid.errors import ProtocolError, UsageError

try:
    from ccid import _fast
except ImportError:  # extension not built: only the twin's own tests run
    _fast = None  # type: ignore[assignment]

needs_fast = pytest.mark.skipif(_fast is None, reason="ccid._fast_cffi not built")

# Fifteen agreement properties share the suite's time budget: at most 600 examples each
# (the "ci" profile's 2000 would cost about a minute of CPU here for little extra reach).
AGREE = settings(max_examples=min(settings.default.max_examples, 600))

BYTES_LIKE = st.sampled_from([bytes, bytearray, memoryview])
# Mostly bytes; ints past 255 and past 64 bits reach the range checks and the fallbacks.
BYTE_ARG = st.one_of(st.integers(0, 255), st.integers(0, 255), st.integers(-2**70, 2**70))


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """('ok', value) or ('raise', exception type): what a caller of ``fn`` would see."""
    try:
        value = fn(*args)
    except Exception as exc:
        return "raise", type(exc)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "ok", (type(value).__name__, bytes(value))
    if isinstance(value, tuple):
        return "ok", tuple((type(v).__name__, bytes(v)) if isinstance(v, bytes) else v
                           for v in value)
    if isinstance(value, list):
        return "ok", [(lv, type(d).__name__, bytes(d)) for lv, d in value]
    return "ok", value


def same(name: str, *args: Any) -> tuple[str, Any]:
    assert _fast is not None
    fast = outcome(getattr(_fast, name), *args)
    twin = outcome(getattr(py, name), *args)
    assert fast == twin, (name, args[:3])
    return fast


def header(msg_type: int, length: int, slot: int, seq: int, rest: bytes = b"\0\0\0") -> bytes:
    return bytes((msg_type,)) + length.to_bytes(4, "little") + bytes((slot, seq)) + rest


# --- agreement: PC_to_RDR / RDR_to_PC frames ------------------------------------------------

@needs_fast
@AGREE
@given(msg_type=BYTE_ARG, slot=BYTE_ARG, seq=BYTE_ARG, p1=BYTE_ARG, p2=BYTE_ARG, p3=BYTE_ARG,
       payload=st.binary(max_size=600), kind=BYTES_LIKE)
def test_build_frame_agrees(msg_type: int, slot: int, seq: int, p1: int, p2: int, p3: int,
                            payload: bytes, kind: type) -> None:
    assert _fast is not None
    args = (msg_type, slot, seq, p1, p2, p3, kind(payload))
    result = same("build_frame", *args)
    # the C builder (ccid_build_frame) too, not only the struct-packed header
    assert outcome(_fast._build_frame_cffi, *args) == result
    if result[0] == "ok":
        frame = result[1][1]
        assert len(frame) == 10 + len(payload) and frame[10:] == payload


@needs_fast
@AGREE
@given(buf=st.binary(max_size=40), kind=BYTES_LIKE)
def test_frame_size_agrees(buf: bytes, kind: type) -> None:
    same("frame_size", kind(buf))


def _replies() -> st.SearchStrategy[bytes]:
    """Garbage, truncated, padded and well-formed RDR_to_PC frames."""
    well_formed = st.builds(
        lambda t, slot, seq, data, cut, pad: (header(t, len(data), slot, seq) + data)[
            : cut if cut is not None else None] + pad,
        st.sampled_from([0x80, 0x81, 0x82, 0x83, 0x84, 0x00, 0xFF]),
        st.integers(0, 3), st.integers(0, 255), st.binary(max_size=300),
        st.one_of(st.none(), st.integers(0, 320)), st.one_of(st.just(b""), st.binary(max_size=4)))
    huge = st.builds(lambda n, seq: header(0x80, n, 0, seq), st.integers(0, 2**32 - 1),
                     st.integers(0, 255))
    return st.one_of(st.binary(max_size=30), well_formed, huge)


@needs_fast
@AGREE
@given(buf=_replies(), expect_type=st.sampled_from([0x80, 0x81, 0x82, 0x83, 0x84]),
       slot=st.one_of(st.integers(0, 3), st.integers(-2**70, 2**70)),
       seq=st.one_of(st.integers(0, 255), st.integers(-2**70, 2**70)),
       max_length=st.one_of(st.just(0), st.integers(0, 400), st.integers(-2**70, 2**70)),
       kind=BYTES_LIKE)
def test_check_reply_agrees(buf: bytes, expect_type: int, slot: int, seq: int, max_length: int,
                            kind: type) -> None:
    same("check_reply", kind(buf), expect_type, slot, seq, max_length)
    same("reply_header", kind(buf), expect_type, slot, seq, max_length)
    same("frame_size", kind(buf))


@pytest.mark.parametrize("impl", [py] if _fast is None else [py, _fast])
@AGREE
@given(buf=_replies(), cut=st.integers(0, 40), expect_type=st.sampled_from([0x80, 0x81]),
       slot=st.integers(0, 3), seq=st.integers(0, 255),
       max_length=st.one_of(st.just(0), st.integers(0, 400)))
def test_reply_code_is_reply_header_of_the_first_n_bytes(
        impl: ModuleType, buf: bytes, cut: int, expect_type: int, slot: int, seq: int,
        max_length: int) -> None:
    """The per-frame form (length passed in, the bare C function under cffi) gives
    reply_header's code, for the whole frame and for a prefix."""
    buf = bytes(buf)
    n = max(0, len(buf) - cut)
    assert impl.reply_code(buf, len(buf), expect_type, slot, seq, max_length) == \
        py.reply_header(buf, expect_type, slot, seq, max_length)
    assert impl.reply_code(buf, n, expect_type, slot, seq, max_length) == \
        py.reply_header(buf[:n], expect_type, slot, seq, max_length)


@pytest.mark.parametrize("impl", [py] if _fast is None else [py, _fast])
@AGREE
@given(buf=_replies(), expect_type=st.sampled_from([0x80, 0x81]), slot=st.integers(0, 3),
       seq=st.integers(0, 255), max_length=st.one_of(st.just(0), st.integers(0, 400)))
def test_reply_header_is_the_check_and_the_status_bytes(
        impl: ModuleType, buf: bytes, expect_type: int, slot: int, seq: int,
        max_length: int) -> None:
    code = impl.reply_header(buf, expect_type, slot, seq, max_length)
    status = impl.check_reply(buf, expect_type, slot, seq, max_length)
    assert code & 0xFF == status
    if status == py.SHORT_HEADER:
        assert code == status
    else:
        assert code >> 8 == buf[7] | buf[8] << 8 | buf[9] << 16
    # the reader's "complete and successful" test
    assert (code & 0xC0FF == 0) == (status == py.OK and buf[7] & 0xC0 == 0)


@needs_fast
@AGREE
@given(data=st.binary(max_size=300), slot=st.integers(0, 255), seq=st.integers(0, 255))
def test_built_frame_checks_ok(data: bytes, slot: int, seq: int) -> None:
    assert _fast is not None
    frame = _fast.build_frame(0x80, slot, seq, 0, 0, 0, data)
    assert _fast.check_reply(frame, 0x80, slot, seq, 0) == py.OK
    assert _fast.check_reply(frame + b"\0", 0x80, slot, seq, 0) == py.TRAILING
    assert _fast.check_reply(frame[:-1], 0x80, slot, seq, 0) in (py.INCOMPLETE, py.SHORT_HEADER)
    assert _fast.check_reply(frame, 0x80, slot, (seq + 1) % 256, 0) == py.WRONG_SEQ
    assert _fast.frame_size(frame) == len(frame)


# --- agreement: LRC, CRC, T=1 blocks --------------------------------------------------------

@needs_fast
@AGREE
@given(data=st.binary(max_size=600), kind=BYTES_LIKE)
def test_edc_agrees(data: bytes, kind: type) -> None:
    same("lrc", kind(data))
    same("crc16", kind(data))


@needs_fast
@AGREE
@given(data=st.lists(st.integers(0, 300), max_size=20))
def test_edc_agrees_on_int_lists(data: list[int]) -> None:
    same("lrc", data)
    same("crc16", data)


@needs_fast
@AGREE
@given(nad=BYTE_ARG, pcb=BYTE_ARG, inf=st.binary(max_size=258), crc=st.booleans(),
       kind=BYTES_LIKE)
def test_build_t1_block_agrees(nad: int, pcb: int, inf: bytes, crc: bool, kind: type) -> None:
    result = same("build_t1_block", nad, pcb, kind(inf), crc)
    if result[0] == "ok" and len(inf) < 255:
        block = result[1][1]
        assert same("check_t1_block", block, crc)[1][0] == py.T1_OK


def _t1_blocks() -> st.SearchStrategy[tuple[bytes, bool]]:
    """Valid blocks, their truncations, bit flips and plain garbage, with the EDC kind."""
    def mangle(nad: int, pcb: int, inf: bytes, crc: bool, cut: int | None, flip: int | None,
               tail: bytes) -> tuple[bytes, bool]:
        block = bytearray(py.build_t1_block(nad, pcb, inf, crc))
        if flip is not None:
            block[flip % len(block)] ^= 1 << (flip % 8)
        return bytes(block[:cut]) + tail, crc

    valid = st.builds(mangle, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=254),
                      st.booleans(), st.one_of(st.none(), st.integers(0, 260)),
                      st.one_of(st.none(), st.integers(0, 2000)),
                      st.one_of(st.just(b""), st.binary(max_size=3)))
    garbage = st.tuples(st.binary(max_size=300), st.booleans())
    reserved = st.builds(lambda body, crc: (b"\0\0\xff" + body, crc), st.binary(max_size=260),
                         st.booleans())
    return st.one_of(valid, garbage, reserved)


@needs_fast
@AGREE
@given(case=_t1_blocks(), kind=BYTES_LIKE)
def test_check_t1_block_agrees(case: tuple[bytes, bool], kind: type) -> None:
    block, crc = case
    same("check_t1_block", kind(block), crc)


@needs_fast
@AGREE
@given(case=_t1_blocks(), crc=st.sampled_from([0, 1, 2, -1, 2**70, None, "yes"]))
def test_check_t1_block_agrees_on_odd_flags(case: tuple[bytes, bool], crc: Any) -> None:
    same("check_t1_block", case[0], crc)
    same("build_t1_block", 0, 0x40, case[0][:254], crc)


# --- agreement: extended APDU chunks, chained responses ------------------------------------

@needs_fast
@AGREE
@given(apdu=st.binary(max_size=3000), chunk=st.one_of(st.integers(1, 400), st.integers(-3, 0),
                                                       st.integers(2**62, 2**70)),
       kind=BYTES_LIKE)
def test_split_extended_agrees(apdu: bytes, chunk: int, kind: type) -> None:
    result = same("split_extended", kind(apdu), chunk)
    if chunk > 0:
        assert result[0] == "ok"
        parts = [(level, data) for level, _, data in result[1]]
        assert all(len(data) <= chunk for _, data in parts)
        assert same("join_chained", parts) == ("ok", (0, ("bytes", apdu)))


@needs_fast
@AGREE
@given(parts=st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, 4, 0x10, 255, 256, -1]),
                                st.binary(max_size=20)), max_size=12))
def test_join_chained_agrees_on_disordered_chains(parts: list[tuple[int, bytes]]) -> None:
    same("join_chained", parts)


@needs_fast
@AGREE
@given(middle=st.integers(0, 10), data=st.binary(max_size=50), bad=st.integers(0, 255),
       where=st.integers(0, 11))
def test_join_chained_agrees_near_valid_chains(middle: int, data: bytes, bad: int,
                                               where: int) -> None:
    parts = [(1, data)] + [(3, data)] * middle + [(2, data)]
    same("join_chained", parts)
    parts[where % len(parts)] = (bad, data)
    same("join_chained", parts)


# --- known vectors --------------------------------------------------------------------------

BACKENDS = [pytest.param(py, id="python"),
            pytest.param(_fast, id="cffi", marks=needs_fast)]


@pytest.mark.parametrize("impl", BACKENDS)
def test_ct700_get_slot_status(impl: ModuleType, ct700_vectors: dict[str, Any]) -> None:
    for seq in (0, 1):
        sent = bytes.fromhex(ct700_vectors[f"get_slot_status_seq{seq}"]["hex"])
        reply = bytes.fromhex(ct700_vectors[f"slot_status_seq{seq}"]["hex"])
        assert impl.build_frame(0x65, 0, seq, 0, 0, 0, b"") == sent
        assert impl.check_reply(reply, 0x81, 0, seq, 0) == py.OK
        assert impl.check_reply(reply, 0x81, 0, seq ^ 1, 0) == py.WRONG_SEQ
        assert impl.check_reply(reply, 0x80, 0, seq, 0) == py.WRONG_TYPE
        assert impl.frame_size(reply) == 10


@pytest.mark.parametrize("impl", BACKENDS)
def test_ct700_escape_frames(impl: ModuleType, ct700_vectors: dict[str, Any]) -> None:
    for name in ("escape_l10n_strings", "escape_get_firmware_features"):
        sent = bytes.fromhex(ct700_vectors[name]["hex"])
        expect = ct700_vectors[name]["expect"]
        frame = impl.build_frame(0x6B, 0, expect["bSeq"], 0, 0, 0, sent[10:])
        assert frame == sent
        assert impl.frame_size(frame) == 10 + expect["dwLength"]


def _crc16_bitwise(data: bytes) -> int:
    """Bit-at-a-time reflected CRC-16 (poly 0x1021 reversed): independent of the tables."""
    v = 0xFFFF
    for b in data:
        v ^= b
        for _ in range(8):
            v = (v >> 1) ^ (0x8408 * (v & 1))
    return v


@pytest.mark.parametrize("impl", BACKENDS)
def test_t1_vectors(impl: ModuleType) -> None:
    # S(IFS request) for IFSD 254 (ISO/IEC 7816-3 block format): LRC = 00^C1^01^FE = 3E
    assert impl.build_t1_block(0x00, 0xC1, b"\xfe", False) == bytes.fromhex("00 C1 01 FE 3E")
    assert impl.check_t1_block(bytes.fromhex("00 C1 01 FE 3E"), False) == (0, 0, 0xC1, b"\xfe")
    assert impl.check_t1_block(bytes.fromhex("00 C1 01 FE 3F"), False)[0] == py.T1_EDC
    # R(0) block: 00 80 00, LRC 80
    assert impl.build_t1_block(0x00, 0x80, b"", False) == bytes.fromhex("00 80 00 80")
    # this CRC is catalogued as CRC-16/MCRF4XX: check value 0x6F91 over "123456789"
    assert impl.crc16(b"123456789") == 0x6F91
    assert impl.crc16(b"") == 0xFFFF
    head = bytes.fromhex("00 C1 01 FE")
    v = _crc16_bitwise(head)
    block = impl.build_t1_block(0x00, 0xC1, b"\xfe", True)
    assert block == head + bytes((v >> 8, v & 0xFF))  # most significant byte first
    assert impl.check_t1_block(block, True) == (0, 0, 0xC1, b"\xfe")


@pytest.mark.parametrize("impl", BACKENDS)
@AGREE
@given(data=st.binary(max_size=300))
def test_crc_matches_bitwise_definition(impl: ModuleType, data: bytes) -> None:
    assert impl.crc16(data) == _crc16_bitwise(data)


@pytest.mark.parametrize("impl", BACKENDS)
def test_extended_apdu_levels(impl: ModuleType) -> None:
    apdu = bytes(range(256)) * 4  # 1024 bytes
    parts = impl.split_extended(apdu, 300)
    assert [level for level, _ in parts] == [0x0001, 0x0003, 0x0003, 0x0002]
    assert [len(d) for _, d in parts] == [300, 300, 300, 124]
    assert impl.split_extended(apdu, 1024) == [(0x0000, apdu)]
    assert impl.split_extended(apdu, 512) == [(1, apdu[:512]), (2, apdu[512:])]
    assert impl.join_chained(parts) == (0, apdu)
    assert impl.join_chained([]) == (1, b"")
    assert impl.join_chained([(3, b"a")]) == (4, b"")
    assert impl.join_chained([(2, b"a")]) == (2, b"")
    assert impl.join_chained([(1, b"a"), (1, b"b"), (2, b"c")]) == (3, b"")
    assert impl.join_chained([(1, b"a"), (3, b"b")]) == (4, b"")


# --- the front: ccid.framing ----------------------------------------------------------------

def test_front_raises_specific_errors() -> None:
    with pytest.raises(framing.T1BlockError) as info:
        framing.check_t1_block(bytes.fromhex("00 C1 01 FE 3F"), False)
    assert info.value.status is framing.T1Status.EDC
    with pytest.raises(ProtocolError):
        framing.build_t1_block(0, 0, bytes(255), False)
    with pytest.raises(ProtocolError):
        framing.join_chained([(1, b"a"), (1, b"b")])
    with pytest.raises(ProtocolError):
        framing.parse_header(b"\x80\0\0")
    with pytest.raises(UsageError):
        framing.split_extended(b"abc", 0)
    status = framing.check_reply(b"\x80" + bytes(9), 0x80, 0, 0)
    assert status is framing.FrameStatus.OK
    assert framing.check_reply(b"\x80", 0x80, 0, 0) is framing.FrameStatus.SHORT_HEADER


# Misuse of every front function: each must end in a ccid error (UsageError for the
# caller's mistake), never TypeError/ValueError/IndexError or a silent answer.
_MISUSE_SCRIPT = """
import ccid.framing as f
from ccid.errors import CCIDError
calls = [
    lambda: f.build_frame(0x6F, 0, 0, payload="ab"),
    lambda: f.build_frame(0x6F, 0, 0, payload=None),
    lambda: f.build_frame(0x6F, 0, 0, payload=[1, 2]),
    lambda: f.build_frame(0x6F, 300, 0),
    lambda: f.build_frame(0x6F, -1, 0),
    lambda: f.build_frame(0x6F, "0", 0),
    lambda: f.build_frame(0x6F, 0, 2**70),
    lambda: f.parse_header("0123456789"),
    lambda: f.parse_header(None),
    lambda: f.check_reply("0123456789", 0x80, 0, 0),
    lambda: f.check_reply(None, 0x80, 0, 0),
    lambda: f.check_reply(bytes(10), 0x80, "0", 0),
    lambda: f.check_reply(bytes(10), 0x80, 0, 0, -1),
    lambda: f.reply_header(None, 0x80, 0, 0, 0),
    lambda: f.reply_header(bytes(10), 0x80, 0, 2**70, 0),
    lambda: f.frame_size("0123456789"),
    lambda: f.frame_size(None),
    lambda: f.lrc("ab"),
    lambda: f.lrc([1, 2]),
    lambda: f.crc16(5),
    lambda: f.crc16(None),
    lambda: f.build_t1_block(300, 0, b"", False),
    lambda: f.build_t1_block(0, "0", b"", False),
    lambda: f.build_t1_block(0, 0, "ab", False),
    lambda: f.build_t1_block(0, 0, None, True),
    lambda: f.build_t1_block(0, 0, bytes(255), False),
    lambda: f.check_t1_block("abcd", False),
    lambda: f.check_t1_block(None, True),
    lambda: f.split_extended(b"abcd", 0),
    lambda: f.split_extended(b"abcd", -3),
    lambda: f.split_extended(b"abcd", "2"),
    lambda: f.split_extended(b"abcd", 2.0),
    lambda: f.split_extended("abcd", 2),
    lambda: f.split_extended(5, 2),
    lambda: f.join_chained(None),
    lambda: f.join_chained([(0, "ab")]),
    lambda: f.join_chained([(1, b"a"), (2, "b")]),
    lambda: f.join_chained([(0,)]),
    lambda: f.join_chained([("0", b"ab")]),
    lambda: f.join_chained([]),
]
for call in calls:
    try:
        value = call()
    except CCIDError as exc:
        print(type(exc).__name__)
    except Exception as exc:
        print("LEAK", type(exc).__name__)
    else:
        print("ANSWER", repr(value)[:30])
"""


@pytest.mark.parametrize("pure", ["1", "0"])
def test_misuse_gives_ccid_errors_the_same_for_both_twins(pure: str) -> None:
    if pure == "0" and _fast is None:
        pytest.skip("ccid._fast_cffi not built")
    got = subprocess.run(
        [sys.executable, "-c", _MISUSE_SCRIPT], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=True, env={**os.environ, "CCID_PURE_PYTHON": pure}).stdout.split("\n")
    twin = subprocess.run(
        [sys.executable, "-c", _MISUSE_SCRIPT], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=True, env={**os.environ, "CCID_PURE_PYTHON": "1"}).stdout.split("\n")
    assert got == twin
    got = [line for line in got if line]
    assert len(got) == _MISUSE_SCRIPT.count("lambda:")
    assert set(got) <= {"UsageError", "ProtocolError", "T1BlockError"}, got
    assert got.count("UsageError") >= len(got) - 4  # only a disordered chain or an
    # oversized INF are the other side's kind of error


def _backend_in_subprocess(**env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", "import ccid.framing as f; print(f.BACKEND)"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        check=True)
    return result.stdout.strip()


def test_pure_python_forced() -> None:
    assert _backend_in_subprocess(CCID_PURE_PYTHON="1") == "python"


def test_cffi_backend_after_install() -> None:
    if os.environ.get("CCID_NO_EXTENSION") == "1" or os.environ.get("CCID_PURE_PYTHON") == "1":
        pytest.skip("the C fast path was switched off on purpose")
    if _fast is None and not os.environ.get("CI") and shutil.which("cc") is None:
        pytest.skip("no C compiler: the pure-Python twin is the install's backend")
    # In CI, or wherever a compiler exists, a missing extension is a broken build.
    assert _fast is not None, "ccid._fast_cffi was not built: run `pip install -e .`"
    assert framing.BACKEND == "cffi"
    assert _backend_in_subprocess(CCID_PURE_PYTHON="0") == "cffi"
