# Item 8 of the faults issue (docs/security.md): created files follow the umask, and the product
# code opens no sockets and runs no programs. The readers' size and offset checks are covered by
# the bad-input corpus (tests/bad_inputs.cmake) and core_checkpoint_validation_test.
add_test(NAME security_file_modes_follow_umask
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/security/file_modes.sh $<TARGET_FILE:llmqs-dist>
                 ${CMAKE_CURRENT_BINARY_DIR}/security_file_modes)
set_tests_properties(security_file_modes_follow_umask PROPERTIES TIMEOUT 300
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
                     PASS_REGULAR_EXPRESSION "PASS: created files follow the umask")
add_test(NAME security_no_sockets_no_exec
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/security/no_sockets_no_exec.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(security_no_sockets_no_exec PROPERTIES PASS_REGULAR_EXPRESSION "PASS: no socket")
