#!/usr/bin/env python3
"""Reference fixtures for the built-in encoders (core/encoder_bert.c, core/encoder_vit.c) and
the WordPiece tokenizer (core/wordpiece.c), from Hugging Face transformers (the Python
BertTokenizer and BertModel). Run through gen.sh (developers only; CI reads the
committed files). Writes, under tests/golden_encoder/:

  tiny-bert/          a random BertModel (2 layers, hidden 32, 4 heads, intermediate 37)
                      saved by save_pretrained(safe_serialization=True), with its small
                      vocab.txt (a subset of the uncased BERT vocabulary)
  tiny.safetensors    the tiny model's inputs and [CLS] states for a set of titles, and
                      the tiny vocabulary's token ids of the "torture" strings
  tiny-vit/           a random ViTModel (image 32, patch 8, 2 layers, hidden 32)
  tiny_vit.safetensors  three random images and the tiny ViT's [CLS] states
  minilm.safetensors  with all-MiniLM-L6-v2's vocabulary (deploy/install-minilm.sh):
                      the token ids of every title of the Scientific catalogue, of the
                      torture strings, and MiniLM's [CLS] states for a few titles

Every reference computation is float64 on the stored fp32 weights, rounded to fp32.
The seed is fixed: a second run writes the same tensors.
"""
import argparse
import hashlib
import json
import os
import random
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import BertConfig, BertModel, BertTokenizer, ViTConfig, ViTModel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
ITEMS = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "amazon", "scientific",
                                     "items.tsv"))
MAX_LEN = 30
SEED = 1234


def read_titles(path):
    """items.tsv as iisan's store reads it: UTF-8, an optional BOM, one \\r before
    \\n dropped, blank lines skipped, the title is everything after the tab."""
    data = open(path, "rb").read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    ids, titles = [], []
    for line in data.decode("utf-8").split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        i, t = line.split("\t", 1)
        ids.append(i)
        titles.append(t)
    return data, ids, titles


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def blob(texts):
    """texts -> (U8 bytes, I64 offsets [n+1])"""
    enc = [t.encode("utf-8") for t in texts]
    off = np.zeros(len(enc) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(e) for e in enc])
    return np.frombuffer(b"".join(enc), dtype=np.uint8).copy(), off


def torture_strings(n, seed):
    """Strings that exercise every step of the tokenizer: controls, Zs / Zl / Zp,
    CJK, Hangul, Greek capital sigma, combining marks, U+0130, compatibility
    characters, punctuation of many scripts, literal special tokens, over-long
    words, unassigned and private-use code points."""
    rng = random.Random(seed)
    pools = [
        list(range(0x20, 0x7F)), list(range(0xA0, 0x250)), list(range(0x370, 0x400)),
        list(range(0x400, 0x530)), list(range(0x300, 0x370)), [0x3A3] * 20 + [0x3C3, 0x3C2],
        list(range(0x4E00, 0x4E40)), list(range(0xAC00, 0xAC40)),
        [0, 1, 9, 10, 13, 0x1C, 0x1F, 0x7F, 0x85, 0xA0, 0xAD, 0x200B, 0x200D, 0x2028, 0x2029,
         0x3000, 0x2000, 0x2001, 0xFEFF, 0xFFFD, 0xE000, 0x378, 0x10FFFF, 0xF900, 0xFA30,
         0x2F800],
        list(range(0x2000, 0x2070)), list(range(0x1F600, 0x1F640)),
        [0x130, 0x131, 0x1E9E, 0xDF, 0x149, 0x1F0, 0x390, 0x1E96, 0x2126, 0x212A, 0x212B,
         0xFB00, 0xFB01],
        list(range(0x1100, 0x1200)), list(range(0x3040, 0x3100)), list(range(0x600, 0x700)),
        list(range(0x900, 0x980)), list(range(0x1D400, 0x1D420)), list(range(0xFF00, 0xFF60)),
        [cp for cp in (rng.randrange(0x110000) for _ in range(4000))
         if not 0xD800 <= cp <= 0xDFFF],
    ]
    words = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "[cls]", "[CLS", "CLS]", "[[MASK]]",
             "&amp;", "&quot;", "micro-scope", "Hello", "ΣΑΣ", "ὈΔΥΣΣΕΎΣ", "İstanbul", "Ǆ",
             "ﬁne", "x" * 101, "y" * 100, "naïve café", "3.5mm", "A/B", "e.g.", "\t", "\n",
             "\r\n", " ", "  ", "[CL\x00S]", "résumé", "Ⅻ", "①②"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.25:
                parts.append(rng.choice(words))
            else:
                p = rng.choice(pools)
                parts.append("".join(chr(rng.choice(p)) for _ in range(rng.randint(1, 8))))
            if rng.random() < 0.6:
                parts.append(" ")
        out.append("".join(parts))
    return out


