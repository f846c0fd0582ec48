"""A virtual reader from every interface dump of the corpus, and the presets against it."""

from __future__ import annotations

from typing import Any

import pytest
import usb.core
import usb.util

from ccid.constants import MessageType as M
from ccid.descriptor import locate_ccid_descriptor, parse_ccid_descriptor
from ccid.framing import build_frame
from ccid.testing.backend import VirtualBackend, VirtualDevice
from ccid.testing.presets import PRESETS, preset_dump

pytestmark = pytest.mark.timeout(120)


def test_every_corpus_interface_enumerates_and_answers(descriptor_corpus: dict[str, Any]
                                                         ) -> None:
    entries = descriptor_corpus["readers"]
    backend = VirtualBackend()
    devices = [backend.plug(VirtualDevice.from_descriptor_dump(e)) for e in entries]
    found = {(d.bus, d.address): d for d in usb.core.find(find_all=True, backend=backend)}
    assert len(found) == len(entries)
    checked = 0
    for entry, device in zip(entries, devices):
        dev = found[(device.bus, device.address)]
        assert (dev.idVendor, dev.idProduct) == (entry["idVendor"], entry["idProduct"])
        interfaces = list(dev.get_active_configuration())
        assert len(interfaces) == len(entry["interfaces"])
        for dump, intf, reader in zip(entry["interfaces"], interfaces, device.readers):
            assert intf.bInterfaceClass == dump["interface"]["bInterfaceClass"]
            assert intf.bNumEndpoints == dump["interface"]["bNumEndpoints"]
            raw = locate_ccid_descriptor(bytes(intf.extra_descriptors),
                                         interface_class=intf.bInterfaceClass)
            parsed = parse_ccid_descriptor(raw).as_dict()
            for name, value in parsed.items():
                assert value == dump[name] & 0xFFFFFFFF, (entry["file"], name)
            if reader.has_bulk:
                usb.util.claim_interface(dev, intf.bInterfaceNumber)
                eps = {usb.util.endpoint_direction(e.bEndpointAddress): e for e in intf
                       if usb.util.endpoint_type(e.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK}
                eps[usb.util.ENDPOINT_OUT].write(build_frame(M.PC_to_RDR_GetSlotStatus, 0, 9))
                reply = bytes(eps[usb.util.ENDPOINT_IN].read(64, 1000))
            else:
                # ICCD control-transfer transports are not emulated: ask the model directly.
                (reply,) = reader.exchange(build_frame(M.PC_to_RDR_GetSlotStatus, 0, 9))
            assert reply == build_frame(0x81, 0, 9, 0x02, 0, 0), entry["file"]
            checked += 1
        usb.util.dispose_resources(dev)
    assert checked == descriptor_corpus["interface_dumps_total"] == 773


def test_multi_interface_device_exposes_every_ccid_interface(
        descriptor_corpus: dict[str, Any]) -> None:
    entry = next(e for e in descriptor_corpus["readers"] if len(e["interfaces"]) == 5)
    backend = VirtualBackend(VirtualDevice.from_descriptor_dump(entry))
    dev = usb.core.find(backend=backend)
    numbers = [i.bInterfaceNumber for i in dev.get_active_configuration()]
    assert numbers == [d["interface"]["bInterfaceNumber"] for d in entry["interfaces"]]
    for number in numbers:
        usb.util.claim_interface(dev, number)


def test_dump_answers_for_data_rates(descriptor_corpus: dict[str, Any]) -> None:
    by_file = {e["file"]: e for e in descriptor_corpus["readers"]}
    odd = next(e for e in descriptor_corpus["readers"]
               if "wrong size for GET_DATA_RATES: 1" in e["interfaces"][0]["notes"])
    backend = VirtualBackend(VirtualDevice.from_descriptor_dump(odd),
                             VirtualDevice.from_descriptor_dump(by_file["GemPCTwin.txt"]))
    first, twin = list(usb.core.find(find_all=True, backend=backend))
    assert len(bytes(first.ctrl_transfer(0xA1, 0x03, 0, 0, 256))) == 1
    rates = bytes(twin.ctrl_transfer(0xA1, 0x03, 0, 0, 1024))
    assert len(rates) == 4 * len(by_file["GemPCTwin.txt"]["data_rates_bps"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_embedded_preset_equals_its_corpus_dump(name: str, descriptor_corpus: dict[str, Any]
                                                ) -> None:
    embedded = preset_dump(name)
    entry = next(e for e in descriptor_corpus["readers"] if e["file"] == embedded["file"])
    dump = entry["interfaces"][0]
    for key, value in embedded.items():
        if key != "file":
            assert dump[key] == value, (name, key)
    for key in ("idVendor", "idProduct", "dwFeatures", "data_rates_bps", "interface"):
        assert key in embedded


def test_reader_from_database_matches_the_dump(descriptor_corpus: dict[str, Any]) -> None:
    from ccid.testing.reader import VirtualReader

    dump = next(e for e in descriptor_corpus["readers"] if e["file"] == "GemPCPinpad.txt")
    reader = VirtualReader.from_database("08E6:3478")
    for name, value in reader.descriptor.as_dict().items():
        assert value == dump["interfaces"][0][name], name
    assert list(reader.data_rates) == dump["interfaces"][0]["data_rates_bps"]
