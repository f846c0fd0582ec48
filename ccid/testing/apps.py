"""Card applications for virtual cards: APDUs in, responses (data + SW1 SW2) out.

An application is any ``Callable[[bytes], bytes]`` or an ``Application`` subclass. Shipped:

- ``FileSystem``: an ISO/IEC 7816-4 subset — SELECT (by FID P1=00, EF under the current DF
  P1=02, by DF name P1=04), READ BINARY (B0, offset or short EF id), UPDATE BINARY (D6),
  GET CHALLENGE (84), VERIFY (20) with a retry counter (63Cx, then 6983 when blocked).
- ``Echo``: ``CLA 80 INS 10`` returns the command data (up to 65,535 bytes with extended
  lengths, cut to Ne when Le is present); ``CLA 80 INS 12`` returns Ne bytes 00 01 02 … (a
  response-only throughput test).
- ``TestApplet``: a selectable applet (AID A0 00 00 00 18 FF) whose ``CLA 80 INS 34`` returns
  the bytes 00 .. P2-1, as the test applet of the El Capitan reset report does; unknown when
  not selected (the card answers 69 85 after a reset deselected it).
- ``CardOS``: dispatches to several applications; SELECT by AID picks a selectable one.

Status words used: 9000 ok, 6282 end of file before Ne bytes, 63Cx wrong PIN (x tries left),
6700 wrong length, 6982 security status not satisfied, 6983 PIN blocked, 6985 conditions of use
not satisfied (applet not selected), 6986 no current EF, 6A82 file not found, 6A84 not enough
memory, 6A86 wrong P1-P2, 6A88 reference data not found, 6B00 wrong offset, 6D00 unknown INS,
6E00 unknown CLA, 6F00 application raised (a virtual card never lets an exception out).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ccid.errors import ProtocolError

__all__ = [
    "APDU",
    "DF",
    "EF",
    "PIN",
    "APDUError",
    "AppLike",
    "Application",
    "CallableApp",
    "CardOS",
    "Echo",
    "FileSystem",
    "TestApplet",
    "as_application",
    "default_card_os",
    "default_tree",
    "parse_apdu",
    "response",
]

SW_OK = 0x9000


def response(data: bytes = b"", sw: int = SW_OK) -> bytes:
    """Response APDU: data followed by SW1 SW2."""
    return bytes(data) + sw.to_bytes(2, "big")


class APDUError(ProtocolError):
    """A command APDU that does not follow ISO/IEC 7816-4 5.1; ``sw`` is what a card answers."""

    def __init__(self, message: str, sw: int = 0x6700) -> None:
        self.sw = sw
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class APDU:
    """A parsed command APDU. ``ne`` is None when Le is absent (256 / 65,536 for Le = 0)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int | None = None
    extended: bool = False

    @property
    def case(self) -> int:
        """ISO case 1..4."""
        return 1 + (self.ne is not None) + 2 * bool(self.data)

    @property
    def p1p2(self) -> int:
        return (self.p1 << 8) | self.p2

    def to_bytes(self) -> bytes:
        """Encode again: short form when everything fits and ``extended`` is False."""
        head = bytes((self.cla, self.ins, self.p1, self.p2))
        ext = self.extended or len(self.data) > 255 or (self.ne or 0) > 256
        if not ext:
            lc = bytes((len(self.data),)) + self.data if self.data else b""
            le = b"" if self.ne is None else bytes((self.ne & 0xFF,))
            return head + lc + le
        lc = b"\x00" + len(self.data).to_bytes(2, "big") + self.data if self.data else b""
        le = b"" if self.ne is None else (self.ne & 0xFFFF).to_bytes(2, "big")
        if le and not lc:
            le = b"\x00" + le
        return head + lc + le


