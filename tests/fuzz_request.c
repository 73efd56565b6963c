/* libFuzzer target for the API's request parsing (proto/request.c): any bytes
 * as the body of POST /recommend, /interactions, /items, /admin/retrain and
 * /admin/rollback. Besides the
 * sanitizers' checks, a parse that succeeds must respect the limits and a
 * failure must carry a 4xx/5xx status, a code and a message.
 * Built by `make fuzz` (clang -fsanitize=fuzzer,address,undefined); run as
 * build/fuzz_request tests/fuzz_corpus -runs=20000. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/request.h"

static void check(int ok) {
    if (!ok) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const req_limits lim = {50, 20, 20, 20};
    req_error e;
    rec_request r;
    memset(&e, 0, sizeof e);
    if (rec_request_parse((const char *)data, size, &lim, &r, &e) == 0) {
        check(r.k >= 1 && r.k <= lim.max_k);
        check(r.n_history <= (size_t)lim.max_history && r.n_exclude <= (size_t)lim.max_exclude);
        for (size_t i = 0; i < r.n_history; i++)
            check(r.history[i] != NULL);
        if (r.user_id) check(req_valid_id(r.user_id, strlen(r.user_id)));
        check(r.exclude_history == 0 || r.exclude_history == 1);
        rec_request_free(&r);
    } else {
        check(e.status >= 400 && e.status < 600 && e.code[0] && e.message[0]);
    }
    ix_request x;
    memset(&e, 0, sizeof e);
    if (ix_request_parse((const char *)data, size, &lim, &x, &e) == 0) {
        check(x.n >= 1 && x.n <= (size_t)lim.max_interactions);
        for (size_t i = 0; i < x.n; i++) {
            check(req_valid_id(x.v[i].user_id, strlen(x.v[i].user_id)));
            check(req_valid_id(x.v[i].item_id, strlen(x.v[i].item_id)));
            check(x.v[i].timestamp >= -1);
        }
        ix_request_free(&x);
    } else {
        check(e.status >= 400 && e.status < 600 && e.code[0] && e.message[0]);
    }
    items_request it;
    memset(&e, 0, sizeof e);
    if (items_request_parse((const char *)data, size, &lim, &it, &e) == 0) {
        check(it.n >= 1 && it.n <= (size_t)lim.max_interactions);
        for (size_t i = 0; i < it.n; i++) {
            check(req_valid_id(it.v[i].item_id, strlen(it.v[i].item_id)));
            check(it.v[i].title_len <= REQ_TITLE_MAX &&
                  !memchr(it.v[i].title, '\t', it.v[i].title_len));
            /* accepted states flatten to as many numbers as they hold; an accepted image is
             * base64 that decodes within its bound */
            for (int mod = 0; mod < 2; mod++)
                if (it.v[i].states[mod]) {
                    size_t cnt = req_states_flatten(it.v[i].states[mod], NULL, 0);
                    float *buf = malloc((cnt ? cnt : 1) * sizeof *buf);
                    check(buf && req_states_flatten(it.v[i].states[mod], buf, cnt) == cnt);
                    free(buf);
                }
            if (it.v[i].image) {
                unsigned char *bytes = malloc(it.v[i].image_len / 4 * 3 + 3);
                long nb = bytes ? req_base64_decode(it.v[i].image, it.v[i].image_len, bytes) : 0;
                check(nb >= 0 && (size_t)nb <= it.v[i].image_len / 4 * 3 + 3);
                free(bytes);
            }
        }
        items_request_free(&it);
    } else {
        check(e.status >= 400 && e.status < 600 && e.code[0] && e.message[0]);
    }
    retrain_request rt;
    if (retrain_request_parse((const char *)data, size, &rt, &e) == 0)
        check(rt.epochs >= 1 && rt.epochs <= 1000 && rt.tolerance >= 0 && rt.tolerance <= 1);
    rollback_request rb;
    if (rollback_request_parse((const char *)data, size, &rb, &e) == 0) check(rb.version >= 0);
    return 0;
}
