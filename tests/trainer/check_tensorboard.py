#!/usr/bin/env python3
"""`train` writes TensorBoard scalars under output_dir/runs/ that TensorBoard's own reader loads:
every train/* and eval/* tag is there, at the logged steps, and train/loss holds exactly the
losses of metrics.jsonl (as float32), eval/accuracy the evaluations'."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--data", required=True, help="folder with train.csv, test.csv, vocab.txt (compare_ranks.py --data-only)")
    parser.add_argument("--reader", required=True, help="tests/tensorboard/read_events.py")
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    out = os.path.join(args.work, "tensorboard_run")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.binary, "train", "--train_file", os.path.join(args.data, "train.csv"),
           "--validation_file", os.path.join(args.data, "test.csv"), "--vocab", os.path.join(args.data, "vocab.txt"),
           "--do_lower_case", "true", "--output_dir", out, "--max_length", "16", "--num_labels", "2",
           "--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "32",
           "--max_position_embeddings", "16", "--max_steps", "12", "--logging_steps", "3", "--eval_strategy", "steps",
           "--eval_steps", "6", "--learning_rate", "1e-2", "--device", "cpu"]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    if result.returncode != 0:
        sys.exit("FAIL: train exited %d:\n%s" % (result.returncode, result.stdout))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    runs = os.path.join(out, "runs")
    events = subprocess.run([sys.executable, args.reader, runs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=120)
    if events.returncode != 0:
        sys.exit("FAIL: read_events.py exited %d:\n%s" % (events.returncode, events.stdout))
    scalars = {}
    for line in events.stdout.splitlines():
        tag, step, value = line.split()
        scalars.setdefault(tag, []).append((int(step), float(value)))

    expected_tags = {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s",
                     "eval/loss", "eval/accuracy", "eval/macro_f1"}
    if set(scalars) != expected_tags:
        sys.exit("FAIL: tags %s, expected %s" % (sorted(scalars), sorted(expected_tags)))
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    checks = [("train/loss", train, "loss"), ("train/learning_rate", train, "learning_rate"),
              ("train/grad_norm", train, "grad_norm"), ("eval/loss", evals, "eval_loss"),
              ("eval/accuracy", evals, "eval_accuracy"), ("eval/macro_f1", evals, "eval_macro_f1")]
    for tag, source, key in checks:
        want = [(r["step"], float(np.float32(r[key]))) for r in source]
        if scalars[tag] != want:
            sys.exit("FAIL: %s is %s in TensorBoard, metrics.jsonl says %s" % (tag, scalars[tag], want))
    if [s for s, _ in scalars["train/loss"]] != [3, 6, 9, 12] or [s for s, _ in scalars["eval/loss"]] != [6, 12]:
        sys.exit("FAIL: steps %s / %s" % (scalars["train/loss"], scalars["eval/loss"]))
    print("PASS: %d scalar tags; train/loss at steps 3..12 and eval/* at 6, 12 equal metrics.jsonl" % len(scalars))


if __name__ == "__main__":
    main()
