"""Readable text for descriptors and ATRs, in the layout of libccid's ``parse`` tool.

Vendors already send that text to the libccid maintainer, so ``ccid parse`` prints the same
fields in the same order (the wording of the feature lines is ours), and fixes one thing:
wLcdLayout is decoded as the CCID spec says (high byte = lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ccid.constants import ExchangeLevel, Features
from ccid.descriptor import CCIDDescriptor

__all__ = ["InterfaceReport", "format_descriptor_report", "report_as_dict"]

# (bit, column mask shown as in the parse tool, text)
_FEATURE_LINES: tuple[tuple[int, str], ...] = (
    (Features.AUTO_CONF_ATR, "Automatic parameter configuration based on ATR data"),
    (Features.AUTO_ACTIVATION, "Automatic activation of ICC on inserting"),
    (Features.AUTO_VOLTAGE, "Automatic ICC voltage selection"),
    (Features.AUTO_CLOCK, "Automatic ICC clock frequency change according to parameters"),
    (Features.AUTO_BAUD, "Automatic baud rate change according to frequency and Fi, Di params"),
    (Features.AUTO_PPS_PROPRIETARY, "Automatic PPS by the CCID (active parameters)"),
    (Features.AUTO_PPS_CURRENT, "Automatic PPS by the CCID (current parameters)"),
    (Features.CLOCK_STOP, "CCID can set ICC in clock stop mode"),
    (Features.NAD_NOT_ZERO, "NAD value other than 00 accepted (T=1)"),
    (Features.AUTO_IFSD, "Automatic IFSD exchange as first exchange (T=1)"),
    (Features.ICCD_TOKEN, "ICCD token"),
    (Features.USB_WAKE_UP, "USB Wake up signaling supported on card insertion and removal"),
)

_LEVEL_TEXT = {
    ExchangeLevel.CHARACTER: "Character level exchange",
    ExchangeLevel.TPDU: "TPDU level exchange",
    ExchangeLevel.SHORT_APDU: "Short APDU level exchange",
    ExchangeLevel.EXTENDED_APDU: "Short and Extended APDU level exchange",
}


def _column(value: int) -> str:
    """The parse tool's '....10' / '..02..' / '01....' column notation of a feature bit."""
    text = f"{value:06X}"
    # show only the byte that holds the bit, dots elsewhere
    for i in (4, 2, 0):
        part = text[i : i + 2]
        if part != "00":
            return "." * i + part + "." * (4 - i)
    return "......"


@dataclass
class InterfaceReport:
    """Everything ``ccid parse`` prints for one CCID interface."""

    vid: int
    pid: int
    descriptor: CCIDDescriptor
    raw: bytes
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    interface_string: str | None = None
    bcd_device: int = 0
    interface_number: int = 0
    interface_class: int = 0x0B
    interface_subclass: int = 0
    interface_protocol: int = 0
    num_endpoints: int = 3
    data_rates: Sequence[int] | None = None
    clock_frequencies: Sequence[int] | None = None
    data_rates_error: str | None = None
    clock_error: str | None = None
    notes: list[str] = field(default_factory=list)


def _endpoints_text(n: int) -> str:
    return {
        3: "bulk-IN, bulk-OUT and Interrupt-IN",
        2: "bulk-IN, bulk-OUT",
        0: "Control only",
    }.get(n, f"{n} endpoints")


