/* C fast path of ccid.framing: the per-transfer framing work.
 *
 * Twin of ccid/_framing_py.py: every function gives the same result for the same input
 * (tests/test_framing.py proves it with hypothesis; tests/test_fast_asan.py runs this file
 * under AddressSanitizer and UBSan on malformed input). Nothing here allocates, keeps state
 * or touches Python: all buffers are the caller's, with explicit lengths and capacities.
 */
#include <string.h>

#include "_fast.h"

#define HEADER 10u

static int is_byte(int v) { return v >= 0 && v <= 0xFF; }

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

int ccid_build_header(uint8_t *out, size_t cap, int msg_type, int slot, int seq, int p1,
                      int p2, int p3, uint64_t payload_len)
{
    /* dwLength is 32 bits: longer payloads wrap, exactly like the Python twin's masks. */
    uint32_t n = (uint32_t)payload_len;

    if (!(is_byte(msg_type) && is_byte(slot) && is_byte(seq) && is_byte(p1) && is_byte(p2) &&
          is_byte(p3)))
        return CCID_E_RANGE;
    if (out == NULL || cap < HEADER)
        return CCID_E_CAPACITY;
    out[0] = (uint8_t)msg_type;
    out[1] = (uint8_t)n;
    out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)(n >> 16);
    out[4] = (uint8_t)(n >> 24);
    out[5] = (uint8_t)slot;
    out[6] = (uint8_t)seq;
    out[7] = (uint8_t)p1;
    out[8] = (uint8_t)p2;
    out[9] = (uint8_t)p3;
    return (int)HEADER;
}

long long ccid_build_frame(uint8_t *out, size_t cap, int msg_type, int slot, int seq, int p1,
                           int p2, int p3, const uint8_t *payload, size_t payload_len)
{
    int rc;

    if (payload_len > cap || cap - payload_len < HEADER)
        return CCID_E_CAPACITY;
    if (payload_len && payload == NULL)
        return CCID_E_LENGTH;
    rc = ccid_build_header(out, cap, msg_type, slot, seq, p1, p2, p3, payload_len);
    if (rc < 0)
        return rc;
    if (payload_len)
        memcpy(out + HEADER, payload, payload_len);
    return (long long)(HEADER + payload_len);
}

long long ccid_frame_size(const uint8_t *buf, size_t len)
{
    if (buf == NULL || len < HEADER)
        return -1;
    return (long long)HEADER + (long long)le32(buf + 1);
}

int ccid_check_reply(const uint8_t *buf, size_t len, long long expect_type, long long slot,
                     long long seq, long long max_length)
{
    long long total;

    if (buf == NULL || len < HEADER)
        return CCID_SHORT_HEADER;
    /* Sequence first: a stale frame of an earlier command is dropped, not an error. */
    if ((long long)buf[6] != seq)
        return CCID_WRONG_SEQ;
    if ((long long)buf[5] != slot)
        return CCID_WRONG_SLOT;
    if ((long long)buf[0] != expect_type)
        return CCID_WRONG_TYPE;
    total = (long long)HEADER + (long long)le32(buf + 1);
    if (max_length != 0 && total > max_length)
        return CCID_TOO_LONG;
    if ((unsigned long long)len < (unsigned long long)total)
        return CCID_INCOMPLETE;
    if ((unsigned long long)len > (unsigned long long)total)
        return CCID_TRAILING;
    return CCID_OK;
}

long long ccid_reply_header(const uint8_t *buf, size_t len, long long expect_type,
                            long long slot, long long seq, long long max_length)
{
    /* One crossing per received frame: the check and the three status bytes together. */
    int status = ccid_check_reply(buf, len, expect_type, slot, seq, max_length);

    if (status == CCID_SHORT_HEADER)
        return status;
    return (long long)status | ((long long)buf[7] << 8) | ((long long)buf[8] << 16) |
           ((long long)buf[9] << 24);
}

