"""C fast path of ``ccid.framing``: thin wrappers over ``ccid._fast_cffi`` (``ccid/_fast.c``).

Same names, signatures and results as ``ccid._framing_py``. ``bytes`` go to C without a copy;
other bytes-like objects through ``ffi.from_buffer``; anything the C types cannot carry
(ints past 64 bits, lists of big ints, odd buffer formats) is handed to the twin, so even
the errors raised are the twin's. Importing this module raises ImportError when the
extension was not built; ``ccid.framing`` then uses the twin.

Measured choices (benchmarks/RESULTS.md): a cffi call that fills a fresh buffer and copies
it into ``bytes`` costs more than the 10-byte header it would build, so ``build_frame``
packs the header with ``struct`` (the stdlib's C) and ``build_t1_block`` lets C compute only
the EDC; ``split_extended`` slices in one list comprehension over the C-computed count and
``join_chained`` checks the chain order in C, then joins with ``map``/``itemgetter`` (no
Python bytecode per piece). ``ccid_build_frame`` and ``ccid_build_t1_block`` stay in
the C API (sanitizer-tested) for C callers and for ``_build_frame_cffi``.

The two calls made once per frame on the hot paths, ``reply_code`` and ``Chain.step``, do
not go through cffi at all: a cffi call costs ~0.2 us before any C runs, as much as the
work. They are ``ccid._fastcall`` functions (``ccid/_fastcall.c``, vectorcall), a second
module init in the same shared object, loaded by :func:`_load_fastcall`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import partial
from operator import itemgetter
from typing import Any

from ccid import _fast_cffi
from ccid import _framing_py as _py
from ccid._fast_cffi import ffi, lib  # ImportError when not built: framing falls back


def _load_fastcall() -> Any:
    """``ccid._fastcall``: the second module init of the same shared object (see
    ``ccid/_fastcall.c``). A shared object from an older build lacks it: ImportError, and
    ``ccid.framing`` falls back to the twin as for a missing build."""
    import importlib.machinery
    import importlib.util

    name = "ccid._fastcall"
    path: str = getattr(_fast_cffi, "__file__", None) or ""
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:  # pragma: no cover - a file path always gives a spec
        raise ImportError(name)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    if not all(hasattr(module, n) for n in ("wrap", "step", "reply_code")):
        raise ImportError(f"{path} is from an older build of ccid/_fastcall.c")
    return module


_fastcall = _load_fastcall()

__all__ = [
    "CHAIN_EXTENDED",
    "CHAIN_T1",
    "Chain",
    "build_frame",
    "build_t1_block",
    "check_reply",
    "check_t1_block",
    "crc16",
    "frame_size",
    "join_chained",
    "lrc",
    "reply_code",
    "reply_header",
    "split_extended",
]

_HEADER = struct.Struct("<BIBBBBB")
_pack_header = _HEADER.pack
_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_from_buffer = ffi.from_buffer
_buffer = ffi.buffer
_unpack = ffi.unpack
_ONE_BYTE = tuple(bytes((i,)) for i in range(256))
_first = itemgetter(0)
_second = itemgetter(1)

_check_reply: Callable[..., int] = lib.ccid_check_reply
#: (buf: bytes, n = len(buf), expect_type, slot, seq, max_length) -> reply_header's code:
#: ``ccid_reply_header`` behind a vectorcall (``ccid/_fastcall.c``), no Python frame in
#: between (the engine and the reader call it once per received frame, with ``bytes``).
reply_code: Callable[..., int] = _fastcall.reply_code
_reply_header: Callable[..., int] = lib.ccid_reply_header
_frame_size: Callable[..., int] = lib.ccid_frame_size
_lrc: Callable[..., int] = lib.ccid_lrc
_crc16: Callable[..., int] = lib.ccid_crc16
_build_frame_c: Callable[..., int] = lib.ccid_build_frame
_check_t1: Callable[..., int] = lib.ccid_check_t1_block
_split_count: Callable[..., int] = lib.ccid_split_count
_join_check: Callable[..., int] = lib.ccid_join_check


def _view(data: Any) -> Any:
    """A cffi pointer over a byte buffer other than ``bytes``; None: let the twin decide."""
    if isinstance(data, bytearray):
        return _from_buffer(data)
    if isinstance(data, memoryview) and data.format == "B" and data.ndim == 1 \
            and data.c_contiguous:
        return _from_buffer(data)
    return None


def _on_view(c_fn: Callable[..., Any], py_fn: Callable[..., Any], buf: Any, *args: Any) -> Any:
    """Slow path for input the C signature refused: a bytearray/memoryview goes through a
    cffi view; anything else, or a view C still refuses (ints over 64 bits), to the twin."""
    view = _view(buf)
    if view is not None:
        try:
            return c_fn(view, len(view), *args)
        except (TypeError, OverflowError):
            pass
    return py_fn(buf, *args)


def build_frame(msg_type: int, slot: int, seq: int, p1: int, p2: int, p3: int,
                payload: bytes) -> bytes:
    """10-byte header (type, dwLength LE, slot, seq, 3 message-specific bytes) + payload."""
    try:
        # A payload of 4 GiB or more fails the "I" field and goes to the twin (which wraps
        # dwLength): no mask on the common path.
        return _pack_header(msg_type, len(payload), slot, seq, p1, p2, p3) + payload
    except (struct.error, TypeError):
        return _py.build_frame(msg_type, slot, seq, p1, p2, p3, payload)


def _build_frame_cffi(msg_type: int, slot: int, seq: int, p1: int, p2: int, p3: int,
                      payload: bytes) -> bytes:
    """build_frame through ``ccid_build_frame`` (kept for tests and the benchmark)."""
    n = len(payload)
    out = _alloc("uint8_t[]", n + 10)
    try:
        size = _build_frame_c(out, n + 10, msg_type, slot, seq, p1, p2, p3, payload, n)
    except (TypeError, OverflowError):
        view = _view(payload)
        if view is None:
            return _py.build_frame(msg_type, slot, seq, p1, p2, p3, payload)
        try:
            size = _build_frame_c(out, n + 10, msg_type, slot, seq, p1, p2, p3, view, n)
        except (TypeError, OverflowError):
            return _py.build_frame(msg_type, slot, seq, p1, p2, p3, payload)
    if size < 0:
        return _py.build_frame(msg_type, slot, seq, p1, p2, p3, payload)
    return bytes(_buffer(out, size))


def frame_size(buf: bytes) -> int:
    """Total size announced by a header (10 + dwLength), or -1 when fewer than 10 bytes."""
    try:
        return _frame_size(buf, len(buf))
    except (TypeError, OverflowError):
        return _on_view(_frame_size, _py.frame_size, buf)  # type: ignore[no-any-return]


def check_reply(buf: bytes, expect_type: int, slot: int, seq: int, max_length: int) -> int:
    """Validate an RDR_to_PC frame against the command it answers; return a status code."""
    try:
        return _check_reply(buf, len(buf), expect_type, slot, seq, max_length)
    except (TypeError, OverflowError):
        return _on_view(_check_reply, _py.check_reply,  # type: ignore[no-any-return]
                        buf, expect_type, slot, seq, max_length)


def reply_header(buf: bytes, expect_type: int, slot: int, seq: int, max_length: int) -> int:
    """check_reply's status in bits 0-7, then bStatus, bError and byte 9 in bits 8-31."""
    try:
        return _reply_header(buf, len(buf), expect_type, slot, seq, max_length)
    except (TypeError, OverflowError):
        return _on_view(_reply_header, _py.reply_header,  # type: ignore[no-any-return]
                        buf, expect_type, slot, seq, max_length)


