"""Reads that may time out never lose part of a frame, with libusb's transfer rules.

Through pyusb, a libusb bulk-IN transfer ends only at a short packet or a full buffer, and
one whose timeout runs out after some packets came drops them. The library waits for a reply
in short reads (so that ``Card.cancel()`` and ``close()`` are noticed), so a reply whose
packets straddle the end of such a read would lose its head. The virtual backend plays by
those rules with ``libusb_transfers=True``; the reply's packets come 70 ms apart, across the
100 ms read slices.
"""

from __future__ import annotations

import ccid
from ccid.constants import MessageType
from ccid.testing import VirtualBackend, VirtualCard
from ccid.testing.faults import Trickle
from ccid.testing.presets import preset_reader

XFR = frozenset({MessageType.PC_to_RDR_XfrBlock})


def echo(n: int) -> tuple[bytes, bytes]:
    data = bytes((i * 7 + 3) & 0xFF for i in range(n))
    return bytes([0x80, 0x10, 0x00, 0x00, n]) + data + b"\x00", data + b"\x90\x00"


def slow_packets(vr: ccid.testing.VirtualReader) -> None:
    vr.inject(Trickle(commands=XFR, count=None, piece=vr.bulk_packet_size, interval=0.07,
                      one_transfer=True))


def test_a_reply_arriving_across_read_slices_is_whole() -> None:
    for kind, protocol in (("extended-apdu", None), ("gemalto-pc-twin", "T=1")):
        vr = preset_reader(kind, card=VirtualCard())
        backend = VirtualBackend(vr, libusb_transfers=True)
        with ccid.open_reader(backend=backend, events=False) as reader, \
                reader.connect(protocol=protocol) as card:
            apdu, answer = echo(200)
            assert card.transmit(apdu) == answer
            slow_packets(vr)
            for _ in range(3):
                assert card.transmit(apdu, timeout=10) == answer