unsigned int ccid_lrc(const uint8_t *data, size_t len)
{
    uint8_t v = 0;
    size_t i;

    if (data == NULL)
        return 0;
    for (i = 0; i < len; i++)
        v ^= data[i];
    return v;
}

/* CRC-16 bit-reflected, polynomial 0x8408 (0x1021 reversed), one entry per byte value. */
static const uint16_t crc_table[256] = {
    0x0000, 0x1189, 0x2312, 0x329B, 0x4624, 0x57AD, 0x6536, 0x74BF,
    0x8C48, 0x9DC1, 0xAF5A, 0xBED3, 0xCA6C, 0xDBE5, 0xE97E, 0xF8F7,
    0x1081, 0x0108, 0x3393, 0x221A, 0x56A5, 0x472C, 0x75B7, 0x643E,
    0x9CC9, 0x8D40, 0xBFDB, 0xAE52, 0xDAED, 0xCB64, 0xF9FF, 0xE876,
    0x2102, 0x308B, 0x0210, 0x1399, 0x6726, 0x76AF, 0x4434, 0x55BD,
    0xAD4A, 0xBCC3, 0x8E58, 0x9FD1, 0xEB6E, 0xFAE7, 0xC87C, 0xD9F5,
    0x3183, 0x200A, 0x1291, 0x0318, 0x77A7, 0x662E, 0x54B5, 0x453C,
    0xBDCB, 0xAC42, 0x9ED9, 0x8F50, 0xFBEF, 0xEA66, 0xD8FD, 0xC974,
    0x4204, 0x538D, 0x6116, 0x709F, 0x0420, 0x15A9, 0x2732, 0x36BB,
    0xCE4C, 0xDFC5, 0xED5E, 0xFCD7, 0x8868, 0x99E1, 0xAB7A, 0xBAF3,
    0x5285, 0x430C, 0x7197, 0x601E, 0x14A1, 0x0528, 0x37B3, 0x263A,
    0xDECD, 0xCF44, 0xFDDF, 0xEC56, 0x98E9, 0x8960, 0xBBFB, 0xAA72,
    0x6306, 0x728F, 0x4014, 0x519D, 0x2522, 0x34AB, 0x0630, 0x17B9,
    0xEF4E, 0xFEC7, 0xCC5C, 0xDDD5, 0xA96A, 0xB8E3, 0x8A78, 0x9BF1,
    0x7387, 0x620E, 0x5095, 0x411C, 0x35A3, 0x242A, 0x16B1, 0x0738,
    0xFFCF, 0xEE46, 0xDCDD, 0xCD54, 0xB9EB, 0xA862, 0x9AF9, 0x8B70,
    0x8408, 0x9581, 0xA71A, 0xB693, 0xC22C, 0xD3A5, 0xE13E, 0xF0B7,
    0x0840, 0x19C9, 0x2B52, 0x3ADB, 0x4E64, 0x5FED, 0x6D76, 0x7CFF,
    0x9489, 0x8500, 0xB79B, 0xA612, 0xD2AD, 0xC324, 0xF1BF, 0xE036,
    0x18C1, 0x0948, 0x3BD3, 0x2A5A, 0x5EE5, 0x4F6C, 0x7DF7, 0x6C7E,
    0xA50A, 0xB483, 0x8618, 0x9791, 0xE32E, 0xF2A7, 0xC03C, 0xD1B5,
    0x2942, 0x38CB, 0x0A50, 0x1BD9, 0x6F66, 0x7EEF, 0x4C74, 0x5DFD,
    0xB58B, 0xA402, 0x9699, 0x8710, 0xF3AF, 0xE226, 0xD0BD, 0xC134,
    0x39C3, 0x284A, 0x1AD1, 0x0B58, 0x7FE7, 0x6E6E, 0x5CF5, 0x4D7C,
    0xC60C, 0xD785, 0xE51E, 0xF497, 0x8028, 0x91A1, 0xA33A, 0xB2B3,
    0x4A44, 0x5BCD, 0x6956, 0x78DF, 0x0C60, 0x1DE9, 0x2F72, 0x3EFB,
    0xD68D, 0xC704, 0xF59F, 0xE416, 0x90A9, 0x8120, 0xB3BB, 0xA232,
    0x5AC5, 0x4B4C, 0x79D7, 0x685E, 0x1CE1, 0x0D68, 0x3FF3, 0x2E7A,
    0xE70E, 0xF687, 0xC41C, 0xD595, 0xA12A, 0xB0A3, 0x8238, 0x93B1,
    0x6B46, 0x7ACF, 0x4854, 0x59DD, 0x2D62, 0x3CEB, 0x0E70, 0x1FF9,
    0xF78F, 0xE606, 0xD49D, 0xC514, 0xB1AB, 0xA022, 0x92B9, 0x8330,
    0x7BC7, 0x6A4E, 0x58D5, 0x495C, 0x3DE3, 0x2C6A, 0x1EF1, 0x0F78,};

