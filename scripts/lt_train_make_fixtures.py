#!/usr/bin/env python3
"""Make the lt-train parity fixtures with the project venv's torch + transformers.

    .venv/bin/python scripts/lt_train_make_fixtures.py [OUT_DIR]

OUT_DIR defaults to crates/lt-train/tests/fixtures. Writes:

* schedules.json      -- learning rates of HF `get_linear_schedule_with_warmup` /
                         `get_cosine_schedule_with_warmup` (driven through a real torch optimizer +
                         LambdaLR, read from `param_groups[0]["lr"]` before each `optimizer.step()`),
                         with the warmup computed like `TrainingArguments.get_warmup_steps`.
* adamw.safetensors   -- torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, wd 0, single-tensor path)
  adamw.json             over 4 steps on random tensors (initial params, grads per step, lrs, final
                         params and moments), plus clip_grad_norm_(1.0) on the first grads.
* tiny_llama/, tiny_qwen2/ -- tiny random HF models (save_pretrained, float32 safetensors) and
  step_<family>.safetensors / step_<family>.json: one training step on a 2-row aug-wo-pc batch
                         padded to the longest row with the reference's 4-D additive mask (eager
                         attention): the loss (sum CE over labelled tokens / labelled-token count,
                         transformers 4.46.3 with num_items_in_batch), every parameter's gradient, the
                         global grad norm and the parameters after clip_grad_norm_(1.0) + one AdamW step.
* tiny_task/          -- a word-level tokenizer.json (python `tokenizers`), a compression config and a
                         small arithmetic train.jsonl (+ bad.jsonl with a mistyped field on line 3) for
                         the end-to-end training tests and the CLI.
"""
import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lt-train", "tests", "fixtures")
os.makedirs(OUT, exist_ok=True)
torch.set_num_threads(1)


def warmup_steps(total, ratio, steps):
    # transformers.TrainingArguments.get_warmup_steps
    return steps if steps > 0 else math.ceil(total * ratio)


def schedules():
    cases = []
    for kind in ["linear", "cosine"]:
        for total, ratio, steps, lr in [(1045, 0.05, 0, 2e-5), (10, 0.0, 0, 1e-3), (37, 0.1, 0, 3e-4),
                                        (25, 0.05, 7, 1e-4), (3, 0.5, 0, 1.0), (1, 0.0, 0, 0.5)]:
            w = warmup_steps(total, ratio, steps)
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.AdamW([p], lr=lr)
            f = get_linear_schedule_with_warmup if kind == "linear" else get_cosine_schedule_with_warmup
            sch = f(opt, num_warmup_steps=w, num_training_steps=total)
            lrs = []
            for _ in range(total + 3):  # a few past the end too
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                sch.step()
            cases.append(dict(kind=kind, total=total, warmup_ratio=ratio, warmup_steps=steps,
                              num_warmup=w, lr=lr, lrs=lrs))
    with open(os.path.join(OUT, "schedules.json"), "w") as fh:
        json.dump(cases, fh)


def adamw():
    g = torch.Generator().manual_seed(1234)
    shapes = {"a": (7, 5), "b": (13,), "c": (3, 4, 2)}
    params = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    tensors = {f"init.{k}": v.clone() for k, v in params.items()}
    ps = [torch.nn.Parameter(params[k].clone()) for k in shapes]
    opt = torch.optim.AdamW(ps, lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=False)
    lrs = [0.0, 1e-3, 5e-4, 2e-3]
    for step, lr in enumerate(lrs):
        for k, p in zip(shapes, ps):
            gr = torch.randn(shapes[k], generator=g) * (0.1 * (step + 1))
            tensors[f"grad{step}.{k}"] = gr.clone()
            p.grad = gr
        if step == 0:
            norm = torch.nn.utils.clip_grad_norm_(ps, 1.0)
            for k, p in zip(shapes, ps):
                tensors[f"clipped0.{k}"] = p.grad.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    for k, p in zip(shapes, ps):
        tensors[f"final.{k}"] = p.detach().clone()
        st = opt.state[p]
        tensors[f"exp_avg.{k}"] = st["exp_avg"].clone()
        tensors[f"exp_avg_sq.{k}"] = st["exp_avg_sq"].clone()
    save_file(tensors, os.path.join(OUT, "adamw.safetensors"))
    with open(os.path.join(OUT, "adamw.json"), "w") as fh:
        json.dump(dict(names=list(shapes), lrs=lrs, clip_total_norm0=float(norm)), fh)


# ---------------------------------------------------------------------------------------------
# One training step on a tiny model.

EOS = 2


def aug_mask(T, blocks):
    """Reference create_attention_for_aug_data, output blocks only, all flags false (§4.1 (a))."""
    A = np.tril(np.ones((T, T), dtype=bool))
    for (s, e, l, c, n) in blocks:
        z = e + l + c
        A[z:T, s:e + l] = False
    return A


def pad_mask(A, P):
    T = A.shape[0]
    B = np.zeros((P, P), dtype=bool)
    B[:T, :T] = A
    for r in range(T, P):
        B[r, :T] = A[T - 1]
    return B


