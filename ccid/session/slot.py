"""One slot's state, and every way it changes, in one place.

A slot knows whether a card is there (``presence``: unknown until the first status, then
absent or present), whether it is powered, and two counters: ``presence_count`` moves
when a card arrives or leaves, ``generation`` also when the card is reset or powered off.
A ``Card`` handle remembers both when it connects and refuses to send anything once they
moved (:meth:`SlotState.check_handle`).

What can happen to a slot is a :class:`Change`; :data:`TABLE` says, for each (presence,
change), the next presence, which card events it raises and what becomes of the card's
session (kept, forgotten, or marked gone while an exchange still holds it). Nothing else
writes these fields: the session, the event monitor and sharing all go through
:meth:`SlotState.apply`, and events leave through an :class:`EventSink`.

Sans-IO: no USB here, only locks (the state is shared between the caller's threads and the
event monitor's).
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias

from ccid.errors import CardError, CardRemovedError, CardResetError
from ccid.protocol.atr import ATR
from ccid.protocol.negotiate import CARD_WAIT_FLOOR

__all__ = [
    "EVENT_QUEUE_MAX",
    "TABLE",
    "CardInserted",
    "CardRemoved",
    "Change",
    "EventQueue",
    "EventSink",
    "HardwareErrorEvent",
    "Presence",
    "ReaderRemoved",
    "SlotEvent",
    "SlotInfo",
    "SlotState",
    "Step",
    "seen",
]


# --- the events a slot raises ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardInserted:
    """A card arrived in ``slot`` of ``reader`` (or was there when the reader opened: that
    one is reported first). ``atr``: the card's ATR when the reader has read it (the card
    was powered by this process), else None; read it with ``reader.connect()``."""

    reader: str
    slot: int
    atr: bytes | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CardRemoved:
    """The card left ``slot`` of ``reader``."""

    reader: str
    slot: int


@dataclass(frozen=True, slots=True)
class HardwareErrorEvent:
    """RDR_to_PC_HardwareError: the reader reported ``code`` (e.g. overcurrent) for a slot."""

    reader: str
    slot: int
    seq: int
    code: int


@dataclass(frozen=True, slots=True)
class ReaderRemoved:
    """The reader was unplugged (or disappeared from enumeration)."""

    reader: str


SlotEvent: TypeAlias = CardInserted | CardRemoved | HardwareErrorEvent | ReaderRemoved


class EventSink(Protocol):
    """Where slot events go (a ``queue.Queue`` is one; an asyncio front door brings its
    own). Called without any slot lock held."""

    def put(self, event: Any, /) -> None:
        """Take one event; must not block for long."""


#: Most events a reader keeps for ``wait_for_event``; see :class:`EventQueue`.
EVENT_QUEUE_MAX: Final = 256

log = logging.getLogger("ccid.events")


class EventQueue:
    """A reader's pending events, bounded, for a user who may never read them (the
    blocking front door's :class:`EventSink`).

    What is dropped, so that memory stays bounded whatever the reader sends:

    * a HardwareErrorEvent equal (slot and code) to one still waiting is coalesced into it
      (``coalesced`` counts them);
    * a slot event (inserted / removed) identical to the last one still waiting for that
      slot is coalesced;
    * when ``limit`` events wait, the oldest one goes (``dropped`` counts them; logged
      once): a slow reader of events sees the latest state, not the whole history.
      ReaderRemoved is always queued.
    """

    def __init__(self, limit: int = EVENT_QUEUE_MAX) -> None:
        self.limit = max(1, limit)
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self.dropped = 0
        self.coalesced = 0
        self._wakes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Any, /) -> None:
        with self._cond:
            items = self._items
            if isinstance(event, HardwareErrorEvent):
                if any(isinstance(e, HardwareErrorEvent) and e.slot == event.slot and
                       e.code == event.code for e in items):
                    self.coalesced += 1
                    return
            elif isinstance(event, CardInserted | CardRemoved):
                last = next((e for e in reversed(items) if
                             isinstance(e, CardInserted | CardRemoved) and
                             e.slot == event.slot), None)
                if last is not None and type(last) is type(event):
                    self.coalesced += 1
                    return
            while len(items) >= self.limit:
                items.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("%s: more than %d events waiting; the oldest are dropped",
                                getattr(event, "reader", "?"), self.limit)
            items.append(event)
            self._cond.notify()

    def wake(self) -> None:
        """End every :meth:`get` in progress with None (the reader is closing): waiters
        block without polling, so closing must tell them."""
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """The oldest event, or None when none comes within ``timeout`` seconds (or
        :meth:`wake` was called)."""
        with self._cond:
            if not self._items:
                wakes = self._wakes
                self._cond.wait_for(lambda: bool(self._items) or self._wakes != wakes,
                                    timeout)
            if not self._items:
                return None
            return self._items.popleft()


# --- the table -------------------------------------------------------------------------


class Presence(enum.Enum):
    """What the session knows about the card's presence."""

    UNKNOWN = "unknown"
    ABSENT = "absent"
    PRESENT = "present"