def parse_apdu(apdu: bytes) -> APDU:
    """Parse a short or extended command APDU (cases 1-4); APDUError when malformed."""
    n = len(apdu)
    if n < 4:
        raise APDUError(f"APDU of {n} bytes is shorter than its 4-byte header")
    cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
    if n == 4:
        return APDU(cla, ins, p1, p2)
    if n == 5:
        return APDU(cla, ins, p1, p2, ne=apdu[4] or 256)
    b4 = apdu[4]
    if b4:  # short Lc
        if n == 5 + b4:
            return APDU(cla, ins, p1, p2, bytes(apdu[5:]))
        if n == 6 + b4:
            return APDU(cla, ins, p1, p2, bytes(apdu[5:-1]), ne=apdu[-1] or 256)
        raise APDUError(f"short Lc {b4} does not match an APDU of {n} bytes")
    if n == 7:
        return APDU(cla, ins, p1, p2, ne=int.from_bytes(apdu[5:7], "big") or 65536,
                    extended=True)
    if n < 7:
        raise APDUError(f"APDU of {n} bytes with byte 5 = 00 is neither short nor extended")
    lc = int.from_bytes(apdu[5:7], "big")
    if lc == 0:
        raise APDUError("extended Lc of 0")
    if n == 7 + lc:
        return APDU(cla, ins, p1, p2, bytes(apdu[7:]), extended=True)
    if n == 9 + lc:
        return APDU(cla, ins, p1, p2, bytes(apdu[7:-2]),
                    ne=int.from_bytes(apdu[-2:], "big") or 65536, extended=True)
    raise APDUError(f"extended Lc {lc} does not match an APDU of {n} bytes")


Handler = Callable[[Any, APDU], bytes]


class Application:
    """Base of card applications. Override ``handle`` (or fill ``commands``), maybe ``reset``.

    ``aid`` makes the application selectable by SELECT by DF name inside a ``CardOS``; without
    one it is always reachable. ``commands`` maps INS to a method taking the parsed APDU.
    """

    aid: bytes | None = None
    commands: ClassVar[dict[int, Handler]] = {}
    #: ``process`` returns without waiting for anything (the built-in applications). The
    #: virtual reader runs a card's application inside the host's bulk-OUT write, so only
    #: then may it tell ``ccid.aio`` that such a write will not block the event loop.
    #: False by default: an application of yours may wait, e.g. for a test's signal.
    instant: bool = False

    def process(self, apdu: bytes) -> bytes:
        """Whole APDU in, response out; malformed APDUs get their SW, never an exception."""
        try:
            cmd = parse_apdu(apdu)
        except APDUError as exc:
            return response(sw=exc.sw)
        return self.handle(cmd)

    def handle(self, cmd: APDU) -> bytes:
        """Dispatch through ``commands``; 6D00 for an unknown INS."""
        method = self.commands.get(cmd.ins)
        if method is None:
            return response(sw=0x6D00)
        return method(self, cmd)

    def select(self, cmd: APDU) -> bytes:
        """Called when a CardOS selects this application by its AID."""
        return response()

    def deselect(self) -> None:
        """Called when another application is selected or the card is reset."""

    def reset(self) -> None:
        """Power-on (cold or warm): drop volatile state. Persistent state survives."""


AppLike = Application | Callable[[bytes], bytes]


class CallableApp(Application):
    """Wraps a plain ``Callable[[bytes], bytes]``."""

    def __init__(self, func: Callable[[bytes], bytes]) -> None:
        self.func = func

    def process(self, apdu: bytes) -> bytes:
        return self.func(apdu)

    def handle(self, cmd: APDU) -> bytes:
        return self.func(cmd.to_bytes())


def as_application(app: AppLike) -> Application:
    """An Application for an Application or a callable."""
    return app if isinstance(app, Application) else CallableApp(app)


# --- echo ----------------------------------------------------------------------------------


