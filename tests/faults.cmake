# Training faults provoked for real through mpirun on the CPU backend (tests/faults/training_faults.py):
# SIGTERM -> checkpoint -> exact resume; resume on another number of ranks; a hung or killed rank;
# an unwritable or full output_dir.
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  set(LLMQS_FAULTS_ENV OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      OMPI_MCA_rmaps_base_oversubscribe=1)
  foreach(check signal cross-world lost-rank disk)
    string(REPLACE "-" "_" check_id ${check})
    add_test(NAME faults_training_${check_id}
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/faults/training_faults.py ${check}
                     --binary $<TARGET_FILE:llmqs-dist> --mpiexec ${LLMQS_MPIEXEC}
                     --work ${CMAKE_CURRENT_BINARY_DIR}/faults/${check})
    set_tests_properties(faults_training_${check_id} PROPERTIES ENVIRONMENT "${LLMQS_FAULTS_ENV}" TIMEOUT 180
                         PASS_REGULAR_EXPRESSION "PASS: " RESOURCE_LOCK mpi_cpu_heavy)
  endforeach()
endif()
