"""Power-up: power the card on, read its ATR, and carry out the negotiation plan.

The decisions (protocol, Fi/Di, PPS or not, SetParameters, waits, IFSD) are
``ccid.protocol.negotiate``'s; this room only sends what the plan says and handles what
the card answers: the voltage classes in turn (ISO/IEC 7816-3 6.2.4), a failed PPS (reset
and go on at the card's defaults), a SetParameters a quirk says the reader refuses, a failed
IFSD request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ccid.constants import (
    Features,
    ICCStatus,
    MechanicalFunction,
    PowerSelect,
    SlotErrorCode,
    Voltage,
)
from ccid.descriptor import CCIDDescriptor
from ccid.errors import (
    CardError,
    CardMuteError,
    CCIDError,
    NoCardError,
    ProtocolError,
    ReaderTimeoutError,
    SlotError,
)
from ccid.protocol.atr import ATR, parse_atr
from ccid.protocol.negotiate import (
    CARD_WAIT_FLOOR,
    ProtocolPlan,
    plan_protocol,
    plan_settings,
    pps_outcome,
)
from ccid.protocol.params import PPSError
from ccid.session.channel import Channel
from ccid.session.options import READER_WAIT, ReaderOptions
from ccid.session.slot import Change, SlotState

if TYPE_CHECKING:
    from ccid.session.exchange import Exchange
    from ccid.session.opening import Quirks

__all__ = ["VOLTAGE_FALLBACK", "PowerUp"]

log = logging.getLogger("ccid.reader")

#: IccPowerOn errors after which the next (lower) voltage is worth trying.
VOLTAGE_FALLBACK: Final = frozenset({
    SlotErrorCode.ICC_MUTE, SlotErrorCode.ICC_CLASS_NOT_SUPPORTED, 0x07,  # bPowerSelect
    SlotErrorCode.XFR_PARITY_ERROR, SlotErrorCode.BAD_ATR_TS, SlotErrorCode.BAD_ATR_TCK,
})
_VOLTAGE_ORDER: Final = ((Voltage.V5_0, PowerSelect.V5_0), (Voltage.V3_0, PowerSelect.V3_0),
                         (Voltage.V1_8, PowerSelect.V1_8))


class PowerUp:
    """Powers the cards of one reader and sets them up."""

    def __init__(self, channel: Channel, descriptor: CCIDDescriptor, quirks: Quirks,
                 options: ReaderOptions, slot_data_rates: tuple[tuple[int, ...], ...],
                 exchange: Exchange, warn: Callable[[str], None]) -> None:
        self.channel = channel
        self.name = channel.name
        self.descriptor = descriptor
        self.quirks = quirks
        self.options = options
        self.slot_data_rates = slot_data_rates
        self.exchange = exchange
        self.warn = warn

    def power_up(self, s: SlotState, wanted: int | None, ceiling: float) -> None:
        """Power on (cold), read the ATR, choose the protocol, PPS, SetParameters, IFSD."""
        raw = self.power_on(s, ceiling)
        try:
            self._set_up(s, raw, wanted, ceiling)
        except BaseException:
            # A card left without agreed parameters is not usable: the next connect
            # powers it again rather than adopting it half set up.
            s.apply(Change.UNPOWERED, self.name)
            raise

    def voltages(self) -> list[PowerSelect]:
        """The classes to try, highest first (AUTO when the reader chooses itself)."""
        desc = self.descriptor
        if desc.dwFeatures & Features.AUTO_VOLTAGE:
            return [PowerSelect.AUTO]
        supported = desc.voltages
        # bVoltageSupport 0 names no class: try them all, 5 V first, as libccid does. Not
        # AUTO: without dwFeatures AUTO_VOLTAGE a reader may refuse bPowerSelect 0.
        return [sel for bit, sel in _VOLTAGE_ORDER if supported & bit or not supported]

    def power_on(self, s: SlotState, ceiling: float) -> bytes:
        """IccPowerOn through the voltage classes; the ATR's bytes."""
        channel, engine = self.channel, self.channel.engine
        ctx = self.quirks.context()
        last: CCIDError | None = None
        deadline = time.monotonic() + ceiling
        s.apply(Change.POWERING, self.name)
        retried = False
        voltages = self.voltages()
        i = 0
        while i < len(voltages):
            select = voltages[i]
            for quirk in self.quirks.hooks("before_power_on"):
                if ctx is not None:
                    quirk.before_power_on(ctx)
            left = max(0.5, deadline - time.monotonic())
            reply = channel.command(engine.power_on(s.index, select),
                                    wait=min(left, max(CARD_WAIT_FLOOR, READER_WAIT)),
                                    ceiling=left, check=False)
            if reply.ok and reply.data:
                s.apply(Change.POWERED, self.name)
                return reply.data
            if reply.ok:
                last = CardMuteError("the card gave an empty ATR", reader=self.name,
                                     slot=s.index)
            else:
                last = engine.error_for(reply)
            if reply.icc_status == ICCStatus.ABSENT:
                s.apply(Change.NO_CARD, self.name)
                raise NoCardError("no card in the slot", reader=self.name, slot=s.index)
            if not retried and ctx is not None and not reply.ok and any(
                    q.retry_power_on(ctx, reply.bError)
                    for q in self.quirks.hooks("retry_power_on")):
                retried = True
                continue  # same voltage once more, after the quirk's fix
            if reply.bError not in VOLTAGE_FALLBACK and reply.ok is False:
                raise last
            # Deactivate before trying the next class (ISO 7816-3 6.2.4).
            with contextlib.suppress(CardError, SlotError):
                channel.command(engine.power_off(s.index), wait=READER_WAIT,
                                ceiling=READER_WAIT)
            i += 1
        if last is None:  # voltages() is never empty
            raise CardMuteError("no voltage class to try", reader=self.name, slot=s.index)
        raise last

    def _set_up(self, s: SlotState, raw: bytes, wanted: int | None, ceiling: float) -> None:
        """Run the negotiation plan for the card that answered ``raw``."""
        atr = parse_atr(raw, check_tck=self.options.check_tck)
        # Card-dependent quirks (matched on the ATR) join the reader's own for every
        # protocol set-up hook.
        quirks = [*self.quirks.active, *self.quirks.for_card(raw)]
        rates = self.slot_data_rates[s.index] if s.index < len(self.slot_data_rates) else ()
        plan = plan_protocol(atr, self.descriptor, wanted=wanted, data_rates=rates,
                             slot=s.index, quirks=quirks, reader=self.name)
        fi_di = plan.fi_di if plan.pps is None else self._pps(s, atr, plan, ceiling)
        settings = plan_settings(atr, plan, self.descriptor, fi_di=fi_di, quirks=quirks,
                                 ifsd=self.options.ifsd, raw_atr=raw)
        if settings.send_parameters:
            engine = self.channel.engine
            try:
                self.channel.command(
                    engine.set_parameters(s.index, plan.protocol, settings.parameters),
                    wait=READER_WAIT, ceiling=min(ceiling, READER_WAIT * 2))
            except SlotError as exc:
                if not settings.tolerate_failure:
                    raise
                self.warn(f"SetParameters failed ({exc.message}); reader defaults kept")
        s.negotiated(atr, plan.protocol, fi_di, settings.wait)
        if plan.protocol == 1:
            self._set_up_t1(s, atr, settings.ifsd, settings.ifs_request, ceiling)

    def _pps(self, s: SlotState, atr: ATR, plan: ProtocolPlan, ceiling: float) -> int | None:
        """Host-side PPS at TPDU level; on failure reset the card and go on at defaults."""
        assert plan.pps is not None and plan.pps_fi_di is not None
        try:
            reply = self.channel.command(self.channel.engine.xfr_block(s.index, plan.pps),
                                         wait=CARD_WAIT_FLOOR,
                                         ceiling=min(ceiling, CARD_WAIT_FLOOR * 2))
            return pps_outcome(plan, reply.data)
        except (PPSError, CardMuteError, SlotError) as exc:
            self.warn(f"PPS for T={plan.protocol} Fi/Di 0x{plan.pps_fi_di:02X} failed "
                      f"({exc}); resetting the card and using its defaults")
            raw = self.power_on(s, ceiling)
            if bytes(raw) != bytes(atr):
                log.info("%s: ATR changed after reset", self.name)
            return None

    def _set_up_t1(self, s: SlotState, atr: ATR, ifsd: int, request: int | None,
                   ceiling: float) -> None:
        from ccid.protocol.t1 import T1Protocol

        t1 = T1Protocol(ifsc=atr.ifsc, ifsd=32, crc=atr.edc == "crc")
        s.t1 = t1
        s.t1_chain = None
        if request is not None:
            try:
                self.exchange.t1_run(s, t1.ifs_request(request), ceiling)
            except ReaderTimeoutError:
                raise
            except (ProtocolError, CardMuteError) as exc:
                self.warn(f"IFSD negotiation failed ({exc}); keeping IFSD 32")
                t1.reset()
        else:
            t1.ifsd = ifsd

    # --- card state changes -----------------------------------------------------------

    def power_off(self, s: SlotState) -> None:
        s.apply(Change.UNPOWERED, self.name)
        self.channel.command(self.channel.engine.power_off(s.index), wait=READER_WAIT,
                             ceiling=READER_WAIT * 2, check=False)

    def eject(self, s: SlotState) -> None:
        if self.descriptor.dwMechanical & 0x02:
            with contextlib.suppress(SlotError):
                self.channel.command(
                    self.channel.engine.mechanical(s.index, MechanicalFunction.EJECT),
                    wait=READER_WAIT, ceiling=READER_WAIT * 2)
        self.power_off(s)