class Echo(Application):
    """``80 10``: echo the command data; ``80 12``: Ne bytes counting 00 01 02 …"""

    instant = True

    def handle(self, cmd: APDU) -> bytes:
        if cmd.cla != 0x80 or cmd.ins not in (0x10, 0x12):
            return response(sw=0x6D00 if cmd.cla == 0x80 else 0x6E00)
        if cmd.ins == 0x10:
            data = cmd.data if cmd.ne is None else cmd.data[: cmd.ne]
            return response(data)
        if cmd.ne is None:
            return response(sw=0x6700)
        n = min(cmd.ne, 65535)
        return response(bytes(i & 0xFF for i in range(n)))


# --- the El Capitan test applet ------------------------------------------------------------


class TestApplet(Application):
    """Selectable applet: ``80 34 00 P2`` returns the bytes 00 .. P2-1."""

    instant = True

    __test__ = False  # not a pytest class
    aid = bytes.fromhex("A00000001" "8FF")

    def __init__(self, aid: bytes | None = None) -> None:
        if aid is not None:
            self.aid = aid
        self.selected = False

    def select(self, cmd: APDU) -> bytes:
        self.selected = True
        return response()

    def deselect(self) -> None:
        self.selected = False

    def reset(self) -> None:
        self.selected = False

    def handle(self, cmd: APDU) -> bytes:
        if (cmd.cla, cmd.ins, cmd.p1) == (0x00, 0xA4, 0x04):
            if cmd.data and self.aid is not None and self.aid.startswith(cmd.data):
                return self.select(cmd)
            self.selected = False
            return response(sw=0x6A82)
        if not self.selected:
            return response(sw=0x6985)
        if cmd.cla & 0x80 == 0:
            return response(sw=0x6E00)
        if cmd.ins != 0x34:
            return response(sw=0x6D00)
        return response(bytes(range(cmd.p2)))


# --- ISO 7816-4 file system ----------------------------------------------------------------


@dataclass(slots=True)
class EF:
    """A transparent elementary file; ``read_pin`` / ``update_pin`` name the PIN guarding it."""

    fid: int
    data: bytearray
    sfi: int | None = None
    read_pin: int | None = None
    update_pin: int | None = None


@dataclass(slots=True)
class DF:
    """A dedicated file (the MF is the DF 3F00)."""

    fid: int
    children: list[EF | DF] = field(default_factory=list)
    name: bytes | None = None
    parent: DF | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for child in self.children:
            if isinstance(child, DF):
                child.parent = self

    def walk(self) -> list[DF]:
        out = [self]
        for child in self.children:
            if isinstance(child, DF):
                out.extend(child.walk())
        return out


@dataclass(slots=True)
class PIN:
    """A PIN: value, retry limit and counter (persistent: survives resets)."""

    value: bytes
    limit: int = 3
    tries: int = -1

    def __post_init__(self) -> None:
        if self.tries < 0:
            self.tries = self.limit


_TIMES_7 = bytes(i * 7 & 0xFF for i in range(256))


def default_tree() -> DF:
    """MF with EF.DIR 2F00, a free EF 0001 (256 bytes), a PIN-guarded EF 0002, and
    DF 5000 named F0 63 63 69 64 00 01 holding EF 5001 (4,096 bytes, SFI 1)."""
    return DF(0x3F00, [
        EF(0x2F00, bytearray(bytes.fromhex("61094F07F063636964000150")), sfi=0x1E),
        EF(0x0001, bytearray(range(256)), sfi=2),
        EF(0x0002, bytearray(b"secret" + bytes(26)), read_pin=0x80, update_pin=0x80),
        DF(0x5000, [EF(0x5001, bytearray(_TIMES_7 * 16), sfi=1)],
           name=bytes.fromhex("F063636964" "0001")),
    ])


