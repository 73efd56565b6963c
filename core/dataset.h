/* The spec's data protocol: users with fewer than min_len items dropped, each
 * sequence cut to its last n + 3 items, items re-indexed 1..N (in order of
 * first appearance when users are visited in user-id order; 0 = padding),
 * leave-one-out splits, popularity over the training parts. */
#ifndef IISAN_CORE_DATASET_H
#define IISAN_CORE_DATASET_H

#include <stddef.h>
#include <stdint.h>

struct iisan_store;

typedef struct {
    int max_len;             /* n */
    int n_users;             /* kept users */
    int n_items;             /* N: model items 1..N */
    uint64_t n_interactions; /* sum of kept (cut) sequence lengths */
    uint32_t *item_cat;      /* [N+1] model index -> store catalogue index; [0] = 0 */
    int64_t *seq_off;        /* [n_users+1] CSR offsets into seq */
    int32_t *seq;            /* model item indexes, oldest first, each sequence of
                                length min_len .. n+3 */
    double *pop_count;       /* [N+1] occurrences in training parts; [0] = 0 */
    float *logpop;           /* [N+1] log(count / total); [0] = log 1 = 0; -inf
                                never occurs for items in training parts */
} iisan_dataset;

/* Builds the dataset from the store's users. Returns 0 or a negative
 * IISAN_E* code with a message in err. */
int dataset_build(iisan_dataset *ds, struct iisan_store *s, int max_len, int min_len, char *err,
                  size_t errlen);

/* Same from in-memory sequences (tests, benchmarks): n_users sequences of
 * catalogue indexes in CSR form. */
int dataset_from_sequences(iisan_dataset *ds, const uint32_t *const *seqs, const uint32_t *lens,
                           int n_users, int max_len, int min_len);
void dataset_free(iisan_dataset *ds);

enum { SPLIT_TRAIN = 0, SPLIT_VALID = 1, SPLIT_TEST = 2 };

/* For user u and split:
 *   TRAIN: out[0..n] = the last n+1 items of seq[:-2], left-padded with 0
 *          (length n+1); returns the number of real items.
 *   VALID: out[0..n-1] = up to n items before seq[-2], left-padded (length n);
 *          *target = seq[-2]; returns the number of real inputs.
 *   TEST:  likewise before seq[-1], *target = seq[-1].
 */
int dataset_sequence(const iisan_dataset *ds, int u, int split, int32_t *out, int32_t *target);

/* Every item of user u's sequence before the split's target (VALID: seq[:-2],
 * TEST: seq[:-1]; at most n+2 items) into out; returns the count. These are
 * excluded from the ranking at evaluation. */
int dataset_history(const iisan_dataset *ds, int u, int split, int32_t *out);

#endif