static uint16_t crc_update(uint16_t v, const uint8_t *data, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        v = (uint16_t)((v >> 8) ^ crc_table[(v ^ data[i]) & 0xFFu]);
    return v;
}

unsigned int ccid_crc16(const uint8_t *data, size_t len)
{
    if (data == NULL)
        return 0xFFFFu;
    return crc_update(0xFFFFu, data, len);
}

long long ccid_build_t1_block(uint8_t *out, size_t cap, int nad, int pcb, const uint8_t *inf,
                              size_t inf_len, int crc)
{
    size_t total;
    size_t edc_len = crc ? 2u : 1u;

    if (!(is_byte(nad) && is_byte(pcb)))
        return CCID_E_RANGE;
    /* LEN is one byte; ccid.framing refuses more than 254 before it gets here. */
    if (inf_len > 0xFFu)
        return CCID_E_LENGTH;
    if (inf_len && inf == NULL)
        return CCID_E_LENGTH;
    total = 3u + inf_len + edc_len;
    if (out == NULL || cap < total)
        return CCID_E_CAPACITY;
    out[0] = (uint8_t)nad;
    out[1] = (uint8_t)pcb;
    out[2] = (uint8_t)inf_len;
    if (inf_len)
        memcpy(out + 3, inf, inf_len);
    if (crc) {
        uint16_t v = crc_update(0xFFFFu, out, 3u + inf_len);
        /* Most significant byte first, as host drivers and readers send it. */
        out[3 + inf_len] = (uint8_t)(v >> 8);
        out[4 + inf_len] = (uint8_t)v;
    } else {
        out[3 + inf_len] = (uint8_t)ccid_lrc(out, 3u + inf_len);
    }
    return (long long)total;
}

int ccid_check_t1_block(const uint8_t *block, size_t len, int crc)
{
    size_t edc_len = crc ? 2u : 1u;
    size_t inf_len;

    if (block == NULL || len < 3u + edc_len)
        return CCID_T1_SHORT;
    inf_len = block[2];
    if (inf_len == 0xFFu)
        return CCID_T1_INF_TOO_LONG;
    if (len != 3u + inf_len + edc_len)
        return CCID_T1_LENGTH;
    if (crc) {
        uint16_t v = crc_update(0xFFFFu, block, 3u + inf_len);
        if (block[len - 2] != (uint8_t)(v >> 8) || block[len - 1] != (uint8_t)v)
            return CCID_T1_EDC;
    } else if ((uint8_t)ccid_lrc(block, 3u + inf_len) != block[len - 1]) {
        return CCID_T1_EDC;
    }
    return CCID_T1_OK;
}

long long ccid_split_count(size_t apdu_len, long long chunk)
{
    if (chunk <= 0)
        return CCID_E_RANGE;
    if ((unsigned long long)apdu_len <= (unsigned long long)chunk)
        return 1;
    return (long long)((apdu_len - 1u) / (unsigned long long)chunk + 1u);
}

