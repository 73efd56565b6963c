/* WordPiece tokenizer: see core/wordpiece.h for the exact behaviour. The
 * steps below follow Hugging Face's BertTokenizer (PreTrainedTokenizer.tokenize,
 * BasicTokenizer, WordpieceTokenizer) one by one; the Unicode data is the
 * generated core/wordpiece_unicode.h. */
#include "core/wordpiece.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/wordpiece_unicode.h"
#include "store/store.h"

#define WP_MAX_WORD 100 /* max_input_chars_per_word */

/* the special tokens BertTokenizer never splits (all_special_tokens) */
static const char *const specials[] = {"[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"};
enum { N_SPECIALS = 5 };

typedef struct {
    uint32_t off, len; /* into strings */
    int32_t id;        /* -1: empty slot */
} wp_slot;

struct wp_vocab {
    char *strings;     /* every token, NUL-terminated, in line order */
    uint32_t *tok_off; /* [n] offset of line i's token */
    int n;
    wp_slot *slots; /* open addressing, power-of-two size */
    size_t mask;
    size_t max_key; /* longest token in bytes */
    int unk, cls, sep, pad;
    int special_id[N_SPECIALS]; /* the specials' ids (unk when absent) */
};

/* ---- vocabulary ---- */

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int lookup_bytes(const wp_vocab *v, const char *key, size_t n) {
    if (n > v->max_key) return -1;
    for (size_t i = fnv1a(key, n) & v->mask;; i = (i + 1) & v->mask) {
        const wp_slot *s = &v->slots[i];
        if (s->id < 0) return -1;
        if (s->len == n && !memcmp(v->strings + s->off, key, n)) return s->id;
    }
}

static int set_err(char *err, size_t errlen, int code, const char *fmt, const char *name,
                   const char *what) {
    if (err && errlen) snprintf(err, errlen, fmt, name, what);
    return code;
}

int wp_parse(wp_vocab **out, const char *bytes, size_t len, const char *name, char *err,
             size_t errlen) {
    *out = NULL;
    wp_vocab *v = calloc(1, sizeof *v);
    if (!v) return set_err(err, errlen, IISAN_ENOMEM, "%s: %s", name, "out of memory");
    /* lines end at \n, \r\n or \r (Python's universal newlines); the last
     * line may lack its end; an empty file has no tokens */
    int n = 0;
    for (size_t i = 0; i < len; i++) {
        if (bytes[i] == '\n' || bytes[i] == '\r') {
            n++;
            if (bytes[i] == '\r' && i + 1 < len && bytes[i + 1] == '\n') i++;
        }
    }
    if (len && bytes[len - 1] != '\n' && bytes[len - 1] != '\r') n++;
    v->strings = malloc(len + 1);
    v->tok_off = malloc(sizeof *v->tok_off * (size_t)(n ? n : 1));
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap <<= 1;
    v->slots = malloc(sizeof *v->slots * cap);
    if (!v->strings || !v->tok_off || !v->slots) {
        wp_free(v);
        return set_err(err, errlen, IISAN_ENOMEM, "%s: %s", name, "out of memory");
    }
    v->mask = cap - 1;
    for (size_t i = 0; i < cap; i++)
        v->slots[i].id = -1;
    size_t w = 0, i = 0;
    for (int line = 0; line < n; line++) {
        size_t b = i;
        while (i < len && bytes[i] != '\n' && bytes[i] != '\r')
            i++;
        size_t tl = i - b;
        if (memchr(bytes + b, 0, tl)) {
            char what[64];
            snprintf(what, sizeof what, "NUL byte on line %d", line + 1);
            wp_free(v);
            return set_err(err, errlen, IISAN_EFORMAT, "%s: %s", name, what);
        }
        if (i < len) i += (bytes[i] == '\r' && i + 1 < len && bytes[i + 1] == '\n') ? 2 : 1;
        memcpy(v->strings + w, bytes + b, tl);
        v->strings[w + tl] = 0;
        v->tok_off[line] = (uint32_t)w;
        /* insert or overwrite: a later duplicate wins */
        for (size_t h = fnv1a(bytes + b, tl) & v->mask;; h = (h + 1) & v->mask) {
            wp_slot *s = &v->slots[h];
            if (s->id < 0) {
                s->off = (uint32_t)w;
                s->len = (uint32_t)tl;
                s->id = line;
                break;
            }
            if (s->len == tl && !memcmp(v->strings + s->off, bytes + b, tl)) {
                s->id = line;
                break;
            }
        }
        if (tl > v->max_key) v->max_key = tl;
        w += tl + 1;
    }
    v->n = n;
    v->unk = wp_lookup(v, "[UNK]");
    v->cls = wp_lookup(v, "[CLS]");
    v->sep = wp_lookup(v, "[SEP]");
    v->pad = wp_lookup(v, "[PAD]");
    const char *missing = v->unk < 0   ? "[UNK]"
                          : v->cls < 0 ? "[CLS]"
                          : v->sep < 0 ? "[SEP]"
                          : v->pad < 0 ? "[PAD]"
                                       : NULL;
    if (missing) {
        char what[96];
        snprintf(what, sizeof what, "no %s token (not a BERT vocabulary?)", missing);
        wp_free(v);
        return set_err(err, errlen, IISAN_EFORMAT, "%s: %s", name, what);
    }
    for (int k = 0; k < N_SPECIALS; k++) {
        int id = wp_lookup(v, specials[k]);
        v->special_id[k] = id >= 0 ? id : v->unk;
    }
    *out = v;
    return 0;
}