def ids_of(tok, texts):
    """full token ids (no [CLS] / [SEP], no truncation) -> (flat ids, counts)"""
    flat, counts = [], []
    for t in texts:
        ids = tok.convert_tokens_to_ids(tok.tokenize(t))
        flat.extend(ids)
        counts.append(len(ids))
    return np.array(flat, dtype=np.int32), np.array(counts, dtype=np.int32)


def check_truncation(tok, texts, flat, counts):
    """The model input is [CLS] + the first MAX_LEN-2 ids + [SEP] + padding: the C test
    derives it from the full ids, so make sure the reference does the same."""
    enc = tok(texts, max_length=MAX_LEN, truncation=True, padding="max_length")
    off = 0
    for i, n in enumerate(counts):
        ids = list(flat[off:off + n])
        off += n
        k = min(n, MAX_LEN - 2)
        want = [tok.cls_token_id] + ids[:k] + [tok.sep_token_id]
        want += [tok.pad_token_id] * (MAX_LEN - len(want))
        assert enc["input_ids"][i] == want, (i, texts[i])
        assert enc["attention_mask"][i] == [1] * (k + 2) + [0] * (MAX_LEN - k - 2)


def cls_states(model, ids, mask):
    """[N, L+1, D] float64 [CLS] vectors of every hidden state"""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.zeros_like(torch.tensor(ids)),
                    output_hidden_states=True)
    return torch.stack(out.hidden_states, 1)[:, :, 0, :]


def tiny_vocab(minilm_vocab, titles):
    """specials, ASCII characters and their ## forms, a few CJK characters, then the
    MiniLM wordpieces of the golden titles (so that most of a title is not [UNK])"""
    toks = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    toks += ["##" + chr(c) for c in range(33, 127) if chr(c).isalnum() and not chr(c).isupper()]
    toks += ["显", "微", "镜", "σ", "ς", "α", "ß"]
    tok = BertTokenizer(minilm_vocab, do_lower_case=True)
    for t in titles:
        for w in tok.tokenize(t):
            if w not in toks:
                toks.append(w)
    return toks


