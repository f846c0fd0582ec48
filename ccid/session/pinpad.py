"""PIN entry on the reader's pinpad (PC_to_RDR_Secure).

The PIN never passes through the host: the pinpad writes the typed digits into the PIN
block of an APDU template and sends it to the card. This room builds the PIN_VERIFY /
PIN_MODIFY structure from the caller's choices and the firmware's limits, sends it, and
at TPDU level with a T=1 card lets the session's T=1 state frame the block (the pinpad
sends the card a whole T=1 block whose prologue the host gives in bTeoPrologue).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from ccid._args import as_bytes, as_seconds
from ccid.constants import ExchangeLevel, PINSupport, SlotErrorCode
from ccid.descriptor import CCIDDescriptor
from ccid.errors import PinCancelledError, PinTimeoutError, ProtocolError, SlotError, UsageError
from ccid.session.channel import Channel
from ccid.session.options import READER_WAIT
from ccid.session.slot import SlotState

if TYPE_CHECKING:
    from ccid.session.exchange import Exchange
    from ccid.session.opening import Quirks

__all__ = ["DEFAULT_PIN_DIGITS", "PIN_FORMATS", "PinBlock", "PinFormat", "Pinpad"]

#: How the pinpad writes the typed digits into the APDU: ``"ascii"`` (one '0'..'9' byte per
#: digit, 8-byte block), ``"bcd"`` (two digits per byte, 8-byte block) or ``"format2"``
#: (ISO 9564 format 2: 0x2L, BCD digits, F padding, 8 bytes).
PinFormat = Literal["ascii", "bcd", "format2"]


@dataclass(frozen=True, slots=True)
class PinBlock:
    #: bmFormatString, bmPINBlockString, bmPINLengthFormat (CCID 6.1.11.7).
    format_string: int
    block_string: int
    length_format: int
    #: The block's bytes before the PIN goes in (padding; format 2's control nibble).
    filler: bytes
    #: Most digits the block holds.
    capacity: int


PIN_FORMATS: Final[dict[str, PinBlock]] = {
    # byte units, PIN at byte 0, left justified, ASCII; 8-byte block, no length field
    "ascii": PinBlock(0x82, 0x08, 0x00, b"\xff" * 8, 8),
    # byte units, PIN at byte 0, left justified, BCD
    "bcd": PinBlock(0x81, 0x08, 0x00, b"\xff" * 8, 16),
    # byte units, PIN at byte 1, BCD; 4-bit length at bit 4 of the block, 7 bytes after it
    "format2": PinBlock(0x89, 0x47, 0x04, b"\x20" + b"\xff" * 7, 14),
}
#: PIN sizes used when neither the caller nor the reader's firmware says (ISO 9564: 4..12).
DEFAULT_PIN_DIGITS: Final = (4, 12)
#: Message indexes of the usual pinpad prompts: enter PIN, new PIN, confirm new PIN.
_MSG_ENTER, _MSG_NEW, _MSG_CONFIRM = 0, 1, 2


def pin_apdu(template: bytes, filler: bytes, reader: str) -> bytes:
    """The APDU template for the pinpad: a header gets the PIN blocks' padding as data."""
    if len(template) == 4:
        return template + bytes((len(filler),)) + filler
    if len(template) < 5 or len(template) != 5 + template[4]:
        raise UsageError(
            f"PIN APDU template must be CLA INS P1 P2 or a whole short APDU with Lc and data, "
            f"got {template.hex(' ')}", reader=reader)
    return template


