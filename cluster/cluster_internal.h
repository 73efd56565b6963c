/* Shared state of cluster mode's parts: cluster.c (settings, lease,
 * repository follower and publisher) and consume.c (the write path and the
 * stream consumer). */
#ifndef IISAN_CLUSTER_INTERNAL_H
#define IISAN_CLUSTER_INTERNAL_H

#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>

#include "cluster/bus.h"
#include "cluster/cluster.h"

typedef struct {
    int role;
    char redis[256];
    char prefix[64];
    char repo[PATH_MAX];
    char node[128];
    long lease_ms, poll_ms, timeout_ms, wait_replicas, wait_ms;
} cluster_cfg;

extern cluster_cfg g_cl;
extern atomic_int g_cl_stop;

/* consume.c */
int consume_start(char *err, size_t errlen);
void consume_stop(void);
int consume_announce(uint32_t version); /* PUBLISH on the write connection */
void consume_status(json_t *j);         /* adds bus_pos, applied entries */

/* sleeps up to ms, waking early when g_cl_stop is set */
void cluster_sleep_ms(long ms);

#endif
