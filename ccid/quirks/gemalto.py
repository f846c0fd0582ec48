"""Gemalto / Gemplus / Thales readers (VID 08E6) and their relatives.

* GemPC Pinpad / CT700 (08E6:3478) and COVADIS Véga-Alpha (0982:0008) keep their display
  prompts in RAM: the host loads them with a vendor escape after open.
* Gemalto firmware may describe itself (PIN sizes, display, validation key) through the
  GET_FIRMWARE_FEATURES escape (0x6A, 21-byte answer).
* GemPC433-Swap and Cherry SmartBoard XX33 refuse some cards in EMV mode (bError 0xBB):
  switching to ISO mode by escape lets the power-on succeed.
* GemCore POS Pro and SIM Pro (firmware < 2.00): secondary slots run only four data rates.
* Thales eToken Fusion NFC: on-board key generation takes minutes.

All escapes here are optional: a reader that does not answer still opens (with a warning)
and no partial result is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccid.errors import CCIDError, ProtocolError, ReaderError, ReaderTimeoutError
from ccid.quirks import Quirk, QuirkContext, register

__all__ = [
    "DISPLAY_STRINGS_EN",
    "ESCAPE_TIMEOUT",
    "FIRMWARE_FEATURES_LENGTH",
    "GEMCORE_SECONDARY_RATES",
    "GET_FIRMWARE_FEATURES",
    "SET_ISO_MODE",
    "FirmwareFeatures",
    "build_display_strings_escape",
    "parse_firmware_features",
]

#: Seconds to wait for an answer to the optional escapes below.
ESCAPE_TIMEOUT = 3.0

GET_FIRMWARE_FEATURES = bytes([0x6A])
FIRMWARE_FEATURES_LENGTH = 21
#: Escape switching a GemPC433-family reader from EMV to ISO 7816 mode.
SET_ISO_MODE = bytes([0x1F, 0x01])
BERROR_EMV_PROTOCOL = 0xBB

#: Display prompts (10 strings of up to 16 characters), English, in the reader's order:
#: PIN entry, new PIN, confirmation, success, wrong PIN, time-out, retries left (the '*'
#: becomes the count), insert card, card error, PIN blocked.
DISPLAY_STRINGS_EN: tuple[str, ...] = (
    "Enter PIN",
    "New PIN",
    "Confirm PIN",
    "PIN OK",
    "Incorrect PIN!",
    "Time Out",
    "* retries left",
    "Insert Card",
    "Card Error",
    "PIN blocked",
)
_STRING_SIZE = 16
# Load-strings command, memory bank A0 at offset 0, then the two check bytes 'ML'.
_LOAD_STRINGS_HEADER = bytes([0xB2, 0xA0, 0x00, 0x4D, 0x4C])

#: Data rates of the secondary slots of the GemCore POS Pro / SIM Pro, bps.
GEMCORE_SECONDARY_RATES: tuple[int, ...] = (10753, 21505, 43011, 125000)


def build_display_strings_escape(strings: tuple[str, ...] = DISPLAY_STRINGS_EN) -> bytes:
    """The escape payload loading the pinpad's 10 display prompts (ASCII, space padded)."""
    if len(strings) != 10:
        raise ValueError(f"the pinpad holds 10 prompts, {len(strings)} given")
    out = bytearray(_LOAD_STRINGS_HEADER)
    for text in strings:
        raw = text.encode("ascii")
        if len(raw) > _STRING_SIZE:
            raise ValueError(f"prompt {text!r} longer than {_STRING_SIZE} characters")
        out += raw.ljust(_STRING_SIZE, b" ")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class FirmwareFeatures:
    """The 21-byte answer to GET_FIRMWARE_FEATURES."""

    lcd_lines: int
    lcd_chars: int
    lcd_scrolling: bool
    entry_validation_condition: int
    verify_pin_start: bool
    verify_pin_finish: bool
    modify_pin_start: bool
    modify_pin_finish: bool
    get_key_pressed: bool
    verify_pin_direct: bool
    modify_pin_direct: bool
    abort: bool
    get_key: bool
    write_display: bool
    set_spe_message: bool
    timeout2: bool
    list_supported_languages: bool
    number_message_fix: bool
    ppdu_over_xfr_block: bool
    ppdu_over_escape: bool
    version: int
    min_pin_size: int
    max_pin_size: int
    firewall: bool
    #: SW1 SW2 the reader answers for a firewalled command (only with ``firewall``).
    firewalled_sw: tuple[int, int] | None
    raw: bytes

    @property
    def lcd_layout(self) -> tuple[int, int] | None:
        """(lines, characters per line), or None without a display."""
        if not self.lcd_lines or not self.lcd_chars:
            return None
        return self.lcd_lines, self.lcd_chars


def _bit(byte: int, n: int) -> bool:
    return bool(byte >> n & 1)


