"""Sans-IO side of the pcsc-lite protocol: cut a client's byte stream into requests, and
negotiate the protocol version.

``RequestParser.feed(bytes)`` then ``next_request()`` until it returns None; anything a
well-behaved libpcsclite never sends (an unknown command, a body size that is not the
command's struct size, a send buffer beyond the protocol's maximum, a command newer than
the negotiated version) raises :class:`ProtocolViolation`, after which the server closes
that client only, as pcscd does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ccid.serve import wire

__all__ = ["ProtocolViolation", "Request", "RequestParser", "negotiate"]


class ProtocolViolation(Exception):
    """The client broke the protocol: close its connection."""


@dataclass(frozen=True, slots=True)
class Request:
    command: int
    fields: tuple[Any, ...]
    data: bytes = b""


def negotiate(major: int, minor: int) -> tuple[int, int, int]:
    """(major, minor, rv) to answer a client's CMD_VERSION.

    A served version is answered with itself, so a 2.4.0 client (4:5, no fallback) and a
    2.5 client (4:6) each get their own. Anything else is refused with
    SCARD_E_SERVICE_STOPPED and the newest version we speak: a newer client that knows how
    to step back retries with it (what pcscd does).
    """
    if major == wire.PROTOCOL_MAJOR and minor in wire.PROTOCOL_MINORS:
        return major, minor, wire.SUCCESS
    return (wire.PROTOCOL_MAJOR, wire.PROTOCOL_MINOR_NEWEST,
            wire.RV["SCARD_E_SERVICE_STOPPED"])


#: Commands taking a trailing send buffer, and the index of cbSendLength in their struct.
_TRAILING: dict[int, int] = {wire.Command.TRANSMIT: 3, wire.Command.CONTROL: 2}


class RequestParser:
    """Incremental request parser for one client connection."""

    def __init__(self) -> None:
        self._buf = bytearray()
        #: Negotiated minor version (None until CMD_VERSION succeeded; SCardCancel comes
        #: on a connection that never negotiates).
        self.minor: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def needed(self) -> int:
        """Bytes still missing for the request being received (at least 1)."""
        buf = self._buf
        if len(buf) < wire.HEADER.size:
            return wire.HEADER.size - len(buf)
        size, command = (int(x) for x in wire.HEADER.unpack_from(buf))
        total = wire.HEADER.size + size
        if len(buf) >= total and command in _TRAILING:
            body = wire.REQUEST[command]
            assert body is not None
            count = int(body.unpack_from(buf, wire.HEADER.size)[_TRAILING[command]])
            total += count
        return max(1, int(total) - len(buf))

    def next_request(self) -> Request | None:
        buf = self._buf
        if len(buf) < wire.HEADER.size:
            return None
        size, command = wire.HEADER.unpack_from(buf)
        if command not in wire.REQUEST:
            raise ProtocolViolation(f"unknown command {command}")
        since = wire.SINCE_MINOR.get(command)
        if since is not None and (self.minor is None or self.minor < since):
            raise ProtocolViolation(
                f"{wire.Command(command).name} needs protocol 4:{since}, the client "
                f"negotiated {'nothing' if self.minor is None else f'4:{self.minor}'}")
        body = wire.REQUEST[command]
        expected = 0 if body is None else body.size
        if size != expected:
            raise ProtocolViolation(f"{wire.Command(command).name} body of {size} bytes, "
                                    f"expected {expected}")
        end = wire.HEADER.size + size
        if len(buf) < end:
            return None
        fields: tuple[Any, ...] = () if body is None else body.unpack_from(buf,
                                                                               wire.HEADER.size)
        data = b""
        if command in _TRAILING:
            count = int(fields[_TRAILING[command]])
            if count > wire.MAX_BUFFER_SIZE_EXTENDED:
                raise ProtocolViolation(f"{wire.Command(command).name} send buffer of "
                                        f"{count} bytes (maximum "
                                        f"{wire.MAX_BUFFER_SIZE_EXTENDED})")
            if len(buf) < end + count:
                return None
            data = bytes(buf[end:end + count])
            end += count
        if command in (wire.Command.GET_ATTRIB, wire.Command.SET_ATTRIB) and \
                int(fields[3]) > wire.MAX_BUFFER_SIZE:
            raise ProtocolViolation(f"attribute length {fields[3]} > {wire.MAX_BUFFER_SIZE}")
        del buf[:end]
        return Request(command, fields, data)