def lrc(data: bytes) -> int:
    """Longitudinal redundancy check: XOR of all bytes."""
    try:
        return _lrc(data, len(data))
    except (TypeError, OverflowError):
        return _on_view(_lrc, _py.lrc, data)  # type: ignore[no-any-return]


def crc16(data: bytes) -> int:
    """T=1 CRC: CRC-16/CCITT bit-reflected (poly 0x8408), init 0xFFFF, no final XOR."""
    try:
        return _crc16(data, len(data))
    except (TypeError, OverflowError):
        return _on_view(_crc16, _py.crc16, data)  # type: ignore[no-any-return]


def build_t1_block(nad: int, pcb: int, inf: bytes, crc: bool) -> bytes:
    """NAD PCB LEN INF EDC, with LRC (1 byte) or CRC (2 bytes)."""
    # The prologue is joined in Python exactly as the twin does (same errors for bad bytes);
    # C computes the EDC. Cheaper than filling a cffi buffer and copying it out.
    head = bytes((nad, pcb, len(inf))) + inf
    if crc:
        return head + _crc16(head, len(head)).to_bytes(2, "big")
    return head + _ONE_BYTE[_lrc(head, len(head))]


def check_t1_block(block: bytes, crc: bool) -> tuple[int, int, int, bytes]:
    """Return (status, nad, pcb, inf); status is one of the T1_* codes."""
    try:
        status = _check_t1(block, len(block), crc)
    except (TypeError, OverflowError):
        view = _view(block)
        if view is None:
            return _py.check_t1_block(block, crc)
        try:
            status = _check_t1(view, len(view), crc)
        except (TypeError, OverflowError):
            return _py.check_t1_block(block, crc)
        if status == 0:
            return 0, block[0], block[1], bytes(block[3 : 3 + block[2]])
    if status == 0:
        return 0, block[0], block[1], block[3 : 3 + block[2]]
    if status == _py.T1_SHORT:
        return status, 0, 0, b""
    return status, block[0], block[1], b""


