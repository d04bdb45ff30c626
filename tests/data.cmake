# data/: CTests beyond the GoogleTest suites (included by tests/CMakeLists.txt).
#  - data_shard_mpi_np{1,3,4}: every rank reads its shard of a synthetic token cache through
#    ShardedSampler + hyperslab reads; rank 0 checks the shards (tests/data_shard_mpi_main.cpp).
#  - data_prepare_*: `llmqs-dist sample`, then `llmqs-dist prepare` on it, then an independent
#    check of the cache with h5py (tests/data_prepare_check.py), plus prepare's refusals.

set(LLMQS_MPI_TEST_ENV "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")

add_executable(data_shard_mpi_main ${CMAKE_CURRENT_LIST_DIR}/data_shard_mpi_main.cpp)
target_link_libraries(data_shard_mpi_main PRIVATE llmqs_data)
foreach(np 1 3 4)
  add_test(NAME data_shard_mpi_np${np}
           COMMAND ${LLMQS_MPIEXEC} --oversubscribe --allow-run-as-root -np ${np} $<TARGET_FILE:data_shard_mpi_main>)
  set_tests_properties(data_shard_mpi_np${np} PROPERTIES
                       ENVIRONMENT "${LLMQS_MPI_TEST_ENV}"
                       PASS_REGULAR_EXPRESSION "data_shard_mpi: ${np} ranks, .*: OK"
                       FAIL_REGULAR_EXPRESSION "FAILED"
                       TIMEOUT 120)
endforeach()

# ---- prepare end to end ------------------------------------------------------------------
set(LLMQS_PREPARE_DIR ${CMAKE_CURRENT_BINARY_DIR}/data_prepare)
add_test(NAME data_prepare_sample
         COMMAND $<TARGET_FILE:llmqs-dist> sample --output_dir ${LLMQS_PREPARE_DIR}
                 --train_size 400 --test_size 60 --seed 7)
set_tests_properties(data_prepare_sample PROPERTIES FIXTURES_SETUP data_prepare_sample TIMEOUT 120)

add_test(NAME data_prepare_run
         COMMAND $<TARGET_FILE:llmqs-dist> prepare --input ${LLMQS_PREPARE_DIR}/train.csv
                 --vocab ${LLMQS_PREPARE_DIR}/vocab.txt --do_lower_case true --max_length 64
                 --output ${LLMQS_PREPARE_DIR}/train.h5)
set_tests_properties(data_prepare_run PROPERTIES
                     FIXTURES_REQUIRED data_prepare_sample FIXTURES_SETUP data_prepare_cache
                     PASS_REGULAR_EXPRESSION "examples 400, tokens [0-9]+"
                     TIMEOUT 120)

# A missing output directory: an error naming the file, and nothing left behind.
add_test(NAME data_prepare_missing_output_dir
         COMMAND $<TARGET_FILE:llmqs-dist> prepare --input ${LLMQS_PREPARE_DIR}/train.csv
                 --vocab ${LLMQS_PREPARE_DIR}/vocab.txt --do_lower_case true --max_length 64
                 --output ${LLMQS_PREPARE_DIR}/no_such_dir/train.h5)
set_tests_properties(data_prepare_missing_output_dir PROPERTIES
                     FIXTURES_REQUIRED data_prepare_sample
                     PASS_REGULAR_EXPRESSION "error: .*no_such_dir/train.h5: cannot create"
                     TIMEOUT 60)

find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  execute_process(COMMAND ${Python3_EXECUTABLE} -c "import h5py, numpy"
                  RESULT_VARIABLE LLMQS_H5PY_MISSING OUTPUT_QUIET ERROR_QUIET)
  if(LLMQS_H5PY_MISSING EQUAL 0)
    add_test(NAME data_prepare_check
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/data_prepare_check.py
                     --cache ${LLMQS_PREPARE_DIR}/train.h5 --csv ${LLMQS_PREPARE_DIR}/train.csv
                     --vocab ${LLMQS_PREPARE_DIR}/vocab.txt --max_length 64 --expect_examples 400)
    set_tests_properties(data_prepare_check PROPERTIES FIXTURES_REQUIRED "data_prepare_sample;data_prepare_cache"
                         TIMEOUT 120)
  else()
    message(STATUS "tests/data.cmake: python3 lacks h5py/numpy, data_prepare_check not registered")
  endif()
endif()
