# Weak-scaling benchmark (issue 7) on the CPU backend: benchmarks/scaling at -np 1 and 2 with a
# tiny model must produce its table and sane numbers (no timing targets: the machine is shared),
# and the plain all-reduce microbenchmark must get exact sums at an odd rank count and odd sizes.
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  add_test(NAME scaling_cpu_np1_np2
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/scaling/check_scaling.py
                   --scaling ${CMAKE_SOURCE_DIR}/benchmarks/scaling --binary $<TARGET_FILE:llmqs-dist>
                   --allreduce-bench $<TARGET_FILE:allreduce_bench> --mpirun ${LLMQS_MPIEXEC}
                   --work-dir ${CMAKE_CURRENT_BINARY_DIR}/scaling)
  add_test(NAME allreduce_bench_cpu_np3
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/scaling/check_scaling.py --allreduce-only
                   --allreduce-bench $<TARGET_FILE:allreduce_bench> --mpirun ${LLMQS_MPIEXEC}
                   --work-dir ${CMAKE_CURRENT_BINARY_DIR}/scaling)
  set_tests_properties(scaling_cpu_np1_np2 allreduce_bench_cpu_np3 PROPERTIES TIMEOUT 300
                       ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
endif()
