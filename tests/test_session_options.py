"""ReaderOptions (ccid.session.options): the open options as one checked, frozen object."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

import ccid
from ccid._args import as_flag, as_protocol, as_seconds
from ccid.errors import UsageError
from ccid.session.options import ReaderOptions, check_disposition, check_mode
from ccid.testing import preset


def test_defaults_and_frozen() -> None:
    options = ReaderOptions.from_kwargs({})
    assert options == ReaderOptions()
    assert (options.timeout, options.poll_interval, options.open_timeout) == (60.0, 0.5, 5.0)
    assert options.events and options.check_tck and options.quirks and options.ifsd is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.timeout = 1.0  # type: ignore[misc]


def test_every_option_is_taken() -> None:
    given = {"timeout": 2, "poll_interval": 0.1, "events": False, "allow_bad_firmware": 1,
             "check_tck": False, "auto_get_response": 0, "ifsd": 64, "quirks": False,
             "open_timeout": 9}
    options = ReaderOptions.from_kwargs(given)
    assert dataclasses.asdict(options) == {**given, "allow_bad_firmware": True,
                                           "auto_get_response": False}
    assert ReaderOptions.names() == set(given)


@pytest.mark.parametrize(("options", "match"), [
    ({"timout": 1}, "unknown open_reader option.*timout.*known: allow_bad_firmware"),
    ({"timeout": 0}, "timeout must be a finite number of seconds, more than 0"),
    ({"timeout": math.inf}, "timeout must be a finite"),
    ({"timeout": "5"}, "timeout must be a number of seconds"),
    ({"poll_interval": True}, "poll_interval must be a number"),
    ({"events": "no"}, "events must be True or False"),
    ({"check_tck": 2}, "check_tck must be True or False"),
    ({"ifsd": 255}, "ifsd must be None or an integer 1..254"),
    ({"ifsd": True}, "ifsd must be None"),
    ({"open_timeout": -1}, "open_timeout must be a finite"),
    ({"timeout": 0, "events": "x"}, "timeout"),  # the first bad one, in a fixed order
])
def test_bad_options_name_the_option(options: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        ReaderOptions.from_kwargs(options, "r")


def test_open_reader_refuses_the_same_options() -> None:
    # The front door and the options object agree: same message, nothing opened.
    backend = preset("gemalto-pc-twin")
    for bad in ({"timout": 1}, {"ifsd": 0}, {"quirks": None}):
        with pytest.raises(UsageError) as direct:
            ReaderOptions.from_kwargs(bad)
        with pytest.raises(UsageError) as opened:
            ccid.open_reader(0, backend=backend, **bad)
        assert opened.value.message == direct.value.message
    with ccid.open_reader(0, backend=backend, events=False) as reader:
        assert reader.name


def test_value_checks() -> None:
    assert as_seconds(0, "t", zero=True) == 0.0
    assert as_flag(1, "f") is True
    assert as_protocol(" t=1 ") == 1 and as_protocol("T0") == 0 and as_protocol(None) is None
    for bad in (2, True, "T=2", 1.0):
        with pytest.raises(UsageError, match="protocol must be"):
            as_protocol(bad)
    assert check_mode("exclusive") == "exclusive"
    with pytest.raises(UsageError, match="mode must be"):
        check_mode(["shared"])
    assert check_disposition("eject") == "eject"
    with pytest.raises(UsageError, match="disposition must be"):
        check_disposition(None)
