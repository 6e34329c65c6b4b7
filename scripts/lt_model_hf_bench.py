#!/usr/bin/env python3
"""Side-by-side prefill / greedy-decode throughput: lt-model (Rust) vs HF transformers eager.

Both run on the same weights (an HF directory written here with random weights) in the same run,
on CPU. Usage:

    .venv/bin/python scripts/lt_model_hf_bench.py                 # tiny models only
    .venv/bin/python scripts/lt_model_hf_bench.py --big           # + Qwen2.5-0.5B-shaped (slow, ~GBs RAM)
    options: --prompt 128 --decode 64 --dtypes f32,bf16 --reps 2 --rounds 3

Each round times both sides (best of --reps each; the order alternates between rounds) and
prints their ratios; the summary line per (model, dtype) gives the median ratio over the rounds
with its range. The shared 2-core VM drifts between a fast and a ~35 % slower phase within
seconds, so a single comparison can put one side in a slow stretch; ratios from the same round
(and their median) compare like with like.
"""
import statistics
import argparse
import json
import os
import subprocess
import tempfile
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DT = {"f32": torch.float32, "bf16": torch.bfloat16}


def make(dirname, big):
    if big:
        cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                          rope_theta=1e6, max_position_embeddings=32768, use_sliding_window=False)
    else:
        cfg = Qwen2Config(vocab_size=597, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                          rope_theta=1e4, max_position_embeddings=4096, use_sliding_window=False)
    torch.manual_seed(0)
    m = Qwen2ForCausalLM(cfg)
    m.save_pretrained(dirname, safe_serialization=True)


def hf_bench(dirname, dtype, prompt, decode, reps):
    m = Qwen2ForCausalLM.from_pretrained(dirname, torch_dtype=DT[dtype], attn_implementation="eager").eval()
    v = m.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % v for i in range(prompt)]])

    def run():
        with torch.no_grad():
            t0 = time.perf_counter()
            out = m(input_ids=ids, use_cache=True, num_logits_to_keep=1)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            past = out.past_key_values
            tp = time.perf_counter() - t0
            t1 = time.perf_counter()
            for _ in range(decode):
                out = m(input_ids=tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
            return tp, time.perf_counter() - t1

    run()
    tp, td = min(run() for _ in range(reps))[0], min(run()[1] for _ in range(reps))
    return prompt / tp, decode / td


def rust_bench(dirname, dtype, prompt, decode, reps):
    cmd = ["cargo", "bench", "-q", "-p", "lt-model", "--bench", "lt_model_bench", "--", "--model", dirname,
           "--dtype", dtype, "--prompt", str(prompt), "--decode", str(decode), "--reps", str(reps)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtypes", default="f32,bf16")
    a = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    head = (f"{'model':<12} {'dtype':<5} {'round':>5} {'prefill rs':>11} {'prefill hf':>11} {'x':>5} "
            f"{'decode rs':>10} {'decode hf':>10} {'x':>5}  kv bytes (analytic)")
    print(head)
    summary = []
    for name, big in [("tiny", False)] + ([("qwen0.5b", True)] if a.big else []):
        with tempfile.TemporaryDirectory() as d:
            make(d, big)
            for dt in a.dtypes.split(","):
                px, dx = [], []
                for rnd in range(a.rounds):
                    if rnd % 2 == 0:
                        r = rust_bench(d, dt, a.prompt, a.decode, a.reps)
                        hp, hd = hf_bench(d, dt, a.prompt, a.decode, a.reps)
                    else:
                        hp, hd = hf_bench(d, dt, a.prompt, a.decode, a.reps)
                        r = rust_bench(d, dt, a.prompt, a.decode, a.reps)
                    px.append(r["prefill_tok_s"] / hp)
                    dx.append(r["decode_tok_s"] / hd)
                    print(f"{name:<12} {dt:<5} {rnd + 1:>5} {r['prefill_tok_s']:>11.0f} {hp:>11.0f} {px[-1]:>5.2f} "
                          f"{r['decode_tok_s']:>10.1f} {hd:>10.1f} {dx[-1]:>5.2f}  "
                          f"{r['kv_bytes']} ({r['kv_bytes_analytic']})", flush=True)
                    if r["kv_bytes"] != r["kv_bytes_analytic"]:
                        raise SystemExit(f"{name} {dt}: KV bytes {r['kv_bytes']} != analytic {r['kv_bytes_analytic']}")
                summary.append((name, dt, px, dx))
    print("\nmedian over rounds (range):")
    for name, dt, px, dx in summary:
        print(f"{name:<12} {dt:<5} prefill {statistics.median(px):.2f}x ({min(px):.2f}-{max(px):.2f})  "
              f"decode {statistics.median(dx):.2f}x ({min(dx):.2f}-{max(dx):.2f})")


if __name__ == "__main__":
    main()
