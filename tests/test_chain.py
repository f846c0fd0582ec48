"""ccid.framing.Chain: the per-block driver of T=1 and extended-APDU exchanges.

The C chain (``ccid._fast.Chain`` over ``ccid_chain_step``) and its pure-Python twin agree
reply by reply (frames, results, state); on the T=1 hot path both agree with the reference
state machine ``ccid.protocol.t1.T1Protocol``, and they hand every other reply back (None)
without touching their state. Extended exchanges are driven to their end against a model
reader.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccid import _framing_py as py
from ccid.protocol.t1 import T1Protocol

try:
    from ccid import _fast
except ImportError:  # extension not built: only the twin is checked
    _fast = None  # type: ignore[assignment]

IMPLS = [py] if _fast is None else [py, _fast]
IDS = ["python"] if _fast is None else ["python", "cffi"]
FIELDS = ("phase", "ns", "nr", "offset", "sent", "seq", "resp_len")
AGREE = settings(max_examples=min(settings.default.max_examples, 400))


def state(chain: Any) -> tuple[Any, ...]:
    return (*(getattr(chain, f) for f in FIELDS), chain.response())


def data_block(seq: int, data: bytes = b"", chain: int = 0, slot: int = 0,
               status: int = 0) -> bytes:
    return py.build_frame(0x80, slot, seq, status, 0, chain, data)


def t1_reply(seq: int, block: bytes) -> bytes:
    return data_block(seq, block)


# --- extended APDU level -------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize("size, chunk", [(10, 261), (261, 261), (262, 261), (5000, 261),
                                         (65_544, 271 - 10), (100, 1)])
def test_extended_exchange_end_to_end(impl: Any, size: int, chunk: int) -> None:
    """A model reader takes the pieces (0x01 0x03.. 0x02, or 0x00 alone) and answers in
    chained pieces; the chain rebuilds the command and joins the response."""
    cmd = bytes((i * 7) & 0xFF for i in range(size))
    answer = bytes((i * 13) & 0xFF for i in range(size + 2))
    chain = impl.Chain(impl.CHAIN_EXTENDED, chunk=chunk, slot=1, resp_cap=size + 2)
    chain.first(7, b"an earlier exchange")
    seq = 200
    frame = chain.first(seq, cmd)
    got, levels = bytearray(), []
    while True:
        assert frame[0] == 0x6F and frame[5] == 1 and frame[6] == chain.seq
        level = frame[8] | frame[9] << 8
        levels.append(level)
        got += frame[10:]
        if level in (0x0001, 0x0003):
            reply = data_block(chain.seq, chain=0x10, slot=1)
        else:
            break
        seq = (seq + 1) & 0xFF
        frame = chain.step(seq, reply)
    assert bytes(got) == cmd
    pieces = -(-size // chunk)
    assert levels == ([0x0000] if pieces == 1 else [1] + [3] * (pieces - 2) + [2])
    # the response in pieces of 100 bytes: 0x01, 0x03..., 0x02 (or 0x00 when it fits)
    parts = [answer[i : i + 100] for i in range(0, len(answer), 100)]
    for i, part in enumerate(parts):
        flag = 0x00 if len(parts) == 1 else 0x01 if i == 0 else \
            0x02 if i == len(parts) - 1 else 0x03
        seq = (seq + 1) & 0xFF
        following = chain.step(seq, data_block(chain.seq, part, flag, slot=1))
        if i < len(parts) - 1:
            assert following is not None and following[8] == 0x10 and len(following) == 10
        else:
            assert following == b""
    assert chain.response() == answer


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_extended_chain_hands_back_what_it_does_not_expect(impl: Any) -> None:
    cmd = bytes(600)
    chain = impl.Chain(impl.CHAIN_EXTENDED, chunk=261, max_length=271)
    chain.first(1, cmd)
    before = state(chain)
    for reply in (
        data_block(1, chain=0x00),  # a command piece answered as if it were the last
        data_block(2, chain=0x10),  # wrong bSeq
        data_block(1, chain=0x10, status=0x40),  # failed
        data_block(1, chain=0x10, status=0x80),  # time extension
        data_block(1, chain=0x10, slot=1),  # wrong slot
        data_block(1, chain=0x10)[:9],  # short
        data_block(1, bytes(300), chain=0x10),  # over dwMaxCCIDMessageLength
        py.build_frame(0x81, 0, 1, 0, 0, 0x10, b""),  # wrong message type
        data_block(1, chain=0x10) + b"\x00",  # longer than dwLength
    ):
        assert chain.step(9, reply) is None
        assert state(chain) == before
    assert chain.step(9, data_block(1, chain=0x10)) is not None
    assert chain.step(10, data_block(9, chain=0x10)) is not None  # the last piece
    assert chain.phase == 1
    for flag in (0x02, 0x03, 0x10, 0x44):  # a response cannot start like this
        assert chain.step(11, data_block(10, b"x", chain=flag)) is None
    assert chain.step(11, data_block(10, b"ab", chain=0x01)) is not None
    for flag in (0x00, 0x01, 0x10):  # nor go on like this
        assert chain.step(12, data_block(11, b"x", chain=flag)) is None
    assert chain.step(12, data_block(11, b"cd", chain=0x02)) == b""
    assert chain.response() == b"abcd"


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_response_over_the_cap_is_handed_back(impl: Any) -> None:
    chain = impl.Chain(impl.CHAIN_EXTENDED, chunk=261, resp_cap=5)
    chain.first(0, b"\x00\xa4\x00\x00")
    assert chain.step(1, data_block(0, bytes(6))) is None
    assert chain.step(1, data_block(0, bytes(5))) == b""


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_bad_arguments_are_refused_alike(impl: Any) -> None:
    with pytest.raises(ValueError):
        impl.Chain(7, chunk=1)
    with pytest.raises(ValueError):
        impl.Chain(impl.CHAIN_T1, chunk=255)
    with pytest.raises(ValueError):
        impl.Chain(impl.CHAIN_EXTENDED, chunk=0)
    with pytest.raises(ValueError):
        impl.Chain(impl.CHAIN_T1, chunk=32, ifsd=255)
    t1 = impl.Chain(impl.CHAIN_T1, chunk=32)
    for kwargs in ({"ns": 2}, {"nr": -1}, {"chunk": 255}, {"ifsd": 300}):
        with pytest.raises(ValueError):
            t1.first(0, b"x", **kwargs)
    chain = impl.Chain(impl.CHAIN_EXTENDED, chunk=10)
    with pytest.raises(ValueError):
        chain.first(256, b"x")
    chain.first(0, b"x")
    with pytest.raises(ValueError):
        chain.step(-1, data_block(0))
    with pytest.raises(TypeError):
        chain.step(1, 12)  # type: ignore[arg-type]
    assert chain.step(1, bytearray(data_block(0))) == b""  # bytes-like replies are fine


# --- T=1 -----------------------------------------------------------------------------


class Card:
    """The card's side of T=1: acknowledges chained I-blocks, answers in chained blocks."""

    def __init__(self, answer: bytes, ifsd: int, crc: bool) -> None:
        self.answer, self.ifsd, self.crc = answer, ifsd, crc
        self.ns = self.nr = 0
        self.sent = 0
        self.command = bytearray()

    def reply(self, block: bytes) -> bytes:
        pcb = block[1]
        if pcb & 0x80:  # our R-block asks for the next piece of the answer
            return self._next_piece()
        self.command += block[3 : 3 + block[2]]
        self.nr ^= 1
        if pcb & 0x20:
            return py.build_t1_block(0, 0x80 | (self.nr << 4), b"", self.crc)
        return self._next_piece()

    def _next_piece(self) -> bytes:
        piece = self.answer[self.sent : self.sent + self.ifsd]
        self.sent += len(piece)
        more = self.sent < len(self.answer)
        block = py.build_t1_block(0, (self.ns << 6) | (0x20 if more else 0), piece, self.crc)
        self.ns ^= 1
        return block


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize("crc", [False, True], ids=["LRC", "CRC"])
@pytest.mark.parametrize("size, ifsc, ifsd", [(4, 32, 32), (300, 32, 254), (65_544, 254, 254),
                                              (1000, 1, 7)])
