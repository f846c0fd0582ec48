"""cffi build script of the C fast path (out-of-line API mode): ``ccid._fast_cffi``.

setup.py runs it through ``cffi_modules``; ``python ccid/_fast_build.py`` builds in place.
The C source is ``ccid/_fast.c`` (one translation unit, so the compiler may inline across
functions); its declarations live in ``ccid/_fast.h``. ``ccid/_fastcall.c`` adds a second
module init to the same shared object: ``ccid._fastcall``, the chain step behind CPython's
vectorcall convention (see ``ccid/_fast.py``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent



def _prototypes(header: Path) -> str:
    """The function prototypes of ``_fast.h``, one place for them: cffi's cdef reads no
    preprocessor lines, so comments and ``#`` lines (guards, includes, the code macros,
    whose values Python takes from ``ccid._framing_py``) are dropped."""
    text = re.sub(r"/\*.*?\*/", "", header.read_text(encoding="utf-8"), flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


CDEF = _prototypes(HERE / "_fast.h")

ffibuilder = FFI()
# Inputs are declared ``const uint8_t *`` on the Python side: cffi then passes a ``bytes``
# object's own storage without a copy or a from_buffer() call. The C side reads uint8_t.
ffibuilder.cdef(CDEF)
# Every function here runs for well under a microsecond on frame-sized input: releasing and
# re-taking the GIL around each call (cffi's default) costs more than the work, so the
# wrappers keep it. No function calls back into Python or blocks.
PREAMBLE = """
#include "_fast.c"
#include "_fastcall.c"
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
"""

ffibuilder.set_source(
    "ccid._fast_cffi",
    PREAMBLE,
    include_dirs=[str(HERE)],
    depends=[str(HERE / "_fast.c"), str(HERE / "_fast.h"), str(HERE / "_fastcall.c")],
    extra_compile_args=[] if sys.platform == "win32" else ["-O2"],
    # _fastcall.c uses METH_FASTCALL and the buffer protocol: the full C API, so the
    # module is built per Python version (it is built at install time anyway).
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=True)
