"""The negotiation plan (ccid.protocol.negotiate) against what the session really does.

Each case opens a virtual reader, records every PC_to_RDR frame the session sends while it
connects, and checks them against the plan computed from the same ATR, descriptor, data
rates and quirks: the PPS (or none), the SetParameters structure (or none), the S(IFS
request) (or none), the protocol, Fi/Di and wait the slot ends with, and the same
CardError when no protocol fits. Presets, then a hypothesis sample of ATRs on corpus
descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ccid
from ccid import database
from ccid.constants import ExchangeLevel, Features
from ccid.constants import MessageType as M
from ccid.errors import CardError, CCIDError, UsageError
from ccid.protocol.atr import parse_atr
from ccid.protocol.negotiate import (
    CARD_WAIT_FLOOR,
    DEFAULT_IFSD,
    ProtocolPlan,
    card_wait,
    choose_protocol,
    plan_protocol,
    plan_settings,
    pps_outcome,
)
from ccid.protocol.params import build_pps_request
from ccid.testing.atrbuild import build_atr
from ccid.testing.backend import VirtualBackend, VirtualDevice
from ccid.testing.card import VirtualCard
from ccid.testing.presets import PRESETS, preset_reader
from ccid.testing.reader import VirtualReader

pytestmark = pytest.mark.timeout(120)


@dataclass
class Recorder:
    """A responder that lets the model answer and keeps every command frame."""

    frames: list[bytes] = field(default_factory=list)

    def __call__(self, frame: bytes) -> None:
        self.frames.append(bytes(frame))


def _slot_state(reader: Any) -> Any:
    """The session's slot 0 (what the slot ended with after connect)."""
    return reader._slots[0]


def _quirks(reader: Any, raw: bytes) -> list[Any]:
    found = list(reader.quirks)
    info = reader.info
    for q in database.quirks_for(info.vid, info.pid, bcd_device=info.bcd_device,
                                 interface=info.interface,
                                 interface_protocol=reader.interface_protocol, atr=raw):
        if q not in found:
            found.append(q)
    return found


def _check_connect(backend: VirtualBackend, recorder: Recorder, wanted: int | None = None,
                   ifsd: int | None = None) -> str:
    """Connect on slot 0 and compare the frames and the slot state with the plan; returns
    what happened (for the hypothesis statistics)."""
    options: dict[str, Any] = {"events": False}
    if ifsd is not None:
        options["ifsd"] = ifsd
    with ccid.open_reader(0, backend=backend, **options) as reader:
        del recorder.frames[:]
        try:
            card = reader.connect(0, protocol=wanted)
        except CCIDError as exc:
            error: CCIDError | None = exc
        else:
            error = None
        frames = list(recorder.frames)
        power = [f for f in frames if f[0] == M.PC_to_RDR_IccPowerOn]
        if not power:
            assert error is not None
            return "no power-on"
        # the ATR the card gave, as the reader answered it
        s = _slot_state(reader)
        raw = bytes(s.atr) if s.atr is not None else None
        if raw is None:
            card_obj = backend.devices[0].readers[0].card(0)
            raw = bytes(card_obj.atr) if card_obj is not None else b""
        try:
            atr = parse_atr(raw, check_tck=reader.check_tck)
        except CCIDError:
            assert error is not None
            return "bad ATR"
        quirks = _quirks(reader, raw)
        try:
            plan = plan_protocol(atr, reader.descriptor, wanted=wanted,
                                 data_rates=reader.slot_data_rates[0], slot=0, quirks=quirks)
        except CardError as exc:
            assert isinstance(error, CardError)
            assert error.message == exc.message
            assert error.pcsc_code == exc.pcsc_code == "SCARD_E_PROTO_MISMATCH"
            return "mismatch"
        after = frames[frames.index(power[0]) + 1:]
        xfrs = [f for f in after if f[0] == M.PC_to_RDR_XfrBlock]
        if plan.pps is None:
            assert not any(f[10:11] == b"\xff" for f in xfrs), [f.hex() for f in after]
            pps_sent = False
        else:
            assert xfrs and xfrs[0][10:] == plan.pps, (plan, [f.hex() for f in after])
            pps_sent = True
        if error is not None:
            return f"failed after plan: {type(error).__name__}"
        repowered = pps_sent and any(f[0] == M.PC_to_RDR_IccPowerOn for f in after)
        fi_di = plan.fi_di
        if pps_sent:
            fi_di = None if repowered else s.fi_di
            assert repowered or fi_di is not None
        settings_ = plan_settings(atr, plan, reader.descriptor, fi_di=fi_di, quirks=quirks,
                                  ifsd=ifsd, raw_atr=raw)
        set_params = [f for f in after if f[0] == M.PC_to_RDR_SetParameters]
        if settings_.send_parameters:
            assert len(set_params) == 1
            assert set_params[0][7] == plan.protocol
            assert set_params[0][10:] == settings_.parameters
        else:
            assert not set_params
        assert s.protocol == plan.protocol == settings_.protocol
        assert s.fi_di == settings_.fi_di
        assert s.wait == settings_.wait
        if plan.protocol == 1:
            t1 = s.t1
            ifs = [f for f in xfrs if len(f) > 13 and f[11] == 0xC1]
            if settings_.ifs_request is None:
                assert not ifs
                assert t1.ifsd == settings_.ifsd
            else:
                # one S(IFS request), resent as is when T=1 error recovery says so
                assert ifs and all(f[13] == settings_.ifs_request for f in ifs)
        card.disconnect()
        return f"T={plan.protocol} pps={pps_sent} setparams={settings_.send_parameters}"


