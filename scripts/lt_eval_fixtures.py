"""Build lt-eval's test fixtures from the golden inference runs (run once, by hand).

Writes into crates/lt-eval/tests/fixtures/<run>/:
  extras.jsonl      slim copy of the golden extras (idx, prompt_ids, output_ids, max_token, n_compressions)
                    plus `kv_trace`: the KV length seen by each *fed* generated token, read off the
                    reference driver's per-forward trace (cache_len before the call + row offset + 1).
  expected.json     the numbers the reference `evaluation/eval_file.py` prints for these records,
                    recomputed here from its formulas with the HF tokenizer (transformers), i.e. the
                    tokenization side is independent of the Rust port.

Usage: .venv/bin/python scripts/lt_eval_fixtures.py /work/shared/golden/infer
"""
import json
import os
import sys

from transformers import PreTrainedTokenizerFast

GOLDEN = sys.argv[1]
OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "lt-eval", "tests", "fixtures")
SPECIALS = ["<|splitter|>", "<|continue|>", "<|recover|>", "<|begin_of_thought|>", "<|end_of_thought|>",
            "<|begin_of_solution|>", "<|end_of_solution|>", "\n\n", "<|im_end|>", "<|im_start|>"]


def tokenizer(run, n_token):
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(GOLDEN, run, "tokenizer"))
    for t in SPECIALS + [f"<|o_{i}|>" for i in range(n_token)]:
        if tok.convert_tokens_to_ids(t) is None:
            tok.add_tokens([t], special_tokens=True)
    return tok


def slim_extras(run, eos_id):
    out = []
    for line in open(os.path.join(GOLDEN, run, "expected", "extras.jsonl")):
        d = json.loads(line)
        kv = []
        gen = set()
        for step in d["trace"][1:]:  # skip the prefill
            # the generated token is the first fed id of each decode / compression call
            kv.append(step["cache_len"] + 1)
        assert len(kv) == len(d["output_ids"]) - 1, (run, d["idx"])  # the final stop token is never fed
        out.append({k: d[k] for k in ["idx", "prompt_ids", "output_ids", "max_token", "n_compressions"]}
                   | {"kv_trace": kv})
    with open(os.path.join(OUT, run, "extras.jsonl"), "w") as f:
        for d in out:
            f.write(json.dumps(d) + "\n")
    return out


def reference_eval(records, tok, method, splitter=None, C=None, offset=1, cache_size=None):
    """eval_file.py's per-sample numbers (no crash paths: asserts no boundary when C is None)."""
    split_id = tok.convert_tokens_to_ids(splitter) if splitter else None
    rows = []
    for r in records:
        P = len(tok(r["prompt"])["input_ids"])
        ids = tok(r["output"])["input_ids"]
        O = len(ids)
        row = {"idx": r["idx"], "prompt_len": P}
        if method == "normal":
            row |= {"peak": P + O, "dep": P * O + O * (O + 1) // 2, "output_len": O, "compress": 0}
        elif method == "kvcache":
            M = cache_size
            row |= {"peak": M, "dep": (M + P) * (M - P - 1) / 2 + (O + P - M) * M, "output_len": O, "compress": 0}
        else:
            ctx, k, S, dep, segs = 0, 0, 0, 0, []
            for t in ids:
                ctx += 1
                dep += P + ctx + S
                if t == split_id:
                    assert C is not None, "the reference crashes here (compress_cnt)"
                    k += 1
                    segs.append(ctx)
                    ctx = 0
                    S = k * (C + offset)
            n_split = r["output"].count(splitter)
            row |= {"peak": r["max_token"], "dep": dep, "output_len": O - n_split, "compress": n_split,
                    "segments": segs}
        row["time"] = r["infer_time"]
        rows.append(row)
    n = len(rows)
    mean = lambda k: sum(x[k] for x in rows) / n
    return {"n": n, "correct": 0, "acc": 0.0, "time_h": sum(x["time"] for x in rows) / 3600,
            "peak": mean("peak"), "dep": mean("dep"), "output_len": mean("output_len"),
            "compress": mean("compress"), "prompt_len": mean("prompt_len"), "samples": rows}


def main():
    expected = {}
    for run in ["lt_default", "vanilla"]:
        tok = tokenizer(run, 2)
        records = [json.loads(l) for l in open(os.path.join(GOLDEN, run, "expected", "gsm8k_records.jsonl"))]
        extras = slim_extras(run, tok.convert_tokens_to_ids("<|im_end|>"))
        # the re-tokenized lengths equal the generated ones for this word-level tokenizer
        for r, e in zip(records, extras):
            assert len(tok(r["prompt"])["input_ids"]) == len(e["prompt_ids"]) == r["input_len"]
            assert tok(r["output"])["input_ids"] == e["output_ids"]
        exp = {}
        if run == "vanilla":
            exp["normal"] = reference_eval(records, tok, "normal")
            exp["kvcache_300"] = reference_eval(records, tok, "kvcache", cache_size=300)
        else:
            # as released: the "splitter" is the last cache token <|o_1|>, which never occurs
            exp["anchor_thought_reference"] = reference_eval(records, tok, "anchor", splitter="<|o_1|>")
            # evident intent: <|splitter|>, compress_cnt = C = 2, offset 1
            exp["anchor_thought_intended"] = reference_eval(records, tok, "anchor", splitter="<|splitter|>", C=2)
        expected[run] = exp
        with open(os.path.join(OUT, run, "expected.json"), "w") as f:
            json.dump(exp, f, indent=1)


main()
