#!/usr/bin/env python3
"""Extract the lt-mask test fixtures from the golden files (run once; the tests never read
/work/shared).

* copies masks/mask_builders.jsonl.gz unchanged;
* re-extracts from every pipeline/*.jsonl.gz record that has a mask (or a recorded mask error)
  only what the mask builders need: the layout (unpadded length, locate_index + indicator), the
  flags, max_length, the recover spec (aug_len, recover_keys, recover_offset) and the expected
  mask. Identical masks are stored once.

Output: crates/lt-mask/tests/fixtures/pipeline_masks.jsonl.gz, lines
  {"kind": "mask", "id": int, "rows": [...]}                                   (first)
  where `rows` is the golden mask, row-compressed: an interval list is a row; a positive int n
  repeats the previous row n times; a negative int -n adds n rows, each equal to the previous
  one with its last interval extended by one column (causal growth).
  {"kind": "case", "case_id": str, "len": T, "locate_index": [...], "locate_indicator": [...],
   "flags": {...}, "max_length": P, "recover": null | {"added_len", "keys", "offset"},
   "error": null | str, "mask_id": int | null}
"""
import glob
import gzip
import json
import os
import shutil
import sys

GOLDEN = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/golden/data"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lt-mask", "tests", "fixtures")
FLAGS = ["see_current", "bi_directional", "diagonal", "exclude_continue", "prefill_compress"]


def compress_rows(mask):
    out = []
    prev = None
    for row in mask:
        if prev is not None and row == prev:
            if out and isinstance(out[-1], int) and out[-1] > 0:
                out[-1] += 1
            else:
                out.append(1)
        elif (prev is not None and row and prev and len(row) == len(prev) and row[:-1] == prev[:-1]
              and row[-1][0] == prev[-1][0] and row[-1][1] == prev[-1][1] + 1):
            if out and isinstance(out[-1], int) and out[-1] < 0:
                out[-1] -= 1
            else:
                out.append(-1)
        else:
            out.append(row)
        prev = row
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    shutil.copyfile(os.path.join(GOLDEN, "masks", "mask_builders.jsonl.gz"), os.path.join(OUT, "mask_builders.jsonl.gz"))
    masks, mask_ids, cases = [], {}, []
    for path in sorted(glob.glob(os.path.join(GOLDEN, "pipeline", "*.jsonl.gz"))):
        name = os.path.basename(path)[: -len(".jsonl.gz")]
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f):
                rec = json.loads(line)
                if rec.get("header"):
                    continue
                st = rec["setting"]
                if st["mode"] == "normal":
                    continue
                err = rec.get("error")
                aux = rec.get("aux") or {}
                if err is not None:
                    # error records carry no layout (aux is null); mask_builders covers the
                    # recover+diagonal refusal directly
                    continue
                flags = {k: st[k] for k in FLAGS}
                if st["mode"] == "aug-wo-pc":
                    flags["prefill_compress"] = False  # the aug-wo-pc collator ignores it
                key = json.dumps(compress_rows(rec["mask"]), separators=(",", ":"))
                if key not in mask_ids:
                    mask_ids[key] = len(masks)
                    masks.append(key)
                recover = None
                if st["mode"] == "recover" and rec.get("hybrid_row") in (None, 0) and aux.get("recover_keys"):
                    recover = {"added_len": aux["unpadded_len"] - aux["aug_len"], "keys": aux["recover_keys"],
                               "offset": aux["recover_offset"]}
                cases.append({
                    "kind": "case", "case_id": f"{name}#{lineno}",
                    "len": aux["aug_len"] if recover else aux["unpadded_len"],
                    "locate_index": aux["locate_index"], "locate_indicator": aux["locate_indicator"],
                    "flags": flags, "max_length": st["max_length"], "recover": recover,
                    "mask_id": mask_ids[key],
                    "position_ids": rec["position_ids"][aux["aug_len"]] if recover else None,
                })
    out = os.path.join(OUT, "pipeline_masks.jsonl.gz")
    with gzip.open(out + ".tmp", "wt", encoding="utf-8", compresslevel=9) as f:
        for i, m in enumerate(masks):
            f.write('{"kind":"mask","id":%d,"rows":%s}\n' % (i, m))
        for c in cases:
            f.write(json.dumps(c, separators=(",", ":")) + "\n")
    os.replace(out + ".tmp", out)
    print(f"{len(cases)} cases, {len(masks)} unique masks -> {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
