#!/usr/bin/env python3
"""Crash consistency: a training job SIGKILLed at random moments, again and again, always resumes
from its newest complete checkpoint and ends exactly where an uninterrupted run ends.

One uninterrupted run (`mpirun -np RANKS train`, tiny model, dropout on, a checkpoint every 2 steps,
save_total_limit 2 so rotation runs all the time) gives the reference. Then the same command with
`--resume_from_checkpoint auto` is started and SIGKILLed (mpirun and every rank: the whole session)
--kills times, each launch at a moment drawn from a seeded RNG:

  startup   a delay after the launch (MPI start-up, reading data, restoring, rewriting metrics.jsonl);
  running   a delay after the "train:" line (a step, logging, a save, a rotation);
  in-write  inside the k-th checkpoint write of the launch, through the test hook
            LLMQS_TEST_HOOK_CHECKPOINT_WRITE_PAUSE_MS, which pauses each write half-way (half the
            file in checkpoint-N.h5.tmp.<pid>) and says so on stderr.

Every launch pauses 100 ms in each write (the hook does not change what is written), so the
running kills also often land in writes. After each kill, every checkpoint-*.h5 on disk must be
complete (its step, every /model and /optimizer dataset readable and as many moments as weights);
temporaries may be left. The next launch must say it resumed from the newest of them (never skip a
damaged one). After the kills a last launch runs to the end: its final checkpoint's /model,
/optimizer and position must equal the uninterrupted run's bit for bit, metrics.jsonl must hold
the same losses, and no temporary may be left.

  random_sigkill.py --binary llmqs-dist --work DIR [--ranks 2] [--kills 24] [--seed S]

The seed is printed; the same seed draws the same kill plan (where a kill lands still depends on
the machine's timing, so the log says where each one landed)."""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "trainer"))
from compare_ranks import write_data  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
HOOK = "LLMQS_TEST_HOOK_CHECKPOINT_WRITE_PAUSE_MS"
PAUSE_MS = 100
MAX_STEPS = 160
CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.h5$")


def fail(message, output=""):
    sys.exit("FAIL: " + message + ("\n--- output ---\n" + output[-6000:] if output else ""))


