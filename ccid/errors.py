"""One exception tree for the whole library.

Who is at fault decides the branch: ``UsageError`` when the caller misused the API,
``ReaderError`` / ``CardError`` / ``TransportError`` when the other side misbehaved.
Every exception carries the reader name and slot when known, the CCID ``bStatus`` and
``bError`` when a reply was involved, and the PC/SC code a pcsc-lite user would have seen.
"""

from __future__ import annotations

__all__ = [
    "CCIDError",
    "CardError",
    "CardMuteError",
    "CardRemovedError",
    "CardResetError",
    "DatabaseError",
    "DescriptorError",
    "NoCardError",
    "ProtocolError",
    "ReaderError",
    "ReaderRemovedError",
    "ReaderTimeoutError",
    "SharingViolationError",
    "SlotError",
    "TransportError",
    "UnsupportedReaderError",
    "UsageError",
]


class CCIDError(Exception):
    """Base of every exception raised by ``ccid``."""

    #: PC/SC-equivalent code name (``SCARD_...``), or None where PC/SC has none.
    pcsc_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        reader: str | None = None,
        slot: int | None = None,
        pcsc_code: str | None = None,
    ) -> None:
        self.message = message
        self.reader = reader
        self.slot = slot
        if pcsc_code is not None:
            self.pcsc_code = pcsc_code
        super().__init__(message)

    def __str__(self) -> str:
        where = ""
        if self.reader is not None:
            where = f"{self.reader}"
            if self.slot is not None:
                where += f" slot {self.slot}"
            where += ": "
        elif self.slot is not None:
            where = f"slot {self.slot}: "
        code = f" [{self.pcsc_code}]" if self.pcsc_code else ""
        return f"{where}{self.message}{code}"


class UsageError(CCIDError):
    """The caller used the API wrongly (bad argument, closed handle, handle from before fork)."""

    pcsc_code = "SCARD_E_INVALID_PARAMETER"


# --- the reader misbehaved or said no -------------------------------------------------


class ReaderError(CCIDError):
    """The reader answered wrongly, not at all, or with an error."""

    pcsc_code = "SCARD_F_COMM_ERROR"


class ReaderTimeoutError(ReaderError, TimeoutError):
    """The reader did not answer within the allowed time (ABORT was attempted)."""

    pcsc_code = "SCARD_E_TIMEOUT"


class ProtocolError(ReaderError):
    """A malformed or mismatched frame, descriptor, ATR or T=1 block."""

    pcsc_code = "SCARD_F_COMM_ERROR"


class DescriptorError(ProtocolError):
    """A USB/CCID descriptor has the wrong length, type or content."""

    pcsc_code = "SCARD_E_READER_UNSUPPORTED"


class SlotError(ReaderError):
    """The reader reported a failed command (bmCommandStatus = 1) with ``bError``."""

    def __init__(
        self,
        message: str,
        *,
        bStatus: int | None = None,
        bError: int | None = None,
        reader: str | None = None,
        slot: int | None = None,
        pcsc_code: str | None = None,
    ) -> None:
        self.bStatus = bStatus
        self.bError = bError
        super().__init__(message, reader=reader, slot=slot, pcsc_code=pcsc_code)


class UnsupportedReaderError(ReaderError):
    """The reader is known to be broken (bad firmware) or cannot be driven."""

    pcsc_code = "SCARD_E_READER_UNSUPPORTED"


# --- the card --------------------------------------------------------------------------


class CardError(CCIDError):
    """The card is absent, mute, was removed or was reset."""

    pcsc_code = "SCARD_W_UNSUPPORTED_CARD"


class NoCardError(CardError):
    """No card is in the slot."""

    pcsc_code = "SCARD_E_NO_SMARTCARD"


class CardMuteError(CardError):
    """The card did not answer (no ATR, or a transmission timed out at the card)."""

    pcsc_code = "SCARD_W_UNRESPONSIVE_CARD"


class CardRemovedError(CardError):
    """The card was removed since this handle last used it."""

    pcsc_code = "SCARD_W_REMOVED_CARD"


