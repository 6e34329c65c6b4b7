#!/usr/bin/env python3
"""Regenerate lt-model's own parity fixtures with HF transformers (eager attention, float32).

Writes, for each tiny random model, `crates/lt-model/tests/fixtures/<name>/` with the same layout as
the shared goldens (see docs/model.md):

    model/config.json, model/model.safetensors   (save_pretrained, float32)
    requests.jsonl   {"name", "input_ids", "position_ids" | null, "mask" | null}
    expected.jsonl   {"name", "max_abs_logit", "logits": [[vocab floats] per position]}
    meta.json        summary + tolerance

`mask` rows are half-open visible column intervals [[a, b], ...]; a given mask is passed to the
model as a 4-D additive float mask (0 / finfo(float32).min), exactly like the reference collator.

Usage: .venv/bin/python scripts/lt_model_make_fixtures.py [--out crates/lt-model/tests/fixtures]
"""
import argparse
import json
import os

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 97


def rand_init(model, seed):
    """Random weights incl. biases and norm weights (so every parameter matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def models():
    llama = LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2,
    )
    qwen = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=80, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=True, use_sliding_window=False,
        bos_token_id=1, eos_token_id=2,
    )
    # Llama with explicit head_dim != hidden/heads and attention/mlp biases (HF supports both)
    llama_hd = LlamaConfig(
        vocab_size=VOCAB, hidden_size=40, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=12, max_position_embeddings=256,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        attention_bias=True, mlp_bias=True, bos_token_id=1, eos_token_id=2,
    )
    return [
        ("llama3_tied", LlamaForCausalLM, llama, 11),
        ("qwen2_1layer_tied", Qwen2ForCausalLM, qwen, 12),
        ("llama_headdim_bias", LlamaForCausalLM, llama_hd, 13),
    ]


def lt_like_mask(T, blocks):
    """Rows see [0, r] minus the thoughts of blocks whose continue token is <= r (default flags)."""
    rows = []
    for r in range(T):
        hidden = [(s, c) for (s, c, z) in blocks if z <= r]
        vis, a = [], 0
        for (s, c) in sorted(hidden):
            if s > a:
                vis.append([a, s])
            a = max(a, c)
        if a <= r:
            vis.append([a, r + 1])
        rows.append(vis)
    return rows


def requests(seed):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()
    out = [{"name": "causal_24", "input_ids": ids(24), "position_ids": None, "mask": None}]
    # non-contiguous, non-monotonic positions, beyond max_position_embeddings
    pos = [0, 1, 2, 3, 10, 11, 12, 40, 41, 39, 300, 301, 302, 1450, 1451, 1452]
    out.append({"name": "holes_positions", "input_ids": ids(len(pos)), "position_ids": pos, "mask": None})
    # LightThinker-style mask: thoughts [3,7) cache [7,9) continue 9; [10,14) cache [14,16) continue 16
    T = 20
    out.append({"name": "lt_mask", "input_ids": ids(T), "position_ids": list(range(T)),
                "mask": lt_like_mask(T, [(3, 7, 9), (10, 14, 16)])})
    # arbitrary mask incl. future columns, with arbitrary positions
    T = 12
    rows = []
    for r in range(T):
        a = int(torch.randint(0, T, (1,), generator=g))
        b = int(torch.randint(a + 1, T + 1, (1,), generator=g))
        rows.append([[a, b]] if r % 3 else [[0, 1], [max(1, a), max(2, b)]])
    out.append({"name": "arbitrary_mask_positions", "input_ids": ids(T),
                "position_ids": [5 * i + (i % 2) for i in range(T)], "mask": rows})
    return out


def run(model, req):
    ids = torch.tensor([req["input_ids"]])
    T = ids.shape[1]
    kw = {}
    if req["position_ids"] is not None:
        kw["position_ids"] = torch.tensor([req["position_ids"]])
    if req["mask"] is not None:
        m = torch.full((T, T), torch.finfo(torch.float32).min)
        for r, row in enumerate(req["mask"]):
            for a, b in row:
                m[r, a:b] = 0.0
        kw["attention_mask"] = m[None, None]
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kw).logits[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates", "lt-model",
                                                  "tests", "fixtures"))
    args = ap.parse_args()
    torch.manual_seed(0)
    for name, cls, cfg, seed in models():
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval().float()
        rand_init(model, seed)
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
        reqs = requests(seed)
        meta = {"model": name, "arch": cfg.architectures or cls.__name__, "transformers": transformers.__version__,
                "torch": torch.__version__, "dtype": "float32", "attn_implementation": "eager",
                "tolerance": "|actual - expected| <= 5e-5 * max_abs_logit", "requests": []}
        with open(os.path.join(d, "requests.jsonl"), "w") as fr, open(os.path.join(d, "expected.jsonl"), "w") as fe:
            for req in reqs:
                logits = run(model, req)
                mx = float(logits.abs().max())
                fr.write(json.dumps(req) + "\n")
                fe.write(json.dumps({"name": req["name"], "max_abs_logit": mx,
                                     "logits": [[float(f"{v:.6g}") for v in row] for row in logits.tolist()]}) + "\n")
                meta["requests"].append({"name": req["name"], "T": len(req["input_ids"]), "max_abs_logit": mx})
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(f"wrote {d}")


if __name__ == "__main__":
    main()
