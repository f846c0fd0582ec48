"""Ready-made virtual readers, built from the real descriptors of the libccid corpus.

The descriptor facts are embedded here (the corpus is not installed with the package);
``tests/test_virtual_corpus.py`` checks that each one equals its dump in
``libccid_reader_descriptors.json``.

    backend = preset("gemalto-pc-twin")   # VirtualBackend, one reader, a default card in it
    reader = preset_reader("ct700", card=None)
"""

from __future__ import annotations

from typing import Any

from ccid.constants import MessageType
from ccid.errors import UsageError
from ccid.testing.backend import VirtualBackend, VirtualDevice
from ccid.testing.faults import NoAnswer
from ccid.testing.iccd import IccdReader, is_iccd_dump
from ccid.testing.reader import VirtualReader

__all__ = ["CT700_ESCAPE_FIRMWARE", "CT700_ESCAPE_L10N", "ICCD_PRESETS", "PRESETS", "preset",
           "preset_dump", "preset_reader"]

#: One line per preset: what kind of reader it is.
PRESETS: dict[str, str] = {
    "gemalto-pc-twin": "Gemalto GemPC Twin 08E6:3437: TPDU level, T=0/T=1, host does PPS",
    "ct700": "Gemalto CT700 / GemPC Pinpad 08E6:3478: TPDU pinpad whose escapes never answer",
    "short-apdu": "ACS ACR3901U ICC 072F:B000: short APDU level",
    "extended-apdu": "Circle CCR7115 ICC 31AA:7001: extended APDU level, 272-byte messages",
    "two-slot": "Gemalto Hybrid 08E6:5743: 2 slots, TPDU T=0, one busy slot at a time",
    "two-slot-concurrent": "SpringCard SpringCore 1C34:6012: 2 slots, extended APDU, 5 busy",
    "no-interrupt": "Canokey 20A0:42D4: extended APDU token without interrupt endpoint",
    "iccd-token": "Feitian ePass2003Auto 096E:080A: ICCD token (dwFeatures 0x800), bulk",
}

#: ICCD tokens driven over the control pipe (``ccid.testing.iccd``), by name: a bulk
#: CCID link cannot talk to them, so they are listed apart from ``PRESETS``.
ICCD_PRESETS: dict[str, str] = {
    "iccd-a": "BIFIT iBank2Key 23A0:0002: ICCD version A, control pipe only, T=0",
    "iccd-a-tpdu": "ActivCard USB Reader V2 09C3:0008: ICCD version A with bulk endpoints "
                   "(driven over control, as libccid does), T=0/T=1, firmware 2.02 (bogus)",
    "iccd-b": "Aktiv Rutoken Magistra 0A89:0060: ICCD version B, control pipe only, T=1",
    "iccd-b-t0": "KEB KONA USB SmartCard 04CC:5072: ICCD version B, T=0, interrupt endpoint",
}

#: The CT700's localisation-strings escape (it never answers it).
CT700_ESCAPE_L10N = bytes.fromhex("B2A0004D4C")
#: GET_FIRMWARE_FEATURES (never answered either).
CT700_ESCAPE_FIRMWARE = b"\x6a"

_DEFAULT: Any = object()

