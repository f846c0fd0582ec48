/* AddressSanitizer / UBSan driver for ccid/_fast.c (run by tests/test_fast_asan.py).
 *
 * Feeds every function seeded random and malformed input through exact-size heap buffers,
 * so that one byte read or written past an end is reported by ASan, and checks the
 * invariants the Python twin relies on. Exit status 0: no finding.
 * Usage: driver [iterations] [seed]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_fast.c"

static unsigned long long rng_state;

static unsigned long long rnd(void)
{
    /* xorshift64*: reproducible from the seed on every platform */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static int failures;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "invariant failed line %d: %s\n", __LINE__, #cond);          \
            if (++failures > 20)                                                          \
                exit(2);                                                                  \
        }                                                                                 \
    } while (0)

/* A heap block of exactly n bytes (n may be 0) filled with random or patterned bytes. */
static uint8_t *random_block(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    size_t i;

    if (p == NULL)
        exit(3);
    for (i = 0; i < n; i++)
        p[i] = (uint8_t)rnd();
    return p;
}

static size_t random_len(size_t max)
{
    /* bias towards the edges where off-by-one errors live */
    switch (rnd() % 64) {
    case 0: return below(max + 1); /* rare: large buffers are slow under ASan */
    case 1: case 2: case 3: case 4: case 5: case 6: case 7: case 8: return 255 + below(8) - 4;
    default: return below(rnd() & 1 ? 12 : 300);
    }
}

static void frames(void)
{
    size_t plen = random_len(70000), cap = below(3) ? plen + 10 : below(plen + 12);
    uint8_t *payload = random_block(plen);
    uint8_t *out = random_block(cap);
    int type = (int)below(300) - 20, slot = (int)below(260), seq = (int)below(260);
    long long n = ccid_build_frame(out, cap, type, slot, seq, 1, 2, 3, payload, plen);

    if (n >= 0) {
        CHECK((size_t)n == plen + 10 && (size_t)n <= cap);
        CHECK(ccid_frame_size(out, (size_t)n) == n);
        CHECK(ccid_check_reply(out, (size_t)n, type, slot, seq, 0) == CCID_OK);
        CHECK(ccid_check_reply(out, (size_t)n - 1, type, slot, seq, 0) ==
              (n > 10 ? CCID_INCOMPLETE : CCID_SHORT_HEADER));
        CHECK(ccid_check_reply(out, (size_t)n, type, slot, seq + 1, 0) == CCID_WRONG_SEQ);
        CHECK(ccid_check_reply(out, (size_t)n, type, slot, seq, n - 1) == CCID_TOO_LONG);
        CHECK(ccid_reply_header(out, (size_t)n, type, slot, seq, 0) ==
              (0x01LL << 8 | 0x02LL << 16 | 0x03LL << 24));
        CHECK(ccid_reply_header(out, 9, type, slot, seq, 0) == CCID_SHORT_HEADER);
    } else {
        CHECK(n == CCID_E_RANGE || n == CCID_E_CAPACITY);
    }
    free(out);
    /* garbage replies of any length, including ones that announce 4 GiB */
    {
        size_t rlen = random_len(400);
        uint8_t *reply = random_block(rlen);
        int st = ccid_check_reply(reply, rlen, (long long)below(256), (long long)below(4),
                                  (long long)below(256), (long long)below(600));
        long long fs = ccid_frame_size(reply, rlen);
        long long code = ccid_reply_header(reply, rlen, 0x80, 0, (long long)below(256), 0);
        CHECK(st >= CCID_OK && st <= CCID_TRAILING);
        CHECK(code >= 0 && code <= 0xFFFFFFFFLL && (code & 0xFF) <= CCID_TRAILING);
        CHECK(rlen >= 10 || code == CCID_SHORT_HEADER);
        CHECK(rlen < 10 || code >> 8 == (reply[7] | reply[8] << 8 | (long long)reply[9] << 16));
        CHECK(rlen < 10 ? fs == -1 : fs >= 10);
        free(reply);
    }
    free(payload);
}

static void t1_blocks(void)
{
    size_t inf_len = random_len(300), cap = below(4) ? inf_len + 5 : below(inf_len + 6);
    int crc = (int)(rnd() & 1);
    uint8_t *inf = random_block(inf_len);
    uint8_t *out = random_block(cap);
    long long n = ccid_build_t1_block(out, cap, (int)below(270), (int)below(270), inf, inf_len,
                                      crc);

    if (n >= 0) {
        uint8_t *block = random_block((size_t)n);
        memcpy(block, out, (size_t)n);
        CHECK(ccid_check_t1_block(block, (size_t)n, crc) ==
              (inf_len == 0xFF ? CCID_T1_INF_TOO_LONG : CCID_T1_OK));
        if (inf_len < 0xFF) {
            size_t k = below((size_t)n);
            block[k] ^= (uint8_t)(1u << below(8)); /* any 1-bit error is caught */
            CHECK(ccid_check_t1_block(block, (size_t)n, crc) != CCID_T1_OK);
        }
        free(block);
        /* every truncation of a valid block is refused without reading past it */
        {
            size_t cut = below((size_t)n);
            uint8_t *part = random_block(cut);
            memcpy(part, out, cut);
            CHECK(ccid_check_t1_block(part, cut, crc) != CCID_T1_OK);
            free(part);
        }
    }
    free(out);
    free(inf);
    {
        size_t blen = random_len(300);
        uint8_t *junk = random_block(blen);
        int st = ccid_check_t1_block(junk, blen, crc);
        CHECK(st >= CCID_T1_OK && st <= CCID_T1_INF_TOO_LONG);
        CHECK(ccid_crc16(junk, blen) <= 0xFFFFu && ccid_lrc(junk, blen) <= 0xFFu);
        free(junk);
    }
}

