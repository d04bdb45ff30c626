#!/usr/bin/env python3
"""On a machine with 2 GPUs (NCCL): one of the two training ranks is stopped (SIGSTOP: a hang) or
killed (SIGKILL) mid-run, or stalls by itself after reporting its arrival at a gradient all-reduce
(the test hook LLMQS_TEST_HOOK_STALL_RANK_AT_STEP, so rank 0 blocks inside the all-reduce and only
the collective watchdog, with ncclCommAbort, can end it); the job must end within
collective_timeout_s + 10 s with a message, never hang. The CPU twin of this check is tests/faults/training_faults.py lost-rank (CTest, 3 ranks).
Usage, from the repository root on the GPU machine: lost_rank_multi_gpu.py LLMQS_BINARY WORK_DIR
(results of 2026-11-29: docs/faults_training.md)."""
import os, signal, subprocess, sys, time
b = sys.argv[1]
w = sys.argv[2]
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", NCCL_NVLS_ENABLE="0")
subprocess.run([b, "sample", "--output_dir", w + "/sample"], stdout=subprocess.DEVNULL, env=env)
timeout_s = 8
failed = False
for how in ("SIGSTOP", "SIGKILL", "stall"):
    stall = ["-x", "LLMQS_TEST_HOOK_STALL_RANK_AT_STEP=1:61"] if how == "stall" else []
    cmd = ["mpirun", "-np", "2"] + stall + [b, "train", "--config", "configs/tiny.ini", "--device", "cuda", "--precision", "bf16",
           "--train_file", w + "/sample/train.csv", "--validation_file", w + "/sample/test.csv", "--vocab", w + "/sample/vocab.txt", "--hidden_size", "768", "--num_hidden_layers", "12", "--num_attention_heads", "12",
           "--intermediate_size", "3072", "--max_length", "128", "--per_device_train_batch_size", "32",
           "--max_steps", "100000", "--logging_steps", "20", "--save_steps", "0",
           "--collective_timeout_s", str(timeout_s), "--output_dir", w + "/lost_" + how]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in p.stdout:
        log.append(line)
        if "step 60/" in line:
            break
    if how == "stall":  # no signal: rank 1 stops by itself at step 61
        sent = time.time()
        rest, _ = p.communicate(timeout=timeout_s + 40)
        took = time.time() - sent
        out = "".join(log) + rest
        watchdog = "has not completed after %d s (collective_timeout_s)" % timeout_s
        print("stall of rank 1 inside step 61's gradient all-reduce (2 GPUs, NCCL): job ended %.1f s after step 60, "
              "exit %s" % (took, p.returncode))
        for m in [l.strip() for l in out.splitlines() if "error" in l.lower() or "test hook" in l][:4]:
            print("   ", m[:220])
        if p.returncode == 0 or took > timeout_s + 15 or watchdog not in out:
            print("FAIL stall: the watchdog did not end the job in time with its message")
            failed = True
        continue
    ranks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
            environ = open("/proc/%s/environ" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"llmqs-dist"):
            for e in environ:
                if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                    ranks[int(e.split(b"=")[1])] = int(pid)
    if 1 not in ranks:
        print("FAIL no rank 1 running; log tail:", "".join(log[-15:]))
        p.kill()
        failed = True
        continue
    sent = time.time()
    os.kill(ranks[1], getattr(signal, how))
    try:
        rest, _ = p.communicate(timeout=timeout_s + 40)
    except subprocess.TimeoutExpired:
        rest = ""
        for pid in ranks.values():
            try: os.kill(pid, signal.SIGKILL)
            except OSError: pass
        p.kill()
        print("FAIL %s of rank 1: still running %d s later (hang)" % (how, timeout_s + 40))
        failed = True
    took = time.time() - sent
    for pid in ranks.values():
        try: os.kill(pid, signal.SIGKILL)
        except OSError: pass
    out = "".join(log) + (rest or "")
    msgs = [l.strip() for l in out.splitlines() if "error" in l.lower() or "did not" in l or "not completed" in l
            or "exited" in l][:4]
    print("%s of rank 1 (2 GPUs, NCCL): job ended in %.1f s (collective_timeout_s %d), exit %s" % (how, took, timeout_s, p.returncode))
    for m in msgs:
        print("   ", m[:220])
    print("   first step lines:", [l.strip()[:60] for l in log if l.startswith("step")][:1])
    if p.returncode == 0 or took > timeout_s + 10:
        print("FAIL %s of rank 1: exit %s after %.1f s" % (how, p.returncode, took))
        failed = True
sys.exit(1 if failed else 0)