def test_t1_exchange_matches_the_state_machine(impl: Any, crc: bool, size: int, ifsc: int,
                                               ifsd: int) -> None:
    """Every block the chain sends is the block T1Protocol sends for the same replies, and
    both end with the same response and sequence numbers."""
    cmd = bytes((i * 3) & 0xFF for i in range(size))
    answer = bytes((i * 5) & 0xFF for i in range(min(size, 4000))) + b"\x90\x00"
    ref = T1Protocol(ifsc=ifsc, ifsd=ifsd, crc=crc)
    ref.ns, ref.nr = 1, 0  # not at zero: the chain starts from whatever the card is at
    ref_block = ref.start(cmd)
    chain = impl.Chain(impl.CHAIN_T1, chunk=200, ifsd=254, crc=crc)
    frame = chain.first(0, cmd, ns=1, nr=0, chunk=ifsc, ifsd=ifsd)
    card = Card(answer, ifsd, crc)
    card.ns, card.nr = 0, 1  # the card's view of the same sequence numbers
    seq = 0
    for _ in range(10_000):
        assert frame[10:] == ref_block
        reply = card.reply(ref_block)
        seq = (seq + 1) & 0xFF
        following = chain.step(seq, t1_reply(chain.seq, reply))
        ref_block, _wtx, response = ref.step(reply)
        if following == b"":
            assert ref_block is None and response == answer
            break
        assert following is not None
        frame = following
    assert chain.response() == answer and bytes(card.command) == cmd
    assert (chain.ns, chain.nr, chain.phase) == (ref.ns, ref.nr, 0)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_t1_chain_hands_back_recovery_and_s_blocks(impl: Any) -> None:
    cmd = bytes(100)
    chain = impl.Chain(impl.CHAIN_T1, chunk=32)
    chain.first(5, cmd)
    before = state(chain)
    ack = py.build_t1_block(0, 0x90, b"", False)
    for block in (
        py.build_t1_block(0, 0x80, b"", False),  # R-block with N(R) == N(S): send again
        py.build_t1_block(0, 0x91, b"", False),  # EDC error reported by the card
        py.build_t1_block(0, 0xC3, b"\x02", False),  # S(WTX request)
        py.build_t1_block(0, 0xC1, b"\x40", False),  # S(IFS request)
        py.build_t1_block(0, 0x00, b"\x90\x00", False),  # an I-block while we are sending
        ack[:-1] + bytes([ack[-1] ^ 1]),  # bad LRC
        ack + b"\x00",  # length does not match LEN
        py.build_t1_block(0, 0xB0, b"", False),  # RFU bit
    ):
        assert chain.step(6, t1_reply(5, block)) is None, block.hex()
        assert state(chain) == before
    assert chain.step(6, t1_reply(5, ack)) is not None