class FileSystem(Application):
    """SELECT, READ/UPDATE BINARY, GET CHALLENGE and VERIFY over a DF tree."""

    instant = True

    def __init__(self, root: DF | None = None, pins: dict[int, PIN] | None = None,
                 seed: int | None = None) -> None:
        self.root = root if root is not None else default_tree()
        self.pins = pins if pins is not None else {0x80: PIN(b"1234")}
        self.rng = random.Random(seed)
        self.current_df = self.root
        self.current_ef: EF | None = None
        self.verified: set[int] = set()
        self.last_challenge = b""

    def reset(self) -> None:
        self.current_df = self.root
        self.current_ef = None
        self.verified.clear()

    def _fcp(self, node: EF | DF) -> bytes:
        body = b"\x82\x01" + (b"\x38" if isinstance(node, DF) else b"\x01")
        body += b"\x83\x02" + node.fid.to_bytes(2, "big")
        if isinstance(node, EF):
            body += b"\x80\x02" + len(node.data).to_bytes(2, "big")
        elif node.name:
            body += b"\x84" + bytes((len(node.name),)) + node.name
        return b"\x62" + bytes((len(body),)) + body

    def _select_node(self, cmd: APDU, node: EF | DF) -> bytes:
        if isinstance(node, DF):
            self.current_df, self.current_ef = node, None
        else:
            self.current_ef = node
        if cmd.p2 & 0x0C == 0x0C:
            return response()
        fcp = self._fcp(node)
        return response(fcp if cmd.ne is None else fcp[: cmd.ne])

    def _select(self, cmd: APDU) -> bytes:
        if cmd.p1 == 0x04:
            for df in self.root.walk():
                if df.name and cmd.data and df.name.startswith(cmd.data):
                    return self._select_node(cmd, df)
            return response(sw=0x6A82)
        if cmd.p1 not in (0x00, 0x02):
            return response(sw=0x6A86)
        if cmd.p1 == 0x00 and (not cmd.data or cmd.data == b"\x3f\x00"):
            return self._select_node(cmd, self.root)
        if len(cmd.data) != 2:
            return response(sw=0x6700)
        fid = int.from_bytes(cmd.data, "big")
        places: list[EF | DF] = list(self.current_df.children)
        if cmd.p1 == 0x00:
            places.append(self.current_df)
            if self.current_df.parent is not None:
                places += [self.current_df.parent, *self.current_df.parent.children]
        for node in places:
            if node.fid == fid and (cmd.p1 == 0x00 or isinstance(node, EF)):
                return self._select_node(cmd, node)
        return response(sw=0x6A82)

    def _target(self, cmd: APDU) -> tuple[EF | None, int, int]:
        """(EF, offset, SW) for READ/UPDATE BINARY; SW 0 when fine."""
        if cmd.p1 & 0x80:
            if cmd.p1 & 0x60:
                return None, 0, 0x6A86
            sfi = cmd.p1 & 0x1F
            for node in self.current_df.children:
                if isinstance(node, EF) and node.sfi == sfi:
                    self.current_ef = node
                    return node, cmd.p2, 0
            return None, 0, 0x6A82
        if self.current_ef is None:
            return None, 0, 0x6986
        return self.current_ef, cmd.p1p2 & 0x7FFF, 0

    def _read_binary(self, cmd: APDU) -> bytes:
        ef, offset, sw = self._target(cmd)
        if ef is None:
            return response(sw=sw)
        if ef.read_pin is not None and ef.read_pin not in self.verified:
            return response(sw=0x6982)
        if offset > len(ef.data):
            return response(sw=0x6B00)
        want = 256 if cmd.ne is None else cmd.ne
        data = bytes(ef.data[offset : offset + want])
        short = len(data) < want and cmd.ne not in (None, 256, 65536)
        return response(data, 0x6282 if short else SW_OK)

    def _update_binary(self, cmd: APDU) -> bytes:
        ef, offset, sw = self._target(cmd)
        if ef is None:
            return response(sw=sw)
        if ef.update_pin is not None and ef.update_pin not in self.verified:
            return response(sw=0x6982)
        if not cmd.data:
            return response(sw=0x6700)
        if offset > len(ef.data):
            return response(sw=0x6B00)
        if offset + len(cmd.data) > len(ef.data):
            return response(sw=0x6A84)
        ef.data[offset : offset + len(cmd.data)] = cmd.data
        return response()

    def _get_challenge(self, cmd: APDU) -> bytes:
        if cmd.p1p2 != 0:
            return response(sw=0x6A86)
        if cmd.ne is None or cmd.data:
            return response(sw=0x6700)
        self.last_challenge = self.rng.randbytes(min(cmd.ne, 256))
        return response(self.last_challenge)

    def _verify(self, cmd: APDU) -> bytes:
        pin = self.pins.get(cmd.p2)
        if cmd.p1 not in (0x00, 0xFF):
            return response(sw=0x6A86)
        if pin is None:
            return response(sw=0x6A88)
        if cmd.p1 == 0xFF:  # reset the security status of this reference
            self.verified.discard(cmd.p2)
            return response()
        if pin.tries == 0:
            return response(sw=0x6983)
        if not cmd.data:  # ask for the status
            return response(sw=SW_OK if cmd.p2 in self.verified else 0x63C0 | pin.tries)
        if cmd.data == pin.value:
            pin.tries = pin.limit
            self.verified.add(cmd.p2)
            return response()
        pin.tries -= 1
        self.verified.discard(cmd.p2)
        return response(sw=0x6983 if pin.tries == 0 else 0x63C0 | pin.tries)

    commands: ClassVar[dict[int, Handler]] = {
        0xA4: _select,
        0xB0: _read_binary,
        0xD6: _update_binary,
        0x84: _get_challenge,
        0x20: _verify,
    }

    def handle(self, cmd: APDU) -> bytes:
        if cmd.cla & 0x80:
            return response(sw=0x6E00)
        return super().handle(cmd)


