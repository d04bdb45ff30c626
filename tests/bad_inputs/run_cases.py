#!/usr/bin/env python3
"""The bad-input corpus runner: every case of cases.tsv is one llmqs-dist command on a broken (or
odd but valid) input, run with the real binary. A case passes when

  * the exit status is what the manifest says: `fail` = 1 or 2 (an error, printed by main),
    `ok` = 0;
  * nothing crashed: no exit status >= 128 / death by signal, and no "Segmentation",
    "terminate called", "AddressSanitizer", "LeakSanitizer" or "runtime error:" in the output;
  * the output contains every `|`-separated substring of the `expect` column (for failures: the
    file name and the problem), and a failure prints exactly one "llmqs-dist: error:" line;
  * a failing case leaves no file under its output folder {O} and no *.tmp.* file anywhere in
    the work folder (complete-or-absent outputs).

A case whose `known_issue` column is set documents a bug not fixed yet: it is reported XFAIL while it
still misbehaves and fails the run (XPASS) once it behaves, so the marker gets removed. A crash
fails the run whatever that column says.

Inputs that cannot live in git (binary encodings, 10 MB fields, damaged HDF5 checkpoints and token
caches, lying safetensors headers) are made at run time in the work folder, from a sample dataset, a
one-step training run, export-hf and prepare done with the binary under test.

  run_cases.py --binary build/launch/llmqs-dist --work_dir /tmp/bad_inputs [--only REGEX] [-v]
"""
import argparse
import copy
import gzip
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CRASH_MARKERS = ("Segmentation", "terminate called", "AddressSanitizer", "LeakSanitizer",
                 "runtime error:", "core dumped", "Aborted", "stack smashing")


# ---- fixtures ---------------------------------------------------------------------------------

