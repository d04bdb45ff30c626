#!/usr/bin/env python3
"""Loads an `llmqs-dist export-hf` folder with transformers (AutoTokenizer +
AutoModelForSequenceClassification, fp32, CPU, eval mode) and compares with our own numbers
written by `checkpoint_hf_parity logits CHECKPOINT TEXTS OUT.h5` for the same texts:
  - HF's input ids (truncated to the exported model_max_length) must equal ours exactly;
  - logits must agree to --tolerance (worst per-text max|ours - hf| / max|hf|).
Runs where torch + transformers exist (the GPU machine); exit status 0 only when both hold.

  python3 check_export_hf.py --export_dir DIR --texts TEXTS.txt --ours OUT.h5 [--tolerance 1e-5]
"""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export_dir", required=True)
    parser.add_argument("--texts", required=True)
    parser.add_argument("--ours", required=True)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()

    with open(args.texts, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.rstrip("\n")]
    with h5py.File(args.ours, "r") as h5:
        our_ids, our_lengths, our_logits = h5["input_ids"][()], h5["lengths"][()], h5["logits"][()]
    if len(texts) != len(our_lengths):
        sys.exit(f"{args.ours} holds {len(our_lengths)} rows, {args.texts} {len(texts)} texts")

    tokenizer = AutoTokenizer.from_pretrained(args.export_dir)
    model = AutoModelForSequenceClassification.from_pretrained(args.export_dir).float().eval()
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt")
    id_mismatches = 0
    for row, text in enumerate(texts):
        hf = encoded["input_ids"][row][encoded["attention_mask"][row].bool()].tolist()
        ours = our_ids[row][: our_lengths[row]].tolist()
        if hf != ours:
            id_mismatches += 1
            if id_mismatches <= 3:
                print(f"ids differ on {text!r}:\n  hf   {hf}\n  ours {ours}")
    with torch.no_grad():
        logits = model(**encoded).logits.double().numpy()
    worst = float(np.max(np.max(np.abs(our_logits - logits), axis=1) / np.max(np.abs(logits), axis=1)))
    agree = int(np.sum(np.argmax(our_logits, axis=1) == np.argmax(logits, axis=1)))
    print(f"{type(model).__name__} from {args.export_dir}: {len(texts)} texts, {model.config.num_labels} labels; "
          f"input ids differ on {id_mismatches}; worst logits relative error {worst:.3g} "
          f"(tolerance {args.tolerance:g}); argmax agrees on {agree}/{len(texts)}")
    ok = id_mismatches == 0 and worst <= args.tolerance
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
