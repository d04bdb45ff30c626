# Exact resume after SIGKILL (issue: checkpoints): 1 and 2 ranks on the CPU backend.
foreach(ranks 1 2)
  add_test(NAME resume_after_sigkill_np${ranks}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/resume/kill_and_resume.sh $<TARGET_FILE:llmqs-dist>
                   ${ranks} cpu ${CMAKE_CURRENT_BINARY_DIR}/resume_np${ranks})
  set_tests_properties(resume_after_sigkill_np${ranks} PROPERTIES TIMEOUT 600
                       ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
endforeach()
