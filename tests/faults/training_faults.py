#!/usr/bin/env python3
"""Faults a training job meets in production, provoked for real through mpirun on the CPU backend:

  signal       SIGTERM to one rank of `mpirun -np 2 train`: every rank finishes the step, rank 0
               writes checkpoint-<step>.h5 (complete), the job exits 143 within seconds, and
               `--resume_from_checkpoint auto` ends with exactly the weights of an uninterrupted run.
  cross-world  -np 2 x batch 4 stops mid-epoch; -np 1 x batch 8 (same global batch) resumes it,
               re-sharding the rest of the epoch, and logs the losses the 2-rank run logged
               (dropout off: the same examples make each step); a different global batch is refused.
  lost-rank    one of 3 ranks is stopped (SIGSTOP: a hang) or killed (SIGKILL): the job ends within
               collective_timeout_s + a few seconds, non-zero, and the message names that rank
               (arrival check; mpirun for a killed rank) or, when the rank stopped inside a
               collective every rank had entered, names the collective and step (watchdog).
  disk         -np 2: a file size limit (ulimit -f) below one checkpoint and an unwritable output_dir
               are refused before training, naming the path, creating nothing; the disk "fills up"
               mid-run (RLIMIT_FSIZE of rank 0 lowered with prlimit: writes fail with EFBIG, as
               with ENOSPC on a full disk): the next save fails, every rank exits 1 with one error
               line naming the checkpoint, the reason and the last complete checkpoint, which is
               left byte for byte; resume auto then ends bit-identical to an uninterrupted run.

Writes its own data (tests/trainer/compare_ranks.py --data-only) so it depends on nothing else."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "trainer"))
from compare_ranks import write_data  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")


def train_command(args, ranks, out, *extra):
    w = args.work
    return [args.mpiexec, "--oversubscribe", "--allow-run-as-root", "-np", str(ranks), args.binary, "train",
            "--train_file", os.path.join(w, "train.csv"), "--vocab", os.path.join(w, "vocab.txt"),
            "--do_lower_case", "true", "--output_dir", out, "--max_length", "16", "--num_labels", "2",
            "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
            "--intermediate_size", "64", "--max_position_embeddings", "16", "--learning_rate", "1e-3",
            "--seed", "3", "--device", "cpu"] + list(extra)


def run(cmd, timeout=300):
    return subprocess.run(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def fail(message, output=""):
    sys.exit("FAIL: " + message + ("\n--- output ---\n" + output if output else ""))


def weights(path):
    with h5py.File(path, "r") as f:
        return {name: np.array(f["model"][name]) for name in f["model"]}


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def rank_pids(mpirun_pid, ranks, deadline_s=30):
    """pid of each rank (children of mpirun, told apart by OMPI_COMM_WORLD_RANK)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        found = {}
        for pid in subprocess.run(["pgrep", "-P", str(mpirun_pid)], stdout=subprocess.PIPE, text=True).stdout.split():
            try:
                with open("/proc/%s/environ" % pid, "rb") as f:
                    for item in f.read().split(b"\0"):
                        if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                            found[int(item.split(b"=")[1])] = int(pid)
            except OSError:
                pass
        if len(found) == ranks:
            return found
        time.sleep(0.1)
    fail("could not find the %d rank processes of mpirun %d" % (ranks, mpirun_pid))


def wait_for_line(process, needle, log, timeout_s=120):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        log.append(line)
        if needle in line:
            return
    fail("never saw %r" % needle, "".join(log))