# --- composite -----------------------------------------------------------------------------


class CardOS(Application):
    """Several applications on one card.

    SELECT by DF name (00 A4 04 ..) whose data prefixes an application's ``aid`` selects that
    application (the previous one is deselected). Other commands go to the selected application;
    when it answers 6D00 / 6E00, or when none is selected, they go to the always-present ones
    (no ``aid``) in order, the first answer other than 6D00 / 6E00 winning. A proprietary-class
    command (CLA bit 8) nobody knows gets ``unselected_sw`` (6985 by default: the applet it was
    meant for is not selected). Power-on deselects everything.
    """

    def __init__(self, apps: list[AppLike], unselected_sw: int = 0x6985) -> None:
        self.apps = [as_application(a) for a in apps]
        self.instant = all(app.instant for app in self.apps)
        self.unselected_sw = unselected_sw
        self.selected: Application | None = None

    def reset(self) -> None:
        self.selected = None
        for app in self.apps:
            app.reset()

    def handle(self, cmd: APDU) -> bytes:
        if cmd.cla & 0x80 == 0 and cmd.ins == 0xA4 and cmd.p1 == 0x04 and cmd.data:
            for app in self.apps:
                if app.aid is not None and app.aid.startswith(cmd.data):
                    if self.selected is not None and self.selected is not app:
                        self.selected.deselect()
                    self.selected = app
                    return app.select(cmd)
        unknown = (0x6D00, 0x6E00)
        if self.selected is not None:
            answer = self.selected.handle(cmd)
            if int.from_bytes(answer[-2:], "big") not in unknown:
                return answer
        for app in self.apps:
            if app.aid is None:
                answer = app.handle(cmd)
                if len(answer) < 2 or int.from_bytes(answer[-2:], "big") not in unknown:
                    return answer
        if cmd.cla & 0x80:
            return response(sw=self.unselected_sw)
        return response(sw=0x6E00 if cmd.cla not in (0x00, 0x0C) else 0x6D00)


def default_card_os(seed: int | None = None) -> CardOS:
    """File system (PIN 80 = "1234", 3 tries), Echo, and the TestApplet."""
    return CardOS([FileSystem(seed=seed), Echo(), TestApplet()])
