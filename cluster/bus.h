/* The bus (cluster mode, docs/scaling.md): Redis through hiredis. One log
 * stream (<prefix>:log) carries every write in one total order: interaction
 * batches ("ix"), item additions ("items") and deletions ("del"); the trainer
 * lease is a key (<prefix>:lease, SET NX PX, renewed by its owner only); new
 * versions are announced on a channel (<prefix>:versions).
 *
 * A bus handle is one connection with connect and command timeouts; a
 * command that finds the connection broken reconnects once and retries it
 * (XADD is not retried after the command was sent: see bus_append). A handle
 * is used by one thread at a time. */
#ifndef IISAN_CLUSTER_BUS_H
#define IISAN_CLUSTER_BUS_H

#include <stddef.h>
#include <stdint.h>

typedef struct bus bus;

/* addr "host:port"; nothing is connected until the first command */
bus *bus_new(const char *addr, const char *prefix, int timeout_ms);
void bus_free(bus *b);
const char *bus_prefix(const bus *b);

/* Appends one entry (type, origin, payload) to the log stream; origin tags
 * the entry for the node that appended it (its consumer answers the waiting
 * request). Returns 0 once Redis
 * acknowledged it, with its stream id in id (64 bytes); when wait_replicas > 0,
 * only after WAIT saw that many Redis replicas take it within wait_ms. -1
 * (err) when the bus is unreachable, refused it, or too few replicas
 * acknowledged: the caller answers 503 (the entry may still have been
 * appended; nothing was acknowledged to anyone). */
int bus_append(bus *b, const char *type, const char *origin, const char *payload, size_t len,
               long wait_replicas, int wait_ms, char id[64], char *err, size_t errlen);

/* called for each entry read, in order; nonzero stops the read early */
typedef int (*bus_entry_fn)(void *arg, const char *id, const char *type, const char *origin,
                            const char *payload, size_t len);

/* Reads entries after id `after` ("0" = from the start), waiting up to
 * block_ms for the first; at most count. Returns how many were handed to fn,
 * or -1 (err) when the bus is unreachable. */
int bus_read(bus *b, const char *after, int block_ms, int count, bus_entry_fn fn, void *arg,
             char *err, size_t errlen);

/* The lease: takes it when free, renews it when owner holds it (ttl_ms).
 * 1 held, 0 held by another owner, -1 the bus is unreachable. */
int bus_lease(bus *b, const char *owner, long ttl_ms, char *err, size_t errlen);
/* gives the lease up when owner holds it */
void bus_lease_release(bus *b, const char *owner);

/* announces version on the versions channel (subscribers that miss it poll) */
int bus_announce(bus *b, uint32_t version, char *err, size_t errlen);

/* Waits up to ms for an announcement on the versions channel (its own
 * subscribed connection, made on first use). Returns the announced version,
 * 0 on timeout, -1 when the bus is unreachable (the caller polls). */
long bus_wait_announce(bus *b, int ms);

/* stream ids "ms-seq" compared: <0, 0, >0 */
int bus_id_cmp(const char *a, const char *b);

#endif