int wp_load(wp_vocab **out, const char *path, char *err, size_t errlen) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, errlen, IISAN_EIO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return set_err(err, errlen, IISAN_ENOMEM, "%s: %s", path, "out of memory");
        }
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) free(buf);
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return set_err(err, errlen, IISAN_EIO, "%s: %s", path, "read error");
    }
    int rc = wp_parse(out, buf, len, path, err, errlen);
    free(buf);
    return rc;
}

void wp_free(wp_vocab *v) {
    if (!v) return;
    free(v->strings);
    free(v->tok_off);
    free(v->slots);
    free(v);
}

int wp_size(const wp_vocab *v) { return v->n; }
int wp_lookup(const wp_vocab *v, const char *token) {
    return lookup_bytes(v, token, strlen(token));
}
const char *wp_token(const wp_vocab *v, int id) {
    return id >= 0 && id < v->n ? v->strings + v->tok_off[id] : NULL;
}
int wp_id_unk(const wp_vocab *v) { return v->unk; }
int wp_id_cls(const wp_vocab *v) { return v->cls; }
int wp_id_sep(const wp_vocab *v) { return v->sep; }
int wp_id_pad(const wp_vocab *v) { return v->pad; }

/* ---- Unicode ---- */

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}
#define IN(table, cp) in_ranges(table, sizeof table / sizeof table[0], cp)

static const wpu_map *find_map(const wpu_map *m, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < m[mid].cp)
            hi = mid;
        else if (cp > m[mid].cp)
            lo = mid + 1;
        else
            return &m[mid];
    }
    return NULL;
}

