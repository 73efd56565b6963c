/* Cluster mode (docs/scaling.md): `iisan serve --role standalone|trainer|replica`.
 *
 * Standalone (the default) is the single daemon: none of this runs. In the
 * cluster roles every write (POST /interactions, POST /items, DELETE
 * /items/{id}) is appended to the Redis log stream (cluster/bus.h) and
 * acknowledged once Redis has it durably (AOF appendfsync always; WAIT for
 * Redis replicas when bus_wait_replicas > 0) and this node has applied it;
 * every node (trainer and replicas) applies the stream, in order, into its
 * own store (cluster/consume.c), the read position committed in the same
 * LMDB transaction as the interactions, so user histories are the same
 * everywhere and nothing is applied twice. Models move through the model
 * repository (cluster/repo.h): the trainer holding the lease publishes each
 * promoted version and points CURRENT at it; every other node follows
 * CURRENT (announced on pub/sub, polled as a fallback), verifies the
 * checksums, imports the checkpoint under the same version number and swaps
 * it in. */
#ifndef IISAN_CLUSTER_CLUSTER_H
#define IISAN_CLUSTER_CLUSTER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/request.h"
#include "store/interactions.h"

enum { ROLE_STANDALONE, ROLE_TRAINER, ROLE_REPLICA };

/* the role named in the configuration; -1 for an unknown name */
int cluster_role_parse(const char *name);
int cluster_role(void);
const char *cluster_role_name(void);

/* reads the cluster settings of the running configuration (before the first
 * model load: in a cluster role, loads take the repository's item table). 0,
 * or -1 with err (a bad setting). */
int cluster_configure(char *err, size_t errlen);
/* in a cluster role, starts the consumer, the repository follower and
 * (trainer) the lease threads. 0, or -1 with err. */
int cluster_start(char *err, size_t errlen);
/* stops the threads (a trainer gives its lease up), answers waiting writes */
void cluster_stop(void);

/* Cluster-mode writes, called by the HTTP handlers once the request is
 * valid: the HTTP status and its JSON body (*body; NULL = out of memory).
 * v are q's interactions resolved against this node's catalogue. */
int cluster_post_interactions(const ix_request *q, const store_interaction *v, json_t **body);
int cluster_post_items(const char *raw, size_t len, json_t **body);
int cluster_delete_item(const char *item_id, json_t **body);

/* 0 when this node may train and promote now (standalone; the trainer that
 * holds the lease); else -1 and err says why */
int cluster_may_train(char *err, size_t errlen);
/* after a job promoted version: the lease holder publishes it to the
 * repository and announces it */
void cluster_promoted(uint32_t version);
/* after a rollback to version on the lease holder: CURRENT points at it */
void cluster_rolled_back(uint32_t version);

/* the role, lease, read position and followed version, for /admin/status */
json_t *cluster_status_json(void);

#endif