long long ccid_split_extended(size_t apdu_len, long long chunk, uint16_t *levels,
                              size_t *offsets, size_t *lengths, size_t cap)
{
    long long count = ccid_split_count(apdu_len, chunk);
    size_t i, n, step;

    if (count < 0)
        return count;
    n = (size_t)count;
    if (levels == NULL || offsets == NULL || lengths == NULL || cap < n)
        return CCID_E_CAPACITY;
    if (n == 1) {
        levels[0] = 0x0000;
        offsets[0] = 0;
        lengths[0] = apdu_len;
        return 1;
    }
    step = (size_t)chunk; /* chunk < apdu_len here, so it fits */
    for (i = 0; i < n; i++) {
        size_t start = i * step;
        size_t left = apdu_len - start;
        levels[i] = i == 0 ? 0x0001 : (i == n - 1 ? 0x0002 : 0x0003);
        offsets[i] = start;
        lengths[i] = left < step ? left : step;
    }
    return count;
}

int ccid_join_check(const uint8_t *levels, size_t count)
{
    size_t i;

    if (count == 0 || levels == NULL)
        return CCID_JOIN_EMPTY;
    if (count == 1) {
        if (levels[0] == 0x00)
            return CCID_JOIN_OK;
        return (levels[0] == 0x01 || levels[0] == 0x03) ? CCID_JOIN_UNTERMINATED
                                                       : CCID_JOIN_BAD_FIRST;
    }
    if (levels[0] != 0x01)
        return CCID_JOIN_BAD_FIRST;
    for (i = 1; i + 1 < count; i++)
        if (levels[i] != 0x03)
            return CCID_JOIN_BAD_MIDDLE;
    if (levels[count - 1] != 0x02)
        return CCID_JOIN_UNTERMINATED;
    return CCID_JOIN_OK;
}

int ccid_join_chained(const uint8_t *levels, const uint8_t *const *data,
                      const size_t *lengths, size_t count, uint8_t *out, size_t cap,
                      size_t *out_len)
{
    size_t i, total = 0;
    int status;

    if (out_len == NULL)
        return CCID_E_CAPACITY;
    *out_len = 0;
    status = ccid_join_check(levels, count);
    if (status != CCID_JOIN_OK)
        return status;
    if (data == NULL || lengths == NULL)
        return CCID_E_LENGTH;
    for (i = 0; i < count; i++) {
        if (lengths[i] && data[i] == NULL)
            return CCID_E_LENGTH;
        if (lengths[i] > cap - total) /* total <= cap always holds here */
            return CCID_E_CAPACITY;
        total += lengths[i];
    }
    if (total && out == NULL)
        return CCID_E_CAPACITY;
    total = 0;
    for (i = 0; i < count; i++) {
        if (lengths[i])
            memcpy(out + total, data[i], lengths[i]);
        total += lengths[i];
    }
    *out_len = total;
    return CCID_JOIN_OK;
}

/* --- chained exchanges ---------------------------------------------------------------- */

static long long xfr_frame(const ccid_chain *st, int seq, int level, const uint8_t *body,
                           size_t body_len, uint8_t *out, size_t cap)
{
    return ccid_build_frame(out, cap, 0x6F, st->slot, seq, 0, level & 0xFF,
                            (level >> 8) & 0xFF, body, body_len);
}

/* The next I-block of the command (offset and sent already set) as an XfrBlock. */
static long long t1_i_frame(ccid_chain *st, int seq, const uint8_t *cmd, size_t cmd_len,
                            uint8_t *out, size_t cap)
{
    int more = st->offset + st->sent < cmd_len;
    long long n;

    if (cap < HEADER)
        return CCID_E_CAPACITY;
    n = ccid_build_t1_block(out + HEADER, cap - HEADER, st->nad, (st->ns << 6) | (more ? 0x20 : 0),
                            cmd + st->offset, st->sent, st->crc);
    if (n < 0)
        return n;
    ccid_build_header(out, cap, 0x6F, st->slot, seq, 0, 0, 0, (uint64_t)n);
    st->phase = more ? 1 : 2;
    st->seq = seq;
    return n + (long long)HEADER;
}

