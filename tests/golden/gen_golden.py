#!/usr/bin/env python3
"""Independent float64 PyTorch reference of /work/shared/spec/model.md version 2 (IISAN).

Writes tests/golden/golden.safetensors: four small cases of inputs, parameters, forward
outputs, the in-batch debiased cross-entropy loss and autograd gradients, and for case a the
parameters after one Adam step under each learning-rate rule, used as golden vectors by the
C implementation's tests.  Run through tests/golden/gen_golden.sh.

Every stored float32/float16 value is exactly the value the reference computed with: inputs
are rounded to fp16, parameters and logpop to fp32, and then all arithmetic is float64.
"""
import json
import math
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
SEED = 1234
D, R, DE, N, HEADS, NSTATES, B, NITEMS = 16, 4, 8, 4, 2, 5, 3, 7
GATE_TEMP, LN_EPS, MASKED_LOGIT, ATT_NEG = 0.1, 1e-6, -1e4, -1e9
SEQS = [[0, 0, 1, 2, 3], [4, 5, 6, 7, 2], [0, 3, 3, 6, 1]]
# inter_start: the spec version whose remove-first inter SAN start is used (2: u_0 = 0;
# 1: u_0 = (T[0] + V[0]) / 2, kept as an option to reproduce version-1 figures)
CASES = {"a": dict(schedule=[0, 2, 4], remove_first=False, act="relu", inter_start=2),
         "b": dict(schedule=[2, 4], remove_first=True, act="gelu", inter_start=2),
         "d": dict(schedule=[2, 4], remove_first=True, act="gelu", inter_start=1)}
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
TOWERS = ("text", "image", "inter")
FULL_CHECK = "--full-gradcheck" in sys.argv          # gradcheck every parameter (slower)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.safetensors")


# ---------------------------------------------------------------- parameters
def seq_param_specs():
    """(name, shape, kind) of the sequence encoder; kind selects the init distribution."""
    s = [("seq.pos", (N, DE), "seqw"), ("seq.ln.weight", (DE,), "lnw"), ("seq.ln.bias", (DE,), "lnb")]
    for b in range(2):
        p = f"seq.layer.{b}."
        s += [(p + f"attn.{m}.weight", (DE, DE), "seqw") for m in "qkvo"]
        s += [(p + "ln1.weight", (DE,), "lnw"), (p + "ln1.bias", (DE,), "lnb"),
              (p + "ffn.w1.weight", (4 * DE, DE), "seqw"), (p + "ffn.w1.bias", (4 * DE,), "bias"),
              (p + "ffn.w2.weight", (DE, 4 * DE), "seqw"), (p + "ffn.w2.bias", (DE,), "bias"),
              (p + "ln2.weight", (DE,), "lnw"), (p + "ln2.bias", (DE,), "lnb")]
    return s


def iisan_param_specs(K):
    s = []
    for t in TOWERS:
        for k in range(K):
            p = f"{t}.block.{k}."
            s += [(p + "down.weight", (R, D), "sanw"), (p + "down.bias", (R,), "bias"),
                  (p + "up.weight", (D, R), "sanw"), (p + "up.bias", (D,), "bias")]
        s += [(f"{t}.gate", (K,), "gate"), (f"{t}.fc.weight", (D, D), "lin"), (f"{t}.fc.bias", (D,), "bias"),
              (f"{t}.proj.weight", (DE, D), "lin"), (f"{t}.proj.bias", (DE,), "bias")]
    s += [("fuse.weight", (DE, 3 * DE), "lin"), ("fuse.bias", (DE,), "bias")]
    return s + seq_param_specs()


def draw_params(specs, gen):
    std = {"sanw": 0.3, "bias": 0.1, "gate": 0.05, "seqw": 0.3, "lnb": 0.1, "lnw": 0.1, "emb": 0.5}
    params = {}
    for name, shape, kind in specs:
        sd = 1.0 / math.sqrt(shape[-1]) if kind == "lin" else std[kind]   # lin: fan_in = in dim
        x = torch.randn(shape, generator=gen) * sd + (1.0 if kind == "lnw" else 0.0)
        params[name] = x.float().double().requires_grad_(True)            # fp32-representable
    return params