class Change(enum.Enum):
    """Something that happened to a slot."""

    #: First status after open (or after a reader reset): no event, the card is unpowered
    #: for us even when someone else left it active (the next connect resets it).
    LEARNED_ABSENT = "learned absent"
    LEARNED_PRESENT = "learned present"
    #: The reader reports the slot empty / occupied / occupied by a card that may have
    #: been swapped since we last knew (see :func:`seen`).
    SEEN_ABSENT = "seen absent"
    SEEN_PRESENT = "seen present"
    SEEN_SWAPPED = "seen swapped"
    #: A power-on starts: handles of the old power cycle are stale, whatever comes next.
    POWERING = "powering"
    #: IccPowerOn returned an ATR.
    POWERED = "powered"
    #: IccPowerOn found no card (no event: the monitor reports the removal).
    NO_CARD = "no card"
    #: The card lost power: power-off, a failed set-up, the reader says it is inactive.
    UNPOWERED = "unpowered"
    #: The reader was unplugged: every handle is stale, both counters move.
    READER_GONE = "reader gone"
    #: The reader was reset: forget everything, the next status is learned afresh.
    FORGOTTEN = "forgotten"


class Session(enum.Enum):
    """What becomes of the card's session (protocol state, ATR, waits)."""

    KEEP = "keep"
    #: Forget it now (the caller holds the slot's I/O lock, or nobody uses the card).
    FORGET = "forget"
    #: Seen from another thread: forget it unless an exchange holds the slot, in which
    #: case only mark the slot unpowered; the exchange's end forgets the rest.
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Step:
    """One row of :data:`TABLE`."""

    presence: Presence | None  # None: unchanged
    #: ``"removed"`` / ``"inserted"`` (a card event each) or ``"gone"`` (none), in
    #: order; each moves both counters.
    events: tuple[str, ...] = ()
    session: Session = Session.KEEP
    #: Extra generation bump (the card was reset or lost power, not moved).
    bump: bool = False
    powered: bool | None = None  # None: unchanged


_U, _A, _P = Presence.UNKNOWN, Presence.ABSENT, Presence.PRESENT
_GONE = Session.GONE
_IN: Final = ("inserted",)
_OUT: Final = ("removed",)

#: (presence before, change) -> step. Changes whose step does not depend on the presence
#: before are in ``_ANY``.
TABLE: Final[dict[tuple[Presence, Change], Step]] = {
    (_U, Change.SEEN_ABSENT): Step(_A),
    (_U, Change.SEEN_PRESENT): Step(_P, _IN, _GONE),
    (_U, Change.SEEN_SWAPPED): Step(_P, _IN, _GONE),
    (_A, Change.SEEN_ABSENT): Step(_A),
    (_A, Change.SEEN_PRESENT): Step(_P, _IN, _GONE),
    (_A, Change.SEEN_SWAPPED): Step(_P, _IN, _GONE),
    (_P, Change.SEEN_ABSENT): Step(_A, _OUT, _GONE),
    (_P, Change.SEEN_PRESENT): Step(_P),
    (_P, Change.SEEN_SWAPPED): Step(_P, ("removed", "inserted"), _GONE),
    (_U, Change.LEARNED_ABSENT): Step(_A, powered=False),
    (_U, Change.LEARNED_PRESENT): Step(_P, powered=False),
    (_A, Change.LEARNED_ABSENT): Step(_A),
    (_P, Change.LEARNED_PRESENT): Step(_P),
}