@st.composite
def t1_replies(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """(kind, T=1 block) choices: mostly plausible blocks, some noise."""
    out = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.integers(0, 4))
        inf = draw(st.binary(max_size=40))
        pcb = draw(st.integers(0, 255))
        out.append((kind, inf if kind != 4 else draw(st.binary(max_size=50)), pcb))
    return out  # type: ignore[return-value]


@AGREE
@given(st.binary(min_size=1, max_size=300), st.integers(1, 64), st.booleans(),
       st.integers(0, 1), st.integers(0, 1), t1_replies())
def test_t1_agrees_with_the_state_machine_or_hands_back(
        cmd: bytes, ifsc: int, crc: bool, ns: int, nr: int, replies: list[Any]) -> None:
    """For any reply, the chain either takes the hot path exactly as T1Protocol does, or
    returns None and leaves its state alone; C and twin agree on every step."""
    chains = [impl.Chain(impl.CHAIN_T1, chunk=ifsc, ifsd=40, crc=crc) for impl in IMPLS]
    frames = [chain.first(9, cmd, ns=ns, nr=nr) for chain in chains]
    assert all(f == frames[0] for f in frames)
    seq = 9
    for kind, inf, pcb in replies:
        c = chains[0]
        if kind == 0:
            block = py.build_t1_block(0, 0x80 | ((c.ns ^ 1) << 4), b"", crc)
        elif kind == 1:
            block = py.build_t1_block(0, (c.nr << 6) | (pcb & 0x20), inf, crc)
        elif kind in (2, 3):
            block = py.build_t1_block(0, pcb, inf[:30], crc)
        else:
            block = inf
        ref = T1Protocol(ifsc=ifsc, ifsd=40, crc=crc)
        ref.start(cmd)
        ref.resume(c.phase if c.phase in (1, 2, 3) else 1, c.ns, c.nr, c.offset, c.sent,
                   c.response())
        before = [state(chain) for chain in chains]
        seq = (seq + 1) & 0xFF
        outs = [chain.step(seq, t1_reply(chain.seq, block)) for chain in chains]
        assert all(o == outs[0] for o in outs)
        assert all(state(chain) == state(chains[0]) for chain in chains)
        if c.phase == 0 and before[0][0] == 0:
            assert outs[0] is None  # nothing in flight: nothing to take
            continue
        if outs[0] is None:
            assert [state(chain) for chain in chains] == before
            continue
        try:
            expected, _wtx, response = ref.step(block)
        except Exception as exc:  # pragma: no cover - the chain took a block ref refuses
            raise AssertionError(f"chain took {block.hex()} that T1Protocol refuses") from exc
        if outs[0] == b"":
            assert expected is None and response == c.response()
            break
        assert outs[0][10:] == expected
        assert (c.ns, c.nr) == (ref.ns, ref.nr)


