/* libFuzzer target for ccid/_fast.c (built by tests/test_fast_asan.py when clang exists).
 *
 * The first input byte picks the function and its flags; the rest is the frame, block or
 * APDU. Every call gets an exact-size copy so ASan sees any access past the end.
 */
#include <stdlib.h>
#include <string.h>

#include "_fast.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t op, *copy, *out;
    size_t n, cap;

    if (size == 0)
        return 0;
    op = data[0];
    n = size - 1;
    copy = malloc(n ? n : 1);
    if (copy == NULL)
        return 0;
    if (n)
        memcpy(copy, data + 1, n);
    cap = n + 10 - (op >> 5); /* sometimes a little too small */
    out = malloc(cap);
    if (out == NULL) {
        free(copy);
        return 0;
    }
    switch (op & 7) {
    case 0:
        (void)ccid_check_reply(copy, n, 0x80, op >> 6, op, (long long)(op & 0x38) * 8);
        (void)ccid_reply_header(copy, n, 0x80, op >> 6, op, (long long)(op & 0x38) * 8);
        (void)ccid_frame_size(copy, n);
        break;
    case 1:
        if (ccid_build_frame(out, cap, 0x6F, 0, op, 0, 0, 0, copy, n) >= 0 &&
            ccid_check_reply(out, n + 10, 0x6F, 0, op, 0) != CCID_OK)
            abort();
        break;
    case 2:
        (void)ccid_check_t1_block(copy, n, op & 8);
        break;
    case 3:
        if (ccid_build_t1_block(out, cap, 0, op, copy, n, op & 8) >= 0 && n < 0xFF &&
            ccid_check_t1_block(out, n + ((op & 8) ? 5u : 4u), op & 8) != CCID_T1_OK)
            abort();
        break;
    case 4: {
        /* the input as the reply to a chain's first frame, in either mode */
        ccid_chain st;
        uint8_t cmd[600], resp[300];
        long long k;

        (void)ccid_join_check(copy, n);
        memset(&st, 0, sizeof st);
        memset(cmd, op, sizeof cmd);
        st.mode = op & 8 ? CCID_CHAIN_T1 : CCID_CHAIN_EXTENDED;
        st.crc = op & 16;
        st.ifsd = 254;
        st.chunk = (size_t)(op >> 5) * 30 + 1;
        st.cmd = cmd;
        st.cmd_len = (size_t)(op >> 3) * 20 + 1;
        st.resp = resp;
        st.resp_cap = sizeof resp;
        st.out = out;
        st.out_cap = cap;
        k = ccid_chain_first(&st, op);
        if (k >= 0)
            (void)ccid_chain_step(&st, 1, copy, n);
        break;
    }
    default: {
        long long chunk = (long long)(op >> 3) + 1;
        long long count = ccid_split_count(n, chunk);
        size_t k = count > 0 ? (size_t)count : 1, total = 0, i;
        uint16_t *levels = malloc(k * sizeof *levels);
        size_t *offsets = malloc(k * sizeof *offsets), *lengths = malloc(k * sizeof *lengths);
        uint8_t *lv = malloc(k);
        const uint8_t **parts = malloc(k * sizeof *parts);
        uint8_t *joined = malloc(n ? n : 1);
        size_t out_len;

        if (levels && offsets && lengths && lv && parts && joined &&
            ccid_split_extended(n, chunk, levels, offsets, lengths, k) == count) {
            for (i = 0; i < k; i++) {
                lv[i] = (uint8_t)levels[i];
                parts[i] = copy + offsets[i];
                total += lengths[i];
            }
            if (total != n ||
                ccid_join_chained(lv, parts, lengths, k, joined, n, &out_len) != 0 ||
                out_len != n || (n && memcmp(joined, copy, n) != 0))
                abort();
        }
        free(joined);
        free(parts);
        free(lv);
        free(lengths);
        free(offsets);
        free(levels);
        break;
    }
    }
    free(out);
    free(copy);
    return 0;
}