#: Rows that do not depend on the presence before.
_ANY: Final[dict[Change, Step]] = {
    Change.POWERING: Step(None, session=Session.FORGET, bump=True),
    Change.POWERED: Step(_P, powered=True),
    Change.NO_CARD: Step(_A),
    Change.UNPOWERED: Step(None, session=Session.FORGET, bump=True),
    Change.READER_GONE: Step(None, ("gone",), _GONE),
    Change.FORGOTTEN: Step(_U, session=Session.FORGET),
}


def step_for(presence: Presence, change: Change) -> Step:
    """The row of the table for ``change`` in ``presence``."""
    row = _ANY.get(change) or TABLE.get((presence, change))
    if row is None:  # LEARNED_* once the presence is known: SlotState.learn reports it
        raise ValueError(f"no transition for {change.value!r} while {presence.value}")
    return row


def seen(present: bool, changed: bool, *, interrupt: bool, powered: bool) -> Change:
    """The change a status report means: ``present`` with ``changed`` is a possible swap
    when it comes from the interrupt endpoint, or when polling finds a card we powered
    inactive (it went through a removal we did not see)."""
    if not present:
        return Change.SEEN_ABSENT
    if changed and (interrupt or powered):
        return Change.SEEN_SWAPPED
    return Change.SEEN_PRESENT


# --- the state -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """What the reader knows about one slot (no I/O; see ``Reader.slot_status``)."""

    index: int
    name: str
    card_present: bool | None
    powered: bool
    atr: bytes | None
    protocol: str | None
    generation: int


