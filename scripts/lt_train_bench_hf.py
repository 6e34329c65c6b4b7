#!/usr/bin/env python3
"""HF transformers side of `cargo bench -p lt-train --bench train_step`.

Trains the same tiny Llama shape on the rows the Rust bench built, with the reference's collation:
every sample right-padded to max_length (EOS ids, -100 labels, 0 positions) and a dense additive
[B,1,P,P] mask rebuilt with numpy per batch (padded rows copy the last real row), eager attention,
sum-CE / labelled-count loss, clip 1.0, AdamW. float32 on CPU (the reference uses bf16 on GPU).
Prints `HF_TOKENS_PER_S <real tokens per second>`.
"""
import json
import sys
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
spec = json.load(open(sys.argv[1]))
P, B, steps = spec["max_length"], spec["micro_batch"], spec["steps"]
rows = spec["rows"]
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"],
                                     intermediate_size=spec["intermediate"], num_hidden_layers=spec["layers"],
                                     num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
                                     max_position_embeddings=max(P, 128), tie_word_embeddings=False,
                                     attn_implementation="eager")).float()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)


def collate(batch):
    ids, labels, pos, masks = [], [], [], []
    for r in batch:
        T = len(r["input_ids"])
        ids.append(r["input_ids"] + [spec["pad_id"]] * (P - T))
        labels.append(r["labels"] + [-100] * (P - T))
        pos.append((r["position_ids"] or list(range(T))) + [0] * (P - T))
        A = np.array(r["mask"], dtype=bool).reshape(T, T)
        M = np.zeros((P, P), dtype=bool)
        M[:T, :T] = A
        M[T:, :T] = A[T - 1]
        masks.append(M)
    vis = torch.tensor(np.stack(masks))[:, None]
    add = torch.zeros(vis.shape, dtype=torch.float32).masked_fill(~vis, torch.finfo(torch.float32).min)
    return torch.tensor(ids), torch.tensor(labels), torch.tensor(pos), add


tokens = 0
t0 = time.perf_counter()
for s in range(steps):
    lo = (s * B) % len(rows)
    batch = (rows + rows)[lo:lo + B]
    ids, labels, pos, mask = collate(batch)
    n = labels.ne(-100).sum()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels, num_items_in_batch=n)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    tokens += sum(len(r["input_ids"]) for r in batch)
dt = time.perf_counter() - t0
print(f"{'HF transformers 4.46.3, reference collation':<52} {tokens / dt:>9.0f} real tokens/s  ({dt * 1e3 / steps:.1f} ms/step)")
print(f"HF_TOKENS_PER_S {tokens / dt}")
