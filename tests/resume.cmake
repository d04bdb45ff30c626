# Exact resume after SIGKILL (issue: checkpoints): 1 and 2 ranks on the CPU backend.
foreach(ranks 1 2)
  add_test(NAME resume_after_sigkill_np${ranks}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/resume/kill_and_resume.sh $<TARGET_FILE:llmqs-dist>
                   ${ranks} cpu ${CMAKE_CURRENT_BINARY_DIR}/resume_np${ranks})
  set_tests_properties(resume_after_sigkill_np${ranks} PROPERTIES TIMEOUT 600
                       ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
endforeach()

# Crash consistency (issue 8, item 2): SIGKILL at random moments (start-up, training, inside
# checkpoint writes through the test hook), resume auto each time, the end bit-identical to an
# uninterrupted run (tests/resume/random_sigkill.py; about 30 s each on 2 cores).
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  execute_process(COMMAND ${Python3_EXECUTABLE} -c "import h5py, numpy"
                  RESULT_VARIABLE LLMQS_RESUME_NO_H5PY OUTPUT_QUIET ERROR_QUIET)
  if(LLMQS_RESUME_NO_H5PY EQUAL 0)
    foreach(case "1;20" "2;24")
      list(GET case 0 ranks)
      list(GET case 1 kills)
      add_test(NAME resume_random_sigkill_np${ranks}
               COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/resume/random_sigkill.py
                       --binary $<TARGET_FILE:llmqs-dist> --mpiexec ${LLMQS_MPIEXEC} --ranks ${ranks}
                       --kills ${kills} --work ${CMAKE_CURRENT_BINARY_DIR}/resume_random_sigkill_np${ranks})
      set_tests_properties(resume_random_sigkill_np${ranks} PROPERTIES TIMEOUT 300 PASS_REGULAR_EXPRESSION "PASS: "
                           RESOURCE_LOCK mpi_cpu_heavy)
    endforeach()
  else()
    message(STATUS "tests/resume.cmake: python3 lacks h5py/numpy, resume_random_sigkill_* not registered")
  endif()
endif()
