#!/usr/bin/env python3
"""Independent check of a token cache written by `llmqs-dist prepare` (tests/data.cmake).

Reads the cache with h5py and the source CSV with Python's csv module, and checks: the schema
attributes, one example per CSV record with labels = CSV label - 1, offsets/lengths consistent,
[CLS] ... [SEP] framing, vocab_hash = FNV-1a 64 of vocab.txt, no temporary file left behind, and
(when the `tokenizers` package is installed) ids identical to HF's BertWordPieceTokenizer.
Exit status 1 with a message on the first failed group of checks.
"""
import argparse
import csv
import os
import sys

import h5py
import numpy as np


def fail(message):
    print(f"data_prepare_check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def attr_str(value):
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def fnv1a64_of_vocab(tokens):
    h = 0xCBF29CE484222325
    for token in tokens:
        for byte in token.encode("utf-8") + b"\n":
            h ^= byte
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", required=True)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--max_length", type=int, required=True)
    parser.add_argument("--expect_examples", type=int, required=True)
    args = parser.parse_args()

    with open(args.csv, newline="", encoding="utf-8") as f:
        records = [(int(row[0]), row[1]) for row in csv.reader(f)]
    with open(args.vocab, encoding="utf-8") as f:
        vocab = f.read().split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    token_id = {t: i for i, t in enumerate(vocab)}

    with h5py.File(args.cache, "r") as f:
        a = f.attrs
        tokens = f["tokens"][...]
        offsets = f["offsets"][...]
        labels = f["labels"][...]
        if attr_str(a["schema"]) != "llmqs-token-cache" or int(a["schema_version"]) != 1:
            fail(f"schema {attr_str(a['schema'])!r} version {a['schema_version']}")
        n = int(a["num_examples"])
        if n != args.expect_examples or n != len(records):
            fail(f"num_examples {n}, expected {args.expect_examples} (CSV has {len(records)} records)")
        if int(a["num_tokens"]) != tokens.shape[0] or offsets.shape[0] != n + 1 or labels.shape[0] != n:
            fail(f"dataset sizes tokens {tokens.shape} offsets {offsets.shape} labels {labels.shape} vs attributes")
        if tokens.dtype != np.int32 or offsets.dtype != np.int64 or labels.dtype != np.int32:
            fail(f"dtypes {tokens.dtype} {offsets.dtype} {labels.dtype}")
        if int(a["max_length"]) != args.max_length or int(a["do_lower_case"]) != 1:
            fail(f"max_length {a['max_length']} do_lower_case {a['do_lower_case']}")
        if int(a["vocab_size"]) != len(vocab):
            fail(f"vocab_size {a['vocab_size']} but vocab.txt has {len(vocab)} tokens")
        if int(a["vocab_hash"]) != fnv1a64_of_vocab(vocab):
            fail(f"vocab_hash {int(a['vocab_hash']):#018x} != FNV-1a of vocab.txt {fnv1a64_of_vocab(vocab):#018x}")
        if int(a["label_offset"]) != 1 or int(a["num_labels"]) != 5:
            fail(f"label_offset {a['label_offset']} num_labels {a['num_labels']}")
        if attr_str(a["source_file"]) != os.path.basename(args.csv) or attr_str(a["tokenizer_file"]) != "vocab.txt":
            fail(f"source_file {attr_str(a['source_file'])!r} tokenizer_file {attr_str(a['tokenizer_file'])!r}")

    expected_labels = np.array([label - 1 for label, _ in records], dtype=np.int32)
    if not np.array_equal(labels, expected_labels):
        fail(f"labels differ from the CSV at {np.flatnonzero(labels != expected_labels)[:5]}")
    lengths = np.diff(offsets)
    if offsets[0] != 0 or (lengths < 2).any() or (lengths > args.max_length).any():
        fail(f"lengths outside 2..{args.max_length}: min {lengths.min()} max {lengths.max()}")
    if (tokens[offsets[:-1]] != token_id["[CLS]"]).any() or (tokens[offsets[1:] - 1] != token_id["[SEP]"]).any():
        fail("an example does not start with [CLS] and end with [SEP]")
    if (lengths == args.max_length).sum() == 0:
        fail("no review reached max_length: the sample should have long reviews that get truncated")

    leftovers = [name for name in os.listdir(os.path.dirname(os.path.abspath(args.cache))) if ".tmp." in name]
    if leftovers:
        fail(f"temporary files left behind: {leftovers}")

    compared = "not compared with HF (tokenizers not installed)"
    try:
        from tokenizers import BertWordPieceTokenizer
    except ImportError:
        BertWordPieceTokenizer = None
    if BertWordPieceTokenizer is not None:
        hf = BertWordPieceTokenizer(args.vocab, lowercase=True)
        hf.enable_truncation(max_length=args.max_length)
        for i, (_, text) in enumerate(records):
            ours = tokens[offsets[i]:offsets[i + 1]].tolist()
            theirs = hf.encode(text).ids
            if ours != theirs:
                fail(f"example {i} (CSV record {i + 1}): ids differ from HF BertWordPieceTokenizer\n"
                     f"  ours   {ours}\n  theirs {theirs}")
        compared = "ids identical to HF BertWordPieceTokenizer"

    print(f"data_prepare_check: {n} examples, {tokens.shape[0]} tokens, "
          f"{int((lengths == args.max_length).sum())} at max_length; {compared}: OK")


if __name__ == "__main__":
    main()