@pytest.mark.skipif(_fast is None, reason="ccid._fast_cffi not built")
def test_bound_step_outlives_its_chain_and_refuses_foreign_objects() -> None:
    """The vectorcall step keeps the C state and its buffers alive (the capsule owns
    them), and refuses anything that is not a chain capsule."""
    import gc

    assert _fast is not None
    chain = _fast.Chain(_fast.CHAIN_EXTENDED, chunk=261)
    chain.first(3, bytes(600))
    step = chain.step
    del chain
    gc.collect()
    for _ in range(50):  # churn the allocator where the chain's memory was
        _fast.Chain(_fast.CHAIN_T1, chunk=32).first(0, bytes(100))
    frame = step(4, data_block(3, chain=0x10))
    assert frame is not None and frame[6] == 4 and frame[8] == 0x03 and len(frame) == 271
    with pytest.raises((TypeError, ValueError)):
        _fast._fastcall.step(object(), 1, data_block(3))
    with pytest.raises(TypeError):
        _fast._fastcall.step(1, 2)


# --- invalid arguments: both twins refuse alike and keep the same state ---------------

WEIRD = st.one_of(
    st.integers(-3, 300), st.sampled_from([-1, 0, 1, 254, 255, 256, 1 << 31, (1 << 31) + 1,
                                           1 << 32, 1 << 64, -(1 << 70), 1 << 70]),
    st.booleans(), st.none(), st.floats(allow_nan=False, width=32), st.text(max_size=2),
    st.just(b"x"))
SMALL = st.one_of(st.integers(0, 300), WEIRD)
ALL_FIELDS = (*FIELDS, "mode", "slot", "nad", "crc", "ifsd", "chunk", "max_length",
              "resp_cap")
CMDS = st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(bytearray),
                 st.binary(max_size=40).map(lambda b: memoryview(b)[::2]),
                 st.integers(-2, 5), st.text(max_size=3), st.none())


def outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except (TypeError, ValueError) as exc:
        return ("refused", type(exc))


def full_state(chain: Any) -> tuple[Any, ...]:
    return (*(getattr(chain, f) for f in ALL_FIELDS), chain.response())


@pytest.mark.skipif(_fast is None, reason="the C twin is not built")
@settings(max_examples=min(settings.default.max_examples, 600), deadline=None)
@given(mode=st.one_of(st.sampled_from([0, 1]), WEIRD), chunk=SMALL, slot=SMALL,
       max_length=st.one_of(st.integers(0, 400), WEIRD), nad=SMALL, ifsd=SMALL,
       resp_cap=st.one_of(st.integers(0, 400), WEIRD), crc=st.booleans())
def test_constructor_arguments_agree(mode: Any, chunk: Any, slot: Any, max_length: Any,
                                     nad: Any, ifsd: Any, resp_cap: Any, crc: bool) -> None:
    kwargs = {"chunk": chunk, "slot": slot, "max_length": max_length, "nad": nad,
              "ifsd": ifsd, "resp_cap": resp_cap, "crc": crc}
    made = [outcome(lambda impl=impl: impl.Chain(mode, **kwargs)) for impl in (py, _fast)]
    assert made[0][0] == made[1][0], made
    if made[0][0] == "refused":
        assert made[0][1] is made[1][1], made
        return
    assert full_state(made[0][1]) == full_state(made[1][1])


