"""The virtual reader's command handlers: what each PC_to_RDR message does to a slot and
the reply it gets (the pinpad's Secure is in ``ccid.testing.pinpad``, the clock and rate
commands in ``ccid.testing.clock``). Each handler returns the reply and how long the card
took; faults and scheduling stay with the reader (``ccid.testing.reader``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ccid.constants import HEADER_SIZE, ExchangeLevel, Features, MessageType, SlotErrorCode
from ccid.errors import ProtocolError
from ccid.framing import build_t1_block, check_t1_block
from ccid.testing import clock, pinpad
from ccid.testing.model import VOLTAGE_BIT, SlotState, parse_atr

if TYPE_CHECKING:
    from ccid.testing.reader import VirtualReader

__all__ = ["HANDLERS", "Handler", "dispatch"]

M = MessageType
E = SlotErrorCode


def dispatch(reader: VirtualReader, cmd: int, s: SlotState, seq: int, frame: bytes, payload: bytes,
              pin_fault: int | None) -> tuple[bytes, float]:
    """The reply to a command, and how long the card took."""
    if cmd == M.PC_to_RDR_Secure:
        return pinpad.secure(reader, s, seq, frame, payload, pin_fault)
    if cmd == M.PC_to_RDR_GetSlotStatus:
        return reader._ok(cmd, s, seq, clock.clock_status(s)), 0.0
    handler = HANDLERS.get(cmd)
    if handler is None:
        return reader._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
    return handler(reader, s, seq, frame, payload)


def power_on(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
             payload: bytes) -> tuple[bytes, float]:
    cmd = M.PC_to_RDR_IccPowerOn
    select = frame[7]
    if select > 3:
        return reader._fail(cmd, s.index, seq, 7), 0.0
    support = reader.descriptor.bVoltageSupport & 0x07
    if select == 0 and not reader.features & Features.AUTO_VOLTAGE:
        return reader._fail(cmd, s.index, seq, 7), 0.0
    if select and support and not support & VOLTAGE_BIT[select]:
        return reader._fail(cmd, s.index, seq, 7), 0.0
    if s.card is None:
        return reader._fail(cmd, s.index, seq, E.ICC_MUTE), 0.0
    card_volts = int(getattr(s.card, "voltages", 0x07) or 0x07)
    if select == 0:
        usable = [v for v in (1, 2, 3) if VOLTAGE_BIT[v] & card_volts
                  and (not support or VOLTAGE_BIT[v] & support)]
        if not usable:
            return reader._fail(cmd, s.index, seq, E.ICC_CLASS_NOT_SUPPORTED), 0.0
        select = usable[0]
    warm = s.active
    delay = float(getattr(s.card, "delay", 0.0) or 0.0)
    if not VOLTAGE_BIT[select] & card_volts:
        if s.active:
            s.card.power_off()
        reader._deactivate(s)
        return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
    atr = s.card.power_on(cold=not warm)
    reader._deactivate(s)
    if atr is None:
        return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
    atr = bytes(atr)
    s.active = True
    s.clock_stopped = False
    s.pps_window = True
    info = parse_atr(atr)
    if info.specific and info.ta1 is not None:
        s.card_fidi = info.ta1  # specific mode: the card talks at TA1 at once
    feats = reader.features
    # A reader that negotiates by itself (AUTO_PPS_PROPRIETARY) gets no SetParameters from
    # libccid, so it must configure itself from the ATR as AUTO_CONF_ATR readers do.
    if feats & (Features.AUTO_CONF_ATR | Features.AUTO_PPS_PROPRIETARY) or \
            reader.level >= ExchangeLevel.SHORT_APDU:
        protos = [p for p in info.protocols if p in card_protocols(s)]
        s.protocol = protos[0] if protos else 0
        if s.protocol == 1:
            s.ifsc, s.waiting = info.t1_ifsc, info.t1_bwi_cwi
            s.tcckst = 0x01 if info.t1_crc else 0x00
        if info.specific:
            s.fidi = s.card_fidi
    if feats & Features.AUTO_PPS_PROPRIETARY and not info.specific and s.pps_window:
        target = info.ta1 if info.ta1 is not None else 0x11
        if target != 0x11 and clock.fidi_rate_ok(reader, s, target):
            # Before any SetParameters the PPS is for the card's first protocol.
            auto_pps(reader, s, target, info.protocols[0])
    return reader._ok(cmd, s, seq, 0, atr), delay


def card_protocols(s: SlotState) -> tuple[int, ...]:
    protos = getattr(s.card, "protocols", None)
    return tuple(protos) if protos else (0,)


def auto_pps(reader: VirtualReader, s: SlotState, fidi: int, protocol: int | None = None) -> bool:
    """The reader's own PPS exchange (AUTO_PPS_*) for ``protocol`` (default: the slot's):
    True when the card accepted."""
    request = bytearray((0xFF, 0x10 | (s.protocol if protocol is None else protocol), fidi))
    request.append(request[0] ^ request[1] ^ request[2])
    answer = s.card.supports_pps(bytes(request))
    s.pps_window = False
    if answer is None:
        return False
    answer = bytes(answer)
    if len(answer) >= 3 and answer[1] & 0x10 and answer[2] == fidi:
        s.card_fidi = s.fidi = fidi
        return True
    return False


def power_off(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
              payload: bytes) -> tuple[bytes, float]:
    if s.card is not None and s.active:
        s.card.power_off()
    reader._deactivate(s)
    return reader._ok(M.PC_to_RDR_IccPowerOff, s, seq, 0), 0.0


def get_parameters(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
                   payload: bytes) -> tuple[bytes, float]:
    return reader._ok(frame[0], s, seq, s.protocol, reader._params_data(s)), 0.0


def reset_parameters(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
                     payload: bytes) -> tuple[bytes, float]:
    reader._reset_params(s)
    return reader._ok(frame[0], s, seq, s.protocol, reader._params_data(s)), 0.0


def set_parameters(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
                   payload: bytes) -> tuple[bytes, float]:
    cmd = M.PC_to_RDR_SetParameters
    proto = frame[7]
    # A descriptor naming neither T=0 nor T=1 (MySmartPad: dwProtocols 0x300) is read as
    # both, as the session reads it: such a reader still talks to ISO cards.
    declared = reader.descriptor.dwProtocols & 0x03 or 0x03
    if proto not in (0, 1) or not declared & (1 << proto):
        return reader._fail(cmd, s.index, seq, 7), 0.0
    if len(payload) != (7 if proto == 1 else 5):
        return reader._fail(cmd, s.index, seq, 1), 0.0
    fidi, tcckst, guard, waiting, clock_stop = payload[:5]
    if clock.fidi_rate(reader, s, fidi) is None or not clock.fidi_rate_ok(reader, s, fidi):
        return reader._fail(cmd, s.index, seq, 10), 0.0
    if proto == 0 and tcckst not in (0x00, 0x02):
        return reader._fail(cmd, s.index, seq, 11), 0.0
    if proto == 1 and tcckst not in (0x10, 0x11, 0x12, 0x13):
        return reader._fail(cmd, s.index, seq, 11), 0.0
    if proto == 1 and waiting >> 4 > 9:
        return reader._fail(cmd, s.index, seq, 13), 0.0
    if clock_stop > 3 or (clock_stop and not reader.features & Features.CLOCK_STOP):
        return reader._fail(cmd, s.index, seq, 14), 0.0
    if proto == 1:
        ifsc, nad = payload[5], payload[6]
        if ifsc in (0x00, 0xFF):
            return reader._fail(cmd, s.index, seq, 15), 0.0
        if nad and not reader.features & Features.NAD_NOT_ZERO:
            return reader._fail(cmd, s.index, seq, 16), 0.0
    feats = reader.features
    reader_pps = feats & (Features.AUTO_PPS_CURRENT | Features.AUTO_PPS_PROPRIETARY)
    if s.card is not None and s.active and reader_pps and reader.level == ExchangeLevel.TPDU:
        if proto not in card_protocols(s):
            return reader._fail(cmd, s.index, seq, E.ICC_PROTOCOL_NOT_SUPPORTED), 0.0
        if fidi != s.card_fidi:
            s.protocol = proto
            if not auto_pps(reader, s, fidi):
                return reader._fail(cmd, s.index, seq, 10), 0.0
    s.protocol = proto
    s.fidi, s.guard, s.waiting, s.clock_stop = fidi, guard, waiting, clock_stop
    s.tcckst = tcckst & 0x03 if proto == 1 else tcckst
    if proto == 1:
        s.ifsc, s.nad = payload[5], payload[6]
    if reader.level >= ExchangeLevel.SHORT_APDU:
        s.card_fidi = fidi  # APDU-level readers negotiate with the card themselves
    if (proto == 1 and feats & Features.AUTO_IFSD and reader.level == ExchangeLevel.TPDU
            and s.card is not None and s.active and s.fidi == s.card_fidi):
        auto_ifsd(reader, s)
    return reader._ok(cmd, s, seq, s.protocol, reader._params_data(s)), 0.0


def auto_ifsd(reader: VirtualReader, s: SlotState) -> None:
    ifsd = max(1, min(254, reader.descriptor.dwMaxIFSD or 254))
    crc = bool(s.tcckst & 0x01)
    answer = s.card.t1_block(build_t1_block(s.nad, 0xC1, bytes((ifsd,)), crc))
    if answer is not None:
        try:
            check_t1_block(bytes(answer), crc)
        except ProtocolError:  # a bad answer leaves IFSD at its default
            return
    s.pps_window = False


def card_wtx(reader: VirtualReader, s: SlotState) -> None:
    """Time extensions the card asked for (above TPDU level the reader relays them)."""
    take = getattr(getattr(s.card, "faults", None), "take_wtx", None)
    if take is not None:
        reader._wtx_plan.extend(int(m) for m in take())


def xfr_block(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
              payload: bytes) -> tuple[bytes, float]:
    cmd = M.PC_to_RDR_XfrBlock
    level = reader.level
    if level == ExchangeLevel.CHARACTER:
        return reader._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
    err = reader._exchange_check(s, cmd, seq)
    if err is not None:
        return err, 0.0
    delay = float(getattr(s.card, "delay", 0.0) or 0.0)
    level_param = frame[8] | frame[9] << 8
    if reader.max_working_rate and not (payload[:1] == b"\xff" and s.pps_window):
        rate = clock.fidi_rate(reader, s, s.fidi)
        if rate is not None and rate > reader.max_working_rate + 2:
            return reader._fail(cmd, s.index, seq, E.XFR_PARITY_ERROR), delay
    if level == ExchangeLevel.TPDU:
        return tpdu(reader, s, seq, payload, delay)
    s.pps_window = False
    if level == ExchangeLevel.SHORT_APDU:
        if level_param:  # no command or response chaining at this level
            return reader._fail(cmd, s.index, seq, 8), 0.0
        if len(payload) > 261 or (len(payload) > 5 and payload[4] == 0):
            return reader._fail(cmd, s.index, seq, 1), 0.0
        if len(payload) < 4:
            return reader._fail(cmd, s.index, seq, 1), 0.0
        card_wtx(reader, s)
        resp = bytes(s.card.process_apdu(bytes(payload)))
        if not resp:
            return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        if HEADER_SIZE + len(resp) > reader.max_message:
            return reader._fail(cmd, s.index, seq, E.XFR_OVERRUN), delay
        return reader._ok(cmd, s, seq, 0, resp), delay
    return extended(reader, s, seq, level_param, payload, delay)


def tpdu(reader: VirtualReader, s: SlotState, seq: int, payload: bytes, delay: float
         ) -> tuple[bytes, float]:
    cmd = M.PC_to_RDR_XfrBlock
    if payload[:1] == b"\xff":
        if not s.pps_window:
            return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        s.pps_window = False
        answer = s.card.supports_pps(bytes(payload))
        if answer is None:
            return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        answer = bytes(answer)
        if len(answer) >= 2:
            s.card_fidi = answer[2] if answer[1] & 0x10 and len(answer) > 2 else 0x11
        return reader._ok(cmd, s, seq, 0, answer), delay
    s.pps_window = False
    if s.fidi != s.card_fidi:
        return reader._fail(cmd, s.index, seq, E.XFR_PARITY_ERROR), delay
    if s.protocol not in card_protocols(s):
        return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
    if s.protocol == 1:
        if reader.enforce_bwt and delay > clock.bwt_seconds(reader, s):
            return reader._fail(cmd, s.index, seq, E.ICC_MUTE), 0.0
        block = s.card.t1_block(bytes(payload))
        if block is None:
            return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        resp = bytes(block)
    else:
        if len(payload) < 5:
            return reader._fail(cmd, s.index, seq, 1), 0.0
        resp = bytes(s.card.t0_command(bytes(payload)))
        if not resp:
            return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
    if HEADER_SIZE + len(resp) > reader.max_message:
        return reader._fail(cmd, s.index, seq, E.XFR_OVERRUN), delay
    return reader._ok(cmd, s, seq, 0, resp), delay


def extended(reader: VirtualReader, s: SlotState, seq: int, level_param: int, payload: bytes,
             delay: float) -> tuple[bytes, float]:
    cmd = M.PC_to_RDR_XfrBlock
    if level_param == 0x0010:
        if payload or not s.resp_chain:
            return reader._fail(cmd, s.index, seq, 8), 0.0
        piece = s.resp_chain.pop(0)
        chain = 0x02 if not s.resp_chain else 0x03
        return reader._ok(cmd, s, seq, chain, piece), 0.0
    s.resp_chain = []
    if level_param == 0x0001:
        s.cmd_chain = bytearray(payload)
        return reader._ok(cmd, s, seq, 0x10), 0.0
    if level_param in (0x0002, 0x0003):
        if s.cmd_chain is None:
            return reader._fail(cmd, s.index, seq, 8), 0.0
        s.cmd_chain += payload
        if level_param == 0x0003:
            return reader._ok(cmd, s, seq, 0x10), 0.0
        apdu = bytes(s.cmd_chain)
        s.cmd_chain = None
    elif level_param == 0x0000:
        s.cmd_chain = None
        apdu = bytes(payload)
    else:
        return reader._fail(cmd, s.index, seq, 8), 0.0
    if len(apdu) < 4:
        return reader._fail(cmd, s.index, seq, 1), 0.0
    card_wtx(reader, s)
    resp = bytes(s.card.process_apdu(apdu))
    if not resp:
        return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
    size = reader.max_message - HEADER_SIZE
    if reader.response_chunk:
        size = max(1, min(size, reader.response_chunk))
    if len(resp) <= size:
        return reader._ok(cmd, s, seq, 0x00, resp), delay
    s.resp_chain = [resp[i : i + size] for i in range(size, len(resp), size)]
    return reader._ok(cmd, s, seq, 0x01, resp[:size]), delay


def escape(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
           payload: bytes) -> tuple[bytes, float]:
    cmd = M.PC_to_RDR_Escape
    switched, reader._mode_switched = reader._mode_switched, False
    if reader.escape_handler is None:
        if switched:
            return reader._ok(cmd, s, seq, 0), 0.0
        return reader._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
    answer = reader.escape_handler(bytes(payload))
    if isinstance(answer, int):
        return reader._fail(cmd, s.index, seq, answer & 0xFF), 0.0
    return reader._ok(cmd, s, seq, 0, bytes(answer)), 0.0


def t0_apdu(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
            payload: bytes) -> tuple[bytes, float]:
    cmd = M.PC_to_RDR_T0APDU
    if reader.level < ExchangeLevel.SHORT_APDU:
        return reader._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
    changes = frame[7]
    if changes & ~0x03:
        return reader._fail(cmd, s.index, seq, 7), 0.0
    if changes & 0x01:
        s.t0_get_response = frame[8]
    if changes & 0x02:
        s.t0_envelope = frame[9]
    return reader._ok(cmd, s, seq, clock.clock_status(s)), 0.0


def mechanical(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
               payload: bytes) -> tuple[bytes, float]:
    cmd = M.PC_to_RDR_Mechanical
    mech = reader.descriptor.dwMechanical
    needed = {1: 0x01, 2: 0x02, 3: 0x04, 4: 0x08, 5: 0x08}.get(frame[7])
    if not mech:
        return reader._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
    if needed is None or not mech & needed:
        return reader._fail(cmd, s.index, seq, 7), 0.0
    if frame[7] in (2, 3) and s.card is not None:
        reader.remove(s.index)
    return reader._ok(cmd, s, seq, clock.clock_status(s)), 0.0


#: A command handler: (reader, slot, bSeq, frame, payload) -> (reply, card time in seconds).
Handler = Callable[["VirtualReader", SlotState, int, bytes, bytes], "tuple[bytes, float]"]

HANDLERS: dict[int, Handler] = {
    M.PC_to_RDR_IccPowerOn: power_on,
    M.PC_to_RDR_IccPowerOff: power_off,
    M.PC_to_RDR_GetParameters: get_parameters,
    M.PC_to_RDR_ResetParameters: reset_parameters,
    M.PC_to_RDR_SetParameters: set_parameters,
    M.PC_to_RDR_XfrBlock: xfr_block,
    M.PC_to_RDR_Escape: escape,
    M.PC_to_RDR_IccClock: clock.icc_clock,
    M.PC_to_RDR_T0APDU: t0_apdu,
    M.PC_to_RDR_Mechanical: mechanical,
    M.PC_to_RDR_SetDataRateAndClockFrequency: clock.set_rate_clock,
}