_DUMPS: dict[str, dict[str, Any]] = {
    "gemalto-pc-twin": {
        "file": "GemPCTwin.txt", "idVendor": 0x08E6, "idProduct": 0x3437, "bcdDevice": 0x0100,
        "iManufacturer": "Gemplus", "iProduct": "USB SmartCard Reader", "bLength": 54,
        "bDescriptorType": 33, "bcdCCID": 0x0100, "bMaxSlotIndex": 0, "bVoltageSupport": 7,
        "dwProtocols": 3, "dwDefaultClock": 4000, "dwMaximumClock": 4000, "bNumClockSupported": 0,
        "dwDataRate": 10752, "dwMaxDataRate": 344086, "bNumDataRatesSupported": 0,
        "dwMaxIFSD": 254, "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x00010230,
        "dwMaxCCIDMessageLength": 271, "bClassGetResponse": 0, "bClassEnvelope": 0,
        "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1,
        "data_rates_bps": [
            10753, 14337, 15625, 17204, 20833, 21505, 23438, 25806, 28674, 31250, 32258, 34409,
            39063, 41667, 43011, 46875, 52083, 53763, 57348, 62500, 64516, 68817, 71685, 78125,
            83333, 86022, 93750, 104167, 107527, 114695, 125000, 129032, 143369, 156250, 166667,
            172043, 215054, 229391, 250000, 344086,
        ],
        "clock_frequencies_khz": [4000], "notes": ["Can't get iInterface string"],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 3, "bInterfaceClass": 11,
            "bInterfaceSubClass": 0, "bInterfaceProtocol": 0,
        },
    },
    "ct700": {
        "file": "GemPCPinpad.txt", "idVendor": 0x08E6, "idProduct": 0x3478, "bcdDevice": 0x0100,
        "iManufacturer": "Gemplus", "iProduct": "USB GemPCPinpad SmartCard Reader",
        "iInterface": "0", "bLength": 54, "bDescriptorType": 33, "bcdCCID": 0x0100,
        "bMaxSlotIndex": 0, "bVoltageSupport": 7, "dwProtocols": 3, "dwDefaultClock": 4000,
        "dwMaximumClock": 4000, "bNumClockSupported": 0, "dwDataRate": 10752,
        "dwMaxDataRate": 500000, "bNumDataRatesSupported": 0, "dwMaxIFSD": 254,
        "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x00010230,
        "dwMaxCCIDMessageLength": 271, "bClassGetResponse": 0, "bClassEnvelope": 0,
        "wLcdLayout": 0, "bPINSupport": 3, "bMaxCCIDBusySlots": 1,
        "data_rates_bps": [
            10753, 14337, 15625, 17204, 20833, 21505, 23438, 25806, 28674, 31250, 32258, 34409,
            39063, 41667, 43011, 46875, 52083, 53763, 57348, 62500, 64516, 68817, 71685, 78125,
            83333, 86022, 93750, 104167, 107527, 114695, 125000, 129032, 143369, 156250, 166667,
            172043, 215054, 229391, 250000, 344086, 500000,
        ],
        "clock_frequencies_khz": [4000], "notes": [],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 3, "bInterfaceClass": 11,
            "bInterfaceSubClass": 0, "bInterfaceProtocol": 0,
        },
    },
    "short-apdu": {
        "file": "ACS_ACR3901U_ICC_Reader.txt", "idVendor": 0x072F, "idProduct": 0xB000,
        "bcdDevice": 0x0132, "iManufacturer": "ACS", "iProduct": "ACR3901U ICC Reader",
        "iInterface": "ACR3901U ICC Reader", "bLength": 54, "bDescriptorType": 33,
        "bcdCCID": 0x0110, "bMaxSlotIndex": 0, "bVoltageSupport": 7, "dwProtocols": 3,
        "dwDefaultClock": 4800, "dwMaximumClock": 4800, "bNumClockSupported": 0,
        "dwDataRate": 12903, "dwMaxDataRate": 600000, "bNumDataRatesSupported": 0,
        "dwMaxIFSD": 247, "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x000200BA,
        "dwMaxCCIDMessageLength": 271, "bClassGetResponse": 0, "bClassEnvelope": 0,
        "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1, "data_rates_bps": [],
        "clock_frequencies_khz": [],
        "data_rates_request_error": "Resource temporarily unavailable",
        "clock_request_error": "Resource temporarily unavailable", "notes": [],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 3, "bInterfaceClass": 11,
            "bInterfaceSubClass": 0, "bInterfaceProtocol": 0,
        },
    },
    "extended-apdu": {
        "file": "Circle_CCR7115_ICC.txt", "idVendor": 0x31AA, "idProduct": 0x7001,
        "bcdDevice": 0x0120, "iManufacturer": "Circle", "iProduct": "CCR7115 ICC", "bLength": 54,
        "bDescriptorType": 33, "bcdCCID": 0x0110, "bMaxSlotIndex": 0, "bVoltageSupport": 7,
        "dwProtocols": 3, "dwDefaultClock": 4000, "dwMaximumClock": 12000,
        "bNumClockSupported": 3, "dwDataRate": 10753, "dwMaxDataRate": 688172,
        "bNumDataRatesSupported": 95, "dwMaxIFSD": 254, "dwSynchProtocols": 7, "dwMechanical": 0,
        "dwFeatures": 0x000404BE, "dwMaxCCIDMessageLength": 272, "bClassGetResponse": 255,
        "bClassEnvelope": 255, "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1,
        "data_rates_bps": [
            1953, 2151, 2604, 2688, 3584, 3906, 4301, 4688, 5208, 5376, 5859, 6250, 6452, 7169,
            7813, 8065, 8602, 9375, 10417, 10753, 11719, 12500, 12903, 14337, 15625, 16129, 17204,
            18750, 20833, 21505, 23438, 25000, 25806, 28674, 31250, 32258, 34409, 37500, 39063,
            41667, 43011, 46875, 50000, 51613, 52083, 53764, 56250, 57348, 62500, 64516, 68817,
            70313, 71685, 75000, 77419, 78125, 83333, 86022, 93750, 96774, 100000, 103226, 104167,
            107527, 112500, 114695, 117188, 125000, 129032, 137634, 143369, 150000, 156250,
            161290, 166667, 172043, 187500, 206452, 215054, 229391, 250000, 258065, 275269,
            300000, 333333, 344086, 375000, 400000, 412903, 458781, 500000, 516129, 550538,
            600000, 688172,
        ],
        "clock_frequencies_khz": [4000, 4800, 12000],
        "notes": ["Can't get iInterface string: LIBUSB_ERROR_INVALID_PARAM"],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 3, "bInterfaceClass": 11,
            "bInterfaceSubClass": 0, "bInterfaceProtocol": 0,
        },
    },
    "two-slot": {
        "file": "Gemalto_HybridSmartcardReader.txt", "idVendor": 0x08E6, "idProduct": 0x5743,
        "bcdDevice": 0x0100, "iManufacturer": "Gemalto", "iProduct": "Hybrid Smartcard Reader",
        "iInterface": "?", "bLength": 54, "bDescriptorType": 33, "bcdCCID": 0x0110,
        "bMaxSlotIndex": 1, "bVoltageSupport": 2, "dwProtocols": 1, "dwDefaultClock": 3686,
        "dwMaximumClock": 3686, "bNumClockSupported": 0, "dwDataRate": 9910,
        "dwMaxDataRate": 9910, "bNumDataRatesSupported": 0, "dwMaxIFSD": 0, "dwSynchProtocols": 0,
        "dwMechanical": 0, "dwFeatures": 0x00010070, "dwMaxCCIDMessageLength": 271,
        "bClassGetResponse": 0, "bClassEnvelope": 0, "wLcdLayout": 0, "bPINSupport": 0,
        "bMaxCCIDBusySlots": 1, "data_rates_bps": [], "clock_frequencies_khz": [],
        "data_rates_request_error": "Broken pipe", "clock_request_error": "Broken pipe",
        "notes": [],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 3, "bInterfaceClass": 11,
            "bInterfaceSubClass": 0, "bInterfaceProtocol": 0,
        },
    },
    "two-slot-concurrent": {
        "file": "SpringCard_SpringCore_6012.txt", "idVendor": 0x1C34, "idProduct": 0x6012,
        "bcdDevice": 0x0108, "iManufacturer": "SpringCard", "iProduct": "SpringCore",
        "iInterface": "CCID", "bLength": 54, "bDescriptorType": 33, "bcdCCID": 0x0110,
        "bMaxSlotIndex": 1, "bVoltageSupport": 7, "dwProtocols": 3, "dwDefaultClock": 4000,
        "dwMaximumClock": 4000, "bNumClockSupported": 0, "dwDataRate": 10752,
        "dwMaxDataRate": 200080, "bNumDataRatesSupported": 0, "dwMaxIFSD": 254,
        "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x0004047E,
        "dwMaxCCIDMessageLength": 65554, "bClassGetResponse": 255, "bClassEnvelope": 255,
        "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 5, "data_rates_bps": [],
        "clock_frequencies_khz": [],
        "data_rates_request_error": "Resource temporarily unavailable",
        "clock_request_error": "Resource temporarily unavailable", "notes": [],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 3, "bInterfaceClass": 11,
            "bInterfaceSubClass": 0, "bInterfaceProtocol": 0,
        },
    },
    "no-interrupt": {
        "file": "Canokeys_Canokey.txt", "idVendor": 0x20A0, "idProduct": 0x42D4,
        "bcdDevice": 0x0100, "iManufacturer": "Canokeys", "iProduct": "Canokey",
        "iInterface": "OpenPGP PIV OATH", "bLength": 54, "bDescriptorType": 33, "bcdCCID": 0x0110,
        "bMaxSlotIndex": 0, "bVoltageSupport": 7, "dwProtocols": 2, "dwDefaultClock": 4000,
        "dwMaximumClock": 4000, "bNumClockSupported": 0, "dwDataRate": 307200,
        "dwMaxDataRate": 307200, "bNumDataRatesSupported": 0, "dwMaxIFSD": 1342,
        "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x000400FE,
        "dwMaxCCIDMessageLength": 1352, "bClassGetResponse": 255, "bClassEnvelope": 255,
        "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1, "data_rates_bps": [],
        "clock_frequencies_khz": [], "data_rates_request_error": "LIBUSB_ERROR_PIPE",
        "clock_request_error": "LIBUSB_ERROR_PIPE", "notes": [],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 2, "bAlternateSetting": 0,
            "bNumEndpoints": 2, "bInterfaceClass": 11,
            "bInterfaceSubClass": 0, "bInterfaceProtocol": 0,
        },
    },
    "iccd-token": {
        "file": "FT_ePass2003Auto.txt", "idVendor": 0x096E, "idProduct": 0x080A,
        "bcdDevice": 0x2200, "iManufacturer": "FT", "iProduct": "ePass2003Auto", "bLength": 54,
        "bDescriptorType": 33, "bcdCCID": 0x0110, "bMaxSlotIndex": 0, "bVoltageSupport": 1,
        "dwProtocols": 2, "dwDefaultClock": 3580, "dwMaximumClock": 3580, "bNumClockSupported": 0,
        "dwDataRate": 9600, "dwMaxDataRate": 9600, "bNumDataRatesSupported": 0, "dwMaxIFSD": 2080,
        "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x00040840,
        "dwMaxCCIDMessageLength": 2102, "bClassGetResponse": 255, "bClassEnvelope": 255,
        "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1, "data_rates_bps": [],
        "clock_frequencies_khz": [],
        "data_rates_request_error": "Resource temporarily unavailable",
        "clock_request_error": "Resource temporarily unavailable",
        "notes": ["Can't get iInterface string"],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 1, "bAlternateSetting": 0,
            "bNumEndpoints": 3, "bInterfaceClass": 11,
            "bInterfaceSubClass": 0, "bInterfaceProtocol": 0,
        },
    },
}