def check_signal(args):
    steps = "3000"
    straight = os.path.join(args.work, "signal_straight")
    stopped = os.path.join(args.work, "signal_stopped")
    for d in (straight, stopped):
        shutil.rmtree(d, ignore_errors=True)
    common = ("--max_steps", steps, "--logging_steps", "100", "--per_device_train_batch_size", "4")
    result = run(train_command(args, 2, straight, *common))
    if result.returncode != 0:
        fail("the uninterrupted run exited %d" % result.returncode, result.stdout)

    process = subprocess.Popen(train_command(args, 2, stopped, *common), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log = []
    wait_for_line(process, "step 300/", log)
    pids = rank_pids(process.pid, 2)
    sent = time.time()
    os.kill(pids[1], signal.SIGTERM)  # a rank other than 0: the stop flag must reach rank 0
    try:
        rest, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        fail("the job did not end within 30 s of SIGTERM", "".join(log))
    took = time.time() - sent
    output = "".join(log) + rest
    if process.returncode != 143:
        fail("exit code %d after SIGTERM, expected 143" % process.returncode, output)
    marker = "stopped by SIGTERM at step "
    if marker not in output:
        fail("no 'stopped by SIGTERM' message", output)
    step = int(output.split(marker)[1].split(";")[0])
    checkpoint = os.path.join(stopped, "checkpoint-%d.h5" % step)
    if "checkpoint " + checkpoint not in output or "--resume_from_checkpoint auto" not in output:
        fail("the message does not name %s and how to resume" % checkpoint, output)
    if not 300 <= step < int(steps):
        fail("stopped at step %d" % step, output)
    leftovers = [n for n in os.listdir(stopped) if ".tmp" in n]
    if leftovers:
        fail("temporary files left: %s" % leftovers)
    with h5py.File(checkpoint, "r") as f:  # complete: every parameter, moments, the position
        if f["trainer"].attrs["global_step"] != step or len(f["model"]) != len(f["optimizer"]["exp_avg"]):
            fail("%s is incomplete" % checkpoint)
    result = run(train_command(args, 2, stopped, *common, "--resume_from_checkpoint", "auto"))
    if result.returncode != 0 or "resumed from " + checkpoint not in result.stdout:
        fail("resume exited %d" % result.returncode, result.stdout)
    a = weights(os.path.join(straight, "checkpoint-%s.h5" % steps))
    b = weights(os.path.join(stopped, "checkpoint-%s.h5" % steps))
    differ = [name for name in a if not np.array_equal(a[name], b[name])]
    if differ:
        fail("after the resume %d tensors differ from the uninterrupted run, e.g. %s" % (len(differ), differ[0]))
    print("signal: SIGTERM to rank 1 at step >= 300 -> stopped at step %d in %.1f s, exit 143, %s complete; "
          "resume auto ends bit-identical to the uninterrupted run (%d tensors)" % (step, took, os.path.basename(checkpoint), len(a)))


def check_cross_world(args):
    two = os.path.join(args.work, "world2")
    one = os.path.join(args.work, "world1")
    for d in (two, one):
        shutil.rmtree(d, ignore_errors=True)
    common = ("--max_steps", "20", "--logging_steps", "1", "--save_steps", "5", "--hidden_dropout_prob", "0",
              "--attention_probs_dropout_prob", "0")
    result = run(train_command(args, 2, two, *common, "--per_device_train_batch_size", "4"))
    if result.returncode != 0:
        fail("-np 2 exited %d" % result.returncode, result.stdout)
    os.makedirs(one)
    shutil.copy(os.path.join(two, "checkpoint-5.h5"), one)  # step 5 of 8 in epoch 1: mid-epoch
    result = run(train_command(args, 1, one, *common, "--per_device_train_batch_size", "8",
                               "--resume_from_checkpoint", "auto"))
    if result.returncode != 0:
        fail("-np 1 resume exited %d" % result.returncode, result.stdout)
    note = "resuming a 2-rank run on 1 rank(s): same global batch 8, the rest of epoch 1 (24 examples) is re-sharded"
    if note not in result.stdout:
        fail("no message saying the run is re-sharded", result.stdout)
    ref, got = losses(two), losses(one)
    if [r["step"] for r in got] != list(range(1, 21)):
        fail("-np 1 logged steps %s" % [r["step"] for r in got])
    worst = 0.0
    for r, g in zip(ref, got):
        for key in ("loss", "grad_norm", "learning_rate", "epoch"):
            diff = abs(r[key] - g[key]) / max(abs(r[key]), 1e-12)
            worst = max(worst, diff)
            if diff > 1e-5:
                fail("step %d %s: -np 1 resumed %.9g, -np 2 %.9g" % (r["step"], key, g[key], r[key]))
    refused = run(train_command(args, 1, one, *common, "--per_device_train_batch_size", "4",
                                "--resume_from_checkpoint", os.path.join(two, "checkpoint-5.h5")))
    if refused.returncode == 0 or "global batch 8" not in refused.stdout:
        fail("a resume with global batch 4 was not refused with the reason", refused.stdout)
    print("cross-world: -np 1 x batch 8 resumed -np 2 x batch 4 at step 5 (mid-epoch) and matched its 20 logged "
          "steps within %.1e relative; global batch 4 refused" % worst)


def check_lost_rank(args):
    timeout_s = 4
    for how in ("SIGSTOP", "SIGKILL"):
        out = os.path.join(args.work, "lost_" + how)
        shutil.rmtree(out, ignore_errors=True)
        process = subprocess.Popen(train_command(args, 3, out, "--max_steps", "200000", "--logging_steps", "200",
                                                 "--per_device_train_batch_size", "2", "--collective_timeout_s",
                                                 str(timeout_s)),
                                   env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log = []
        wait_for_line(process, "step 200/", log)
        pids = rank_pids(process.pid, 3)
        sent = time.time()
        os.kill(pids[2], getattr(signal, how))
        try:
            rest, _ = process.communicate(timeout=timeout_s + 30)
        except subprocess.TimeoutExpired:
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            process.kill()
            fail("%s of rank 2: the job still runs %d s later (hang)" % (how, timeout_s + 30), "".join(log))
        took = time.time() - sent
        for pid in pids.values():  # a stopped rank that mpirun did not reap
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        output = "".join(log) + rest
        if process.returncode == 0:
            fail("%s of rank 2: exit code 0" % how, output)
        if took > timeout_s + 10:
            fail("%s of rank 2: the job ended only after %.1f s" % (how, took), output)
        ours = "rank(s) 2 did not reach"
        mpiruns = "rank 2 with PID"
        # A rank stopped inside a collective that every rank had entered cannot be named through
        # MPI: then the watchdog's message (collective and step) is what ends the job.
        watchdog = "has not completed after %d s (collective_timeout_s)" % timeout_s
        if how == "SIGSTOP" and ours not in output and watchdog not in output:
            fail("SIGSTOP of rank 2: neither the arrival check nor the watchdog ended the job", output)
        if how == "SIGKILL" and ours not in output and mpiruns not in output:
            fail("SIGKILL of rank 2: neither our message nor mpirun's names rank 2", output)
        said = ours if ours in output else watchdog if watchdog in output else "mpirun: " + mpiruns
        print("lost-rank: %s of rank 2 -> job ended in %.1f s (collective_timeout_s %d), exit %d, message: '%s'"
              % (how, took, timeout_s, process.returncode, said))


def single_error_line(output):
    lines = [l for l in output.splitlines() if "llmqs-dist: error" in l]
    return lines[0] if len(lines) == 1 else None


def no_crash(output):
    return not any(marker in output for marker in ("Segmentation", "signal 11", "Aborted", "core dumped",
                                                   "terminate called", "MPI_ABORT"))


def sha256(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_disk(args):
    import resource
    common = ("--per_device_train_batch_size", "4", "--logging_steps", "100")

    # A file size limit below one checkpoint: refused before the data is read. MPI itself needs a
    # few MB of shared-memory files per rank, so the limit is 5 MB and the model wider (~22 MB).
    out = os.path.join(args.work, "disk_limit")
    shutil.rmtree(out, ignore_errors=True)
    command = train_command(args, 2, out, "--max_steps", "10", *common)
    for key, value in (("--hidden_size", "256"), ("--intermediate_size", "1024"), ("--num_attention_heads", "4")):
        command[command.index(key) + 1] = value
    inner = " ".join("'%s'" % c for c in command[command.index(args.binary):])
    limited = command[:command.index(args.binary)] + ["bash", "-c", "ulimit -f 5000 && exec " + inner]
    result = run(limited)
    line = single_error_line(result.stdout)
    if result.returncode == 0 or not line or "ulimit -f" not in line or out not in line:
        fail("ulimit -f 5000: expected one error naming %s and the file size limit" % out, result.stdout)
    if "train:" in result.stdout or os.path.exists(out):
        fail("ulimit -f 5000: training started or %s was created" % out, result.stdout)
    print("disk: ulimit -f 5000 (KB) -> refused before training: %s" % line)

    # An output_dir nobody may write to (root passes permission bits, sysfs refuses even root).
    if os.geteuid() != 0:
        locked = os.path.join(args.work, "disk_locked")
        os.makedirs(locked, exist_ok=True)
        os.chmod(locked, 0o555)
        out = os.path.join(locked, "run")
    else:
        out = "/sys/kernel/llmqs-dist-faults-test"
    result = run(train_command(args, 2, out, "--max_steps", "10", *common))
    line = single_error_line(result.stdout)
    if result.returncode == 0 or not line or "is not writable" not in line or out not in line:
        fail("an unwritable output_dir was not refused with one error naming it", result.stdout)
    if os.path.exists(out):
        fail("%s was created" % out)
    print("disk: unwritable output_dir -> refused before training: %s" % line)

    # The disk fills up mid-run.
    straight, full = os.path.join(args.work, "disk_straight"), os.path.join(args.work, "disk_full")
    for d in (straight, full):
        shutil.rmtree(d, ignore_errors=True)
    steps = ("--max_steps", "600", "--save_steps", "200", "--per_device_train_batch_size", "4", "--logging_steps", "50")
    result = run(train_command(args, 2, straight, *steps))
    if result.returncode != 0:
        fail("the uninterrupted run exited %d" % result.returncode, result.stdout)
    process = subprocess.Popen(train_command(args, 2, full, *steps), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log = []
    pids = rank_pids(process.pid, 2)
    first = os.path.join(full, "checkpoint-200.h5")
    deadline = time.time() + 120
    while not os.path.exists(first) and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    resource.prlimit(pids[0], resource.RLIMIT_FSIZE, (100_000, 100_000))  # rank 0 writes; < one checkpoint
    before = sha256(first)
    rest, _ = process.communicate(timeout=120)
    output = "".join(log) + rest
    line = single_error_line(output)
    second = os.path.join(full, "checkpoint-400.h5")
    if process.returncode != 1 or not line or not no_crash(output):
        fail("full disk: expected exit 1 and one error line, no crash; exit %d" % process.returncode, output)
    for part in (second + ": cannot write the checkpoint", "File too large",
                 "training stopped at step 400, the last complete checkpoint is " + first):
        if part not in line:
            fail("full disk: the error does not say %r" % part, output)
    left = sorted(os.listdir(full))
    if left != ["checkpoint-200.h5", "metrics.jsonl", "runs"]:
        fail("full disk: %s holds %s (a temporary or a partial checkpoint?)" % (full, left))
    if sha256(first) != before:
        fail("full disk: %s changed" % first)
    result = run(train_command(args, 2, full, *steps, "--resume_from_checkpoint", "auto"))
    if result.returncode != 0 or "resumed from " + first not in result.stdout:
        fail("full disk: resume auto exited %d" % result.returncode, result.stdout)
    a = weights(os.path.join(straight, "checkpoint-600.h5"))
    b = weights(os.path.join(full, "checkpoint-600.h5"))
    differ = [name for name in a if not np.array_equal(a[name], b[name])]
    if differ:
        fail("full disk: after the resume %d tensors differ from the uninterrupted run" % len(differ))
    print("disk: the disk filled up (RLIMIT_FSIZE 100 KB on rank 0) after checkpoint-200 -> exit 1, %s; "
          "checkpoint-200.h5 untouched, nothing else left; resume auto ends bit-identical (%d tensors)"
          % (line, len(a)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("check", choices=["signal", "cross-world", "lost-rank", "disk"])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--mpiexec", default="mpirun")
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    write_data(args.work)
    {"signal": check_signal, "cross-world": check_cross_world, "lost-rank": check_lost_rank,
     "disk": check_disk}[args.check](args)
    print("PASS: " + args.check)


if __name__ == "__main__":
    main()
