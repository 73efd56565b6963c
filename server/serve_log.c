/* key=value log lines on stderr, one write(2) each. */
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "server/serve.h"

static atomic_int min_rank = 1; /* info */

int log_level_rank(const char *level) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (level && !strcmp(level, names[i])) return i;
    return -1;
}

void log_set_level(const char *level) {
    int r = log_level_rank(level);
    if (r >= 0) atomic_store(&min_rank, r);
}

const char *log_q(const char *v, char *buf, size_t cap) {
    if (!v) return "-";
    int plain = *v != '\0';
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' ||
            (unsigned char)*p == 0x7f)
            plain = 0;
    if (plain && strlen(v) < cap) return v;
    size_t o = 0;
    if (cap < 8) return "-";
    buf[o++] = '"';
    for (const char *p = v; *p && o + 6 < cap; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch < ' ' || ch == 0x7f) {
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
        } else {
            buf[o++] = (char)ch;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

void log_event(const char *level, const char *event, const char *fmt, ...) {
    if (log_level_rank(level) < atomic_load(&min_rank)) return;
    char line[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), level, event);
    if (fmt && *fmt && n < (int)sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
        n = m < 0 ? n : n + m;
    }
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
