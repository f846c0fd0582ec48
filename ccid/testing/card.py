"""A programmable virtual smart card: ATR, PPS, T=0 and T=1 at TPDU level, APDU level.

The virtual reader (``ccid.testing.reader``) powers it, negotiates with it and moves bytes;
the card answers as ISO/IEC 7816-3 and -4 describe. Every entry point answers any input
without raising: an error status word, an R-block, or silence (``None`` / ``b""``).

Silence (a mute card) is ``None`` from ``power_on``, ``supports_pps`` and ``t1_block`` and
``b""`` from ``t0_command`` and ``process_apdu``. The card is silent when it is not powered,
when ``faults.mute()`` is set, when asked to speak a protocol its ATR does not offer (or, with
``strict_protocol``, one that was not negotiated), and for a T=0 header shorter than 5 bytes.
"""

from __future__ import annotations

from ccid.constants import Voltage
from ccid.protocol.params import DI_TABLE, FI_TABLE
from ccid.testing.apps import Application, AppLike, as_application, default_card_os
from ccid.testing.atrbuild import ATRFields, atr_fields, build_atr
from ccid.testing.t1card import T1Card

__all__ = ["DEFAULT_VOLTAGES", "CardFaults", "VirtualCard"]

DEFAULT_VOLTAGES = Voltage.V5_0 | Voltage.V3_0 | Voltage.V1_8

# ISO/IEC 7816-3 tables 7 and 8 (None: reserved)


def _ok_with_data(sw: int) -> bool:
    """Status words after which response data is delivered (normal or warning)."""
    return sw == 0x9000 or sw >> 8 in (0x62, 0x63)


class CardFaults:
    """Faults to inject into a VirtualCard; each arms the next exchanges, ``clear`` disarms."""

    def __init__(self, card: VirtualCard) -> None:
        self._card = card
        self.muted = False

    def mute(self, on: bool = True) -> None:
        """No ATR, no answers, until ``mute(False)``."""
        self.muted = on

    def t1_bad_edc(self, n: int = 1) -> None:
        """The next ``n`` T=1 blocks the card sends carry a wrong EDC."""
        self._card.t1.corrupt_next = n

    def t1_lose(self, n: int = 1) -> None:
        """The next ``n`` T=1 blocks the card sends are lost (``t1_block`` returns None)."""
        self._card.t1.lose_next = n

    def wtx(self, n: int = 1, multiplier: int = 2) -> None:
        """Before answering the next T=1 command, send ``n`` S(WTX request, multiplier)."""
        if not 1 <= multiplier <= 255:
            raise ValueError("WTX multiplier is 1..255")
        self._card.t1.wtx_plan = [multiplier] * n

    def take_wtx(self) -> list[int]:
        """Consume the armed WTX multipliers (for reader models above TPDU level, which turn
        them into CCID time extensions themselves)."""
        plan, self._card.t1.wtx_plan = self._card.t1.wtx_plan, []
        return plan

    def t1_request_ifs(self, value: int) -> None:
        """Before the next T=1 response the card sends S(IFS request, value) (new IFSC)."""
        self._card.t1.request_ifs(value)

    def slow(self, seconds: float) -> None:
        """Each exchange takes ``seconds`` (the reader model sleeps ``card.delay``)."""
        self._card.delay = seconds

    def clear(self) -> None:
        self.muted = False
        t1 = self._card.t1
        t1.corrupt_next = t1.lose_next = 0
        t1.wtx_plan = []
        t1.request_ifs_value = None
        self._card.delay = 0.0