# ICCD tokens (control pipe), from their corpus dumps.
_DUMPS.update({
    "iccd-a": {
        "file": "BIFIT_iBank2key.txt", "idVendor": 0x23A0, "idProduct": 0x0002,
        "bcdDevice": 0x0100, "iManufacturer": "BIFIT", "iProduct": "iBank2Key", "bLength": 54,
        "bDescriptorType": 33, "bcdCCID": 0x0110, "bMaxSlotIndex": 0, "bVoltageSupport": 1,
        "dwProtocols": 1, "dwDefaultClock": 3580, "dwMaximumClock": 3580, "bNumClockSupported": 0,
        "dwDataRate": 9600, "dwMaxDataRate": 9600, "bNumDataRatesSupported": 0, "dwMaxIFSD": 64,
        "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x00000840,
        "dwMaxCCIDMessageLength": 271, "bClassGetResponse": 255, "bClassEnvelope": 255,
        "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1, "data_rates_bps": [],
        "clock_frequencies_khz": [], "data_rates_request_error": "Success",
        "notes": ["wrong size for GET CLOCK FREQUENCIES: 1"],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 0, "bInterfaceClass": 11, "bInterfaceSubClass": 0,
            "bInterfaceProtocol": 1,
        },
    },
    "iccd-a-tpdu": {
        "file": "ActivCardV2.txt", "idVendor": 0x09C3, "idProduct": 0x0008, "bcdDevice": 0x0202,
        "iManufacturer": "ActivCard", "iProduct": "ActivCard USB Reader V2", "bLength": 54,
        "bDescriptorType": 33, "bcdCCID": 0x0100, "bMaxSlotIndex": 0, "bVoltageSupport": 1,
        "dwProtocols": 3, "dwDefaultClock": 4000, "dwMaximumClock": 4000, "bNumClockSupported": 0,
        "dwDataRate": 9600, "dwMaxDataRate": 115200, "bNumDataRatesSupported": 0,
        "dwMaxIFSD": 252, "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x000100BA,
        "dwMaxCCIDMessageLength": 263, "bClassGetResponse": 255, "bClassEnvelope": 255,
        "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1, "data_rates_bps": [],
        "clock_frequencies_khz": [], "data_rates_request_error": "", "clock_request_error": "",
        "notes": ["UNSUPPORTED SubClass", "UNSUPPORTED InterfaceProtocol"],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 3, "bInterfaceClass": 11, "bInterfaceSubClass": 1,
            "bInterfaceProtocol": 1,
        },
    },
    "iccd-b": {
        "file": "Aktiv_Rutoken_Magistra.txt", "idVendor": 0x0A89, "idProduct": 0x0060,
        "bcdDevice": 0x0102, "iManufacturer": "Aktiv Co., ProgramPark",
        "iProduct": "Rutoken Magistra", "bLength": 54, "bDescriptorType": 33, "bcdCCID": 0x0100,
        "bMaxSlotIndex": 0, "bVoltageSupport": 1, "dwProtocols": 2, "dwDefaultClock": 3580,
        "dwMaximumClock": 3580, "bNumClockSupported": 0, "dwDataRate": 9600,
        "dwMaxDataRate": 9600, "bNumDataRatesSupported": 0, "dwMaxIFSD": 254,
        "dwSynchProtocols": 0, "dwMechanical": 0, "dwFeatures": 0x00020840,
        "dwMaxCCIDMessageLength": 261, "bClassGetResponse": 255, "bClassEnvelope": 255,
        "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1, "data_rates_bps": [],
        "clock_frequencies_khz": [], "data_rates_request_error": "Broken pipe",
        "clock_request_error": "Broken pipe", "notes": [],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 0, "bInterfaceClass": 11, "bInterfaceSubClass": 0,
            "bInterfaceProtocol": 2,
        },
    },
    "iccd-b-t0": {
        "file": "KEBTechnology_KONA_USB_SmartCard.txt", "idVendor": 0x04CC, "idProduct": 0x5072,
        "bcdDevice": 0x0100, "iManufacturer": "KEBTechnology", "iProduct": "KONA USB SmartCard",
        "bLength": 54, "bDescriptorType": 33, "bcdCCID": 0x0110, "bMaxSlotIndex": 0,
        "bVoltageSupport": 1, "dwProtocols": 1, "dwDefaultClock": 3580, "dwMaximumClock": 3580,
        "bNumClockSupported": 0, "dwDataRate": 9600, "dwMaxDataRate": 9600,
        "bNumDataRatesSupported": 0, "dwMaxIFSD": 254, "dwSynchProtocols": 0, "dwMechanical": 0,
        "dwFeatures": 0x00000840, "dwMaxCCIDMessageLength": 261, "bClassGetResponse": 255,
        "bClassEnvelope": 255, "wLcdLayout": 0, "bPINSupport": 0, "bMaxCCIDBusySlots": 1,
        "data_rates_bps": [], "clock_frequencies_khz": [],
        "data_rates_request_error": "Broken pipe", "clock_request_error": "Broken pipe",
        "notes": [],
        "interface": {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": 0, "bAlternateSetting": 0,
            "bNumEndpoints": 1, "bInterfaceClass": 11, "bInterfaceSubClass": 0,
            "bInterfaceProtocol": 2,
        },
    },
})