def tiny_vit(meta):
    """a random ViTModel (image 32, patch 8: 16 patches + [CLS]; 2 layers, hidden 32,
    4 heads, intermediate 37) and the [CLS] states of 3 random images"""
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True)
    model = ViTModel(cfg, add_pooling_layer=True)
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "cls_token" in name or "position_embeddings" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5 * 1.5)
    model.eval()
    vdir = os.path.join(HERE, "tiny-vit")
    os.makedirs(vdir, exist_ok=True)
    model.save_pretrained(vdir, safe_serialization=True)
    ref = ViTModel.from_pretrained(vdir, attn_implementation="eager").double().eval()
    pixels = (torch.rand((3, 3, 32, 32), generator=g) * 2 - 1).float()
    with torch.no_grad():
        out = ref(pixel_values=pixels.double(), output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == cfg.num_hidden_layers + 1
    # state L is the last layer's output before the final layernorm
    assert not torch.allclose(hs[-1], out.last_hidden_state)
    assert torch.allclose(ref.layernorm(hs[-1]), out.last_hidden_state)
    st = torch.stack(hs, 1)[:, :, 0, :]
    save_file({"pixels": pixels.numpy(), "states": st.numpy().astype(np.float32)},
              os.path.join(HERE, "tiny_vit.safetensors"), metadata=meta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", required=True, help="all-MiniLM-L6-v2 model directory")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    raw, item_ids, sci = read_titles(ITEMS)

    crafted = [
        "",
        "Naïve Café Résumé: ÉLAN, façade & crème brûlée",
        "[MASK] test [CLS] inside, [cls] lower-case &amp; &quot;quoted&quot;",
        "显微镜 microscope 3.5mm A/B e.g. x" + "y" * 120,
        " ".join(["Lab-grade borosilicate beaker"] * 8),  # far beyond 30 tokens
        "ΣΑΣ Ὀδυσσεύς İstanbul ﬁne \u00a0 tab\there\u2028line",
    ]
    golden = sci[:14] + crafted

    # ---- tiny model ----
    minilm_vocab = os.path.join(args.minilm, "vocab.txt")
    tdir = os.path.join(HERE, "tiny-bert")
    os.makedirs(tdir, exist_ok=True)
    vocab = tiny_vocab(minilm_vocab, golden)
    with open(os.path.join(tdir, "vocab.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(vocab) + "\n")
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=40,
                     type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = BertModel(cfg, add_pooling_layer=True)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # larger than BERT's init, so that attention is far from uniform
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embeddings" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5 * 1.5)
    model.eval()
    model.save_pretrained(tdir, safe_serialization=True)
    ttok = BertTokenizer(os.path.join(tdir, "vocab.txt"), do_lower_case=True)
    enc = ttok(golden, max_length=MAX_LEN, truncation=True, padding="max_length")
    ids = np.array(enc["input_ids"], dtype=np.int32)
    mask = np.array(enc["attention_mask"], dtype=np.int32)
    ref = BertModel.from_pretrained(tdir, attn_implementation="eager").double().eval()
    st64 = cls_states(ref, ids, mask)
    st32 = cls_states(BertModel.from_pretrained(tdir, attn_implementation="eager").eval(),
                      ids, mask).double()
    print(f"tiny: vocab {len(vocab)}, fp32 vs fp64 max |diff| "
          f"{(st32 - st64).abs().max().item():.2e}", file=sys.stderr)
    # the [CLS] rows do not depend on the padding length
    short = int(mask.sum(1).max())
    st_short = cls_states(ref, ids[:, :short], mask[:, :short])
    assert (st_short - st64).abs().max().item() < 1e-12
    torture = torture_strings(1000, SEED)
    tor_tiny, tor_tiny_n = ids_of(ttok, torture)
    tb, to = blob(golden)
    xb, xo = blob(torture)
    meta = {"generator": "tests/golden_encoder/gen.py", "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "max_len": str(MAX_LEN),
            "python_unicode": __import__("unicodedata").unidata_version}
    save_file({"titles": tb, "titles.off": to, "ids": ids, "mask": mask,
               "states": st64.numpy().astype(np.float32),
               "torture": xb, "torture.off": xo, "torture.ids": tor_tiny,
               "torture.count": tor_tiny_n},
              os.path.join(HERE, "tiny.safetensors"), metadata=meta)
    tiny_vit(meta)

    # ---- MiniLM: tokenizer on the whole catalogue, torture strings, states ----
    mtok = BertTokenizer(minilm_vocab, do_lower_case=True)
    sci_ids, sci_n = ids_of(mtok, sci)
    check_truncation(mtok, sci, sci_ids, sci_n)
    check_truncation(mtok, golden, *ids_of(mtok, golden))
    tor_m, tor_m_n = ids_of(mtok, torture)
    assert sci_ids.max() < 65536
    mm = BertModel.from_pretrained(args.minilm, attn_implementation="eager").double().eval()
    menc = mtok(golden[:8] + crafted, max_length=MAX_LEN, truncation=True,
                padding="max_length")
    mids = np.array(menc["input_ids"], dtype=np.int32)
    mmask = np.array(menc["attention_mask"], dtype=np.int32)
    mst = cls_states(mm, mids, mmask)
    mtitles, mtoff = blob(golden[:8] + crafted)
    vocab_sha = hashlib.sha256(open(minilm_vocab, "rb").read()).hexdigest()
    meta2 = dict(meta)
    meta2.update({"items_fnv1a64": f"{fnv1a64(raw):016x}", "items_count": str(len(sci)),
                  "vocab_sha256": vocab_sha})
    save_file({"sci.ids": sci_ids.astype(np.uint16), "sci.count": sci_n.astype(np.uint16),
               "torture.ids": tor_m, "torture.count": tor_m_n,
               "titles": mtitles, "titles.off": mtoff, "ids": mids, "mask": mmask,
               "states": mst.numpy().astype(np.float32)},
              os.path.join(HERE, "minilm.safetensors"), metadata=meta2)
    print(f"minilm: {len(sci)} titles, {len(sci_ids)} ids; states {tuple(mst.shape)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
