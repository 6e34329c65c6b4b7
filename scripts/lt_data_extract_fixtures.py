"""Copy the lt-data pipeline goldens into crates/lt-data/tests/fixtures/, keeping only the fields the tests use.

Usage: .venv/bin/python scripts/lt_data_extract_fixtures.py [GOLDEN_DATA_DIR]
(default GOLDEN_DATA_DIR: ../shared/golden/data). Drops the repeated `sample` and `setting` of every record
(the sample is in samples.jsonl, the setting in the header) and re-compresses with gzip -9; everything else
(ids, labels, positions, interval masks, errors, aux) is copied unchanged.
"""
import gzip
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "golden", "data")
DST = os.path.join(ROOT, "crates", "lt-data", "tests", "fixtures")
AUX = ["unpadded_len", "source_variant", "locate_index", "locate_indicator", "aug_len", "recover_keys",
       "recover_offset", "n_labelled"]


def main():
    os.makedirs(os.path.join(DST, "pipeline"), exist_ok=True)
    os.makedirs(os.path.join(DST, "configs"), exist_ok=True)
    shutil.copyfile(os.path.join(SRC, "samples.jsonl"), os.path.join(DST, "samples.jsonl"))
    for name in sorted(os.listdir(os.path.join(SRC, "configs"))):
        shutil.copyfile(os.path.join(SRC, "configs", name), os.path.join(DST, "configs", name))
    for name in sorted(os.listdir(os.path.join(SRC, "pipeline"))):
        with gzip.open(os.path.join(SRC, "pipeline", name), "rt", encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        header, records = lines[0], lines[1:]
        out = [{k: header[k] for k in ("setting", "tokenizer_len", "added_tokens", "bos", "eos",
                                        "tokenizer_json_sha256", "n_records")}]
        for r in records:
            aux = r.get("aux") or {}
            out.append({
                "sample_id": r["sample_id"],
                "hybrid_row": r["hybrid_row"],
                "input_ids": r["input_ids"],
                "labels": r["labels"],
                "position_ids": r["position_ids"],
                "mask": r["mask"],
                "error": r["error"],
                "aux": {k: aux[k] for k in AUX if k in aux},
            })
        tmp = os.path.join(DST, "pipeline", name + ".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=9) as f:
            for o in out:
                f.write(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n")
        os.replace(tmp, os.path.join(DST, "pipeline", name))


if __name__ == "__main__":
    main()
