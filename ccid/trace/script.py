"""A recorded conversation, indexed for answering: what trace replay plays back.

Pure data and matching; the virtual reader that plays it lives in ``ccid.testing.replay``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ccid.constants import CommandStatus
from ccid.errors import UsageError
from ccid.trace.records import DIRECTIONS, META, TraceRecord

__all__ = ["ReplayScript"]


class ReplayScript:
    """The recorded conversation of one reader, answering commands with recorded replies.

    Commands match on their bytes except bSeq (rewritten in the replies) and masked
    bytes. Each recorded exchange is used once, in recorded order (the first unused one
    that matches), so repeated commands such as GET CHALLENGE replay their own answers;
    when every match is used up the last one answers again (status polls).
    :meth:`lookup` gives None for a command the trace never saw (and lists it in
    ``unmatched``); :meth:`answer` then gives a failed SlotStatus (bError 0x00).

    Interrupt messages are kept with their place among the commands: :meth:`interrupts_due`
    gives them in recorded order as the commands recorded before them are answered.
    """

    def __init__(self, records: Iterable[TraceRecord], reader: str | None = None) -> None:
        recs = [r for r in records if r.direction in DIRECTIONS or r.direction == META]
        names = [r.reader for r in recs if r.direction == "->"]
        if reader is None:
            if not names:
                raise UsageError("the trace holds no command to replay")
            reader = names[0]
        self.reader = reader
        self.info: Mapping[str, Any] | None = None
        #: Line of the trace the reader facts (``info``) came from.
        self.info_line: int | None = None
        self.exchanges: list[tuple[TraceRecord, list[bytes]]] = []
        #: Interrupt messages in recorded order.
        self.interrupts: list[bytes] = []
        # (commands recorded before it, message): an interrupt is due once the command
        # just before it has been answered.
        self._interrupt_plan: list[tuple[int, bytes]] = []
        self._released = 0
        #: Recorded answers to class requests, by bRequest (GET_DATA_RATES, ...).
        self.control: dict[int, bytes] = {}
        open_cmds: dict[tuple[int, int], int] = {}
        last_setup: bytes | None = None
        for r in recs:
            if r.reader != reader:
                continue
            if r.direction == META:
                self.info = r.info
                self.info_line = r.line
            elif r.direction == "int<-":
                self.interrupts.append(r.data)
                self._interrupt_plan.append((len(self.exchanges), r.data))
            elif r.direction == "ctrl->":
                last_setup = r.data
            elif r.direction == "ctrl<-":
                if last_setup is not None and len(last_setup) >= 2:
                    self.control[last_setup[1]] = r.data
                last_setup = None
            elif r.direction == "->" and len(r.data) >= 10:
                open_cmds[(r.data[5], r.data[6])] = len(self.exchanges)
                self.exchanges.append((r, []))
            elif r.direction == "<-" and len(r.data) >= 10:
                index = open_cmds.get((r.data[5], r.data[6]))
                if index is not None:
                    self.exchanges[index][1].append(r.data)
                    if r.data[7] >> 6 != CommandStatus.TIME_EXTENSION:
                        del open_cmds[(r.data[5], r.data[6])]
        if not self.exchanges:
            raise UsageError(f"the trace holds no command for reader {reader!r}")
        self._used = [False] * len(self.exchanges)
        self._lock = threading.Lock()
        self._answered_upto = 0  # commands up to this index have been answered (or passed)
        self.unmatched: list[bytes] = []
        self.served = 0

    def lookup(self, command: bytes) -> list[bytes] | None:
        """The reply frames (time extensions first) for one PC_to_RDR command, or None
        when the trace holds no answer for it (the command is added to ``unmatched``)."""
        command = bytes(command)
        with self._lock:
            chosen: int | None = None
            fallback: int | None = None
            for index, (cmd, replies) in enumerate(self.exchanges):
                if replies and cmd.matches(command, ignore=(6,)):
                    if not self._used[index]:
                        chosen = index
                        break
                    fallback = index
            if chosen is None:
                chosen = fallback
            if chosen is None:
                self.unmatched.append(command)
                return None
            self._used[chosen] = True
            self._answered_upto = max(self._answered_upto, chosen + 1)
            self.served += 1
            seq = command[6]
            return [r[:6] + bytes((seq,)) + r[7:] for r in self.exchanges[chosen][1]]

    def answer(self, command: bytes) -> list[bytes]:
        """:meth:`lookup`, with a failed SlotStatus for a command the trace never saw."""
        replies = self.lookup(command)
        if replies is not None:
            return replies
        slot = command[5] if len(command) > 5 else 0
        seq = command[6] if len(command) > 6 else 0
        # failed SlotStatus, ICC present and inactive, bError 0 (command not supported)
        return [bytes((0x81, 0, 0, 0, 0, slot, seq, 0x41, 0x00, 0x00))]

    def interrupts_due(self) -> list[bytes]:
        """Interrupt messages not yet given whose preceding commands have been answered
        (those recorded before any command at the first call), in recorded order."""
        with self._lock:
            out: list[bytes] = []
            while self._released < len(self._interrupt_plan):
                after, message = self._interrupt_plan[self._released]
                if after > self._answered_upto:
                    break
                out.append(message)
                self._released += 1
            return out

    @property
    def unused(self) -> list[bytes]:
        """Recorded commands that the replay has not been asked for (yet)."""
        return [cmd.data for (cmd, _), used in zip(self.exchanges, self._used) if not used]
