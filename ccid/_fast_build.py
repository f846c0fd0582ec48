"""cffi build script of the C fast path (out-of-line API mode): ``ccid._fast_cffi``.

setup.py runs it through ``cffi_modules``; ``python ccid/_fast_build.py`` builds in place.
The C source is ``ccid/_fast.c`` (one translation unit, so the compiler may inline across
functions); its declarations live in ``ccid/_fast.h``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

# Same prototypes as _fast.h (cffi's cdef does not read preprocessor headers).
CDEF = """
int ccid_build_header(uint8_t *out, size_t cap, int msg_type, int slot, int seq, int p1,
                      int p2, int p3, uint64_t payload_len);
long long ccid_build_frame(uint8_t *out, size_t cap, int msg_type, int slot, int seq, int p1,
                           int p2, int p3, const uint8_t *payload, size_t payload_len);
long long ccid_frame_size(const uint8_t *buf, size_t len);
int ccid_check_reply(const uint8_t *buf, size_t len, long long expect_type, long long slot,
                     long long seq, long long max_length);
long long ccid_reply_header(const uint8_t *buf, size_t len, long long expect_type,
                            long long slot, long long seq, long long max_length);
unsigned int ccid_lrc(const uint8_t *data, size_t len);
unsigned int ccid_crc16(const uint8_t *data, size_t len);
long long ccid_build_t1_block(uint8_t *out, size_t cap, int nad, int pcb, const uint8_t *inf,
                              size_t inf_len, int crc);
int ccid_check_t1_block(const uint8_t *block, size_t len, int crc);
long long ccid_split_count(size_t apdu_len, long long chunk);
long long ccid_split_extended(size_t apdu_len, long long chunk, uint16_t *levels,
                              size_t *offsets, size_t *lengths, size_t cap);
int ccid_join_check(const uint8_t *levels, size_t count);
int ccid_join_chained(const uint8_t *levels, const uint8_t *const *data,
                      const size_t *lengths, size_t count, uint8_t *out, size_t cap,
                      size_t *out_len);
"""

ffibuilder = FFI()
# Inputs are declared ``const uint8_t *`` on the Python side: cffi then passes a ``bytes``
# object's own storage without a copy or a from_buffer() call. The C side reads uint8_t.
ffibuilder.cdef(CDEF)
# Every function here runs for well under a microsecond on frame-sized input: releasing and
# re-taking the GIL around each call (cffi's default) costs more than the work, so the
# wrappers keep it. No function calls back into Python or blocks.
PREAMBLE = """
#include "_fast.c"
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
"""

ffibuilder.set_source(
    "ccid._fast_cffi",
    PREAMBLE,
    include_dirs=[str(HERE)],
    depends=[str(HERE / "_fast.c"), str(HERE / "_fast.h")],
    extra_compile_args=[] if sys.platform == "win32" else ["-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=True)
