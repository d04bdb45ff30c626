# Bad-input corpus (included by tests/CMakeLists.txt): tests/bad_inputs/cases.tsv, ~150 broken or
# odd inputs for every file llmqs-dist reads, run through the real binary by
# tests/bad_inputs/run_cases.py (exit status, the error names file and problem, no crash, nothing
# half-written left behind). One CTest per input family so a failure points at the area.
# Under scripts/sanitizer_tests.sh the same tests run the ASan/UBSan binary.

find_package(Python3 COMPONENTS Interpreter)
if(NOT Python3_Interpreter_FOUND)
  message(STATUS "tests/bad_inputs.cmake: no python3, bad_inputs_* not registered")
  return()
endif()
execute_process(COMMAND ${Python3_EXECUTABLE} -c "import h5py, numpy"
                RESULT_VARIABLE LLMQS_BAD_INPUTS_NO_H5PY OUTPUT_QUIET ERROR_QUIET)
if(NOT LLMQS_BAD_INPUTS_NO_H5PY EQUAL 0)
  message(STATUS "tests/bad_inputs.cmake: python3 lacks h5py/numpy, bad_inputs_* not registered")
  return()
endif()

# name -> regex over case names (cases.tsv prefixes)
set(LLMQS_BAD_INPUT_GROUPS
    "csv=^csv_"
    "jsonl=^jsonl_"
    "config=^(ini|opt)_"
    "vocab=^(vocab|tokenizer)_"
    "token_cache=^cache_"
    "checkpoint=^ck_"
    "safetensors=^(st|hf|export)_"
    "predict_eval=^(predict|eval)_"
    "output_dir=^out_")
foreach(group ${LLMQS_BAD_INPUT_GROUPS})
  string(REPLACE "=" ";" group_parts "${group}")
  list(GET group_parts 0 group_name)
  list(GET group_parts 1 group_regex)
  add_test(NAME bad_inputs_${group_name}
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/bad_inputs/run_cases.py
                   --binary $<TARGET_FILE:llmqs-dist>
                   --work_dir ${CMAKE_CURRENT_BINARY_DIR}/bad_inputs/${group_name}
                   --only "${group_regex}")
  set_tests_properties(bad_inputs_${group_name} PROPERTIES
                       TIMEOUT 600
                       ENVIRONMENT "OMP_NUM_THREADS=2;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
                       # the runner's summary line; a runner that dies early never prints it
                       PASS_REGULAR_EXPRESSION " 0 failed, 0 crashed, 0 fixed")
endforeach()