def train_command(args, out):
    w = args.work
    return [args.mpiexec, "--oversubscribe", "--allow-run-as-root", "-np", str(args.ranks), args.binary, "train",
            "--train_file", os.path.join(w, "train.csv"), "--vocab", os.path.join(w, "vocab.txt"),
            "--do_lower_case", "true", "--output_dir", out, "--max_length", "16", "--num_labels", "2",
            "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
            "--intermediate_size", "64", "--max_position_embeddings", "16", "--learning_rate", "1e-3",
            "--per_device_train_batch_size", str(8 // args.ranks), "--max_steps", str(MAX_STEPS),
            "--save_steps", "2", "--save_total_limit", "2", "--logging_steps", "1", "--seed", "3",
            "--device", "cpu", "--resume_from_checkpoint", "auto"]


def session_pids(sid):
    """Every process of session `sid` (mpirun and its ranks: the ranks get process groups of their
    own, so killing mpirun's group would leave them running)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # after the name: state ppid pgrp session
                pids.append(int(name))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def kill_session(launch):
    process = launch.process
    sid = process.pid  # start_new_session: mpirun leads its own session
    for _ in range(200):
        pids = session_pids(sid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
    else:
        fail("processes of the killed job still run: %s" % session_pids(sid))
    process.wait()


class Launch:
    """One `train` under mpirun in its own session, its output collected by a thread."""

    def __init__(self, args, out, hook):
        env = dict(ENV)
        if hook:
            env[HOOK] = str(PAUSE_MS)
        self.process = subprocess.Popen(train_command(args, out), env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines = []
        self.started = time.time()
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def output(self):
        with self.changed:
            return "".join(self.lines)

    def wait_for(self, predicate, timeout_s):
        """True once predicate(lines) holds; False when the job ended or the time ran out first."""
        deadline = time.time() + timeout_s
        with self.changed:
            while not predicate(self.lines):
                if self.process.poll() is not None and not self.reader.is_alive():
                    return False
                left = deadline - time.time()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.05))
            return True


def complete_checkpoints(out, ranks_dataset_count=None):
    """{step: path} of every checkpoint-N.h5 in out; fails the test if one is not complete."""
    found = {}
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        m = CHECKPOINT.match(name)
        if not m:
            continue
        step, path = int(m.group(1)), os.path.join(out, name)
        try:
            with h5py.File(path, "r") as f:
                if int(f["trainer"].attrs["global_step"]) != step:
                    raise ValueError("global_step %s" % f["trainer"].attrs["global_step"])
                model = list(f["model"])
                moments = [list(f["optimizer"][g]) for g in ("exp_avg", "exp_avg_sq")]
                if not model or any(m != model for m in moments):
                    raise ValueError("%d weights, moments %s" % (len(model), [len(m) for m in moments]))
                for name_ in model:  # every byte readable: nothing cut short
                    f["model"][name_][()]
                    f["optimizer"]["exp_avg"][name_][()]
                    f["optimizer"]["exp_avg_sq"][name_][()]
                f["trainer"]["log_history"][()]
        except Exception as e:  # noqa: BLE001 - any failure to read is the finding
            fail("%s is not a complete checkpoint after a SIGKILL: %s" % (path, e))
        found[step] = path
    return found


def temporaries(out):
    return sorted(n for n in os.listdir(out) if ".tmp." in n) if os.path.isdir(out) else []


def compare_final(reference, resumed):
    with h5py.File(reference, "r") as a, h5py.File(resumed, "r") as b:
        differ = []
        count = 0
        for group in ("model", "optimizer/exp_avg", "optimizer/exp_avg_sq"):
            for name in a[group]:
                count += 1
                if not np.array_equal(a[group][name][()], b[group][name][()]):
                    differ.append(group + "/" + name)
        for key in ("global_step", "samples_seen", "sampler_epoch", "sampler_position", "epoch"):
            if a["trainer"].attrs[key] != b["trainer"].attrs[key]:
                differ.append("/trainer@" + key)
        if a["optimizer"].attrs["step"] != b["optimizer"].attrs["step"]:
            differ.append("/optimizer@step")
    if differ:
        fail("the killed-and-resumed run ends with %d of %d tensors/attributes unlike the uninterrupted run, "
             "e.g. %s" % (len(differ), count, differ[:4]))
    return count


def logged_losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--mpiexec", default="mpirun")
    parser.add_argument("--work", required=True)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("LLMQS_SIGKILL_SEED", "20250117")))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print("random_sigkill: seed %d, %d kills, %d rank(s) (rerun: --seed %d)" % (args.seed, args.kills, args.ranks,
                                                                              args.seed), flush=True)
    os.makedirs(args.work, exist_ok=True)
    write_data(args.work)
    straight, killed = os.path.join(args.work, "straight"), os.path.join(args.work, "killed")
    for d in (straight, killed):
        shutil.rmtree(d, ignore_errors=True)

    begin = time.time()
    result = subprocess.run(train_command(args, straight), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=300)
    if result.returncode != 0:
        fail("the uninterrupted run exited %d" % result.returncode, result.stdout)
    reference = os.path.join(straight, "checkpoint-%d.h5" % MAX_STEPS)
    print("uninterrupted run: %d steps in %.1f s" % (MAX_STEPS, time.time() - begin), flush=True)

    landed = {"startup": 0, "running": 0, "in-write": 0}
    temporaries_seen = set()
    inside_writes = 0  # kills that left a temporary of their own launch: they landed inside a write
    newest_before = None
    for kill in range(1, args.kills + 1):
        have = complete_checkpoints(killed)
        newest_before = max(have) if have else 0
        temporaries_before = set(temporaries(killed))
        remaining_saves = (MAX_STEPS - newest_before) // 2
        mode = rng.choices(["startup", "running", "in-write"], weights=[2, 4, 5])[0]
        if remaining_saves <= 12 and mode == "running":
            mode = "in-write"  # keep the end for the last, uninterrupted launch
        delay = rng.uniform(0.05, 1.2) if mode == "startup" else rng.uniform(0.0, 0.5)
        nth_write = rng.randint(1, 3)
        into_pause = rng.uniform(0.0, 0.7)  # of the pause: room for mpirun to forward the marker line
        launch = Launch(args, killed, hook=True)
        if mode == "startup":
            time.sleep(delay)
            what = "%.2f s after the launch" % delay
        elif mode == "running":
            if not launch.wait_for(lambda lines: any(l.startswith("train:") for l in lines), 120):
                kill_session(launch)
                fail("launch %d never started training" % kill, launch.output())
            time.sleep(delay)
            what = "%.2f s into training" % delay
        else:
            marker = "test hook: pausing"
            if not launch.wait_for(lambda lines: sum(marker in l for l in lines) >= nth_write, 120):
                kill_session(launch)
                fail("launch %d never reached checkpoint write %d" % (kill, nth_write), launch.output())
            time.sleep(into_pause * PAUSE_MS / 1000.0)
            what = "in checkpoint write %d, %.0f ms into its %d ms pause" % (nth_write, into_pause * PAUSE_MS, PAUSE_MS)
        finished = launch.process.poll() is not None
        kill_session(launch)
        output = launch.output()
        if finished:
            fail("launch %d ended before its kill (%s); exit %s" % (kill, what, launch.process.returncode), output)
        if "warning: skipping" in output:
            fail("launch %d skipped a damaged checkpoint: a kill left one behind" % kill, output)
        said = re.search(r"resumed from (\S+) at step (\d+)", output)
        if newest_before and said and said.group(1) != os.path.join(killed, "checkpoint-%d.h5" % newest_before):
            fail("launch %d resumed from %s, the newest complete checkpoint was checkpoint-%d.h5"
                 % (kill, said.group(1), newest_before), output)
        if not newest_before and said:
            fail("launch %d resumed from %s although no checkpoint existed" % (kill, said.group(1)), output)
        after = complete_checkpoints(killed)  # fails on any incomplete checkpoint-N.h5
        left = temporaries(killed)
        new_temporaries = set(left) - temporaries_before
        temporaries_seen |= new_temporaries
        inside_writes += bool(new_temporaries)
        landed[mode] += 1
        print("kill %2d: %-9s %-52s resumed at %3d, newest now %3d, checkpoints %s, temporaries %s"
              % (kill, mode, what, newest_before, max(after) if after else 0, sorted(after), left), flush=True)

    if inside_writes < args.kills // 4:
        fail("only %d of %d kills landed inside a checkpoint write (left its temporary); the test proves too "
             "little on this machine's timing" % (inside_writes, args.kills))
    have = complete_checkpoints(killed)
    newest = max(have) if have else 0
    last = subprocess.run(train_command(args, killed), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    if last.returncode != 0:
        fail("the last launch exited %d" % last.returncode, last.stdout)
    if newest and "resumed from %s" % os.path.join(killed, "checkpoint-%d.h5" % newest) not in last.stdout:
        fail("the last launch did not resume from checkpoint-%d.h5" % newest, last.stdout)
    if "warning: skipping" in last.stdout:
        fail("the last launch skipped a damaged checkpoint", last.stdout)
    tensors = compare_final(reference, os.path.join(killed, "checkpoint-%d.h5" % MAX_STEPS))
    a, b = logged_losses(straight), logged_losses(killed)
    differ = [s for s in range(1, MAX_STEPS + 1) if a.get(s) != b.get(s)]
    if differ:
        fail("metrics.jsonl: the losses of steps %s differ (or are missing) after the kills" % differ[:10])
    left = temporaries(killed)
    if left:
        fail("temporaries left after the run finished: %s" % left)
    kept = sorted(complete_checkpoints(killed))
    if len(kept) > 2:
        fail("save_total_limit 2, but %s are left" % kept)
    print("PASS: %d SIGKILLs (planned: %d at start-up, %d while training, %d in a checkpoint write; %d landed inside "
          "a write and left its temporary, all cleaned up by the next launches): every checkpoint on disk was "
          "complete, every launch resumed from the newest, and the final checkpoint equals the uninterrupted run's "
          "(%d tensors bit for bit, position, %d logged losses) [seed %d, %.0f s]"
          % (args.kills, landed["startup"], landed["running"], landed["in-write"], len(temporaries_seen), tensors,
             MAX_STEPS, args.seed, time.time() - begin))


if __name__ == "__main__":
    main()
