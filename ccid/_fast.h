/* C fast path of ccid.framing: declarations shared by _fast.c, the cffi build and the
 * AddressSanitizer driver (tests/asan/driver.c).
 *
 * Every function takes explicit lengths; every output buffer comes with its capacity.
 * Negative returns are errors (CCID_E_*), never partial writes past the capacity.
 */
#ifndef CCID_FAST_H
#define CCID_FAST_H

#include <stddef.h>
#include <stdint.h>

/* Errors of the build functions (argument checks, not wire faults). */
#define CCID_E_RANGE (-1)    /* a byte argument outside 0..255 */
#define CCID_E_CAPACITY (-2) /* output buffer too small */
#define CCID_E_LENGTH (-3)   /* input too long for the field that carries its length */

/* RDR_to_PC check codes: same values as ccid._framing_py. */
#define CCID_OK 0
#define CCID_SHORT_HEADER 1
#define CCID_INCOMPLETE 2
#define CCID_WRONG_TYPE 3
#define CCID_WRONG_SLOT 4
#define CCID_WRONG_SEQ 5
#define CCID_TOO_LONG 6
#define CCID_TRAILING 7

/* T=1 block check codes. */
#define CCID_T1_OK 0
#define CCID_T1_SHORT 1
#define CCID_T1_LENGTH 2
#define CCID_T1_EDC 3
#define CCID_T1_INF_TOO_LONG 4

/* join_chained codes. */
#define CCID_JOIN_OK 0
#define CCID_JOIN_EMPTY 1
#define CCID_JOIN_BAD_FIRST 2
#define CCID_JOIN_BAD_MIDDLE 3
#define CCID_JOIN_UNTERMINATED 4

int ccid_build_header(uint8_t *out, size_t cap, int msg_type, int slot, int seq, int p1,
                      int p2, int p3, uint64_t payload_len);
long long ccid_build_frame(uint8_t *out, size_t cap, int msg_type, int slot, int seq, int p1,
                           int p2, int p3, const uint8_t *payload, size_t payload_len);
long long ccid_frame_size(const uint8_t *buf, size_t len);
int ccid_check_reply(const uint8_t *buf, size_t len, long long expect_type, long long slot,
                     long long seq, long long max_length);
/* ccid_check_reply's status in bits 0-7, then bStatus, bError and the message-specific
 * byte 9 (bChainParameter, bClockStatus, ...) in bits 8-15, 16-23, 24-31; only the status
 * when the frame is shorter than its header. */
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

/* ccid_chain_step: a chained exchange driven one reply at a time (the per-block loop of
 * T=1 TPDU exchanges and extended-APDU pieces). Only the expected, successful case is
 * handled here; any other reply returns CCID_CHAIN_OTHER with the state untouched, and the
 * caller's general code (time extensions, errors, T=1 error recovery) takes over. */
#define CCID_CHAIN_EXTENDED 0
#define CCID_CHAIN_T1 1
#define CCID_CHAIN_DONE 0
#define CCID_CHAIN_OTHER (-4)

typedef struct {
    int mode;          /* CCID_CHAIN_EXTENDED or CCID_CHAIN_T1 */
    int slot;
    int seq;           /* bSeq of the frame in flight */
    /* extended: 0 a command piece in flight (answer: 0x10), 1 the last piece in flight
     * (answer: 0x00 or 0x01), 2 a continue request in flight (answer: 0x03 or 0x02);
     * T=1: 0 idle (done), 1 sending, 2 awaiting, 3 receiving (ccid.protocol.t1.T1State). */
    int phase;
    int nad;
    int crc;
    int ns;
    int nr;
    size_t ifsd;       /* T=1: largest INF accepted */
    size_t chunk;      /* extended: bytes per piece; T=1: IFSC */
    size_t max_length; /* dwMaxCCIDMessageLength, 0: not checked */
    size_t offset;     /* command bytes before the piece or I-block in flight */
    size_t sent;       /* command bytes in the piece or I-block in flight */
    size_t resp_len;   /* response bytes gathered */
    /* The caller's buffers, set before ccid_chain_first and kept alive until the
     * exchange ends: the command, where the response goes, where the next frame goes. */
    const uint8_t *cmd;
    size_t cmd_len;
    uint8_t *resp;
    size_t resp_cap;
    uint8_t *out;
    size_t out_cap;
} ccid_chain;

long long ccid_chain_first(ccid_chain *st, int seq);
long long ccid_chain_step(ccid_chain *st, int seq, const uint8_t *reply, size_t reply_len);

#endif
