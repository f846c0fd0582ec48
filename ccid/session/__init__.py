"""The session core: what every front door (blocking, asyncio, the PC/SC server) drives.

Rooms: ``slot`` (slot state as a table, events out through a sink), ``options`` (the
checked options of an open reader); see docs/architecture.md for the whole map.
"""