long long ccid_chain_first(ccid_chain *st, int seq)
{
    long long n;
    const uint8_t *cmd;
    size_t cmd_len;

    if (st == NULL || !is_byte(seq) || !is_byte(st->slot) || st->chunk == 0 ||
        (st->ns != 0 && st->ns != 1) || (st->nr != 0 && st->nr != 1) || st->ifsd > 254)
        return CCID_E_RANGE;
    cmd = st->cmd;
    cmd_len = st->cmd_len;
    if (cmd_len && cmd == NULL)
        return CCID_E_LENGTH;
    st->offset = 0;
    st->resp_len = 0;
    st->sent = cmd_len < st->chunk ? cmd_len : st->chunk;
    if (st->mode == CCID_CHAIN_T1) {
        if (!is_byte(st->nad) || st->chunk > 254)
            return CCID_E_RANGE;
        return t1_i_frame(st, seq, cmd, cmd_len, st->out, st->out_cap);
    }
    n = xfr_frame(st, seq, cmd_len <= st->chunk ? 0x0000 : 0x0001, cmd, st->sent, st->out,
                  st->out_cap);
    if (n < 0)
        return n;
    st->phase = st->sent < cmd_len ? 0 : 1;
    st->seq = seq;
    return n;
}

/* Append the reply's data to the response; 0 when it does not fit. */
static int gather(ccid_chain *st, const uint8_t *data, size_t len, uint8_t *resp,
                  size_t resp_cap)
{
    if (len > resp_cap || st->resp_len > resp_cap - len || (len && resp == NULL))
        return 0;
    if (len)
        memcpy(resp + st->resp_len, data, len);
    st->resp_len += len;
    return 1;
}

static long long extended_step(ccid_chain *st, int seq, const uint8_t *reply, size_t len,
                               const uint8_t *cmd, size_t cmd_len, uint8_t *resp,
                               size_t resp_cap, uint8_t *out, size_t cap)
{
    uint8_t chain = reply[9];
    size_t data_len = len - HEADER;
    long long n;

    if (st->phase == 0) {
        size_t offset = st->offset + st->sent, sent;

        if (chain != 0x10 || offset >= cmd_len)
            return CCID_CHAIN_OTHER;
        sent = cmd_len - offset < st->chunk ? cmd_len - offset : st->chunk;
        n = xfr_frame(st, seq, offset + sent >= cmd_len ? 0x0002 : 0x0003, cmd + offset, sent,
                      out, cap);
        if (n < 0)
            return n;
        st->offset = offset;
        st->sent = sent;
        st->phase = offset + sent >= cmd_len ? 1 : 0;
        st->seq = seq;
        return n;
    }
    /* phase 1 takes 0x00 (whole) or 0x01 (first piece); phase 2 takes 0x03 or 0x02 */
    if (st->phase == 1 ? (chain != 0x00 && chain != 0x01) : (chain != 0x03 && chain != 0x02))
        return CCID_CHAIN_OTHER;
    if (chain == 0x00 || chain == 0x02) {
        if (!gather(st, reply + HEADER, data_len, resp, resp_cap))
            return CCID_CHAIN_OTHER;
        st->phase = 3;
        return CCID_CHAIN_DONE;
    }
    /* Check the room first: the state stays untouched when the frame cannot be built. */
    if (cap < HEADER)
        return CCID_E_CAPACITY;
    if (!gather(st, reply + HEADER, data_len, resp, resp_cap))
        return CCID_CHAIN_OTHER;
    n = xfr_frame(st, seq, 0x0010, NULL, 0, out, cap);
    st->phase = 2;
    st->seq = seq;
    return n;
}

