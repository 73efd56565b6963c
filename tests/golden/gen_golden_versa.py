#!/usr/bin/env python3
"""Independent float64 PyTorch reference of IISAN-Versa (/work/shared/spec/model.md, last
section): backbones of different widths and depths.

Writes tests/golden/golden_versa.safetensors: three small cases (wider text, wider image,
equal widths with unequal depths) of inputs, parameters, item embeddings, sequence-encoder
outputs, logits, the loss and autograd gradients. The sequence encoder, the loss and the
building blocks are gen_golden.py's (the symmetric reference); the Versa item tower is
written here from the spec. Same precision contract: inputs fp16, parameters fp32, float64
arithmetic. Run through tests/golden/gen_golden_versa.sh.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_golden as g  # noqa: E402  (the symmetric reference: encoder, loss, blocks)

torch.set_default_dtype(torch.float64)
SEED = 4321
R, DE, N, HEADS, B, NITEMS = g.R, g.DE, g.N, g.HEADS, g.B, g.NITEMS
# per case: each modality's width, states and schedule (remove_first), the SAN activation
CASES = {
    "va": dict(text=dict(D=24, nstates=7, schedule=[0, 2, 4, 6], remove_first=False),
               image=dict(D=16, nstates=5, schedule=[1, 3, 4], remove_first=False), act="relu"),
    "vb": dict(text=dict(D=12, nstates=5, schedule=[2, 4], remove_first=True),
               image=dict(D=20, nstates=4, schedule=[0, 1, 2, 3], remove_first=False), act="gelu"),
    "vc": dict(text=dict(D=16, nstates=5, schedule=[1, 2, 3, 4], remove_first=False),
               image=dict(D=16, nstates=5, schedule=[3, 4], remove_first=True), act="relu"),
}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_versa.safetensors")


def shapes(cfg):
    """Dt, Dv, Dx, Kt, Kv, K and the projected modality ('text', 'image' or None)."""
    Dt, Dv = cfg["text"]["D"], cfg["image"]["D"]
    Kt, Kv = len(cfg["text"]["schedule"]), len(cfg["image"]["schedule"])
    wide = "text" if Dt > Dv else "image" if Dv > Dt else None
    return Dt, Dv, min(Dt, Dv), Kt, Kv, min(Kt, Kv), wide


def versa_param_specs(cfg):
    Dt, Dv, Dx, Kt, Kv, K, wide = shapes(cfg)
    width = {"text": Dt, "image": Dv, "inter": Dx}
    depth = {"text": Kt, "image": Kv, "inter": K}
    s = []
    for t in g.TOWERS:
        D = width[t]
        for k in range(depth[t]):
            p = f"{t}.block.{k}."
            s += [(p + "down.weight", (R, D), "sanw"), (p + "down.bias", (R,), "bias"),
                  (p + "up.weight", (D, R), "sanw"), (p + "up.bias", (D,), "bias")]
        s += [(f"{t}.gate", (depth[t],), "gate")]
    if wide:
        Dw = width[wide]
        for k in range(K):
            s += [(f"inter.q.{k}.weight", (Dx, Dw), "lin"), (f"inter.q.{k}.bias", (Dx,), "bias")]
    # heads: F_t: Dt -> d, P_t: d -> d; F_v likewise; F_x: Dx -> Dx, P_x: Dx -> d
    for t in g.TOWERS:
        fo = Dx if t == "inter" else DE
        s += [(f"{t}.fc.weight", (fo, width[t]), "lin"), (f"{t}.fc.bias", (fo,), "bias"),
              (f"{t}.proj.weight", (DE, fo), "lin"), (f"{t}.proj.bias", (DE,), "bias")]
    s += [("fuse.weight", (DE, 3 * DE), "lin"), ("fuse.bias", (DE,), "bias")]
    return s + g.seq_param_specs()


def item_embeddings(p, T, V, cfg):
    """The spec's Versa item tower. T: [items, Lt+1, Dt], V: [items, Lv+1, Dv]."""
    Dt, Dv, Dx, Kt, Kv, K, wide = shapes(cfg)
    act = cfg["act"]
    h = {}
    for t, X in (("text", T), ("image", V)):
        m = cfg[t]
        gate = torch.sigmoid(p[t + ".gate"] / g.GATE_TEMP)
        hk = X[:, 0] if m["remove_first"] else torch.zeros_like(X[:, 0])
        for k, s in enumerate(m["schedule"]):
            hk = g.san_block(p, f"{t}.block.{k}", gate[k] * X[:, s] + (1 - gate[k]) * hk, act)
        h[t] = hk
    # the deeper tower's extra blocks ran first; step k reads the last K schedule entries
    St, Sv = cfg["text"]["schedule"], cfg["image"]["schedule"]
    gate = torch.sigmoid(p["inter.gate"] / g.GATE_TEMP)
    u = torch.zeros(T.shape[0], Dx)
    for k in range(K):
        tk, vk = T[:, St[Kt - K + k]], V[:, Sv[Kv - K + k]]
        if wide == "text":
            tk = g.linear(p, f"inter.q.{k}", tk)
        elif wide == "image":
            vk = g.linear(p, f"inter.q.{k}", vk)
        u = g.san_block(p, f"inter.block.{k}", u + gate[k] * vk + (1 - gate[k]) * tk, act)
    h["inter"] = u
    z = {t: g.linear(p, t + ".proj", g.linear(p, t + ".fc", h[t])) for t in g.TOWERS}
    return g.linear(p, "fuse", torch.cat([z["image"], z["text"], z["inter"]], dim=-1))