def format_descriptor_report(rep: InterfaceReport) -> str:
    """The report text, one field a line."""
    # Long on purpose: one line of code per line of the report, in the report's order.
    d = rep.descriptor
    out: list[str] = []
    add = out.append
    add(f" idVendor: 0x{rep.vid:04X}")
    add(f"  iManufacturer: {rep.manufacturer or '[none]'}")
    add(f" idProduct: 0x{rep.pid:04X}")
    add(f"  iProduct: {rep.product or '[none]'}")
    if rep.serial:
        add(f"  iSerialNumber: {rep.serial}")
    add(f" bcdDevice: {rep.bcd_device >> 8:x}.{rep.bcd_device & 0xFF:02x} (firmware release?)")
    add(" bLength: 9")
    add(" bDescriptorType: 4")
    add(f" bInterfaceNumber: {rep.interface_number}")
    add(" bAlternateSetting: 0")
    add(f" bNumEndpoints: {rep.num_endpoints}")
    add(f"  {_endpoints_text(rep.num_endpoints)}")
    if rep.interface_class == 0x0B:
        add(" bInterfaceClass: 0x0B [Chip Card Interface Device Class (CCID)]")
    else:
        add(f" bInterfaceClass: 0x{rep.interface_class:02X}")
        if rep.interface_class == 0xFF:
            add("  Class is 0xFF (proprietary)")
    add(f" bInterfaceSubClass: {rep.interface_subclass}")
    add(f" bInterfaceProtocol: {rep.interface_protocol}")
    add({
        0: "  bulk transfer, optional interrupt-IN (CCID)",
        1: "  ICCD Version A, Control transfers, (no interrupt-IN)",
        2: "  ICCD Version B, Control transfers, (optional interrupt-IN)",
    }.get(rep.interface_protocol, "  UNSUPPORTED InterfaceProtocol"))
    add(f" iInterface: {rep.interface_string or '[none]'}")
    add(" CCID Class Descriptor")
    add(f"  bLength: 0x{d.bLength:02X}")
    add(f"  bDescriptorType: 0x{d.bDescriptorType:02X}")
    add(f"  bcdCCID: {d.version}")
    add(f"  bMaxSlotIndex: 0x{d.bMaxSlotIndex:02X}")
    add(f"  bVoltageSupport: 0x{d.bVoltageSupport:02X}")
    for bit, text in ((1, "5.0V"), (2, "3.0V"), (4, "1.8V")):
        if d.bVoltageSupport & bit:
            add(f"   {text}")
    add(f"  dwProtocols: 0x{d.dwProtocols >> 16:04X} 0x{d.dwProtocols & 0xFFFF:04X}")
    if d.dwProtocols & 1:
        add("   T=0")
    if d.dwProtocols & 2:
        add("   T=1")
    add(f"  dwDefaultClock: {d.dwDefaultClock / 1000:.3f} MHz")
    add(f"  dwMaximumClock: {d.dwMaximumClock / 1000:.3f} MHz")
    _list_lines(out, "bNumClockSupported", d.bNumClockSupported, rep.clock_frequencies,
                rep.clock_error, "kHz", "GET CLOCK FREQUENCIES")
    add(f"  dwDataRate: {d.dwDataRate} bps")
    add(f"  dwMaxDataRate: {d.dwMaxDataRate} bps")
    _list_lines(out, "bNumDataRatesSupported", d.bNumDataRatesSupported, rep.data_rates,
                rep.data_rates_error, "bps", "GET DATA RATES")
    add(f"  dwMaxIFSD: {d.dwMaxIFSD}")
    add(f"  dwSynchProtocols: 0x{d.dwSynchProtocols:08X}")
    add(f"  dwMechanical: 0x{d.dwMechanical:08X}")
    if d.dwMechanical == 0:
        add("   No special characteristics")
    for bit, text in ((1, "Card accept mechanism"), (2, "Card ejection mechanism"),
                      (4, "Card capture mechanism"), (8, "Card lock/unlock mechanism")):
        if d.dwMechanical & bit:
            add(f"   {text}")
    add(f"  dwFeatures: 0x{d.dwFeatures:08X}")
    for bit, text in _FEATURE_LINES:
        if d.dwFeatures & bit:
            add(f"   {_column(bit)} {text}")
    level = d.exchange_level
    if level != ExchangeLevel.CHARACTER:
        add(f"   {_column(level)} {_LEVEL_TEXT[level]}")
    else:
        add(f"   {'00....'} {_LEVEL_TEXT[level]}")
    add(f"  dwMaxCCIDMessageLength: {d.dwMaxCCIDMessageLength} bytes")
    add(f"  bClassGetResponse: 0x{d.bClassGetResponse:02X}")
    if d.bClassGetResponse == 0xFF:
        add("   echoes the APDU class")
    add(f"  bClassEnvelope: 0x{d.bClassEnvelope:02X}")
    if d.bClassEnvelope == 0xFF:
        add("   echoes the APDU class")
    add(f"  wLcdLayout: 0x{d.wLcdLayout:04X}")
    if d.lcd_layout:
        lines, chars = d.lcd_layout
        add(f"   {lines} lines")
        add(f"   {chars} characters per line")
    add(f"  bPINSupport: 0x{d.bPINSupport:02X}")
    if d.bPINSupport & 1:
        add("   PIN Verification supported")
    if d.bPINSupport & 2:
        add("   PIN Modification supported")
    add(f"  bMaxCCIDBusySlots: {d.bMaxCCIDBusySlots}")
    add(f"  raw: {rep.raw.hex(' ').upper()}")
    for note in rep.notes:
        add(f" note: {note}")
    return "\n".join(out) + "\n"


def _list_lines(out: list[str], name: str, declared: int, values: Sequence[int] | None,
                error: str | None, unit: str, request: str) -> None:
    suffix = " (will use whatever is returned)" if declared == 0 else ""
    out.append(f"  {name}: {declared}{suffix}")
    if error:
        out.append(f"   IFD does not support {request} request: {error}")
        return
    for value in values or ():
        out.append(f"   Support {value} {unit}")
    if values is not None and declared and len(values) != declared:
        out.append(f"   Got {len(values)} values but was expecting {declared}")


def report_as_dict(rep: InterfaceReport) -> dict[str, object]:
    """JSON-friendly form of a report."""
    d = rep.descriptor
    return {
        "idVendor": rep.vid,
        "idProduct": rep.pid,
        "vid_pid": f"{rep.vid:04X}:{rep.pid:04X}",
        "manufacturer": rep.manufacturer,
        "product": rep.product,
        "serial": rep.serial,
        "interface": rep.interface_string,
        "bcdDevice": rep.bcd_device,
        "bInterfaceNumber": rep.interface_number,
        "bInterfaceClass": rep.interface_class,
        "bNumEndpoints": rep.num_endpoints,
        "descriptor": d.as_dict(),
        "raw": rep.raw.hex(),
        "derived": {
            "exchange_level": d.exchange_level.name.lower(),
            "protocols": [p for p, bit in (("T=0", 1), ("T=1", 2)) if d.dwProtocols & bit],
            "voltages": [v for v, bit in (("5.0V", 1), ("3.0V", 2), ("1.8V", 4))
                         if d.bVoltageSupport & bit],
            "features": [f.name for f in Features if f.value and d.dwFeatures & f.value
                         and f.name and not f.name.startswith("LEVEL_")],
            "slots": d.slot_count,
            "pin_verify": bool(d.bPINSupport & 1),
            "pin_modify": bool(d.bPINSupport & 2),
            "lcd_layout": d.lcd_layout,
        },
        "data_rates": list(rep.data_rates) if rep.data_rates is not None else None,
        "data_rates_error": rep.data_rates_error,
        "clock_frequencies": (list(rep.clock_frequencies)
                              if rep.clock_frequencies is not None else None),
        "clock_error": rep.clock_error,
        "notes": rep.notes,
    }
