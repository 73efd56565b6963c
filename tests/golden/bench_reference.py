#!/usr/bin/env python3
"""make bench-train's baseline: the spec's PyTorch reference trained on bench_train's work.

The model is gen_golden.py's (imported, not rewritten: item_embeddings, encoder,
logits_and_loss, spec_lr), set to the published shapes -- both modalities 13 x 768, K = 7
SAN blocks on states 0, 2, .., 12, r = 64, d = 64, n = 10, 2 heads, batch 64 -- and run in
float32 (gen_golden.py's fixtures are float64) with torch.optim.Adam under the spec's
learning-rate table. The work is tests/bench_train.c's: the real Scientific sequences (users
with at least 5 items, cut to their last 13, the training split: all but the last two, the
last n + 1 left-padded), random fp16 hidden states for every item converted to float32 per
batch, each batch's distinct items embedded once. Differences from iisan's training step,
none of which changes the GEMM work: no dropout (the reference has none), and the loss is
computed for all queries at once (logits_and_loss_batched below) instead of gen_golden.py's
per-query Python loop, which is written for clarity and would dominate the timing; the two
are compared on the warm-up batch and the run stops if they differ.

A full epoch of the reference takes minutes on 2 cores, so this times SAMPLES samples of
BATCHES consecutive batches (after one warm-up batch) and scales each to the epoch's batch
count; prints the median and, last, one JSON line.

    bench_reference.py USERS_TSV [--threads N] [--batches 8] [--samples 3]
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_golden as g  # noqa: E402  (the reference model)

torch.set_default_dtype(torch.float32)  # gen_golden sets float64 for its fixtures
g.D, g.R, g.DE, g.N, g.HEADS, g.NSTATES = 768, 64, 64, 10, 2, 13
CFG = dict(schedule=[0, 2, 4, 6, 8, 10, 12], remove_first=False, act="relu", inter_start=2)
BATCH, MIN_LEN, MAX_LEN = 64, 5, 10


def train_sequences(users_tsv):
    """The spec's training split of every kept user, [users, n + 1], and the item count."""
    ids, seqs = {}, []
    for line in open(users_tsv, encoding="utf-8"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 2:
            continue
        items = [ids.setdefault(i, len(ids) + 1) for i in parts[1].split()]
        if len(items) < MIN_LEN:
            continue
        items = items[-(MAX_LEN + 3):][:-2][-(MAX_LEN + 1):]
        seqs.append([0] * (MAX_LEN + 1 - len(items)) + items)
    return torch.tensor(seqs, dtype=torch.int64), len(ids)


def make_states(n_items, gen):
    """Random fp16 states for every item (row 0, the padding item, zero), both modalities."""
    out = []
    for _ in range(2):
        X = torch.empty(n_items + 1, g.NSTATES, g.D, dtype=torch.float16)
        for i in range(0, n_items + 1, 1024):  # in chunks: no float32 copy of the whole store
            n = min(1024, n_items + 1 - i)
            X[i:i + n] = torch.randn(n, g.NSTATES, g.D, generator=gen).half()
        X[0] = 0
        out.append(X)
    return out


def make_model(gen):
    """gen_golden's parameter set at these shapes. Its draw_params scales are the fixtures'
    (tiny shapes): at 768 wide they overflow the loss, so weights are drawn at 1/sqrt(fan_in)
    here, LayerNorm at 1 / 0 and gates at 0, as iisan initialises them; timing is the same."""
    p = {}
    for name, shape, kind in g.iisan_param_specs(len(CFG["schedule"])):
        if kind in ("bias", "lnb", "gate"):
            x = torch.zeros(shape)
        elif kind == "lnw":
            x = torch.ones(shape)
        else:
            x = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        p[name] = x.requires_grad_(True)
    groups = {}
    for k, v in p.items():
        groups.setdefault(g.spec_lr(k, 2), []).append(v)
    opt = torch.optim.Adam([{"params": v, "lr": lr} for lr, v in groups.items()],
                           betas=g.ADAM_BETAS, eps=g.ADAM_EPS)
    return p, opt


def logits_and_loss_batched(O, E, seqs, logpop):
    """gen_golden.logits_and_loss for every query in one pass: the same candidates (the
    batch's slots), the same masking (padding, and the user's own items except the target
    slot) and the same mean of -log softmax at the target; no Python loop over queries."""
    n, c = g.N, seqs.numel()
    items = seqs.reshape(-1)
    base = O.reshape(-1, g.DE) @ E[items].T - logpop[items]  # [B*N, C]
    qi = torch.nonzero((seqs[:, :n] != 0).reshape(-1)).squeeze(1)  # query rows, row-major
    u = qi // n
    t = u * (n + 1) + qi % n + 1  # the target's slot
    in_hist = (seqs[:, :, None] == items[None, None, :]).any(1)  # [B, C]
    not_target = torch.arange(c)[None, :] != t[:, None]
    mask = (items == 0)[None, :] | (in_hist[u] & not_target)
    lg = torch.where(mask, g.MASKED_LOGIT, base[qi])
    loss = (torch.logsumexp(lg, 1) - lg[torch.arange(qi.numel()), t]).mean()
    return lg, loss


def check_batched_loss(p, seqs, T, V, logpop):
    """The batched loss against the reference's own loop on one batch (no gradients)."""
    uniq, local = embed_batch(seqs)
    g.B = seqs.shape[0]
    with torch.no_grad():
        E = g.item_embeddings(p, T[uniq].float(), V[uniq].float(), CFG)
        O = g.encoder(p, E, local)
        lg0, l0 = g.logits_and_loss(O, E, local, logpop[uniq])
        lg1, l1 = logits_and_loss_batched(O, E, local, logpop[uniq])
    if not torch.equal(lg0, lg1) or abs(l0.item() - l1.item()) > 1e-5 * max(1.0, abs(l0.item())):
        sys.exit(f"bench_reference: the batched loss {l1.item()} differs from the reference's "
                 f"{l0.item()}")
    print(f"reference: batched loss equals gen_golden's loop on a batch ({l0.item():.6f})",
          file=sys.stderr)


def embed_batch(seqs):
    """The batch's distinct items (0, the padding item, first) and the sequences over them."""
    uniq, local = torch.unique(seqs, return_inverse=True)  # uniq[0] == 0 (padding) when present
    if uniq[0] != 0:
        uniq = torch.cat([torch.zeros(1, dtype=uniq.dtype), uniq])
        local = local + 1
    return uniq, local


def step(p, opt, seqs, T, V, logpop):
    """One training step on a batch: distinct items embedded once, loss, backward, Adam."""
    uniq, local = embed_batch(seqs)
    g.B = seqs.shape[0]
    opt.zero_grad(set_to_none=True)
    E = g.item_embeddings(p, T[uniq].float(), V[uniq].float(), CFG)
    O = g.encoder(p, E, local)
    _, loss = logits_and_loss_batched(O, E, local, logpop[uniq])
    loss.backward()
    opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("users")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--samples", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(42)
    seqs, n_items = train_sequences(a.users)
    real = seqs[seqs != 0]
    count = torch.bincount(real, minlength=n_items + 1).double()
    logpop = torch.where(count > 0, torch.log(count / real.numel()), 0.0).float()
    logpop[0] = 0.0
    T, V = make_states(n_items, gen)
    p, opt = make_model(gen)
    order = list(range(seqs.shape[0]))
    random.Random(42).shuffle(order)
    batches = [seqs[order[i:i + BATCH]] for i in range(0, len(order), BATCH)]
    need = 1 + a.batches * a.samples
    if need > len(batches):
        sys.exit(f"bench_reference: {need} batches wanted, the epoch has {len(batches)}")
    check_batched_loss(p, batches[0], T, V, logpop)
    step(p, opt, batches[0], T, V, logpop)  # warm-up
    per_epoch = []
    for s in range(a.samples):
        t0 = time.perf_counter()
        for b in batches[1 + s * a.batches:1 + (s + 1) * a.batches]:
            loss = step(p, opt, b, T, V, logpop)
        dt = time.perf_counter() - t0
        per_epoch.append(dt / a.batches * len(batches))
        print(f"reference sample {s + 1}: {a.batches} batches in {dt:.2f} s, "
              f"{per_epoch[-1]:.1f} s/epoch scaled (loss {loss:.4f})", file=sys.stderr)
    med = statistics.median(per_epoch)
    print(f"PyTorch reference (tests/golden/gen_golden.py's model, torch {torch.__version__}, "
          f"{a.threads} threads, fp32): median {med:.1f} s/epoch, {len(batches)} batches "
          f"(timed {a.samples} x {a.batches} batches, scaled to the epoch)", file=sys.stderr)
    print(json.dumps({"bench": "train-reference", "torch": torch.__version__,
                      "threads": a.threads, "batches_per_epoch": len(batches),
                      "timed_batches": a.samples * a.batches,
                      "seconds_per_epoch": round(med, 3),
                      "samples": [round(x, 3) for x in per_epoch]}))


if __name__ == "__main__":
    main()
