/* One writer process per data directory: an exclusive flock(2) on DIR/lock,
 * taken before the store is opened by `iisan serve` and by the commands that
 * write the store (import, train, import-ckpt, encode). Readers (info, eval,
 * export) take no lock: LMDB serves them a consistent snapshot. The lock file
 * holds the holder's pid and command; the lock goes with the process (the
 * kernel drops it at exit, kill -9 included), so a stale file never blocks. */
#ifndef IISAN_STORE_LOCK_H
#define IISAN_STORE_LOCK_H

#include <stddef.h>

/* Locks dir (creating it, mode 0700, when create != 0). Returns the lock's file
 * descriptor (keep it open while writing; close it to release); -2 when dir does
 * not exist and create == 0 (nothing to lock: opening the store reports it); -1
 * with err naming the holder ("... is in use by pid N (iisan serve)") or the
 * failure. what names this process in the file ("serve", "train", ...). */
int store_lock(const char *dir, int create, const char *what, char *err, size_t errlen);

#endif