def _backend(vr: Any) -> tuple[VirtualBackend, Recorder]:
    recorder = Recorder()
    vr.responder = recorder
    backend = VirtualBackend()
    backend.plug(VirtualDevice(vr))
    return backend, recorder


OUTCOMES: list[str] = []

CARDS = {
    "default": lambda: VirtualCard(),
    "t1-fast": lambda: VirtualCard(protocols=(1,), fi_di=0x96),
    "t0-fast": lambda: VirtualCard(protocols=(0,), fi_di=0x13),
    "t1-then-t0": lambda: VirtualCard(build_atr((1, 0), ta1=0x95, ifsc=0x80, bwi=7, cwi=5)),
    "specific": lambda: VirtualCard(build_atr((1,), ta1=0x18, specific=1, ifsc=0xFE, bwi=4,
                                              cwi=5)),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_plan_equals_session_on_presets(name: str) -> None:
    # the CT700 takes seconds to open (its escapes never answer): one case there
    cases = [("default", None)] if name == "ct700" else [
        (card, wanted) for card in sorted(CARDS) for wanted in (None, 0, 1)]
    for card, wanted in cases:
        backend, recorder = _backend(preset_reader(name, CARDS[card]()))
        _check_connect(backend, recorder, wanted)


@pytest.mark.parametrize("ifsd", [None, 32, 64, 254])
def test_ifsd_option_follows_the_plan(ifsd: int | None) -> None:
    card = VirtualCard(protocols=(1,))
    backend, recorder = _backend(preset_reader("gemalto-pc-twin", card))
    _check_connect(backend, recorder, 1, ifsd)


def _corpus_bulk(corpus: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for entry in corpus["readers"]:
        dump = entry["interfaces"][0]
        if dump.get("interface", {}).get("bInterfaceProtocol", 0) in (1, 2):
            continue  # ICCD over the control pipe
        if dump.get("interface", {}).get("bNumEndpoints", 3) < 2:
            continue
        out.append(entry)
    return out


ATRS = st.builds(
    lambda protocols, ta1, t1, specific, inverse: build_atr(
        protocols, ta1=ta1, inverse=inverse,
        **({"ifsc": t1[0], "bwi": t1[1], "cwi": t1[2], "crc": t1[3]} if 1 in protocols
           else {}),
        **({"specific": specific} if specific is not None else {})),
    st.sampled_from([(0,), (1,), (0, 1), (1, 0)]),
    st.none() | st.sampled_from([0x11, 0x12, 0x13, 0x18, 0x94, 0x95, 0x96, 0x97, 0xD6, 0x71]),
    st.tuples(st.integers(1, 254), st.integers(0, 9), st.integers(0, 15), st.booleans()),
    st.none() | st.integers(0, 1),
    st.booleans(),
)


def test_plan_equals_session_on_corpus(descriptor_corpus: dict[str, Any]) -> None:
    entries = _corpus_bulk(descriptor_corpus)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(entry=st.sampled_from(entries), atr=ATRS, wanted=st.none() | st.integers(0, 1))
    def check(entry: dict[str, Any], atr: bytes, wanted: int | None) -> None:
        try:
            vr = VirtualReader.from_descriptor_dump(entry)
            card = VirtualCard(atr)
        except CCIDError:
            return
        vr.insert(card, 0)
        backend, recorder = _backend(vr)
        try:
            outcome = _check_connect(backend, recorder, wanted)
        except CCIDError as exc:  # the open itself failed (firmware refusal, ...)
            outcome = f"open failed: {type(exc).__name__}"
        event(outcome.split(":")[0])
        OUTCOMES.append(outcome)

    check()


# --- the plan's own rules, sans-IO ----------------------------------------------------


def _desc(**fields: int) -> Any:
    from ccid.descriptor import CCIDDescriptor
    from ccid.testing.presets import preset_dump

    dump = preset_dump("gemalto-pc-twin")
    values = {k: v for k, v in dump.items() if isinstance(v, int)}
    values.update(fields)
    return CCIDDescriptor.from_fields(values)


def test_pps_only_when_needed_at_tpdu_level() -> None:
    desc = _desc()
    plain = parse_atr(build_atr((0,)))
    assert plan_protocol(plain, desc).pps is None
    fast = parse_atr(build_atr((1,), ta1=0x95, ifsc=254, bwi=4, cwi=5))
    plan = plan_protocol(fast, desc, data_rates=(10753, 125000))
    assert plan.pps == build_pps_request(1, 0x95) and plan.fi_di is None
    assert plan.pps_fi_di == 0x95
    auto = _desc(dwFeatures=desc.dwFeatures | Features.AUTO_PPS_CURRENT)
    plan = plan_protocol(fast, auto, data_rates=(10753, 125000))
    assert plan.pps is None and plan.fi_di == 0x95


def test_a_reader_that_negotiates_itself_gets_no_pps_and_no_set_parameters() -> None:
    # dwFeatures AUTO_PPS_PROPRIETARY (0x40): libccid sends neither, in negotiable and in
    # specific mode alike; AUTO_PPS_CURRENT (0x80) still gets SetParameters (it makes the
    # PPS from them).
    desc = _desc(dwFeatures=_desc().dwFeatures | Features.AUTO_PPS_PROPRIETARY)
    fast = parse_atr(build_atr((1,), ta1=0x95, ifsc=254, bwi=4, cwi=5))
    specific = parse_atr(build_atr((1,), ta1=0x95, specific=1, ifsc=254, bwi=4, cwi=5))
    for atr in (fast, specific):
        plan = plan_protocol(atr, desc, data_rates=(10753, 125000))
        assert plan.by_reader and plan.pps is None and plan.fi_di is None
        settings = plan_settings(atr, plan, desc, fi_di=plan.fi_di)
        assert not settings.send_parameters
    current = _desc(dwFeatures=_desc().dwFeatures | Features.AUTO_PPS_CURRENT)
    plan = plan_protocol(fast, current, data_rates=(10753, 125000))
    assert not plan.by_reader and plan.pps is None
    assert plan_settings(fast, plan, current, fi_di=plan.fi_di).send_parameters


def test_second_protocol_needs_pps_and_a_skip_quirk_refuses_it() -> None:
    class NoPPS:
        id = "no-pps"

        def skip_pps(self, default: bool) -> bool:
            return True

    both = parse_atr(build_atr((0, 1), ifsc=254, bwi=4, cwi=5))
    assert plan_protocol(both, _desc(), wanted=1).pps == build_pps_request(1, None)
    with pytest.raises(CardError, match="quirk no-pps"):
        plan_protocol(both, _desc(), wanted=1, quirks=[NoPPS()])
    assert plan_protocol(both, _desc(), wanted=0, quirks=[NoPPS()]).pps is None


def test_protocol_choice_errors_name_the_cause() -> None:
    t0 = parse_atr(build_atr((0,)))
    with pytest.raises(CardError, match="does not offer T=1"):
        choose_protocol(t0, _desc(), 1)
    with pytest.raises(CardError, match="reader does not support T=0"):
        choose_protocol(t0, _desc(dwProtocols=2), None)
    specific = parse_atr(build_atr((1,), ta1=0x11, specific=1, ifsc=32, bwi=4, cwi=5))
    with pytest.raises(CardError, match="specific mode T=1"):
        choose_protocol(specific, _desc(), 0)


def test_settings_quirks_and_ifsd() -> None:
    class Slow:
        def adjust_bwi(self, bwi: int, atr: bytes) -> int:
            return max(bwi, 7)

        def extra_card_time(self, atr: bytes) -> float:
            return 10.0

        def negotiate_ifsd(self, default: bool) -> bool:
            return False

    atr = parse_atr(build_atr((1,), ifsc=254, bwi=4, cwi=5))
    plan = ProtocolPlan(1, 4000, None)
    plain = plan_settings(atr, plan, _desc(), fi_di=None)
    assert plain.ifs_request == 254 and plain.ifsd == DEFAULT_IFSD and plain.bwi == 4
    slow = plan_settings(atr, plan, _desc(), fi_di=None, quirks=[Slow()], ifsd=100)
    assert slow.bwi == 7 and slow.parameters[3] >> 4 == 7
    assert slow.ifs_request is None and slow.ifsd == 100
    assert slow.wait == card_wait(atr, 1, None, 4000, bwi=7, extra=10.0) > plain.wait
    apdu = _desc(dwFeatures=0x000404BE)  # extended APDU level: no IFSD steps
    assert apdu.exchange_level == ExchangeLevel.EXTENDED_APDU
    assert plan_settings(atr, plan, apdu, fi_di=None).ifs_request is None
    assert card_wait(parse_atr(build_atr((0,), ta1=0x71)), 0, 0x71, 4000) >= CARD_WAIT_FLOOR


def test_pps_outcome() -> None:
    plan = plan_protocol(parse_atr(build_atr((1,), ta1=0x13, ifsc=254, bwi=4, cwi=5)),
                         _desc(dwMaxDataRate=0))
    assert plan.pps is not None
    assert pps_outcome(plan, plan.pps) == 0x13
    with pytest.raises(UsageError):
        pps_outcome(ProtocolPlan(0, 4000, None), b"\xff\x00\xff")
