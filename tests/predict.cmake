# `predict` beyond tests/core_predict_test.cpp (included by tests/CMakeLists.txt):
#  - predict_end_to_end: sample -> train (a few steps of configs/tiny.ini) -> predict on the
#    sample's test.csv; a Python check reads every output line: input order, the echoed stars,
#    predicted_label in 1-5 (the checkpoint's label_offset) and equal to the argmax, probabilities
#    summing to 1, and the accuracy of the predictions equal to `eval`'s on the same file. The
#    train -> checkpoint -> predict path is what a user runs first.
#  - predict_refuses_mpi_ranks: predict is one process; under mpirun -np 2 it says so.
#  - predict_guide_commands_parse: every llmqs-dist command shown in docs/guide.md parses.
set(LLMQS_PREDICT_WORK ${CMAKE_CURRENT_BINARY_DIR}/predict_end_to_end)
set(LLMQS_PREDICT_ENV OMP_NUM_THREADS=2 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    OMPI_MCA_rmaps_base_oversubscribe=1)

find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  set(_check [=[
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
stars = [int(line.split(chr(34))[1]) for line in open(sys.argv[2], encoding="utf-8")]
assert len(rows) == len(stars) == 24, (len(rows), len(stars))
for i, (row, star) in enumerate(zip(rows, stars)):
    p = row["probabilities"]
    assert row["index"] == i and row["line"] == i + 1 and row["label"] == star, row
    assert len(p) == 5 and abs(sum(p) - 1.0) < 1e-5 and min(p) > 0.0, row
    assert row["predicted_label"] == 1 + max(range(5), key=lambda k: p[k]), row
# predict and eval read the same checkpoint, tokenizer and file: same accuracy.
accuracy = sum(row["predicted_label"] == row["label"] for row in rows) / len(rows)
eval_accuracy = json.load(open(sys.argv[3]))["eval_accuracy"]
assert abs(accuracy - eval_accuracy) < 1e-12, (accuracy, eval_accuracy)
print("PASS: %d predictions, labels 1-5, accuracy %.4f as eval" % (len(rows), accuracy))
]=])
  add_test(NAME predict_end_to_end
           COMMAND sh -c "set -e
             rm -rf '${LLMQS_PREDICT_WORK}'
             '$<TARGET_FILE:llmqs-dist>' sample --output_dir '${LLMQS_PREDICT_WORK}/data' --train_size 96 --test_size 24 --seed 3
             '$<TARGET_FILE:llmqs-dist>' train --config '${CMAKE_SOURCE_DIR}/configs/tiny.ini' --device cpu \
                 --train_file '${LLMQS_PREDICT_WORK}/data/train.csv' --validation_file '${LLMQS_PREDICT_WORK}/data/test.csv' \
                 --vocab '${LLMQS_PREDICT_WORK}/data/vocab.txt' --output_dir '${LLMQS_PREDICT_WORK}/run' --max_steps 3
             '$<TARGET_FILE:llmqs-dist>' predict --checkpoint '${LLMQS_PREDICT_WORK}/run/checkpoint-3.h5' \
                 --input '${LLMQS_PREDICT_WORK}/data/test.csv' --output '${LLMQS_PREDICT_WORK}/predictions.jsonl' \
                 --per_device_eval_batch_size 5 --device cpu
             '$<TARGET_FILE:llmqs-dist>' eval --checkpoint '${LLMQS_PREDICT_WORK}/run/checkpoint-3.h5' --device cpu \
                 --validation_file '${LLMQS_PREDICT_WORK}/data/test.csv' --output '${LLMQS_PREDICT_WORK}/eval.json'
             '${Python3_EXECUTABLE}' -c '${_check}' '${LLMQS_PREDICT_WORK}/predictions.jsonl' '${LLMQS_PREDICT_WORK}/data/test.csv' \
                 '${LLMQS_PREDICT_WORK}/eval.json'")
  set_tests_properties(predict_end_to_end PROPERTIES ENVIRONMENT "${LLMQS_PREDICT_ENV}" TIMEOUT 300
                       PASS_REGULAR_EXPRESSION "PASS: 24 predictions")
endif()

add_test(NAME predict_refuses_mpi_ranks
         COMMAND ${LLMQS_MPIEXEC} --oversubscribe --allow-run-as-root -np 2 $<TARGET_FILE:llmqs-dist> predict
                 --checkpoint unused.h5 --text "good food")
set_tests_properties(predict_refuses_mpi_ranks PROPERTIES ENVIRONMENT "${LLMQS_PREDICT_ENV}" TIMEOUT 120
                     PASS_REGULAR_EXPRESSION "predict: runs as one process")

# docs/guide.md stays true to the CLI: every `llmqs-dist ...` command in its ```sh blocks (GPU and
# real-data ones included, which cannot run here) is parsed again with --help appended, which
# fails on an unknown option or subcommand without running anything.
if(Python3_Interpreter_FOUND)
  set(_guide_check [=[
import re, shlex, subprocess, sys
binary, guide = sys.argv[1], sys.argv[2]
commands = []
for block in re.findall(r"```sh\n(.*?)```", open(guide, encoding="utf-8").read(), re.S):
    for line in block.replace("\\\n", " ").splitlines():
        if "llmqs-dist " in line and not line.lstrip().startswith("#"):
            commands.append(line[line.index("llmqs-dist "):].split("||")[0])
assert len(commands) >= 15, commands
for command in commands:
    args = shlex.split(command)[1:]
    run = subprocess.run([binary] + args + ["--help"], capture_output=True, text=True)
    assert run.returncode == 0, (command, run.stderr)
print("PASS: %d guide commands parse" % len(commands))
]=])
  add_test(NAME predict_guide_commands_parse
           COMMAND ${Python3_EXECUTABLE} -c "${_guide_check}" $<TARGET_FILE:llmqs-dist> ${CMAKE_SOURCE_DIR}/docs/guide.md)
  set_tests_properties(predict_guide_commands_parse PROPERTIES TIMEOUT 60 PASS_REGULAR_EXPRESSION "PASS: [0-9]+ guide commands parse")
endif()