static int is_other(uint32_t cp) { return IN(wpu_other, cp); }              /* category C* */
static int is_space(uint32_t cp) { return cp == ' ' || IN(wpu_space, cp); } /* str.isspace */
static int is_punct(uint32_t cp) { return IN(wpu_punct, cp); }
static int is_mn(uint32_t cp) { return cp >= 0x300 && IN(wpu_mn, cp); }
static int is_cjk(uint32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Python's str.lower() of one character: 1 or 2 code points into out */
static int lower1(uint32_t cp, uint32_t *out) {
    if (cp < 0x80) {
        out[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
        return 1;
    }
    const wpu_map *m = find_map(wpu_lower, sizeof wpu_lower / sizeof wpu_lower[0], cp);
    if (!m) {
        out[0] = cp;
        return 1;
    }
    for (int i = 0; i < m->len; i++)
        out[i] = wpu_lower_pool[m->off + i];
    return m->len;
}

/* NFD of one character: up to 4 code points into out */
static int nfd1(uint32_t cp, uint32_t *out) {
    if (cp < 0xC0) {
        out[0] = cp;
        return 1;
    }
    if (cp >= 0xAC00 && cp <= 0xD7A3) { /* Hangul syllable: L V (T) */
        uint32_t s = cp - 0xAC00;
        out[0] = 0x1100 + s / 588;
        out[1] = 0x1161 + (s % 588) / 28;
        if (s % 28) {
            out[2] = 0x11A7 + s % 28;
            return 3;
        }
        return 2;
    }
    const wpu_map *m = find_map(wpu_nfd, sizeof wpu_nfd / sizeof wpu_nfd[0], cp);
    if (!m) {
        out[0] = cp;
        return 1;
    }
    for (int i = 0; i < m->len; i++)
        out[i] = wpu_nfd_pool[m->off + i];
    return m->len;
}

/* ---- working buffers ---- */

typedef struct {
    uint32_t *p;
    size_t n, cap;
} cpbuf;

static int push(cpbuf *b, uint32_t cp) {
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        uint32_t *np = realloc(b->p, nc * sizeof *np);
        if (!np) return -1;
        b->p = np;
        b->cap = nc;
    }
    b->p[b->n++] = cp;
    return 0;
}

typedef struct {
    const wp_vocab *v;
    int32_t *ids;
    int cap;
    int count;
    cpbuf text, word; /* scratch */
    int oom;
} tok_ctx;

static void emit(tok_ctx *c, int id) {
    if (c->count < c->cap) c->ids[c->count] = id;
    c->count++;
}

/* UTF-8 decoding; an invalid byte is U+FFFD and decoding resumes at the next
 * byte */
static size_t utf8_next(const unsigned char *s, size_t len, size_t i, uint32_t *cp) {
    unsigned c = s[i];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int n;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) {
        n = 1, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 2, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 3, v = c & 0x07, min = 0x10000;
    } else {
        *cp = 0xFFFD;
        return 1;
    }
    if (i + n >= len) { /* not enough bytes */
        *cp = 0xFFFD;
        return 1;
    }
    for (int k = 1; k <= n; k++) {
        if ((s[i + k] & 0xC0) != 0x80) {
            *cp = 0xFFFD;
            return 1;
        }
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = v;
    return (size_t)n + 1;
}

static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- WordpieceTokenizer.tokenize of one word (no whitespace inside) ---- */

static void wordpiece(tok_ctx *c, const uint32_t *w, size_t m) {
    const wp_vocab *v = c->v;
    if (m == 0) return;
    if (m > WP_MAX_WORD) {
        emit(c, v->unk);
        return;
    }
    char bytes[WP_MAX_WORD * 4 + 4], key[WP_MAX_WORD * 4 + 8];
    size_t off[WP_MAX_WORD + 1];
    off[0] = 0;
    for (size_t i = 0; i < m; i++)
        off[i + 1] = off[i] + utf8_put(w[i], bytes + off[i]);
    int sub[WP_MAX_WORD], nsub = 0;
    size_t start = 0;
    key[0] = key[1] = '#';
    while (start < m) {
        int found = -1;
        size_t end = m;
        for (; end > start; end--) {
            size_t nb = off[end] - off[start];
            if (start == 0) {
                found = lookup_bytes(v, bytes, nb);
            } else {
                if (nb + 2 > v->max_key) continue;
                memcpy(key + 2, bytes + off[start], nb);
                found = lookup_bytes(v, key, nb + 2);
            }
            if (found >= 0) break;
        }
        if (found < 0) {
            emit(c, v->unk);
            return;
        }
        sub[nsub++] = found;
        start = end;
    }
    for (int i = 0; i < nsub; i++)
        emit(c, sub[i]);
}

static int special_match(const uint32_t *u, size_t n, size_t i) {
    for (int k = 0; k < N_SPECIALS; k++) {
        const char *s = specials[k];
        size_t j = 0;
        while (s[j] && i + j < n && u[i + j] == (unsigned char)s[j])
            j++;
        if (!s[j]) return k;
    }
    return -1;
}

/* one whitespace-separated token of BasicTokenizer: lower, strip accents,
 * split on punctuation, wordpiece each piece */
static void basic_word(tok_ctx *c, const uint32_t *t, size_t n) {
    /* never_split: a token that is exactly a special token stays whole */
    int k = special_match(t, n, 0);
    if (k >= 0 && strlen(specials[k]) == n) {
        wordpiece(c, t, n);
        return;
    }
    cpbuf *w = &c->word;
    w->n = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t lo[2], d[4];
        int nl = lower1(t[i], lo);
        for (int a = 0; a < nl; a++) {
            int nd = nfd1(lo[a], d);
            for (int b = 0; b < nd; b++)
                if (!is_mn(d[b]) && push(w, d[b])) c->oom = 1;
        }
    }
    if (c->oom) return;
    /* _run_split_on_punc, then whitespace_tokenize again, then wordpiece */
    size_t i = 0;
    while (i < w->n) {
        if (is_punct(w->p[i])) {
            wordpiece(c, w->p + i, 1);
            i++;
            continue;
        }
        size_t b = i;
        while (i < w->n && !is_punct(w->p[i]))
            i++;
        size_t j = b;
        while (j < i) { /* no whitespace is expected here; split anyway */
            while (j < i && is_space(w->p[j]))
                j++;
            size_t s = j;
            while (j < i && !is_space(w->p[j]))
                j++;
            wordpiece(c, w->p + s, j - s);
        }
    }
}

