"""The session core: what every front door (``ccid.Reader``, ``ccid.aio``, ``ccid serve``)
drives, one room per concern.

* ``opening``: finding readers, selectors, the open-reader registry, the fork hook, quirks;
* ``options``: the checked, frozen options of an open reader;
* ``slot``: slot state as a table (presence, power, card generation) and its events;
* ``channel``: the command channel (one general path, one fast path, one live check);
* ``powerup``: power-on and the negotiation plan (``ccid.protocol.negotiate``) carried out;
* ``exchange``: the APDU-level, T=1 and T=0 exchange drivers;
* ``pinpad``: PIN entry on the reader's pinpad;
* ``monitor``: the card-event thread and the port it reports through;
* ``card``: ``Card``, the handle on one slot's card.

``docs/architecture.md`` follows one APDU through them.
"""