# ---------------------------------------------------------------- building blocks
def linear(p, name, x, bias=True):
    y = x @ p[name + ".weight"].T
    return y + p[name + ".bias"] if bias else y


def layer_norm(p, name, x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)                      # biased variance
    return (x - mu) / torch.sqrt(var + LN_EPS) * p[name + ".weight"] + p[name + ".bias"]


def activation(kind, x):
    if kind == "relu":
        return torch.clamp(x, min=0.0)
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))            # exact (erf) GELU


def san_block(p, pre, x, act):
    return x + linear(p, pre + ".up", activation(act, linear(p, pre + ".down", x)))


# ---------------------------------------------------------------- item tower (IISAN)
def item_embeddings(p, T, V, cfg):
    """T, V: [items, NSTATES, D] float64; returns e: [items, DE]."""
    S, act, rf = cfg["schedule"], cfg["act"], cfg["remove_first"]
    h = {}
    for t, X in (("text", T), ("image", V)):
        g = torch.sigmoid(p[t + ".gate"] / GATE_TEMP)
        hk = X[:, 0] if rf else torch.zeros_like(X[:, 0])
        for k, s in enumerate(S):
            hk = san_block(p, f"{t}.block.{k}", g[k] * X[:, s] + (1 - g[k]) * hk, act)
        h[t] = hk
    g = torch.sigmoid(p["inter.gate"] / GATE_TEMP)
    v1_start = rf and cfg["inter_start"] == 1
    u = 0.5 * (T[:, 0] + V[:, 0]) if v1_start else torch.zeros_like(T[:, 0])
    for k, s in enumerate(S):
        u = san_block(p, f"inter.block.{k}", u + g[k] * V[:, s] + (1 - g[k]) * T[:, s], act)
    h["inter"] = u
    z = {t: linear(p, t + ".proj", linear(p, t + ".fc", h[t])) for t in TOWERS}
    return linear(p, "fuse", torch.cat([z["image"], z["text"], z["inter"]], dim=-1))


# ---------------------------------------------------------------- sequence encoder + loss
def attention_bias(inp):
    """[B, N, N] additive bias: 0 where j <= i and input slot j is real, else -1e9."""
    causal = torch.tril(torch.ones(N, N, dtype=torch.bool))
    ok = causal[None] & (inp != 0)[:, None, :]
    return torch.where(ok, 0.0, ATT_NEG)


