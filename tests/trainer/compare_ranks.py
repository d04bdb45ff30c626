#!/usr/bin/env python3
"""Data parallelism changes nothing but speed: `mpirun -np N llmqs-dist train` with the same
global batch (N ranks x batch 8/N) and dropout off logs the same loss, grad norm and evaluation,
step by step, as one rank with batch 8 (within --rtol, 1e-5 relative by default).

Writes its own small deterministic two-class data set, so it depends on nothing else."""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys


def write_data(work):
    words = "the food was and service place very .".split()
    with open(os.path.join(work, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["good", "great", "bad", "awful"]) + "\n")
    rng = random.Random(1234)
    for name, count in (("train.csv", 64), ("test.csv", 30)):
        with open(os.path.join(work, name), "w") as f:
            for i in range(count):
                label = 2 if i % 2 else 1
                n = 3 + rng.randrange(10)
                at = rng.randrange(n)
                text = [rng.choice(["good", "great"] if label == 2 else ["bad", "awful"]) if j == at else rng.choice(words)
                        for j in range(n)]
                f.write('%d,"%s"\n' % (label, " ".join(text)))


def run(args, work, ranks):
    out = os.path.join(work, "np%d" % ranks)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.mpiexec, "--oversubscribe", "--allow-run-as-root", "-np", str(ranks), args.binary, "train",
           "--train_file", os.path.join(work, "train.csv"), "--validation_file", os.path.join(work, "test.csv"),
           "--vocab", os.path.join(work, "vocab.txt"), "--do_lower_case", "true", "--output_dir", out,
           "--max_length", "16", "--num_labels", "2", "--hidden_size", "16", "--num_hidden_layers", "2",
           "--num_attention_heads", "2", "--intermediate_size", "32", "--max_position_embeddings", "16",
           "--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0",
           "--per_device_train_batch_size", str(8 // ranks), "--per_device_eval_batch_size", "4",
           "--learning_rate", "1e-2", "--weight_decay", "0.01", "--warmup_steps", "2", "--max_steps", "40",
           "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "20", "--seed", "5", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if result.returncode != 0:
        sys.exit("FAIL: -np %d exited %d:\n%s" % (ranks, result.returncode, result.stdout))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--mpiexec", default="mpirun")
    parser.add_argument("--work", required=True)
    parser.add_argument("--ranks", default="2,4")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--data-only", action="store_true", help="only write vocab.txt, train.csv, test.csv")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    write_data(args.work)
    if args.data_only:
        return

    reference = run(args, args.work, 1)
    train_steps = [r for r in reference if "loss" in r]
    evals = [r for r in reference if "eval_loss" in r]
    if len(train_steps) != 40 or len(evals) != 2:
        sys.exit("FAIL: -np 1 logged %d training and %d evaluation entries, expected 40 and 2" % (len(train_steps), len(evals)))
    first = sum(r["loss"] for r in train_steps[:8]) / 8
    last = sum(r["loss"] for r in train_steps[-8:]) / 8
    if not last < 0.95 * first:
        sys.exit("FAIL: -np 1 did not train: mean loss of the first epoch %g, of the fifth %g" % (first, last))

    failures = 0
    for ranks in [int(r) for r in args.ranks.split(",")]:
        records = run(args, args.work, ranks)
        if len(records) != len(reference):
            sys.exit("FAIL: -np %d logged %d entries, -np 1 logged %d" % (ranks, len(records), len(reference)))
        worst = 0.0
        for ref, got in zip(reference, records):
            if set(ref) != set(got) or ref["step"] != got["step"] or ref["epoch"] != got["epoch"]:
                sys.exit("FAIL: -np %d entry %s does not match -np 1 entry %s" % (ranks, got, ref))
            for key in ("loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy", "eval_macro_f1", "eval_samples"):
                if key not in ref:
                    continue
                diff = abs(got[key] - ref[key]) / max(abs(ref[key]), 1e-12)
                worst = max(worst, diff)
                if diff > args.rtol:
                    failures += 1
                    print("MISMATCH -np %d step %d %s: %.9g vs -np 1 %.9g (relative %.2e)"
                          % (ranks, ref["step"], key, got[key], ref[key], diff))
        print("-np %d: %d entries, largest relative difference from -np 1: %.2e" % (ranks, len(records), worst))
    # `eval` of -np 1's final checkpoint, on 2 ranks, reproduces the trainer's last evaluation.
    eval_json = os.path.join(args.work, "eval.json")
    if os.path.exists(eval_json):
        os.remove(eval_json)
    cmd = [args.mpiexec, "--oversubscribe", "--allow-run-as-root", "-np", "2", args.binary, "eval",
           "--checkpoint", os.path.join(args.work, "np1", "checkpoint-40.h5"),
           "--validation_file", os.path.join(args.work, "test.csv"), "--per_device_eval_batch_size", "7",
           "--output", eval_json]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if result.returncode != 0:
        sys.exit("FAIL: eval exited %d:\n%s" % (result.returncode, result.stdout))
    with open(eval_json) as f:
        evaluated = json.load(f)
    for key in ("eval_loss", "eval_accuracy", "eval_macro_f1", "eval_samples"):
        diff = abs(evaluated[key] - evals[-1][key]) / max(abs(evals[-1][key]), 1e-12)
        if diff > args.rtol:
            failures += 1
            print("MISMATCH eval -np 2 %s: %.9g vs the trainer's %.9g" % (key, evaluated[key], evals[-1][key]))
    print("eval -np 2 of checkpoint-40.h5: %s" % result.stdout.strip())
    if failures:
        sys.exit("FAIL: %d values differ by more than %g relative" % (failures, args.rtol))
    print("PASS: losses, grad norms, learning rates and evaluations agree across rank counts and with `eval`")


if __name__ == "__main__":
    main()