static void chunks(void)
{
    size_t apdu_len = random_len(70000);
    long long chunk = (long long)below(3) ? (long long)below(600) + 1 : (long long)below(5) - 2;
    long long count = ccid_split_count(apdu_len, chunk);
    size_t cap = below(4) ? (count > 0 ? (size_t)count : 1) : below(8);
    uint16_t *levels = malloc(sizeof *levels * (cap ? cap : 1));
    size_t *offsets = malloc(sizeof *offsets * (cap ? cap : 1));
    size_t *lengths = malloc(sizeof *lengths * (cap ? cap : 1));
    long long n = ccid_split_extended(apdu_len, chunk, levels, offsets, lengths, cap);

    if (n > 0) {
        size_t i, total = 0;
        uint8_t *lv = malloc((size_t)n);
        const uint8_t **data = malloc(sizeof *data * (size_t)n);
        uint8_t *apdu = random_block(apdu_len), *joined = random_block(apdu_len);
        size_t out_len = 0;

        CHECK(n == count);
        for (i = 0; i < (size_t)n; i++) {
            CHECK(offsets[i] == total && lengths[i] <= (size_t)chunk);
            total += lengths[i];
            lv[i] = (uint8_t)levels[i];
            data[i] = apdu + offsets[i];
        }
        CHECK(total == apdu_len);
        CHECK(ccid_join_chained(lv, data, lengths, (size_t)n, joined, apdu_len, &out_len) ==
              CCID_JOIN_OK);
        CHECK(out_len == apdu_len && memcmp(joined, apdu, apdu_len) == 0);
        if (apdu_len) /* one byte short of room: refused, nothing written past the end */
            CHECK(ccid_join_chained(lv, data, lengths, (size_t)n, joined, apdu_len - 1,
                                    &out_len) == CCID_E_CAPACITY);
        /* disorder the chain: the check must say which rule broke, never crash */
        for (i = 0; i < (size_t)n; i++)
            if (below(4) == 0)
                lv[i] = (uint8_t)below(6);
        {
            int st = ccid_join_check(lv, (size_t)n);
            CHECK(st >= CCID_JOIN_OK && st <= CCID_JOIN_UNTERMINATED);
        }
        free(joined);
        free(apdu);
        free(data);
        free(lv);
    } else {
        CHECK(n == CCID_E_RANGE || n == CCID_E_CAPACITY);
    }
    free(lengths);
    free(offsets);
    free(levels);
}

/* A reply to the frame in flight: usually the one the chain expects, sometimes not. */
static uint8_t *chain_reply(const ccid_chain *st, size_t *len)
{
    uint8_t body[300];
    size_t n = 0;
    uint8_t *reply;

    if (st->mode == CCID_CHAIN_T1) {
        int kind = (int)below(4);
        uint8_t inf[254];
        size_t inf_len = below(st->ifsd + 2 > 254 ? 254 : st->ifsd + 2);
        long long k;

        for (size_t i = 0; i < inf_len; i++)
            inf[i] = (uint8_t)rnd();
        if (kind == 0) /* R-block acknowledging our I-block */
            k = ccid_build_t1_block(body, sizeof body, 0, 0x80 | ((st->ns ^ 1) << 4), NULL, 0,
                                    st->crc);
        else if (kind == 1) /* the card's I-block, chained or last */
            k = ccid_build_t1_block(body, sizeof body, 0,
                                    (st->nr << 6) | (below(2) ? 0x20 : 0), inf, inf_len,
                                    st->crc);
        else if (kind == 2) /* any well-framed block */
            k = ccid_build_t1_block(body, sizeof body, 0, (int)below(256), inf, inf_len,
                                    st->crc);
        else
            k = (long long)below(12);
        n = k > 0 ? (size_t)k : 0;
        if (kind == 3)
            for (size_t i = 0; i < n; i++)
                body[i] = (uint8_t)rnd();
    } else {
        n = below(4) ? 0 : below(300);
    }
    *len = 10 + n;
    reply = random_block(*len);
    reply[0] = below(16) ? 0x80 : (uint8_t)rnd();
    reply[1] = (uint8_t)n;
    reply[2] = (uint8_t)(n >> 8);
    reply[3] = reply[4] = 0;
    reply[5] = (uint8_t)st->slot;
    reply[6] = below(16) ? (uint8_t)st->seq : (uint8_t)rnd();
    reply[7] = below(8) ? 0 : (uint8_t)rnd();
    {
        static const uint8_t chains[] = {0x10, 0x00, 0x01, 0x02, 0x03, 0x10, 0x03, 0x77};
        reply[9] = chains[below(sizeof chains)];
    }
    if (n && st->mode == CCID_CHAIN_T1)
        memcpy(reply + 10, body, n);
    if (below(32) == 0 && *len > 0)
        *len -= 1 + below(*len); /* cut short: the header no longer matches */
    return reply;
}