static long long t1_step(ccid_chain *st, int seq, const uint8_t *block, size_t len,
                         const uint8_t *cmd, size_t cmd_len, uint8_t *resp, size_t resp_cap,
                         uint8_t *out, size_t cap)
{
    uint8_t pcb;
    size_t inf_len;

    if (ccid_check_t1_block(block, len, st->crc) != CCID_T1_OK)
        return CCID_CHAIN_OTHER;
    pcb = block[1];
    inf_len = block[2];
    if (cap < HEADER + 4u + 2u + 254u)
        return CCID_E_CAPACITY;
    if (st->phase == 1) {
        /* R-block acknowledging our I-block: N(R) differs from our N(S), no error bits */
        if ((pcb & 0xC0) != 0x80 || (pcb & 0x2F) || inf_len ||
            ((pcb >> 4) & 1) == st->ns || st->offset + st->sent >= cmd_len)
            return CCID_CHAIN_OTHER;
        st->offset += st->sent;
        st->ns ^= 1;
        st->sent = cmd_len - st->offset < st->chunk ? cmd_len - st->offset : st->chunk;
        return t1_i_frame(st, seq, cmd, cmd_len, out, cap);
    }
    if (st->phase != 2 && st->phase != 3)
        return CCID_CHAIN_OTHER;
    /* the card's I-block: expected N(S), no RFU bits, INF within IFSD, chained ones not empty */
    if ((pcb & 0x80) || (pcb & 0x1F) || inf_len > st->ifsd || ((pcb >> 6) & 1) != st->nr ||
        ((pcb & 0x20) && inf_len == 0))
        return CCID_CHAIN_OTHER;
    if (!gather(st, block + 3, inf_len, resp, resp_cap))
        return CCID_CHAIN_OTHER;
    if (st->phase == 2)
        st->ns ^= 1; /* the card's I-block acknowledges our last one */
    st->nr ^= 1;
    if (!(pcb & 0x20)) {
        st->phase = 0;
        return CCID_CHAIN_DONE;
    }
    st->phase = 3;
    st->seq = seq;
    {
        long long n = ccid_build_t1_block(out + HEADER, cap - HEADER, st->nad,
                                          0x80 | (st->nr << 4), NULL, 0, st->crc);
        ccid_build_header(out, cap, 0x6F, st->slot, seq, 0, 0, 0, (uint64_t)n);
        return n + (long long)HEADER;
    }
}

long long ccid_chain_step(ccid_chain *st, int seq, const uint8_t *reply, size_t reply_len)
{
    const uint8_t *cmd;
    size_t cmd_len;

    if (st == NULL || !is_byte(seq))
        return CCID_E_RANGE;
    cmd = st->cmd;
    cmd_len = st->cmd_len;
    if (cmd_len && cmd == NULL)
        return CCID_E_LENGTH;
    if (st->out == NULL)
        return CCID_E_CAPACITY;
    /* the complete, successful DataBlock answering the frame in flight */
    if (reply == NULL || reply_len < HEADER || reply[0] != 0x80 || reply[5] != st->slot ||
        reply[6] != st->seq || (size_t)le32(reply + 1) != reply_len - HEADER ||
        (st->max_length && reply_len > st->max_length) || (reply[7] & 0xC0))
        return CCID_CHAIN_OTHER;
    if (st->offset > cmd_len || st->sent > cmd_len - st->offset)
        return CCID_E_RANGE; /* the state does not belong to this command */
    if (st->mode == CCID_CHAIN_T1)
        return t1_step(st, seq, reply + HEADER, reply_len - HEADER, cmd, cmd_len, st->resp,
                       st->resp_cap, st->out, st->out_cap);
    if (st->mode != CCID_CHAIN_EXTENDED || st->chunk == 0)
        return CCID_E_RANGE;
    return extended_step(st, seq, reply, reply_len, cmd, cmd_len, st->resp, st->resp_cap,
                         st->out, st->out_cap);
}