class VirtualCard:
    """A smart card. Defaults: T=0 and T=1 (T=0 first), TA1 11, IFSC 254, LRC, all voltage
    classes, and ``default_card_os()`` (file system, echo, test applet).

    ``atr``: the cold-reset ATR (built from ``protocols`` / ``fi_di`` when omitted);
    ``warm_atr``: a different ATR after a warm reset. ``protocols``: what the card speaks
    (default: what its ATR offers). ``voltages``: classes it accepts (default: the ATR's T=15
    class indicator, else A, B and C). T=0 behaviour: ``t0_get_response`` answers 61xx when a
    TPDU cannot carry the response (case 3/4, or more data than P3), ``t0_wrong_le`` answers
    6Cxx when P3 asks for more than there is (else 6700), ``t0_always_61`` answers 61xx to
    case 2 as well.
    """

    def __init__(
        self,
        atr: bytes | None = None,
        app: AppLike | None = None,
        protocols: tuple[int, ...] | None = None,
        *,
        warm_atr: bytes | None = None,
        fi_di: int | None = None,
        voltages: Voltage | None = None,
        delay: float = 0.0,
        t0_get_response: bool = True,
        t0_wrong_le: bool = True,
        t0_always_61: bool = False,
        strict_protocol: bool = False,
        seed: int | None = None,
    ) -> None:
        if atr is None:
            offered = protocols or (0, 1)
            t1 = 1 in offered
            atr = build_atr(
                offered,
                ta1=fi_di if fi_di not in (None, 0x11) else None,
                ifsc=0xFE if t1 else None, bwi=4 if t1 else None, cwi=5 if t1 else None,
                historical=b"ccid-virt")
        self.cold_atr = bytes(atr)
        self.warm_atr = None if warm_atr is None else bytes(warm_atr)
        self.app: Application = as_application(app if app is not None else default_card_os(seed))
        self._protocols_override = None if protocols is None else tuple(protocols)
        cold = atr_fields(self.cold_atr)
        self.fi_di: int = fi_di if fi_di is not None else (cold.ta1 if cold.ta1 is not None
                                                          else 0x11)
        if voltages is None:
            voltages = Voltage(cold.classes & 0x07) if cold.classes else DEFAULT_VOLTAGES
        self.voltages: Voltage = voltages
        self.delay = delay
        self.t0_get_response = t0_get_response
        self.t0_wrong_le = t0_wrong_le
        self.t0_always_61 = t0_always_61
        self.strict_protocol = strict_protocol
        self.t1 = T1Card(self._run, ifsc=cold.ifsc, crc=cold.crc)
        self.faults = CardFaults(self)
        self.powered = False
        self.resets = 0
        self._fields: ATRFields = cold
        self._atr = self.cold_atr
        self._pending: tuple[bytes, int] | None = None
        self._pps_allowed = False
        self.protocol: int = self.protocols[0]
        self.current_fi_di = 0x11

    # --- what the ATR says ---------------------------------------------------------------

    @property
    def atr(self) -> bytes:
        """The ATR of the last reset (the cold ATR before any)."""
        return self._atr

    @property
    def protocols(self) -> tuple[int, ...]:
        """Protocols the card speaks."""
        return self._protocols_override or self._fields.protocols

    @protocols.setter
    def protocols(self, value: tuple[int, ...]) -> None:
        self._protocols_override = tuple(value)

    @property
    def fields(self) -> ATRFields:
        """The current ATR's fields as the card reads them (IFSC, EDC, BWI, WI, …)."""
        return self._fields

    @property
    def specific_mode(self) -> bool:
        return self._fields.ta2 is not None

    # --- power -------------------------------------------------------------------------

    def power_on(self, cold: bool = True, voltage: Voltage | None = None) -> bytes | None:
        """Activate (cold) or reset (warm); the ATR, or None when mute or at a wrong voltage.

        Resets T=0/T=1 state, negotiated parameters and the application (applets deselected,
        security status dropped). A warm reset of an unpowered card is a cold one.
        """
        if self.faults.muted or (voltage is not None and not voltage & self.voltages):
            self.powered = False
            return None
        warm = not cold and self.powered
        self._atr = self.warm_atr if warm and self.warm_atr is not None else self.cold_atr
        self._fields = atr_fields(self._atr)
        self.powered = True
        self.resets += 1
        self.t1.initial_ifsc = self._fields.ifsc
        self.t1.crc = self._fields.crc
        self.t1.reset()
        self._pending = None
        self._pps_allowed = True
        specific = self._fields.specific_protocol
        self.protocol = specific if specific is not None else self.protocols[0]
        ta2 = self._fields.ta2
        implicit = ta2 is not None and bool(ta2 & 0x10)
        self.current_fi_di = self.fi_di if ta2 is not None and not implicit else 0x11
        self.app.reset()
        return self._atr

    def power_off(self) -> None:
        self.powered = False
        self.t1.reset()
        self._pending = None
        self._pps_allowed = False

    # --- PPS ---------------------------------------------------------------------------

    def _speed_ok(self, pps1: int) -> bool:
        f, d = FI_TABLE.get(pps1 >> 4), DI_TABLE.get(pps1 & 0x0F)
        f_max, d_max = FI_TABLE.get(self.fi_di >> 4), DI_TABLE.get(self.fi_di & 0x0F)
        if f is None or d is None or f_max is None or d_max is None:
            return pps1 == 0x11
        return 372 <= f <= f_max and 1 <= d <= d_max

    def supports_pps(self, request: bytes) -> bytes | None:
        """The card's PPS response (ISO/IEC 7816-3 clause 9), or None (mute).

        Only the first exchange after an ATR may be a PPS. An erroneous request (PPSS, length,
        PCK), a protocol not offered, or a card in specific mode gets no answer. An accepted
        request is echoed; a refused speed leaves PPS1 out (the link stays at Fd/Dd); PPS2 and
        PPS3 are never echoed.
        """
        if not self.powered or self.faults.muted or not self._pps_allowed:
            return None
        self._pps_allowed = False
        if len(request) < 3 or request[0] != 0xFF:
            return None
        pps0 = request[1]
        extra = [bit for bit in (0x10, 0x20, 0x40) if pps0 & bit]
        if pps0 & 0x80 or len(request) != 3 + len(extra):
            return None
        check = 0
        for b in request:
            check ^= b
        t = pps0 & 0x0F
        if check or t not in self.protocols or self.specific_mode:
            return None
        accepted = bool(pps0 & 0x10) and self._speed_ok(request[2])
        body = bytes((0xFF, t | (0x10 if accepted else 0))) + (
            bytes((request[2],)) if accepted else b"")
        pck = 0
        for b in body:
            pck ^= b
        self.protocol = t
        self.current_fi_di = request[2] if accepted else 0x11
        return body + bytes((pck,))

    # --- exchanges -----------------------------------------------------------------------

    def _silent(self, protocol: int | None) -> bool:
        if not self.powered or self.faults.muted:
            return True
        if protocol is not None and (protocol not in self.protocols or (
                self.strict_protocol and self.protocol != protocol)):
            return True
        self._pps_allowed = False
        return False

    def _run(self, apdu: bytes) -> bytes:
        """The application, guarded: whatever it does, the card answers with a response."""
        try:
            answer = self.app.process(bytes(apdu))
        except Exception:  # the application's bug must not crash the card
            return b"\x6f\x00"
        if not isinstance(answer, bytes | bytearray) or len(answer) < 2:
            return b"\x6f\x00"
        return bytes(answer)

    def process_apdu(self, apdu: bytes) -> bytes:
        """APDU level (short or extended): the whole response, data + SW1 SW2."""
        if self._silent(None):
            return b""
        return self._run(apdu)

    def t1_block(self, block: bytes) -> bytes | None:
        """T=1: one block in, the card's block out (None: lost, mute, or nothing heard)."""
        if self._silent(1):
            return None
        return self.t1.receive(bytes(block))

    def t0_command(self, tpdu: bytes) -> bytes:
        """T=0: a TPDU (CLA INS P1 P2 P3 [data]) in, response data + SW1 SW2 out.

        P3 without data: case 1/2, P3 = Le (00 = 256); the application sees ``CLA INS P1 P2 Le``.
        With data: P3 = Lc; the application sees a case 4 APDU with Le 00, since T=0 cannot
        tell case 3 from case 4; data it returns waits for GET RESPONSE (INS C0) behind 61xx.
        INS 6x / 9x are invalid in T=0 (6D00); P3 not matching the data gives 6700.
        """
        if self._silent(0):
            return b""
        tpdu = bytes(tpdu)
        if len(tpdu) < 5:
            return b""  # the card still waits for the rest of the header
        cla, ins, p1, p2, p3 = tpdu[:5]
        data = tpdu[5:]
        if ins == 0xC0 and self._pending is not None and not data:
            return self._get_response(p3)
        self._pending = None
        if ins >> 4 in (0x6, 0x9):
            return b"\x6d\x00"
        if data:
            if p3 != len(data):
                return b"\x67\x00"
            out = self._run(bytes((cla, ins, p1, p2, p3)) + data + b"\x00")
            rdata, sw = out[:-2], int.from_bytes(out[-2:], "big")
            if not rdata or not _ok_with_data(sw):
                return out[-2:]
            if not self.t0_get_response:
                return out
            return self._hold(rdata, sw)
        out = self._run(tpdu)
        rdata, sw = out[:-2], int.from_bytes(out[-2:], "big")
        if not rdata or not _ok_with_data(sw):
            return out[-2:]
        ne = p3 or 256
        if self.t0_always_61 and self.t0_get_response:
            return self._hold(rdata, sw)
        if len(rdata) == ne:
            return out
        if len(rdata) < ne:
            return bytes((0x6C, len(rdata) & 0xFF)) if self.t0_wrong_le else b"\x67\x00"
        if self.t0_get_response:
            rest = rdata[ne:]
            self._pending = (rest, sw)
            return rdata[:ne] + bytes((0x61, min(len(rest), 256) & 0xFF))
        return rdata[:ne] + out[-2:]

    def _hold(self, rdata: bytes, sw: int) -> bytes:
        self._pending = (rdata, sw)
        return bytes((0x61, min(len(rdata), 256) & 0xFF))

    def _get_response(self, p3: int) -> bytes:
        assert self._pending is not None
        rest, sw = self._pending
        le = p3 or 256
        if le > len(rest):
            return bytes((0x6C, len(rest) & 0xFF)) if self.t0_wrong_le else b"\x67\x00"
        chunk, rest = rest[:le], rest[le:]
        if rest:
            self._pending = (rest, sw)
            return chunk + bytes((0x61, min(len(rest), 256) & 0xFF))
        self._pending = None
        return chunk + sw.to_bytes(2, "big")