def parse_firmware_features(data: bytes) -> FirmwareFeatures:
    """Decode a GET_FIRMWARE_FEATURES answer; ProtocolError unless exactly 21 bytes."""
    data = bytes(data)
    if len(data) != FIRMWARE_FEATURES_LENGTH:
        raise ProtocolError(
            f"GET_FIRMWARE_FEATURES answer is {len(data)} bytes, expected "
            f"{FIRMWARE_FEATURES_LENGTH}"
        )
    pcsc, more, flags = data[4], data[5], data[8]
    firewall = _bit(data[15], 0)
    return FirmwareFeatures(
        lcd_lines=data[0],
        lcd_chars=data[1],
        lcd_scrolling=_bit(data[2], 0),
        entry_validation_condition=data[3],
        verify_pin_start=_bit(pcsc, 0),
        verify_pin_finish=_bit(pcsc, 1),
        modify_pin_start=_bit(pcsc, 2),
        modify_pin_finish=_bit(pcsc, 3),
        get_key_pressed=_bit(pcsc, 4),
        verify_pin_direct=_bit(pcsc, 5),
        modify_pin_direct=_bit(pcsc, 6),
        abort=_bit(pcsc, 7),
        get_key=_bit(more, 0),
        write_display=_bit(more, 1),
        set_spe_message=_bit(more, 2),
        timeout2=_bit(flags, 0),
        list_supported_languages=_bit(flags, 1),
        number_message_fix=_bit(flags, 2),
        ppdu_over_xfr_block=_bit(flags, 3),
        ppdu_over_escape=_bit(flags, 4),
        version=data[12],
        min_pin_size=data[13],
        max_pin_size=data[14],
        firewall=firewall,
        firewalled_sw=(data[16], data[17]) if firewall and data[16] and data[17] else None,
        raw=data,
    )


def _unanswered(exc: CCIDError) -> str:
    if isinstance(exc, ReaderTimeoutError):
        return "no answer"
    return str(exc)


class PinpadDisplayStrings(Quirk):
    id = "gemalto-pinpad-strings"
    description = (
        "pinpad keeps its display prompts in RAM: load them with an escape after open "
        "(optional: some firmware never answers)"
    )

    def after_open(self, ctx: QuirkContext) -> None:
        try:
            ctx.escape(build_display_strings_escape(), ESCAPE_TIMEOUT)
        except ReaderError as exc:
            ctx.warn(
                f"{ctx.reader_name}: loading the pinpad display prompts failed "
                f"({_unanswered(exc)}); the reader keeps its built-in prompts"
            )


class GemaltoFirmwareFeatures(Quirk):
    id = "gemalto-firmware-features"
    description = (
        "read PIN sizes, display and PIN-entry features with the GET_FIRMWARE_FEATURES "
        "escape when the firmware has it; result in state['gemalto.firmware_features']"
    )
    state_key = "gemalto.firmware_features"

    def after_open(self, ctx: QuirkContext) -> None:
        try:
            answer = ctx.escape(GET_FIRMWARE_FEATURES, ESCAPE_TIMEOUT)
            features = parse_firmware_features(answer)
        except ReaderError as exc:
            # Many Gemalto readers lack the command: only a timeout deserves a warning.
            if isinstance(exc, ReaderTimeoutError):
                ctx.warn(
                    f"{ctx.reader_name}: GET_FIRMWARE_FEATURES escape not answered; "
                    "going on without the firmware features"
                )
            return
        ctx.state[self.state_key] = features


class EMVToISOMode(Quirk):
    id = "gemalto-emv-to-iso-mode"
    description = (
        "power-on fails with bError 0xBB (protocol error in EMV mode): switch the reader "
        "to ISO mode by escape and retry once"
    )

    def retry_power_on(self, ctx: QuirkContext, bError: int) -> bool:
        if bError != BERROR_EMV_PROTOCOL:
            return False
        try:
            ctx.escape(SET_ISO_MODE, ESCAPE_TIMEOUT)
        except ReaderError as exc:
            ctx.warn(f"{ctx.reader_name}: switching to ISO mode failed ({_unanswered(exc)})")
            return False
        return True


class GemCoreSecondarySlotRates(Quirk):
    id = "gemcore-secondary-slot-rates"
    description = (
        "GemCore POS Pro / SIM Pro (firmware < 2.00): the secondary slots support only "
        "10753, 21505, 43011 and 125000 bps"
    )

    def adjust_data_rates(self, rates: tuple[int, ...], *, slot: int = 0) -> tuple[int, ...]:
        return GEMCORE_SECONDARY_RATES if slot > 0 else rates

    def max_data_rate(self, default: int, *, slot: int = 0) -> int:
        return GEMCORE_SECONDARY_RATES[-1] if slot > 0 else default


#: On-board key generation on the eToken Fusion takes minutes; 5 minutes more than the ATR's.
FUSION_EXTRA_TIME = 300.0


class FusionKeyGenerationTime(Quirk):
    id = "thales-fusion-obkg-time"
    description = (
        "Thales eToken Fusion NFC: on-board key generation outlasts the T=1 waiting time; "
        "5 minutes are added to the card timeout"
    )

    def extra_card_time(self, atr: bytes) -> float:
        return FUSION_EXTRA_TIME


register(PinpadDisplayStrings())
register(GemaltoFirmwareFeatures())
register(EMVToISOMode())
register(GemCoreSecondarySlotRates())
register(FusionKeyGenerationTime())
