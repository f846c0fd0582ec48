"""Build hook: compile ccid/_fast.c with cffi when a compiler is available.

The C fast path is optional: when it cannot be built (no compiler, or
CCID_NO_EXTENSION=1), the install still succeeds and ccid.framing uses its
pure-Python twin.
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the C fast path cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "use the twin"
            self.warn(f"ccid: C fast path not built ({exc}); the pure-Python twin will be used")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self.warn(f"ccid: {ext.name} not built ({exc}); the pure-Python twin will be used")


kwargs = {}
if os.environ.get("CCID_NO_EXTENSION") != "1":
    kwargs["cffi_modules"] = ["ccid/_fast_build.py:ffibuilder"]

setup(cmdclass={"build_ext": OptionalBuildExt}, **kwargs)