def encoder(p, E, seqs):
    inp = seqs[:, :N]
    X = layer_norm(p, "seq.ln", E[inp] + p["seq.pos"])
    bias = attention_bias(inp)[:, None]                                # broadcast over heads
    dh = DE // HEADS
    for b in range(2):
        pre = f"seq.layer.{b}."
        split = lambda y: y.view(y.shape[0], N, HEADS, dh).transpose(1, 2)   # [B, H, N, dh]
        q, k, v = (split(linear(p, pre + f"attn.{m}", X, bias=False)) for m in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(X.shape[0], N, DE)     # heads concatenated
        A = layer_norm(p, pre + "ln1", X + linear(p, pre + "attn.o", ctx, bias=False))
        ffn = linear(p, pre + "ffn.w2", torch.relu(linear(p, pre + "ffn.w1", A)))
        X = layer_norm(p, pre + "ln2", A + ffn)
    return X


def queries(seqs):
    """Real queries (u, j) in row-major order with their target slot index."""
    return [(u, j, u * (N + 1) + j + 1) for u in range(B) for j in range(N) if seqs[u, j] != 0]


def candidate_mask(seqs, u, target):
    items = seqs.reshape(-1)
    in_hist = torch.isin(items, seqs[u])
    not_target = torch.arange(items.numel()) != target
    return (items == 0) | (in_hist & not_target)


def logits_and_loss(O, E, seqs, logpop):
    items = seqs.reshape(-1)
    base = O.reshape(-1, DE) @ E[items].T - logpop[items]              # [B*N, C]
    rows, losses = [], []
    for u, j, t in queries(seqs):
        lg = torch.where(candidate_mask(seqs, u, t), MASKED_LOGIT, base[u * N + j])
        rows.append(lg)
        losses.append(torch.logsumexp(lg, 0) - lg[t])
    return torch.stack(rows), torch.stack(losses).mean()


# ---------------------------------------------------------------- optimiser
def spec_lr(name, rules):
    """The learning rate of a parameter by name: the spec's table (rules 2) or version 1's two
    groups (SAN blocks and every gate 1e-4, the rest 2e-4)."""
    tower, _, rest = name.partition(".")
    is_block = ".block." in name
    is_gate = rest == "gate"
    if rules == 1:
        return 1e-4 if is_block or is_gate else 2e-4
    if is_block:
        return 1e-4
    if tower == "text" and rest.startswith("fc."):
        return 5e-5
    if tower == "image" and (rest.startswith("fc.") or is_gate):
        return 1e-4
    return 2e-4            # text and inter gates, P_t, P_v, F_x, P_x, fusion, the encoder


def adam_first_step(w, g, lr):
    """torch.optim.Adam's first step from zero moments (no weight decay)."""
    opt = torch.optim.Adam([w], lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    w.grad = g.clone()
    opt.step()
    return w


# ---------------------------------------------------------------- data
def make_inputs(gen):
    T = torch.randn(NITEMS + 1, NSTATES, D, generator=gen).half()
    V = torch.randn(NITEMS + 1, NSTATES, D, generator=gen).half()
    T[0] = 0; V[0] = 0          # padding item
    V[3] = 0                    # item 3 has no image
    T[5] = 0                    # item 5 has no text
    seqs = torch.tensor(SEQS, dtype=torch.int64)
    real = seqs[seqs != 0]
    count = torch.bincount(real, minlength=NITEMS + 1).double()
    logpop = torch.where(count > 0, torch.log(count / real.numel()), 0.0)
    logpop[0] = 0.0                                                    # pop(padding) = 1
    return T, V, seqs, logpop.float().double()


# ---------------------------------------------------------------- independent checks
def check_masks(seqs, logits):
    qs = queries(seqs)
    items = seqs.reshape(-1)
    for row, (u, j, t) in enumerate(qs):
        assert seqs[u, j + 1] != 0 and logits[row, t] != MASKED_LOGIT, "target masked"
        for c in range(items.numel()):
            expect = items[c] == 0 or (items[c] in seqs[u].tolist() and c != t)
            assert bool(logits[row, c] == MASKED_LOGIT) == bool(expect), (row, c)
    # spot checks on the fixed sequences: user 2's repeated item 3 (slots 11, 12) and
    # item 2 shared by users 0 (slot 3) and 1 (slot 9)
    row = qs.index((2, 1, 12)); assert logits[row, 11] == MASKED_LOGIT and logits[row, 12] != MASKED_LOGIT
    row = qs.index((2, 2, 13)); assert logits[row, 11] == MASKED_LOGIT and logits[row, 12] == MASKED_LOGIT
    row = qs.index((0, 3, 4)); assert logits[row, 9] == MASKED_LOGIT and logits[row, 4] != MASKED_LOGIT


def check_with_torch_nn(p, E, seqs, O):
    """Recompute the encoder with torch.nn modules (LayerNorm, MultiheadAttention) and GELU."""
    inp = seqs[:, :N]
    def ln(name):
        m = nn.LayerNorm(DE, eps=LN_EPS)
        m.weight.data, m.bias.data = p[name + ".weight"].detach(), p[name + ".bias"].detach()
        return m
    X = ln("seq.ln")(E.detach()[inp] + p["seq.pos"].detach())
    mask = attention_bias(inp).repeat_interleave(HEADS, dim=0)           # [B*H, N, N]
    for b in range(2):
        pre = f"seq.layer.{b}."
        mha = nn.MultiheadAttention(DE, HEADS, bias=False, batch_first=True)
        mha.in_proj_weight.data = torch.cat([p[pre + f"attn.{m}.weight"].detach() for m in "qkv"])
        mha.out_proj.weight.data = p[pre + "attn.o.weight"].detach()
        A = ln(pre + "ln1")(X + mha(X, X, X, attn_mask=mask, need_weights=False)[0])
        f = nn.functional.linear
        h = torch.relu(f(A, p[pre + "ffn.w1.weight"].detach(), p[pre + "ffn.w1.bias"].detach()))
        X = ln(pre + "ln2")(A + f(h, p[pre + "ffn.w2.weight"].detach(), p[pre + "ffn.w2.bias"].detach()))
    real = inp != 0                     # padded query rows are precision-sensitive (see README)
    assert torch.allclose(X[real], O.detach()[real], atol=1e-10), "encoder mismatch vs torch.nn"
    x = torch.linspace(-4, 4, 101)
    assert torch.allclose(activation("gelu", x), nn.functional.gelu(x), atol=1e-14)


def check_gradients(loss_fn, p, names):
    for name in names:
        def f(x, name=name):
            q = dict(p); q[name] = x
            return loss_fn(q)
        x = p[name].detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, rtol=1e-5), name


# ---------------------------------------------------------------- main
def main():
    gen = torch.Generator().manual_seed(SEED)
    T16, V16, seqs, logpop = make_inputs(gen)
    T, V = T16.double(), V16.double()
    tensors, meta = {}, {"generator": "tests/golden/gen_golden.py", "torch_version": torch.__version__}
    losses, drawn = {}, {}
    for case in ("a", "b", "c", "d"):
        if case == "c":                                                # SASRec-ID baseline
            p = draw_params(seq_param_specs() + [("item_emb.weight", (NITEMS + 1, DE), "emb")], gen)
            embed = lambda q: q["item_emb.weight"]
            cfg = {"d": DE, "n": N, "heads": HEADS, "ln_eps": LN_EPS, "B": B, "n_items": NITEMS}
        else:
            c = CASES[case]
            if case == "d":            # b's parameters under version 1's u_0: b's old figures
                p = {k: v.detach().clone().requires_grad_(True) for k, v in drawn["b"].items()}
            else:
                p = draw_params(iisan_param_specs(len(c["schedule"])), gen)
            drawn[case] = p
            embed = lambda q, c=c: item_embeddings(q, T, V, c)
            cfg = {"D": D, "r": R, "d": DE, "n": N, "heads": HEADS, "nstates": NSTATES, **c,
                   "gate_temp": GATE_TEMP, "ln_eps": LN_EPS, "B": B, "n_items": NITEMS}
        meta[case + ".config"] = json.dumps(cfg)

        def forward(q):
            E = embed(q)
            O = encoder(q, E, seqs)
            return (E, O) + logits_and_loss(O, E, seqs, logpop)
        E, O, logits, loss = forward(p)
        loss.backward()
        losses[case] = loss.item()

        check_masks(seqs, logits)
        check_with_torch_nn(p, E, seqs, O)
        assert all(torch.isfinite(p[k].grad).all() and p[k].grad.abs().sum() > 0
                   for k in p), "a parameter gets no gradient"
        picks = ["seq.pos", "seq.layer.0.attn.q.weight", "seq.layer.1.ffn.w2.bias", "seq.ln.weight"]
        picks += ["item_emb.weight"] if case == "c" else \
            ["text.gate", "image.block.0.down.weight", "inter.gate", "inter.block.1.up.bias",
             "text.fc.weight", "image.proj.bias", "fuse.weight"]
        check_gradients(lambda q: forward(q)[3], p, list(p) if FULL_CHECK else picks)

        pre = case + "."
        tensors[pre + "in.seqs"] = seqs.int()
        tensors[pre + "in.logpop"] = logpop.float()
        if case != "c":
            tensors[pre + "in.text"], tensors[pre + "in.image"] = T16.clone(), V16.clone()
            tensors[pre + "out.item_emb"] = E.detach().float()
        tensors[pre + "out.logits"] = logits.detach().float()
        tensors[pre + "out.seq_out"] = O.detach().float()
        tensors[pre + "out.loss"] = loss.detach().float().reshape(1)
        for k, v in p.items():
            tensors[pre + "p." + k] = v.detach().float()
            tensors[pre + "grad." + k] = v.grad.float()
        if case == "a":              # one Adam step from the stored values, under each rule
            for rules in (1, 2):
                for k, v in p.items():
                    w = v.detach().float().double().clone().requires_grad_(True)
                    g = v.grad.float().double()
                    w = adam_first_step(w, g, spec_lr(k, rules))
                    tensors[pre + f"adam{rules}." + k] = w.detach().float()
        print(f"case {case}: loss = {loss.item():.10f}  queries = {logits.shape[0]}")

    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(tensors)} tensors)")
    return losses


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
