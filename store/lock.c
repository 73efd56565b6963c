/* The data directory's lock (store/lock.h). */
#include "store/lock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* the holder's "pid command" line, from the lock file ("" when unreadable) */
static void read_holder(int fd, char *buf, size_t cap) {
    ssize_t n = pread(fd, buf, cap - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
}

int store_lock(const char *dir, int create, const char *what, char *err, size_t errlen) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/lock", dir) >= (int)sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    if (create) { /* each missing component, 0700 */
        char tmp[PATH_MAX];
        memcpy(tmp, path, strlen(dir) + 1);
        tmp[strlen(dir)] = '\0';
        for (size_t i = 1, n = strlen(tmp); i <= n; i++) {
            if (tmp[i] != '/' && tmp[i] != '\0') continue;
            char c = tmp[i];
            tmp[i] = '\0';
            if (mkdir(tmp, 0700) && errno != EEXIST) {
                snprintf(err, errlen, "%s: cannot create the directory: %s", tmp, strerror(errno));
                return -1;
            }
            tmp[i] = c;
        }
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == ENOENT && !create) return -2;
        snprintf(err, errlen, "%s: cannot open the lock file: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        int e = errno;
        char holder[128];
        read_holder(fd, holder, sizeof holder);
        close(fd);
        if (e == EWOULDBLOCK) {
            int pid = 0;
            char cmd[64] = "";
            if (sscanf(holder, "%d %63s", &pid, cmd) >= 1 && pid > 0)
                snprintf(err, errlen,
                         "%s is in use by pid %d (iisan %s): one process writes a store at a "
                         "time; stop it first",
                         dir, pid, *cmd ? cmd : "?");
            else
                snprintf(err, errlen,
                         "%s is in use by another process (%s is locked): one process writes a "
                         "store at a time",
                         dir, path);
        } else {
            snprintf(err, errlen, "%s: cannot lock: %s", path, strerror(e));
        }
        return -1;
    }
    char line[96];
    int n = snprintf(line, sizeof line, "%d %s\n", (int)getpid(), what);
    if (ftruncate(fd, 0) || pwrite(fd, line, (size_t)n, 0) != n) {
        snprintf(err, errlen, "%s: cannot write the lock file: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}