def rows():
    # Row 0 is the §6 example layout (vocab ids stand in for tokens); row 1 is shorter.
    # SPL=90, o0=91, o1=92, CON=93, BOS=1, EOS=2.
    r0_ids = [1, 10, 11, 20, 21, 22, 90, 91, 92, 93, 23, 22, 90, 91, 92, 93, 2]
    r0_blocks = [(3, 7, 0, 2, 1), (10, 13, 0, 2, 1)]
    r1_ids = [1, 12, 13, 14, 30, 31, 32, 22, 90, 91, 92, 93, 2]
    r1_blocks = [(4, 9, 0, 2, 1)]
    out = []
    for ids, blocks, n_prompt in [(r0_ids, r0_blocks, 3), (r1_ids, r1_blocks, 4)]:
        labels = [-100 if (i < n_prompt or t in (91, 92, 93)) else t for i, t in enumerate(ids)]
        out.append(dict(input_ids=ids, labels=labels, position_ids=list(range(len(ids))),
                        blocks=[list(b) for b in blocks]))
    return out


def step_fixture(family):
    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=EOS, torch_dtype="float32", attn_implementation="eager")
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model = model.float().eval()  # no dropout anyway; eval() keeps it deterministic
    mdir = os.path.join(OUT, f"tiny_{family}")
    model.save_pretrained(mdir, safe_serialization=True)

    rs = rows()
    P = max(len(r["input_ids"]) for r in rs)  # pad to the longest row
    ids, labels, pos, masks = [], [], [], []
    for r in rs:
        T = len(r["input_ids"])
        ids.append(r["input_ids"] + [EOS] * (P - T))
        labels.append(r["labels"] + [-100] * (P - T))
        pos.append(r["position_ids"] + [0] * (P - T))
        masks.append(pad_mask(aug_mask(T, r["blocks"]), P))
    ids = torch.tensor(ids)
    labels = torch.tensor(labels)
    pos = torch.tensor(pos)
    vis = torch.tensor(np.stack(masks))[:, None]
    additive = torch.zeros(vis.shape, dtype=torch.float32).masked_fill(~vis, torch.finfo(torch.float32).min)

    n_items = labels.ne(-100).sum()
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=additive, position_ids=pos, labels=labels,
                num_items_in_batch=n_items)
    loss = out.loss
    loss.backward()
    named = list(model.named_parameters())
    tensors = {f"grad.{n}": p.grad.detach().clone() for n, p in named}
    norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, foreach=False)
    opt.step()
    for n, p in named:
        tensors[f"after.{n}"] = p.detach().clone()
    tensors["logits"] = out.logits.detach().clone()
    save_file(tensors, os.path.join(OUT, f"step_{family}.safetensors"))
    with open(os.path.join(OUT, f"step_{family}.json"), "w") as fh:
        json.dump(dict(rows=rs, pad_to=P, pad_id=EOS, loss=float(loss), num_items=int(n_items),
                       grad_norm=float(norm), lr=1e-3,
                       input_ids=ids.tolist(), labels=labels.tolist(), position_ids=pos.tolist(),
                       mask=vis[:, 0].to(torch.int8).tolist()), fh)


def tiny_task():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, decoders

    d = os.path.join(OUT, "tiny_task")
    os.makedirs(d, exist_ok=True)
    words = ["<|unk|>", "<|bos|>", "<|eos|>", " ", "\n", ":", ".", "+", "="] + [str(i) for i in range(10)] + \
        ["add", "plus", "is", "so", "the", "answer", "sum", "of", "and", "first", "then", "carry",
         "we", "get", "ones", "tens", "Solve", "this", "You", "are", "good", "at", "math"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[A-Za-z]+|[0-9]|\n|[^\sA-Za-z0-9]| "), behavior="isolated")
    tok.add_special_tokens(["<|unk|>", "<|bos|>", "<|eos|>"])
    tok.save(os.path.join(d, "tokenizer.json"))
    cfg = {
        "template": {"model": "llama", "prefix": "", "middle": " ", "suffix": "\n",
                     "complete": "{system} {question}\n"},
        "prompt": {"save_template": True, "level": "sentence", "step": 1, "n_token": 2,
                   "token_name": "<|o_{t_id}|>", "token_desp": "add {t_id}"},
        "output": {"level": "sentence", "step": 1, "n_token": 2, "token_name": "<|o_{t_id}|>",
                   "token_desp": "add {t_id}", "meta_compress_step": 1},
    }
    with open(os.path.join(d, "compress.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    rng = np.random.default_rng(7)
    lines = []
    for _ in range(24):
        a, b = int(rng.integers(10, 50)), int(rng.integers(10, 50))
        s_ = a + b
        thoughts = [f"first add {a % 10} and {b % 10} we get {a % 10 + b % 10}",
                    f"then add {a // 10} and {b // 10} so the sum is {s_}",
                    f"the answer is {s_}"]
        q = f"add {a} and {b}"
        lines.append(dict(question=q, system_prompt="You are good at math.",
                          system_list=["You are good at math."], question_list=[q],
                          thoughts_list=thoughts, gt_output="\n".join(thoughts)))
    with open(os.path.join(d, "train.jsonl"), "w") as fh:
        for l in lines:
            fh.write(json.dumps(l) + "\n")
    bad = [dict(l) for l in lines[:4]]
    bad[2]["thoughts_list"] = "not a list"
    with open(os.path.join(d, "bad.jsonl"), "w") as fh:
        for l in bad:
            fh.write(json.dumps(l) + "\n")


if __name__ == "__main__":
    tiny_task()
    schedules()
    adamw()
    step_fixture("llama")
    step_fixture("qwen2")
    print("fixtures written to", os.path.abspath(OUT))