def preset_dump(name: str) -> dict[str, Any]:
    """The embedded corpus facts of a preset (a copy)."""
    try:
        dump = _DUMPS[name]
    except KeyError:
        raise UsageError(f"no preset {name!r}; known: "
                         f"{', '.join([*PRESETS, *ICCD_PRESETS])}") from None
    return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
            for k, v in dump.items()}


def preset_reader(name: str, card: Any = _DEFAULT, **overrides: Any) -> VirtualReader:
    """A preset reader; ``card``: inserted in slot 0 (default: a ``VirtualCard()``;
    None: empty). ``overrides`` go to ``VirtualReader`` (serial, escape_handler, …)."""
    dump = preset_dump(name)
    kind = IccdReader if is_iccd_dump(dump) else VirtualReader
    reader = kind.from_descriptor_dump({"file": dump["file"], "interfaces": [dump]},
                                       **overrides)
    reader.name = name
    if name == "ct700":
        escape = frozenset({MessageType.PC_to_RDR_Escape})
        reader.inject(
            NoAnswer(commands=escape, prefix=CT700_ESCAPE_L10N, count=None, wedge=True),
            NoAnswer(commands=escape, prefix=CT700_ESCAPE_FIRMWARE, count=None, wedge=True),
        )
    if card is _DEFAULT:
        from ccid.testing.card import VirtualCard

        card = VirtualCard()
    if card is not None:
        reader.insert(card, 0)
    return reader


def preset(name: str, card: Any = _DEFAULT, *, backend: VirtualBackend | None = None,
           **overrides: Any) -> VirtualBackend:
    """A backend (new, or ``backend``) with the preset reader plugged in."""
    reader = preset_reader(name, card, **overrides)
    backend = backend if backend is not None else VirtualBackend()
    backend.plug(VirtualDevice(reader))
    return backend