@pytest.mark.skipif(_fast is None, reason="the C twin is not built")
@settings(max_examples=min(settings.default.max_examples, 600), deadline=None)
@given(mode=st.sampled_from([0, 1]), chunk=st.integers(1, 64), max_length=st.integers(0, 300),
       calls=st.lists(st.tuples(SMALL, CMDS, SMALL, SMALL, SMALL, SMALL), min_size=1,
                      max_size=4),
       replies=st.lists(st.binary(max_size=40), max_size=3))
def test_first_arguments_agree_and_refusals_change_nothing(
        mode: int, chunk: int, max_length: int, calls: list[tuple[Any, ...]],
        replies: list[bytes]) -> None:
    chains = [impl.Chain(mode, chunk=chunk, max_length=max_length, resp_cap=500)
              for impl in (py, _fast)]
    for seq, cmd, ns, nr, new_chunk, ifsd in calls:
        before = [full_state(c) for c in chains]
        got = [outcome(partial(c.first, seq, cmd, ns=ns, nr=nr, chunk=new_chunk, ifsd=ifsd))
               for c in chains]
        if got[0][0] == "refused" or got[1][0] == "refused":
            assert got[0] == got[1]
            assert [full_state(c) for c in chains] == before  # untouched
        else:
            assert got[0] == got[1]
            assert full_state(chains[0]) == full_state(chains[1])
        for reply in replies:  # what follows agrees too
            frames = [outcome(partial(c.step, 1, data_block(0, reply))) for c in chains]
            assert frames[0] == frames[1]
            assert full_state(chains[0]) == full_state(chains[1])


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_extended_first_may_take_a_larger_chunk(impl: Any) -> None:
    chain = impl.Chain(impl.CHAIN_EXTENDED, chunk=64)
    cmd = bytes(range(200))
    frame = chain.first(3, cmd, chunk=128)
    assert frame == py.build_frame(0x6F, 0, 3, 0, 0x01, 0, cmd[:128])
    assert chain.step(4, data_block(3, chain=0x10)) == py.build_frame(0x6F, 0, 4, 0, 0x02, 0,
                                                                      cmd[128:])
    assert chain.step(5, data_block(4, b"\x90\x00")) == b""
    assert chain.response() == b"\x90\x00"


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_negative_or_oversized_limits_are_refused(impl: Any) -> None:
    for kwargs in ({"max_length": -1}, {"max_length": 1 << 32}, {"resp_cap": -1},
                   {"resp_cap": (1 << 24) + 1}):
        with pytest.raises(ValueError):
            impl.Chain(impl.CHAIN_EXTENDED, chunk=10, **kwargs)
    for kwargs in ({"chunk": 1.5}, {"slot": "0"}, {"nad": None}):
        with pytest.raises(TypeError):
            impl.Chain(impl.CHAIN_T1, **{"chunk": 10, **kwargs})


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_refused_first_leaves_the_chain_as_it_was(impl: Any) -> None:
    chain = impl.Chain(impl.CHAIN_T1, chunk=32)
    chain.first(7, b"\x00\xa4\x04\x00", ns=1, nr=1)
    before = full_state(chain)
    for args, kwargs in (((256, b"x"), {}), ((1, b"x"), {"chunk": 255, "ns": 0}),
                         ((1, b"x"), {"ifsd": 255, "chunk": 5}), ((True, b"x"), {}),
                         ((1, 12), {"chunk": 5}), ((1, "x"), {"nr": 0})):
        with pytest.raises((TypeError, ValueError)):
            chain.first(*args, **kwargs)
        assert full_state(chain) == before


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_strided_memoryview_reply_is_taken_like_bytes(impl: Any) -> None:
    chain = impl.Chain(impl.CHAIN_EXTENDED, chunk=10)
    chain.first(0, b"\x00\xa4\x00\x00")
    reply = data_block(0, b"\x90\x00")
    doubled = bytes(b for x in reply for b in (x, 0xEE))
    assert chain.step(1, memoryview(doubled)[::2]) == b""
    assert chain.response() == b"\x90\x00"