class SlotState:
    """One slot. ``lock`` serialises the card's I/O (an APDU, a transaction, a power
    cycle); ``state_lock`` guards the fields and is never held across I/O."""

    __slots__ = (
        "apdu_chain", "atr", "exclusive", "fi_di", "generation", "handles", "index", "lock",
        "name", "owner", "owner_thread", "powered", "presence", "presence_count", "protocol",
        "state_lock", "t1", "t1_chain", "wait",
    )

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.lock = threading.RLock()
        self.state_lock = threading.Lock()
        self.presence = Presence.UNKNOWN
        self.presence_count = 0
        self.generation = 0
        self.powered = False
        self.atr: ATR | None = None
        self.protocol: int | None = None
        self.fi_di: int | None = None
        self.wait = CARD_WAIT_FLOOR
        #: The card's T=1 protocol object, and the framing.Chain objects kept with their
        #: buffers (T=1 for the card, extended-APDU chaining for the reader).
        self.t1: Any = None
        self.t1_chain: Any = None
        self.apdu_chain: Any = None
        #: Card handles connected to this slot, and the exclusive one.
        self.handles: weakref.WeakSet[Any] = weakref.WeakSet()
        self.exclusive: Any = None
        #: The handle holding a ``transaction()`` and its thread (None: no transaction).
        self.owner: Any = None
        self.owner_thread = 0

    @property
    def present(self) -> bool | None:
        """True / False, None before the first status."""
        if self.presence is Presence.UNKNOWN:
            return None
        return self.presence is Presence.PRESENT

    # -- transitions -------------------------------------------------------------------

    def apply(self, change: Change, reader: str, sink: EventSink | None = None) -> Step:
        """Make ``change`` (takes ``state_lock``), then send its events to ``sink``."""
        with self.state_lock:
            row = step_for(self.presence, change)
            events: list[SlotEvent] = []
            for what in row.events:
                self.presence_count += 1
                self.generation += 1
                if what == "inserted":
                    events.append(CardInserted(reader, self.index))
                elif what == "removed":
                    events.append(CardRemoved(reader, self.index))
            if row.bump:
                self.generation += 1
            if row.session is Session.FORGET:
                self._forget()
            elif row.session is Session.GONE:
                self._gone()
            if row.powered is not None:
                self.powered = row.powered
            if row.presence is not None:
                self.presence = row.presence
        if sink is not None:
            for event in events:
                sink.put(event)
        return row

    def report(self, present: bool, changed: bool, *, interrupt: bool, reader: str,
               sink: EventSink | None) -> None:
        """A status seen by the monitor or by a command: apply what it means."""
        self.apply(seen(present, changed, interrupt=interrupt, powered=self.powered),
                   reader, sink)

    def learn(self, present: bool, *, interrupt: bool, reader: str,
              sink: EventSink | None) -> None:
        """A GetSlotStatus answer of ours: learned when unknown, else a report of a change
        when it differs from what we knew."""
        if self.presence is Presence.UNKNOWN or present == self.present:
            self.apply(Change.LEARNED_PRESENT if present else Change.LEARNED_ABSENT, reader)
        else:
            self.report(present, True, interrupt=interrupt, reader=reader, sink=sink)

    def negotiated(self, atr: ATR, protocol: int, fi_di: int | None, wait: float) -> None:
        """The card is set up: its ATR, protocol, Fi/Di and the host's wait."""
        with self.state_lock:
            self.atr = atr
            self.protocol = protocol
            self.fi_di = fi_di
            self.wait = wait

    def exchange_ended(self) -> None:
        """After an exchange (slot I/O lock held): finish a teardown another thread could
        only mark (``Session.GONE``)."""
        with self.state_lock:
            if not self.powered:
                self._forget()

    def _forget(self) -> None:
        self.powered = False
        self.atr = None
        self.protocol = None
        self.fi_di = None
        self.t1 = None
        self.t1_chain = None
        self.wait = CARD_WAIT_FLOOR

    def _gone(self) -> None:
        # An exchange holding ``lock`` keeps the protocol state it is using (T=1 sequence
        # numbers, protocol, waits): tearing it down under it would crash it. The slot is
        # marked unpowered; the generation makes every handle refuse, and the next
        # power-on starts afresh.
        if self.lock.acquire(blocking=False):
            try:
                self._forget()
            finally:
                self.lock.release()
        else:
            self.powered = False

    # -- what handles see --------------------------------------------------------------

    def mark(self) -> tuple[int, int]:
        """(generation, presence_count) a handle connecting now remembers."""
        with self.state_lock:
            return self.generation, self.presence_count

    def staleness(self, generation: int, presence_count: int, reader: str,
                  why: str = "") -> CardError | None:
        """The error for a handle that remembered (``generation``, ``presence_count``):
        CardRemovedError when a card left or came since, CardResetError when the card was
        reset or powered off, None while the handle is current. ``why``: what the caller
        saw that made it look (added to the message)."""
        if self.presence_count != presence_count:
            text = (f"the card was removed during the exchange{why}; connect again" if why
                    else "the card was removed since this handle connected; connect again")
            return CardRemovedError(text, reader=reader, slot=self.index)
        if self.generation != generation:
            text = (f"the card was reset or powered off during the exchange{why}; call "
                    "reconnect()" if why else
                    "the card was reset or powered off by someone else; call reconnect()")
            return CardResetError(text, reader=reader, slot=self.index)
        return None

    def check_handle(self, generation: int, presence_count: int, reader: str) -> None:
        """Raise the :meth:`staleness` error of a handle, before anything is sent."""
        error = self.staleness(generation, presence_count, reader)
        if error is not None:
            raise error

    def info(self) -> SlotInfo:
        """A snapshot (no I/O). A card that left while an exchange held the slot keeps
        its session until that exchange ends: not shown as current."""
        with self.state_lock:
            atr = self.atr if self.powered else None
            protocol = self.protocol if self.powered else None
            return SlotInfo(self.index, self.name, self.present, self.powered,
                            None if atr is None else bytes(atr),
                            None if protocol is None else f"T={protocol}", self.generation)
