/* Bounded line reader, UTF-8 validation and a string map for the importers. */
#include "store/tsv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "store/store.h"

#define TSV_CAP (2 * (size_t)TSV_MAX_LINE + 64)

int tsv_open(tsv_reader *r, const char *path, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    r->path = path;
    r->f = fopen(path, "rb");
    if (!r->f) {
        if (err) snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return IISAN_EIO;
    }
    struct stat st;
    if (fstat(fileno(r->f), &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            if (err) snprintf(err, errlen, "%s: is a directory, not a file", path);
            fclose(r->f);
            r->f = NULL;
            return IISAN_EIO;
        }
        if (S_ISREG(st.st_mode)) r->size = (uint64_t)st.st_size;
    }
    r->cap = TSV_CAP;
    r->buf = malloc(r->cap);
    if (!r->buf) {
        if (err) snprintf(err, errlen, "%s: out of memory", path);
        fclose(r->f);
        r->f = NULL;
        return IISAN_ENOMEM;
    }
    return 0;
}

void tsv_close(tsv_reader *r) {
    if (r->f) fclose(r->f);
    free(r->buf);
    r->f = NULL;
    r->buf = NULL;
}

int tsv_rewind(tsv_reader *r, char *err, size_t errlen) {
    if (fseek(r->f, 0, SEEK_SET)) {
        if (err) snprintf(err, errlen, "%s: cannot rewind: %s", r->path, strerror(errno));
        return IISAN_EIO;
    }
    clearerr(r->f);
    r->beg = r->end = 0;
    r->eof = 0;
    r->lineno = r->consumed = 0;
    return 0;
}

int tsv_next(tsv_reader *r, char **line, size_t *len, char *err, size_t errlen) {
    char *b;
    size_t n;
    for (;;) {
        b = r->buf + r->beg;
        size_t avail = r->end - r->beg;
        char *nl = memchr(b, '\n', avail);
        if (nl) {
            n = (size_t)(nl - b);
            r->beg += n + 1;
            r->consumed += n + 1;
            break;
        }
        if (avail > (size_t)TSV_MAX_LINE + 1) { /* + 1: a "\r" before the newline */
            if (err)
                snprintf(err, errlen, "%s:%llu: line longer than 1 MiB (%u bytes)", r->path,
                         (unsigned long long)r->lineno + 1, TSV_MAX_LINE);
            return IISAN_EFORMAT;
        }
        if (r->eof) {
            if (avail == 0) return 0;
            n = avail;
            r->beg = r->end;
            r->consumed += n;
            break;
        }
        if (r->beg) {
            memmove(r->buf, b, avail);
            r->beg = 0;
            r->end = avail;
        }
        size_t got = fread(r->buf + r->end, 1, r->cap - 1 - r->end, r->f);
        if (got == 0) {
            if (ferror(r->f)) {
                if (err)
                    snprintf(err, errlen, "%s:%llu: read error: %s", r->path,
                             (unsigned long long)r->lineno + 1, strerror(errno));
                return IISAN_EIO;
            }
            r->eof = 1;
        }
        r->end += got;
    }
    r->lineno++;
    b[n] = '\0'; /* the newline, or the spare byte after the buffer's end */
    if (n && b[n - 1] == '\r') b[--n] = '\0';
    if (n > TSV_MAX_LINE) {
        if (err)
            snprintf(err, errlen, "%s:%llu: line longer than 1 MiB (%u bytes)", r->path,
                     (unsigned long long)r->lineno, TSV_MAX_LINE);
        return IISAN_EFORMAT;
    }
    if (r->lineno == 1 && n >= 3 && !memcmp(b, "\xEF\xBB\xBF", 3)) {
        b += 3;
        n -= 3;
    }
    const char *z = memchr(b, '\0', n);
    if (z) {
        if (err)
            snprintf(err, errlen, "%s:%llu: NUL byte at column %zu", r->path,
                     (unsigned long long)r->lineno, (size_t)(z - b) + 1);
        return IISAN_EFORMAT;
    }
    size_t bad = utf8_check(b, n);
    if (bad < n) {
        if (err)
            snprintf(err, errlen, "%s:%llu: invalid UTF-8 at column %zu (byte 0x%02x)", r->path,
                     (unsigned long long)r->lineno, bad + 1, (unsigned char)b[bad]);
        return IISAN_EFORMAT;
    }
    *line = b;
    *len = n;
    return 1;
}

size_t utf8_check(const void *p, size_t n) {
    const unsigned char *s = p;
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF)
            k = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF)
            k = 2, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4)
            k = 3, cp = c & 0x07;
        else
            return i; /* continuation byte, overlong lead C0/C1, or F5..FF */
        if (n - i <= k) return i;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return i;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if (k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return i;
        if (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) return i;
        i += k + 1;
    }
    return n;
}

void tsv_quote(char *out, size_t cap, const char *s, size_t n, size_t max) {
    if (!cap) return;
    if (cap < 5) {
        out[0] = '\0';
        return;
    }
    if (max > cap - 4) max = cap - 4;
    int cut = n > max;
    if (cut) {
        n = max;
        while (n && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(out, s, n);
    if (cut) memcpy(out + n, "...", 3), n += 3;
    out[n] = '\0';
}

/* ---- string map ---- */

static uint32_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 33; /* murmur3's finaliser: FNV's low bits alone cluster */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (uint32_t)h;
}

void strmap_init(strmap *m) { memset(m, 0, sizeof *m); }

void strmap_clear(strmap *m) {
    for (size_t i = 0; i < m->cap; i++) {
        free(m->slots[i].key);
        m->slots[i].key = NULL;
    }
    m->n = 0;
}

void strmap_free(strmap *m) {
    strmap_clear(m);
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static int strmap_grow(strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    strmap_slot *slots = calloc(cap, sizeof *slots);
    if (!slots) return IISAN_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key) continue;
        size_t j = m->slots[i].hash & (cap - 1);
        while (slots[j].key)
            j = (j + 1) & (cap - 1);
        slots[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return 0;
}

int strmap_put(strmap *m, const char *key, size_t len, uint32_t val, uint32_t *old) {
    if ((m->n + 1) * 10 > m->cap * 7 && strmap_grow(m)) return IISAN_ENOMEM;
    uint32_t h = hash_bytes(key, len);
    size_t j = h & (m->cap - 1);
    for (; m->slots[j].key; j = (j + 1) & (m->cap - 1)) {
        strmap_slot *e = &m->slots[j];
        if (e->hash == h && e->len == len && !memcmp(e->key, key, len)) {
            if (old) *old = e->val;
            return 1;
        }
    }
    char *k = malloc(len + 1);
    if (!k) return IISAN_ENOMEM;
    memcpy(k, key, len);
    k[len] = '\0';
    m->slots[j] = (strmap_slot){k, h, (uint32_t)len, val};
    m->n++;
    return 0;
}

int strmap_get(const strmap *m, const char *key, size_t len, uint32_t *val) {
    if (!m->cap) return 0;
    uint32_t h = hash_bytes(key, len);
    for (size_t j = h & (m->cap - 1); m->slots[j].key; j = (j + 1) & (m->cap - 1)) {
        const strmap_slot *e = &m->slots[j];
        if (e->hash == h && e->len == len && !memcmp(e->key, key, len)) {
            *val = e->val;
            return 1;
        }
    }
    return 0;
}
