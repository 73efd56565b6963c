#!/usr/bin/env python3
"""Converts a Hugging Face checkpoint directory that has only pytorch_model.bin into
model.safetensors, the only weights file iisan reads (core/encoder_bert.h). Needs torch and
safetensors (for instance tests/golden_encoder/gen.sh's build/golden-venv):

    build/golden-venv/bin/python deploy/convert-to-safetensors.py MODEL_DIR

Tensors keep their names and dtypes; each is made contiguous and stored once (tied weights
that share storage are copied). The .bin is loaded with weights_only=True (no pickled code)."""
import os
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: convert-to-safetensors.py MODEL_DIR")
    d = sys.argv[1]
    src, dst = os.path.join(d, "pytorch_model.bin"), os.path.join(d, "model.safetensors")
    if os.path.exists(dst):
        sys.exit(f"{dst} exists already")
    state = torch.load(src, map_location="cpu", weights_only=True)
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items()
               if isinstance(v, torch.Tensor)}
    save_file(tensors, dst, metadata={"format": "pt"})
    print(f"{dst}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