class Pinpad:
    """The pinpad of one reader (after its quirks)."""

    def __init__(self, channel: Channel, descriptor: CCIDDescriptor,
                 declared: CCIDDescriptor, quirks: Quirks, exchange: Exchange,
                 quirk_state: MutableMapping[str, object],
                 off_by_quirks: list[str]) -> None:
        self.channel = channel
        self.name = channel.name
        self.descriptor = descriptor
        self.declared = declared
        self.quirks = quirks
        self.exchange = exchange
        self.quirk_state = quirk_state
        #: Quirk ids that turned the declared pinpad off (bPINSupport), for error messages.
        self.off_by_quirks = off_by_quirks

    @property
    def tpdu(self) -> bool:
        """The reader exchanges TPDUs (the card's 61xx reaches the host)."""
        return self.descriptor.exchange_level == ExchangeLevel.TPDU

    @property
    def support(self) -> PINSupport:
        return PINSupport(self.descriptor.bPINSupport & 0x03)

    @property
    def firmware_features(self) -> Any:
        """What the firmware said of itself (Gemalto GET_FIRMWARE_FEATURES), or None."""
        from ccid.quirks.gemalto import GemaltoFirmwareFeatures

        return self.quirk_state.get(GemaltoFirmwareFeatures.state_key)

    def require(self, needed: PINSupport, slot: int) -> None:
        """UsageError naming why when the pinpad cannot do ``needed``."""
        if self.support & needed:
            return
        what = "verification" if needed == PINSupport.VERIFY else "modification"
        if self.off_by_quirks:
            reason = (f"the reader declares a pinpad (bPINSupport "
                      f"0x{self.declared.bPINSupport:02X}) but quirk "
                      f"{', '.join(self.off_by_quirks)} turns it off: it is absent or "
                      "unsafe on this model")
        else:
            reason = (f"the reader has no PIN {what} on a pinpad (bPINSupport "
                      f"0x{self.descriptor.bPINSupport:02X})")
        raise UsageError(f"{reason}; ask for the PIN on the host and send VERIFY / CHANGE "
                         "REFERENCE DATA with transmit()", reader=self.name, slot=slot)

    def digits(self, block: PinBlock, low: int | None, high: int | None) -> tuple[int, int]:
        """(fewest, most) digits: the caller's bounds, else the firmware's, else 4..12."""
        features = self.firmware_features
        fw_low = getattr(features, "min_pin_size", 0) or None
        fw_high = getattr(features, "max_pin_size", 0) or None
        lo_default = fw_low or DEFAULT_PIN_DIGITS[0]
        hi_default = min(fw_high or DEFAULT_PIN_DIGITS[1], block.capacity)
        # A bound the caller gives moves the other default out of its way.
        lo = low if low is not None else (
            lo_default if high is None else min(lo_default, high))
        hi = high if high is not None else (
            hi_default if low is None else max(hi_default, low))
        if not 1 <= lo <= hi <= min(block.capacity, 0xFF):
            raise UsageError(f"PIN size {lo}..{hi} is not possible: 1 <= min <= max <= "
                             f"{block.capacity} digits for this PIN format", reader=self.name)
        return lo, hi

    # One builder for both operations: their structures share all but a few fields, and
    # the checks come before anything is built.
    def structure(self, operation: int, template: Any, pin_format: Any,
                  min_digits: int | None, max_digits: int | None, timeout: Any, *,
                  confirm: bool, current: bool, slot: int, direct: bool = False
                  ) -> tuple[bytes, bytes, float]:
        """Check the caller's choices and build PC_to_RDR_Secure's abData: (payload, the PIN
        APDU in it, timeout in seconds)."""
        from ccid.messages import PIN_OPERATION, PINModify, PINVerify

        name = self.name
        block = PIN_FORMATS.get(pin_format) if isinstance(pin_format, str) else None
        if block is None:
            raise UsageError(f"pin_format must be one of {', '.join(PIN_FORMATS)}, not "
                             f"{pin_format!r}", reader=name, slot=slot)
        if direct:
            raise UsageError("a direct-mode handle cannot verify a PIN", reader=name,
                             slot=slot)
        self.require(PINSupport.VERIFY if operation == 0 else PINSupport.MODIFY, slot)
        seconds = as_seconds(timeout, "PIN entry timeout", name, slot)
        if not 1 <= seconds <= 255:
            raise UsageError(f"PIN entry timeout must be 1..255 s, got {seconds}",
                             reader=name, slot=slot)
        for what, digits_given in (("min_digits", min_digits), ("max_digits", max_digits)):
            if digits_given is not None and (isinstance(digits_given, bool) or
                                             not isinstance(digits_given, int)):
                raise UsageError(f"{what} must be None or an integer, not {digits_given!r}",
                                 reader=name, slot=slot)
        lo, hi = self.digits(block, min_digits, max_digits)
        blocks = 2 if operation == 1 and current else 1
        apdu = pin_apdu(as_bytes(template, "the PIN APDU template", name, slot),
                        block.filler * blocks, name)
        validation = getattr(self.firmware_features, "entry_validation_condition", 0) or 0x02
        digits = (lo << 8) | hi
        built: PINVerify | PINModify
        if operation == 0:
            built = PINVerify(
                bTimeOut=int(seconds), bmFormatString=block.format_string,
                bmPINBlockString=block.block_string, bmPINLengthFormat=block.length_format,
                wPINMaxExtraDigit=digits, bEntryValidationCondition=validation,
                bNumberMessage=1, bMsgIndex=_MSG_ENTER, abPINApdu=apdu)
        else:
            shown = [_MSG_ENTER] if current else []
            shown += [_MSG_NEW, _MSG_CONFIRM] if confirm else [_MSG_NEW]
            indexes = [*shown, 0, 0][:3]
            built = PINModify(
                bTimeOut=int(seconds), bmFormatString=block.format_string,
                bmPINBlockString=block.block_string, bmPINLengthFormat=block.length_format,
                bInsertionOffsetOld=0, bInsertionOffsetNew=len(block.filler) if current else 0,
                wPINMaxExtraDigit=digits, bConfirmPIN=int(confirm) | (int(current) << 1),
                bEntryValidationCondition=validation, bNumberMessage=len(shown),
                bMsgIndex1=indexes[0], bMsgIndex2=indexes[1],
                bMsgIndex3=indexes[2] if len(shown) >= 3 else None, abPINApdu=apdu)
        payload = bytes(PIN_OPERATION.build(
            {"bPINOperation": operation, "abPINDataStructure": asdict(built)}))
        return payload, apdu, seconds

    def enter(self, s: SlotState, payload: bytes, apdu_length: int, timeout: float) -> bytes:
        """Run a built structure on the card in ``s`` (slot lock held): over T=1 at TPDU
        level the session frames the block; the card's response APDU."""
        if self.descriptor.exchange_level == ExchangeLevel.TPDU and s.protocol == 1:
            return self._secure_t1(s, payload, apdu_length, timeout)
        return self.secure(s, payload, timeout)

    def secure(self, s: SlotState, payload: bytes, timeout: float) -> bytes:
        """Send PC_to_RDR_Secure and return the card's response (slot lock held)."""
        for quirk in self.quirks.hooks("adjust_pin_structure"):
            payload = bytes(quirk.adjust_pin_structure(payload))
        wait = timeout + READER_WAIT
        try:
            reply = self.channel.command(self.channel.engine.secure(s.index, payload),
                                         wait=wait, ceiling=wait + READER_WAIT)
        except SlotError as exc:
            kind: type[SlotError]
            if exc.bError == SlotErrorCode.PIN_CANCELLED:
                kind = PinCancelledError
            elif exc.bError == SlotErrorCode.PIN_TIMEOUT:
                kind = PinTimeoutError
            else:
                raise
            text = ("PIN entry cancelled on the pinpad" if kind is PinCancelledError
                    else f"PIN entry not finished on the pinpad within {timeout:g} s")
            raise kind(f"{text} ({exc.message})", bStatus=exc.bStatus, bError=exc.bError,
                       reader=self.name, slot=s.index) from exc
        return bytes(reply.data)

    def _secure_t1(self, s: SlotState, payload: bytes, apdu_length: int,
                   timeout: float) -> bytes:
        """Secure over T=1 (``payload``'s PIN APDU: its last ``apdu_length`` bytes, the
        3-byte bTeoPrologue just before it): the session's T=1 state gives the prologue
        and takes the card's block as the answer to its own I-block, so the sequence
        numbers stay in step for the next exchange."""
        t1 = s.t1
        at = len(payload) - apdu_length - 3
        prologue = t1.secure_prologue(payload[at + 3:])
        cancel: Callable[[], None] = t1.secure_cancel
        try:
            block = self.secure(s, payload[:at] + prologue + payload[at + 3:], timeout)
        except BaseException:
            cancel()  # the pinpad sent nothing: no sequence number moved
            raise
        try:
            following, _wtx, response = t1.step(bytes(block))
        except BaseException:
            cancel()
            raise
        if following is None:
            return bytes(response)
        if not following[1] & 0x80:
            # T=1 recovery would send our I-block again, but it carries the template's
            # filler, not the PIN (only the pinpad has it): that must never reach the card.
            cancel()
            raise ProtocolError("the card did not take the pinpad's T=1 block (it answered "
                                f"{bytes(block[:3]).hex(' ')})", reader=self.name,
                                slot=s.index)
        # S(WTX response) or an R-block asking for the rest of a chained response.
        return self.exchange.t1_run(s, following, timeout + 5.0)