/* BasicTokenizer.tokenize of one segment between special tokens, after the
 * per-character lower-casing */
static void basic_segment(tok_ctx *c, const uint32_t *u, size_t n) {
    cpbuf *t = &c->text;
    t->n = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t lo[2];
        int nl = lower1(u[i], lo); /* the pre-lowering of PreTrainedTokenizer.tokenize */
        for (int a = 0; a < nl; a++) {
            uint32_t d = lo[a];
            int r = 0;
            if (d == 0 || d == 0xFFFD) continue; /* _clean_text */
            if (d == '\t' || d == '\n' || d == '\r' || d == ' ' || IN(wpu_zs, d)) {
                r = push(t, ' ');
            } else if (is_other(d)) {
                continue;
            } else if (is_cjk(d)) { /* _tokenize_chinese_chars */
                r = push(t, ' ') | push(t, d) | push(t, ' ');
            } else {
                r = push(t, d);
            }
            if (r) {
                c->oom = 1;
                return;
            }
        }
    }
    size_t i = 0;
    while (i < t->n && !c->oom) { /* whitespace_tokenize */
        while (i < t->n && is_space(t->p[i]))
            i++;
        size_t b = i;
        while (i < t->n && !is_space(t->p[i]))
            i++;
        if (i > b) basic_word(c, t->p + b, i - b);
    }
}

int wp_tokenize(const wp_vocab *v, const char *text, size_t len, int32_t *ids, int cap) {
    tok_ctx c = {.v = v, .ids = ids, .cap = ids ? cap : 0};
    cpbuf u = {0};
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        i += utf8_next(s, len, i, &cp);
        if (push(&u, cp)) {
            free(u.p);
            return IISAN_ENOMEM;
        }
    }
    /* added-token split: specials as written, anywhere */
    size_t seg = 0;
    for (size_t i = 0; i < u.n && !c.oom;) {
        int k = special_match(u.p, u.n, i);
        if (k < 0) {
            i++;
            continue;
        }
        basic_segment(&c, u.p + seg, i - seg);
        emit(&c, v->special_id[k]);
        i += strlen(specials[k]);
        seg = i;
    }
    if (!c.oom) basic_segment(&c, u.p + seg, u.n - seg);
    free(u.p);
    free(c.text.p);
    free(c.word.p);
    return c.oom ? IISAN_ENOMEM : c.count;
}

int wp_encode(const wp_vocab *v, const char *text, size_t len, int max_len, int32_t *ids,
              int32_t *mask) {
    if (max_len < 2) return IISAN_EINVAL;
    int32_t *buf = malloc(sizeof *buf * (size_t)max_len);
    if (!buf) return IISAN_ENOMEM;
    int n = wp_tokenize(v, text, len, buf, max_len - 2);
    if (n < 0) {
        free(buf);
        return n;
    }
    if (n > max_len - 2) n = max_len - 2;
    int real = n + 2;
    for (int i = 0; i < max_len; i++) {
        int id = i == 0 ? v->cls : i <= n ? buf[i - 1] : i == n + 1 ? v->sep : v->pad;
        if (ids) ids[i] = id;
        if (mask) mask[i] = i < real;
    }
    free(buf);
    return real;
}