def make_inputs(gen, cfg):
    T = torch.randn(NITEMS + 1, cfg["text"]["nstates"], cfg["text"]["D"], generator=gen).half()
    V = torch.randn(NITEMS + 1, cfg["image"]["nstates"], cfg["image"]["D"], generator=gen).half()
    T[0] = 0; V[0] = 0          # padding item
    V[3] = 0                    # item 3 has no image
    T[5] = 0                    # item 5 has no text
    return T, V


def config_json(cfg):
    """The checkpoint's config JSON (core/checkpoint.c) of this case, plus B."""
    return json.dumps({
        "model": "iisan", "arch": "versa", "D": 0, "nstates": 0, "r": R, "schedule": [],
        "remove_first": False, "act": cfg["act"], "gate_temp": g.GATE_TEMP,
        "towers": ["image", "text", "inter"], "n_items": 0, "d": DE, "n": N, "heads": HEADS,
        "dropout": 0.0, "ln_eps": g.LN_EPS, "min_len": 5, "B": B,
        "modalities": {t: dict(cfg[t]) for t in ("text", "image")}})


def main():
    gen = torch.Generator().manual_seed(SEED)
    _, _, seqs, logpop = g.make_inputs(torch.Generator().manual_seed(g.SEED))
    tensors = {}
    meta = {"generator": "tests/golden/gen_golden_versa.py", "torch_version": torch.__version__}
    for case, cfg in CASES.items():
        T16, V16 = make_inputs(gen, cfg)
        T, V = T16.double(), V16.double()
        p = g.draw_params(versa_param_specs(cfg), gen)
        meta[case + ".config"] = config_json(cfg)

        def forward(q):
            E = item_embeddings(q, T, V, cfg)
            O = g.encoder(q, E, seqs)
            return (E, O) + g.logits_and_loss(O, E, seqs, logpop)
        E, O, logits, loss = forward(p)
        loss.backward()
        g.check_masks(seqs, logits)
        assert all(torch.isfinite(p[k].grad).all() and p[k].grad.abs().sum() > 0
                   for k in p), "a parameter gets no gradient"
        # gradcheck the tensors Versa adds or reshapes (small ones: every element is two
        # forward passes): the last projection's bias, the heads' biases and P_t, the gates
        picks = [k for k in p if (k.startswith("inter.q.") and k.endswith(".bias"))
                 or k.endswith(".fc.bias") or k == "text.proj.weight"][-6:]
        picks += ["text.gate", "image.gate", "inter.gate", "inter.block.0.up.bias"]
        g.check_gradients(lambda q: forward(q)[3], p, picks)

        pre = case + "."
        tensors[pre + "in.seqs"] = seqs.int()
        tensors[pre + "in.logpop"] = logpop.float()
        tensors[pre + "in.text"], tensors[pre + "in.image"] = T16.clone(), V16.clone()
        tensors[pre + "out.item_emb"] = E.detach().float()
        tensors[pre + "out.logits"] = logits.detach().float()
        tensors[pre + "out.seq_out"] = O.detach().float()
        tensors[pre + "out.loss"] = loss.detach().float().reshape(1)
        for k, v in p.items():
            tensors[pre + "p." + k] = v.detach().float()
            tensors[pre + "grad." + k] = v.grad.float()
        print(f"case {case}: loss = {loss.item():.10f}  parameters = {len(p)}  "
              f"gradchecked = {len(picks)}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