class CardResetError(CardError):
    """The card was reset or powered off since this handle last used it."""

    pcsc_code = "SCARD_W_RESET_CARD"


# --- the USB link ----------------------------------------------------------------------


class TransportError(CCIDError):
    """The USB link failed: device gone, busy, or access denied."""

    pcsc_code = "SCARD_F_COMM_ERROR"


class ReaderRemovedError(TransportError):
    """The reader was unplugged."""

    pcsc_code = "SCARD_E_NO_READERS_AVAILABLE"


class SharingViolationError(TransportError):
    """The reader or slot is held by someone else (another handle or another process)."""

    pcsc_code = "SCARD_E_SHARING_VIOLATION"


# --- the reader database ---------------------------------------------------------------


class DatabaseError(CCIDError):
    """``readers.yaml`` (or a user database) is malformed."""

    pcsc_code: str | None = None


# --- appended by the reader-session work (issue 4) ------------------------------------


class SlotBusyError(SlotError):
    """The slot is busy with another command (bError 0xE0, CMD_SLOT_BUSY)."""

    pcsc_code = "SCARD_E_SHARING_VIOLATION"


__all__ += ["SlotBusyError"]


# --- appended by the quirks / pinpad work (issue 6) -----------------------------------


class PinCancelledError(SlotError):
    """The user pressed Cancel on the reader's pinpad (bError 0xEF, PIN_CANCELLED)."""

    pcsc_code = "SCARD_W_CANCELLED_BY_USER"


class PinTimeoutError(SlotError, TimeoutError):
    """Nobody finished typing the PIN on the pinpad in time (bError 0xF0, PIN_TIMEOUT)."""

    pcsc_code = "SCARD_E_TIMEOUT"


__all__ += ["PinCancelledError", "PinTimeoutError"]


# --- appended by the CLI / public API work (issue 12) ---------------------------------


class StatusWordError(CardError):
    """The card answered with a status word other than success (``ccid.sw.check``).

    Carries ``sw1``, ``sw2``, ``sw`` (``sw1 << 8 | sw2``) and the response ``data``.
    """

    # PC/SC reports the transmission as a success: the status word is the card's answer
    pcsc_code = None  # type: ignore[assignment]

    def __init__(
        self,
        message: str,
        *,
        sw1: int,
        sw2: int,
        data: bytes = b"",
        reader: str | None = None,
        slot: int | None = None,
    ) -> None:
        self.sw1 = sw1
        self.sw2 = sw2
        self.sw = sw1 << 8 | sw2
        self.data = data
        super().__init__(message, reader=reader, slot=slot)


__all__ += ["StatusWordError"]

# --- traces ---------------------------------------------------------------------------


class TraceFormatError(UsageError, ValueError):
    """A trace file (or trace text) is malformed, or holds nothing that is a trace.

    ``line`` is the 1-based line number of the offending record when there is one.
    """

    def __init__(self, message: str, *, line: int | None = None,
                 reader: str | None = None) -> None:
        self.line = line
        where = f"trace line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}", reader=reader)


class TraceReplayError(ReaderError):
    """A replayed trace has no recorded answer for the command the program sent."""

    pcsc_code = "SCARD_E_UNSUPPORTED_FEATURE"


__all__ += ["TraceFormatError", "TraceReplayError"]


# --- appended by the session hardening work (issues 11, 12) ---------------------------


class OperationCancelledError(CCIDError):
    """``Card.cancel()`` ended the call from another thread (the command was aborted; the
    reader and the card stay usable)."""

    pcsc_code = "SCARD_E_CANCELLED"


__all__ += ["OperationCancelledError"]

# --- the PC/SC server ----------------------------------------------------------------------


class ServerError(CCIDError):
    """``ccid serve`` cannot start: its socket is in use (pcscd or another server), its
    path cannot be made or bound, or an ``--allow-group`` names no group."""

    pcsc_code = "SCARD_E_NO_SERVICE"


__all__ += ["ServerError"]