def run_binary(binary, args, cwd, timeout=120):
    proc = subprocess.run([binary] + args, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("fixture step failed: llmqs-dist %s\n%s%s" % (
            " ".join(args), proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")))


BASE_INI = """# tiny model for the bad-input corpus: one layer, 32 wide, one optimizer step on CPU
train_file = {W}/s/train.csv
vocab = {W}/s/vocab.txt
do_lower_case = true
max_length = 32
num_labels = 5
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 64
max_position_embeddings = 64
max_steps = 1
per_device_train_batch_size = 4
per_device_eval_batch_size = 8
logging_steps = 1
device = cpu
"""


def make_text_inputs(w):
    """Inputs whose bytes git or an editor would mangle: encodings, BOM + CRLF, 10 MB fields."""
    def put(name, data):
        with open(os.path.join(w, name), "wb") as f:
            f.write(data)
    put("csv_invalid_utf8.csv", b'"1","fine"\n"2","broken \xff\xfe byte"\n')
    put("csv_truncated_utf8_sequence.csv", b'"1","ends inside a sequence \xc3"\n')
    put("csv_latin1.csv", b'"1","fine"\n"3","caf\xe9 au lait"\n')
    put("csv_utf16_bom.csv", "\ufeff\"1\",\"utf-16 text\"\n".encode("utf-16-le"))
    put("csv_gzip.csv", gzip.compress(b'"1","fine"\n"2","bad"\n', mtime=0))
    put("csv_empty.csv", b"")
    put("csv_bom_crlf.csv", b'\xef\xbb\xbf"1","windows line ends"\r\n"5","second, with comma"\r\n')
    put("jsonl_bom_crlf.jsonl", b'\xef\xbb\xbf{"label": 0, "text": "a"}\r\n{"label": 4, "text": "b"}\r\n')
    put("jsonl_invalid_utf8.jsonl", b'{"label": 1, "text": "bad \xff byte"}\n')
    put("text_invalid_utf8.txt", b"good review\ncaf\xe9 latin-1 review\n")
    put("text_empty.txt", b"")
    put("predict_text_only.csv", b'great food\n"slow service, cold soup"\nfine\n')
    put("predict_text_header.csv", b'text\ngreat food\n"slow service, cold soup"\n')
    put("predict_id_text_header.csv", b'id,text\n7,great food\n9,"slow service, cold soup"\n')
    put("predict_text_only_unquoted_comma.csv", b'great food\nslow service, cold soup\n')
    put("predict_text_only.jsonl", b'{"text": "great food"}\n{"text": "slow service"}\n')
    put("predict_mixed_labels.jsonl", b'{"label": 1, "text": "great food"}\n{"text": "slow service"}\n')
    field = b"word " * 2_000_000  # 10 MB in one field: must be read and truncated, not choke
    put("csv_huge_field.csv", b'"4","' + field + b'"\n"2","short"\n')
    put("csv_huge_field_unterminated.csv", b'"4","' + field + b"\n")
    put("csv_huge_single_word.csv", b'"4","' + b"x" * 10_000_000 + b'"\n')
    os.makedirs(os.path.join(w, "a_directory.csv"), exist_ok=True)


def make_token_caches(w, binary):
    import h5py
    import numpy as np
    prep = ["prepare", "--input", "s/train.csv", "--do_lower_case", "true"]
    run_binary(binary, prep + ["--vocab", "s/vocab.txt", "--max_length", "32", "--output", "cache.h5"], w)
    run_binary(binary, prep + ["--vocab", "s/vocab.txt", "--max_length", "16", "--output", "cache_len16.h5"], w)
    run_binary(binary, ["prepare", "--input", "s/train.csv", "--do_lower_case", "false", "--vocab", "s/vocab.txt",
                        "--max_length", "32", "--output", "cache_cased.h5"], w)
    with open(os.path.join(w, "s/vocab.txt")) as f:
        tokens = f.read().split("\n")
    with open(os.path.join(w, "vocab_reordered.txt"), "w") as f:  # same tokens, other ids
        f.write("\n".join(tokens[:5] + list(reversed(tokens[5:-1]))) + "\n")
    run_binary(binary, prep + ["--vocab", "vocab_reordered.txt", "--max_length", "32",
                               "--output", "cache_other_vocab.h5"], w)

    data = open(os.path.join(w, "cache.h5"), "rb").read()
    open(os.path.join(w, "cache_truncated.h5"), "wb").write(data[: len(data) // 2])
    open(os.path.join(w, "cache_garbage.h5"), "wb").write(bytes((i * 131 + 7) % 256 for i in range(8192)))

    def damaged(name, change):
        path = os.path.join(w, name)
        shutil.copy(os.path.join(w, "cache.h5"), path)
        with h5py.File(path, "r+") as f:
            change(f)

    def set_ds(f, key, transform):
        values = f[key][...]
        f[key][...] = transform(values)

    def offsets_past_end(o):
        o[5] = 10**9
        return o

    def offsets_decreasing(o):
        o[5], o[6] = o[6], o[5]
        return o

    def tokens_outside_vocab(t):
        t[1::3] = 99_999_999  # every example has several
        return t

    def label_out_of_range(l):
        l[2] = 42
        return l

    damaged("cache_offsets_past_end.h5", lambda f: set_ds(f, "offsets", offsets_past_end))
    damaged("cache_offsets_decreasing.h5", lambda f: set_ds(f, "offsets", offsets_decreasing))
    damaged("cache_tokens_outside_vocab.h5", lambda f: set_ds(f, "tokens", tokens_outside_vocab))
    damaged("cache_label_out_of_range.h5", lambda f: set_ds(f, "labels", label_out_of_range))
    damaged("cache_schema_version.h5", lambda f: f.attrs.__setitem__("schema_version", np.int32(99)))

    def drop_labels(f):
        del f["labels"]
    damaged("cache_no_labels.h5", drop_labels)

    def float_tokens(f):
        t = f["tokens"][...].astype("f4")
        del f["tokens"]
        f["tokens"] = t
    damaged("cache_float_tokens.h5", float_tokens)

    def two_d_tokens(f):
        t = f["tokens"][...].reshape(-1, 2)
        del f["tokens"]
        f["tokens"] = t
    damaged("cache_2d_tokens.h5", two_d_tokens)

    # Sizes that lie: a dataset declared but never written (its chunks do not exist, reads would
    # return the fill value), and one declared with 2^40 elements in a file of a few KB.
    def unwritten_tokens(f):
        n = f["tokens"].shape[0]
        del f["tokens"]
        f.create_dataset("tokens", shape=(n,), dtype="<i4", chunks=(1024,))
    damaged("cache_unwritten_tokens.h5", unwritten_tokens)

    def huge_offsets(f):
        n = 2**40
        del f["offsets"], f["labels"]
        f.create_dataset("offsets", shape=(n + 1,), dtype="<i8", chunks=(65536,))
        f.create_dataset("labels", shape=(n,), dtype="<i4", chunks=(65536,))
        f.attrs["num_examples"] = np.int64(n)
    damaged("cache_huge_unwritten_offsets.h5", huge_offsets)
    damaged("cache_max_length_zero.h5", lambda f: f.attrs.__setitem__("max_length", np.int32(0)))


def make_checkpoints(w, binary):
    import h5py
    import numpy as np
    run_binary(binary, ["train", "--config", "base.ini", "--output_dir", "run"], w)
    shutil.copy(os.path.join(w, "run/checkpoint-1.h5"), os.path.join(w, "ck.h5"))
    run_binary(binary, ["export-hf", "ck.h5", "hf"], w)
    run_binary(binary, ["import-hf", "hf", "--output", "imported.h5"], w)

    data = open(os.path.join(w, "ck.h5"), "rb").read()
    open(os.path.join(w, "ck_truncated_half.h5"), "wb").write(data[: len(data) // 2])
    open(os.path.join(w, "ck_truncated_tail.h5"), "wb").write(data[:-1000])
    open(os.path.join(w, "ck_garbage.h5"), "wb").write(bytes((i * 29 + 3) % 256 for i in range(8192)))
    open(os.path.join(w, "ck_empty.h5"), "wb").write(b"")

    def damaged(name, change):
        path = os.path.join(w, name)
        shutil.copy(os.path.join(w, "ck.h5"), path)
        with h5py.File(path, "r+") as f:
            change(f)

    damaged("ck_schema_version.h5", lambda f: f.attrs.__setitem__("schema_version", np.int64(2)))
    damaged("ck_other_schema.h5", lambda f: f.attrs.__setitem__("schema", "something-else"))

    def replace(f, key, value):
        del f[key]
        f[key] = value

    def missing_weight(f):
        del f["model/classifier.weight"]
    damaged("ck_missing_weight.h5", missing_weight)
    damaged("ck_wrong_shape_weight.h5",
            lambda f: replace(f, "model/classifier.weight", np.zeros((3, 32), "f4")))
    damaged("ck_config_hidden_size.h5", lambda f: f["model_config"].attrs.__setitem__("hidden_size", np.int64(48)))
    damaged("ck_config_negative_layers.h5",
            lambda f: f["model_config"].attrs.__setitem__("num_hidden_layers", np.int64(-1)))
    damaged("ck_config_huge_vocab.h5", lambda f: f["model_config"].attrs.__setitem__("vocab_size", np.int64(2**40)))

    def missing_moment(f):
        del f["optimizer/exp_avg/classifier.bias"]
    damaged("ck_missing_moment.h5", missing_moment)

    def no_log_history(f):
        del f["trainer/log_history"]
    damaged("ck_no_log_history.h5", no_log_history)
    damaged("ck_negative_step.h5", lambda f: f["trainer"].attrs.__setitem__("global_step", np.int64(-5)))
    damaged("ck_max_length_beyond_positions.h5",
            lambda f: f["tokenizer"].attrs.__setitem__("max_length", np.int64(100000)))

    def nan_weight(f):
        w_ = f["model/classifier.weight"][...]
        w_[0, 0] = np.nan
        f["model/classifier.weight"][...] = w_
    damaged("ck_nan_weight.h5", nan_weight)

    def inf_moment(f):
        v = f["optimizer/exp_avg_sq/classifier.bias"][...]
        v[1] = np.inf
        f["optimizer/exp_avg_sq/classifier.bias"][...] = v
    damaged("ck_inf_moment.h5", inf_moment)

    def unwritten_weight(f):
        name = "model/bert.embeddings.word_embeddings.weight"
        shape = f[name].shape
        del f[name]
        f.create_dataset(name, shape=shape, dtype="<f4", chunks=(64, shape[1]))
    damaged("ck_unwritten_weight.h5", unwritten_weight)

    def huge_unwritten_model(f):
        # 2^26 x 32 floats (8 GiB) declared in a file of a few hundred KB: refused before allocating
        vocab = 2**26
        f["model_config"].attrs["vocab_size"] = np.int64(vocab)
        for group in ("model", "optimizer/exp_avg", "optimizer/exp_avg_sq"):
            name = group + "/bert.embeddings.word_embeddings.weight"
            del f[name]
            f.create_dataset(name, shape=(vocab, 32), dtype="<f4", chunks=(4096, 32))
    damaged("ck_huge_unwritten_model.h5", huge_unwritten_model)
    damaged("ck_config_huge_layers.h5",
            lambda f: f["model_config"].attrs.__setitem__("num_hidden_layers", np.int64(2**31 - 1)))
    damaged("ck_world_size_zero.h5", lambda f: f["trainer"].attrs.__setitem__("world_size", np.int64(0)))
    damaged("ck_sampler_position_beyond_step.h5",
            lambda f: f["trainer"].attrs.__setitem__("sampler_position", np.int64(10**15)))
    damaged("ck_label_offset_huge.h5",
            lambda f: f["tokenizer"].attrs.__setitem__("label_offset", np.int64(2**31 - 1)))

    def garbage_batch_in_config_ini(f):
        # Resumed on another rank count mid-epoch, the old run's batches are replayed from the
        # stored INI: its numbers are file content like any other.
        ini = f["trainer/config_ini"][()].decode()
        ini = re.sub(r"per_device_train_batch_size = \d+", "per_device_train_batch_size = 4x", ini)
        del f["trainer/config_ini"]
        f.create_dataset("trainer/config_ini", data=ini, dtype=h5py.string_dtype())
        f["trainer"].attrs["world_size"] = np.int64(2)
        f["trainer"].attrs["sampler_position"] = np.int64(1)
    damaged("ck_config_ini_garbage.h5", garbage_batch_in_config_ini)

    def ascii_schema(f):  # what h5py writes for bytes: variable-length ASCII strings
        del f.attrs["schema"]
        f.attrs.create("schema", b"llmqs-dist-checkpoint", dtype=h5py.string_dtype("ascii"))
    damaged("ck_schema_vlen_ascii.h5", ascii_schema)

    # resume_from_checkpoint auto must skip a damaged newest checkpoint and take the previous one
    os.makedirs(os.path.join(w, "resume_dir"), exist_ok=True)
    shutil.copy(os.path.join(w, "ck.h5"), os.path.join(w, "resume_dir/checkpoint-1.h5"))
    shutil.copy(os.path.join(w, "ck_truncated_half.h5"), os.path.join(w, "resume_dir/checkpoint-5.h5"))


def make_safetensors_dirs(w):
    src = open(os.path.join(w, "hf/model.safetensors"), "rb").read()
    header_len = struct.unpack("<Q", src[:8])[0]
    header = json.loads(src[8: 8 + header_len])
    payload = src[8 + header_len:]

    def folder(name):
        d = os.path.join(w, "st_" + name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(os.path.join(w, "hf"), d)
        return d

    def write(name, header_obj=None, header_bytes=None, length=None, data=payload):
        hb = header_bytes if header_bytes is not None else json.dumps(header_obj).encode()
        with open(os.path.join(folder(name), "model.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(hb) if length is None else length) + hb + data)

    def edited(change):
        h = copy.deepcopy(header)
        change(h)
        return h

    def set_field(tensor, key, value):
        return lambda h: h[tensor].__setitem__(key, value)

    first, second = [k for k in header if k != "__metadata__"][:2]
    first_begin = header[first]["data_offsets"][0]
    second_size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]

    write("length_past_eof", header, length=len(src) + 1000)
    write("length_2e64", header, length=2**64 - 1)
    write("length_too_short", header, length=100)
    write("offsets_out_of_range",
          edited(set_field("classifier.bias", "data_offsets", [len(payload) - 4, len(payload) + 16])))
    write("offsets_2e63", edited(set_field("classifier.bias", "data_offsets", [2**63, 2**63 + 20])))
    write("offsets_reversed", edited(set_field("classifier.bias", "data_offsets", [20, 10])))
    write("offsets_not_array", edited(set_field("classifier.bias", "data_offsets", "x")))
    write("overlap", edited(set_field(second, "data_offsets", [first_begin, first_begin + second_size])))
    write("dtype_shape_mismatch", edited(set_field("classifier.bias", "dtype", "F16")))
    write("dtype_unknown", edited(set_field("classifier.bias", "dtype", "Q4")))
    write("shape_size_mismatch", edited(set_field("classifier.bias", "shape", [7])))
    write("shape_negative", edited(set_field("classifier.bias", "shape", [-5])))
    write("shape_overflow", edited(set_field("classifier.bias", "shape", [2**40, 2**40])))
    write("shape_transposed", edited(set_field("bert.encoder.layer.0.output.dense.weight", "shape", [64, 32])))

    def drop(name):
        return lambda h: h.pop(name)
    write("missing_encoder_tensor", edited(drop("bert.encoder.layer.0.attention.self.query.weight")))
    write("header_not_json", header_bytes=b'{"classifier.bias": {"dtype": "F32", ' + b" " * 19)
    write("header_array", header_bytes=b"[1, 2, 3]      ")
    write("header_number_overflow",
          header_bytes=b'{"classifier.bias": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 20]}}')
    with open(os.path.join(folder("shorter_than_8_bytes"), "model.safetensors"), "wb") as f:
        f.write(b"\x05\x00\x00")
    with open(os.path.join(folder("truncated_data"), "model.safetensors"), "wb") as f:
        f.write(src[:-100])

    def config(name, change):
        d = folder(name)
        with open(os.path.join(d, "config.json")) as f:
            c = json.load(f)
        change(c)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)
    config("config_hidden_size", lambda c: c.__setitem__("hidden_size", 48))
    config("config_layers_string", lambda c: c.__setitem__("num_hidden_layers", "two"))
    config("config_relu", lambda c: c.__setitem__("hidden_act", "relu"))
    config("config_huge_layers", lambda c: c.__setitem__("num_hidden_layers", 100000))
    # 131072 wide: 69 G parameters, a 275 GB allocation if nothing checked the size first
    config("config_huge_hidden", lambda c: c.update(hidden_size=131072, num_attention_heads=1))
    nan_bias = bytearray(payload)
    begin = header["classifier.bias"]["data_offsets"][0]
    nan_bias[begin + 4: begin + 8] = struct.pack("<f", float("nan"))
    write("nan_weight", header, data=bytes(nan_bias))
    with open(os.path.join(folder("config_not_json"), "config.json"), "w") as f:
        f.write('{"hidden_size": 32,')
    d = folder("config_number_overflow")
    with open(os.path.join(d, "config.json")) as f:
        text = f.read()
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(re.sub(r'"initializer_range": [0-9.e-]+', '"initializer_range": 1e400', text))
    os.remove(os.path.join(folder("no_config"), "config.json"))
    os.remove(os.path.join(folder("no_weights"), "model.safetensors"))
    d = folder("no_vocabulary")
    os.remove(os.path.join(d, "vocab.txt"))
    os.remove(os.path.join(d, "tokenizer.json"))
    os.makedirs(os.path.join(w, "nonempty_dir"), exist_ok=True)
    open(os.path.join(w, "nonempty_dir/notes.txt"), "w").write("keep me\n")
    open(os.path.join(w, "a_plain_file"), "w").write("not a directory\n")


def make_output_dirs(w):
    """output_dirs whose checkpoint names are taken by things that are not checkpoints."""
    os.makedirs(os.path.join(w, "out_ckname_dir", "checkpoint-1.h5"), exist_ok=True)
    os.makedirs(os.path.join(w, "out_ckname_file"), exist_ok=True)
    with open(os.path.join(w, "out_ckname_file", "checkpoint-1.h5"), "w") as f:
        f.write("my notes, not a checkpoint\n")


def make_fixtures(w, binary):
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    run_binary(binary, ["sample", "--output_dir", "s", "--train_size", "40", "--test_size", "12", "--seed", "3"], w)
    with open(os.path.join(w, "base.ini"), "w") as f:
        f.write(BASE_INI.replace("{W}", w))
    make_text_inputs(w)
    make_token_caches(w, binary)
    make_checkpoints(w, binary)
    make_safetensors_dirs(w)
    make_output_dirs(w)


# ---- the manifest -----------------------------------------------------------------------------

class Case:
    def __init__(self, line_no, name, expect, must_contain, command, known_issue):
        self.line_no, self.name, self.expect = line_no, name, expect
        self.must_contain = [s for s in must_contain.split("|") if s] if must_contain != "-" else []
        self.command, self.known_issue = command, known_issue


def read_manifest(path):
    macros, cases, names = {}, [], set()
    with open(path, encoding="utf-8") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            if line.startswith("@define "):
                key, _, value = line[len("@define "):].partition(" ")
                macros[key] = value.strip()
                continue
            cols = line.split("\t")
            if len(cols) not in (4, 5):
                raise SystemExit("%s:%d: expected 4 or 5 tab-separated columns, found %d" % (path, line_no, len(cols)))
            name, expect, must_contain, command = cols[:4]
            if expect not in ("ok", "fail"):
                raise SystemExit("%s:%d: expect must be ok or fail, got %r" % (path, line_no, expect))
            if name in names:
                raise SystemExit("%s:%d: duplicate case name %s" % (path, line_no, name))
            if expect == "fail" and must_contain == "-":
                raise SystemExit("%s:%d: a failing case must name what the error says" % (path, line_no))
            names.add(name)
            for _ in range(3):  # macros may use macros
                for key, value in macros.items():
                    command = command.replace("{" + key + "}", value)
            cases.append(Case(line_no, name, expect, must_contain, command, cols[4] if len(cols) == 5 else ""))
    return cases


def leftovers(root):
    found = []
    for dirpath, _, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if ".tmp." in f]
    return found


def run_case(case, binary, work, files, timeout):
    out_dir = os.path.join(work, "out", case.name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    command = case.command.replace("{W}", work).replace("{F}", files).replace("{O}", out_dir)
    args = shlex.split(command)
    start = time.time()
    try:
        proc = subprocess.run([binary] + args, cwd=work, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
        code, output = proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
    except subprocess.TimeoutExpired as e:
        code, output = None, ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", errors="replace")
    seconds = time.time() - start

    crash = []
    if code is None:
        crash.append("timed out after %d s (a hang)" % timeout)
    elif code < 0 or code >= 128:
        crash.append("killed / crashed: exit status %d" % code)
    crash += ["crash marker %r in the output" % m for m in CRASH_MARKERS if m in output]

    problems = []
    if case.expect == "ok" and code != 0:
        problems.append("expected success, exit status %s" % code)
    if case.expect == "fail" and code not in (1, 2):
        problems.append("expected an error (exit 1 or 2), exit status %s" % code)
    for text in case.must_contain:
        if text.replace("{W}", work).replace("{O}", out_dir) not in output:
            problems.append("output lacks %r" % text)
    if case.expect == "fail":
        errors = output.count("llmqs-dist: error:")
        if errors != 1:
            problems.append('%d "llmqs-dist: error:" lines, expected exactly one' % errors)
        left = [os.path.relpath(os.path.join(d, f), work) for d, _, fs in os.walk(out_dir) for f in fs]
        if left:
            problems.append("a failed run left files behind: %s" % ", ".join(left))
    tmp = leftovers(work)
    if tmp:
        problems.append("temporary files left behind: %s" % ", ".join(os.path.relpath(t, work) for t in tmp))
        for t in tmp:
            os.remove(t)
    return crash, problems, output, seconds, command


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="the llmqs-dist executable under test")
    parser.add_argument("--work_dir", required=True, help="scratch folder (emptied first)")
    parser.add_argument("--cases", default=os.path.join(HERE, "cases.tsv"))
    parser.add_argument("--only", default="", help="run only cases whose name matches this regex")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per case")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case's output")
    args = parser.parse_args()

    binary = os.path.abspath(args.binary)
    work = os.path.abspath(args.work_dir)
    files = os.path.join(HERE, "files")
    cases = read_manifest(args.cases)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    start = time.time()
    make_fixtures(work, binary)
    print("bad_inputs: fixtures made in %.1f s in %s" % (time.time() - start, work))

    counts = {"PASS": 0, "XFAIL": 0, "FAIL": 0, "XPASS": 0, "CRASH": 0}
    for case in cases:
        crash, problems, output, seconds, command = run_case(case, binary, work, files, args.timeout)
        if crash:
            verdict = "CRASH"
        elif case.known_issue:
            verdict = "XFAIL" if problems else "XPASS"
        else:
            verdict = "FAIL" if problems else "PASS"
        counts[verdict] += 1
        print("%-5s %-48s %5.2f s" % (verdict, case.name, seconds) +
              ("   (known issue: %s)" % case.known_issue if case.known_issue else ""))
        if verdict in ("CRASH", "FAIL", "XPASS") or args.verbose:
            print("      cases.tsv:%d: llmqs-dist %s" % (case.line_no, command))
            for p in crash + problems:
                print("      - " + p)
            if verdict == "XPASS":
                print("      - the known issue seems fixed: remove the known_issue column of this case")
            print("      | " + "\n      | ".join(output.strip()[-3000:].splitlines()))
    print("bad_inputs: %d cases: %d passed, %d known issues (XFAIL), %d failed, %d crashed, %d fixed (XPASS)" % (
        len(cases), counts["PASS"], counts["XFAIL"], counts["FAIL"], counts["CRASH"], counts["XPASS"]))
    return 1 if counts["FAIL"] or counts["CRASH"] or counts["XPASS"] else 0


if __name__ == "__main__":
    sys.exit(main())