static long chain_moves, chain_ends;

static void chains(void)
{
    ccid_chain st;
    size_t cmd_len = below(8) ? below(2000) + 1 : random_len(70000);
    uint8_t *cmd = random_block(cmd_len);
    size_t resp_cap = below(8) ? 70000 : below(600);
    uint8_t *resp = malloc(resp_cap ? resp_cap : 1);
    size_t cap, round;
    uint8_t *out;
    long long n;

    memset(&st, 0, sizeof st);
    st.mode = (int)below(2);
    st.slot = (int)below(2);
    st.crc = (int)below(2);
    st.ifsd = below(254) + 1;
    st.chunk = st.mode == CCID_CHAIN_T1 ? below(254) + 1 : below(700) + 1;
    st.max_length = below(4) ? 0 : below(400);
    cap = st.mode == CCID_CHAIN_T1 ? 10 + 3 + 254 + 2 : 10 + st.chunk;
    if (below(16) == 0)
        cap = below(cap); /* too small: refused, never overrun */
    out = malloc(cap ? cap : 1);
    st.cmd = cmd;
    st.cmd_len = cmd_len;
    st.resp = resp;
    st.resp_cap = resp_cap;
    st.out = out;
    st.out_cap = cap;
    n = ccid_chain_first(&st, (int)below(256));
    if (n > 0)
        CHECK((size_t)n <= cap &&
              ccid_check_reply(out, (size_t)n, 0x6F, st.slot, st.seq, 0) == CCID_OK);
    for (round = 0; n > 0 && round < 400; round++) {
        size_t len;
        uint8_t *reply = chain_reply(&st, &len);
        size_t before = st.resp_len;

        n = ccid_chain_step(&st, (int)below(256), reply, len);
        CHECK(n >= CCID_CHAIN_OTHER);
        CHECK(st.resp_len <= resp_cap && st.resp_len >= before);
        CHECK(st.offset <= cmd_len && st.sent <= cmd_len - st.offset);
        if (n > 0)
            CHECK((size_t)n <= cap &&
                  ccid_check_reply(out, (size_t)n, 0x6F, st.slot, st.seq, 0) == CCID_OK);
        if (n > 0)
            chain_moves++;
        else if (n == CCID_CHAIN_DONE)
            chain_ends++;
        if (n == CCID_CHAIN_OTHER)
            n = 1; /* the caller's general code took the reply; go on */
        free(reply);
    }
    CHECK(ccid_chain_step(NULL, 0, NULL, 0) == CCID_E_RANGE);
    CHECK(ccid_chain_step(&st, 300, NULL, 0) == CCID_E_RANGE);
    free(out);
    free(resp);
    free(cmd);
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 200000;
    long i;
    size_t out_len;

    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) | 1u : 0x9E3779B97F4A7C15ULL;
    /* NULL pointers with zero lengths are legal inputs */
    CHECK(ccid_check_reply(NULL, 0, 0, 0, 0, 0) == CCID_SHORT_HEADER);
    CHECK(ccid_reply_header(NULL, 0, 0, 0, 0, 0) == CCID_SHORT_HEADER);
    CHECK(ccid_frame_size(NULL, 0) == -1);
    CHECK(ccid_check_t1_block(NULL, 0, 1) == CCID_T1_SHORT);
    CHECK(ccid_join_check(NULL, 0) == CCID_JOIN_EMPTY);
    CHECK(ccid_join_chained(NULL, NULL, NULL, 0, NULL, 0, &out_len) == CCID_JOIN_EMPTY);
    CHECK(ccid_build_frame(NULL, 0, 0, 0, 0, 0, 0, 0, NULL, 0) == CCID_E_CAPACITY);
    for (i = 0; i < iterations; i++) {
        switch (i % 4) {
        case 0: frames(); break;
        case 1: t1_blocks(); break;
        case 2: chunks(); break;
        default: if (i % 40 == 3) chains(); break; /* a whole exchange per call */
        }
    }
    if (failures) {
        fprintf(stderr, "%d invariant failures\n", failures);
        return 1;
    }
    /* the expected replies must have driven exchanges forward and to their end */
    CHECK(iterations < 4000 || (chain_moves > 100 && chain_ends > 10));
    if (failures) {
        fprintf(stderr, "%d invariant failures\n", failures);
        return 1;
    }
    printf("chains: %ld moves, %ld ends\n", chain_moves, chain_ends);
    printf("ok %ld iterations\n", iterations);
    return 0;
}