def split_extended(apdu: bytes, chunk: int) -> list[tuple[int, bytes]]:
    """Cut a command APDU into (wLevelParameter, part) pieces of at most ``chunk`` bytes."""
    n = len(apdu)
    try:
        count = _split_count(n, chunk)
    except (TypeError, OverflowError):
        return _py.split_extended(apdu, chunk)
    if count == 1:
        return [(0x0000, bytes(apdu))]
    if count < 0 or type(apdu) is not bytes:  # chunk <= 0, or slices would not be bytes
        return _py.split_extended(apdu, chunk)
    if count == 2:
        return [(0x0001, apdu[:chunk]), (0x0002, apdu[chunk:])]
    # 0x0001, then 0x0003 for every middle piece, then 0x0002. One list comprehension over
    # the C-computed count: the per-piece cost is the slice and its tuple, nothing else.
    last = chunk * (count - 1)
    parts = [(0x0001, apdu[:chunk])]
    parts += [(0x0003, apdu[i : i + chunk]) for i in range(chunk, last, chunk)]
    parts.append((0x0002, apdu[last:]))
    return parts


def join_chained(parts: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    """Join (bChainParameter, data) pieces; return (status, data). Status 0 is OK."""
    try:
        levels = bytes(map(_first, parts))
    except (TypeError, ValueError, IndexError, KeyError):
        return _py.join_chained(parts)
    status = _join_check(levels, len(levels))
    if status:
        return status, b""
    if len(levels) == 1:
        return 0, parts[0][1]
    return 0, b"".join(map(_second, parts))


CHAIN_EXTENDED = _py.CHAIN_EXTENDED
CHAIN_T1 = _py.CHAIN_T1
_chain_first: Callable[..., int] = lib.ccid_chain_first
# room for the largest frame either mode builds: a piece of ``chunk`` bytes or a T=1 block
_T1_FRAME = 10 + 3 + 254 + 2


class Chain:
    """``_framing_py.Chain`` over ``ccid_chain_first`` / ``ccid_chain_step``: one C call
    per reply checks the frame (and the T=1 block), moves the state and builds the next
    frame. Same arguments, results and errors as the twin. The buffers (response, next
    frame) are made once and live in the C state with the command's pointer; ``step`` is
    ``ccid._fastcall.step`` bound to that state (a vectorcall, no Python frame)."""

    __slots__ = ("_keep", "_out", "_resp", "_st", "resp_cap", "step")

    def __init__(self, mode: int, *, chunk: int, slot: int = 0, max_length: int = 0,
                 nad: int = 0, crc: bool = False, ifsd: int = 254,
                 resp_cap: int = 65_538) -> None:
        mode, chunk, slot, max_length, nad, ifsd, resp_cap = _py._check_chain_args(
            mode, chunk, slot, max_length, nad, ifsd, resp_cap)
        st = ffi.new("ccid_chain *")
        st.mode, st.slot, st.chunk, st.max_length = mode, slot, chunk, max_length
        st.nad, st.crc, st.ifsd = nad, 1 if crc else 0, ifsd
        self.resp_cap = st.resp_cap = resp_cap
        self._resp = _alloc("char[]", max(resp_cap, 1))
        st.out_cap = 10 + (chunk if mode == CHAIN_EXTENDED else _T1_FRAME)
        self._out = _alloc("char[]", st.out_cap)
        st.resp = ffi.cast("uint8_t *", self._resp)
        st.out = ffi.cast("uint8_t *", self._out)
        self._st = st
        # Everything the C state points to, held by the capsule too: a step bound here
        # stays safe even if it outlives this object. [3] is the command's cffi view.
        self._keep: list[Any] = [st, self._resp, self._out, None]
        capsule = _fastcall.wrap(int(ffi.cast("uintptr_t", st)), self._keep)
        #: step(seq, reply) -> next frame, b"" when complete, None: not the expected reply
        self.step: Callable[[int, bytes], bytes | None] = partial(_fastcall.step, capsule)

    # The state's fields, read from the struct (properties: a __getattr__ fallback would
    # pay for a failed lookup first).
    mode = property(lambda self: self._st.mode)
    slot = property(lambda self: self._st.slot)
    seq = property(lambda self: self._st.seq)
    phase = property(lambda self: self._st.phase)
    nad = property(lambda self: self._st.nad)
    crc = property(lambda self: bool(self._st.crc))
    ns = property(lambda self: self._st.ns)
    nr = property(lambda self: self._st.nr)
    ifsd = property(lambda self: self._st.ifsd)
    chunk = property(lambda self: self._st.chunk)
    max_length = property(lambda self: self._st.max_length)
    offset = property(lambda self: self._st.offset)
    sent = property(lambda self: self._st.sent)
    resp_len = property(lambda self: self._st.resp_len)

    def response(self) -> bytes:
        """The response gathered so far (all of it once :meth:`step` returned ``b""``)."""
        return _unpack(self._resp, self._st.resp_len)  # type: ignore[no-any-return]

    def first(self, seq: int, cmd: bytes, *, ns: int = 0, nr: int = 0, chunk: int = 0,
              ifsd: int = 0) -> bytes:
        """Start an exchange of ``cmd``: its first frame, with bSeq ``seq``. Refused
        arguments (the twin's TypeError or ValueError) leave the chain as it was."""
        st = self._st
        if type(cmd) is not bytes:
            cmd = _py._as_bytes(cmd, "a command")
        seq, ns, nr, chunk, ifsd = _py._check_first_args(st.mode, seq, ns, nr, chunk, ifsd)
        if chunk and st.mode == CHAIN_EXTENDED and chunk > st.out_cap - 10:
            self._grow(10 + chunk)  # a larger piece than the frame buffer was made for
        view = _from_buffer(cmd)
        st.ns, st.nr = ns, nr
        if chunk:
            st.chunk = chunk
        if ifsd:
            st.ifsd = ifsd
        self._keep[3] = view
        st.cmd, st.cmd_len = view, len(cmd)
        n = _chain_first(st, seq)
        if n < 0:  # pragma: no cover - every argument it could refuse was checked above
            raise ValueError(f"chain refused the exchange (code {n})")
        return _unpack(self._out, n)  # type: ignore[no-any-return]

    def _grow(self, out_cap: int) -> None:
        out = _alloc("char[]", out_cap)
        self._out = out
        self._keep[2] = out  # the capsule's owner list keeps the new buffer alive
        st = self._st
        st.out = ffi.cast("uint8_t *", out)
        st.out_cap = out_cap
