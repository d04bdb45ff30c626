# Trainer checks that run the real binary: data parallelism under mpirun, `eval`, the bad-option
# refusals through the CLI, and the shipped configs parsing.
find_package(Python3 COMPONENTS Interpreter)
set(LLMQS_TRAINER_TEST_ENV OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    OMPI_MCA_rmaps_base_oversubscribe=1)
set(LLMQS_TRAINER_WORK ${CMAKE_CURRENT_BINARY_DIR}/trainer)

if(Python3_Interpreter_FOUND)
  # -np 1 x batch 8 == -np 2 x batch 4 == -np 4 x batch 2, step by step, within 1e-5 relative;
  # then `eval` of the final checkpoint on 2 ranks == the trainer's last evaluation.
  add_test(NAME trainer_mpi_parity
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/trainer/compare_ranks.py
                   --binary $<TARGET_FILE:llmqs-dist> --mpiexec ${LLMQS_MPIEXEC}
                   --work ${LLMQS_TRAINER_WORK}/parity --ranks 2,4)
  set_tests_properties(trainer_mpi_parity PROPERTIES ENVIRONMENT "${LLMQS_TRAINER_TEST_ENV}" TIMEOUT 600
                       PASS_REGULAR_EXPRESSION "PASS: ")

  # ZeRO-1 (zero_stage 1) on 2 and 3 ranks against zero_stage 0: same losses and checkpoints (bitwise
  # on 2 ranks), the whole optimizer state gathered into checkpoints, resumable under either stage.
  add_test(NAME trainer_mpi_zero1
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/trainer/compare_zero.py
                   --binary $<TARGET_FILE:llmqs-dist> --mpiexec ${LLMQS_MPIEXEC} --work ${LLMQS_TRAINER_WORK}/zero1)
  set_tests_properties(trainer_mpi_zero1 PROPERTIES ENVIRONMENT "${LLMQS_TRAINER_TEST_ENV}" TIMEOUT 600
                       PASS_REGULAR_EXPRESSION "PASS: ")

  # TensorBoard's own reader finds train/* and eval/* under output_dir/runs/, equal to metrics.jsonl.
  add_test(NAME trainer_tensorboard_scalars
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/trainer/check_tensorboard.py
                   --binary $<TARGET_FILE:llmqs-dist> --data ${LLMQS_TRAINER_WORK}/cli
                   --reader ${CMAKE_CURRENT_SOURCE_DIR}/tensorboard/read_events.py --work ${LLMQS_TRAINER_WORK}/tensorboard)
  set_tests_properties(trainer_tensorboard_scalars PROPERTIES ENVIRONMENT "${LLMQS_TRAINER_TEST_ENV}" TIMEOUT 120
                       FIXTURES_REQUIRED trainer_cli_data PASS_REGULAR_EXPRESSION "PASS: ")

  add_test(NAME trainer_cli_data
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/trainer/compare_ranks.py
                   --binary $<TARGET_FILE:llmqs-dist> --work ${LLMQS_TRAINER_WORK}/cli --data-only)
  set_tests_properties(trainer_cli_data PROPERTIES FIXTURES_SETUP trainer_cli_data)
endif()

# Each refusal, through mpirun -np 2: non-zero exit, the message names the key (printed once),
# output_dir is not created. The data set comes from the trainer_cli_data fixture.
set(_data ${LLMQS_TRAINER_WORK}/cli)
set(_refused ${LLMQS_TRAINER_WORK}/cli/refused)
set(_fixed --train_file ${_data}/train.csv --vocab ${_data}/vocab.txt --do_lower_case true --output_dir ${_refused}
           --hidden_size 16 --num_hidden_layers 1 --intermediate_size 32 --max_position_embeddings 16)
set(_valid --max_length 16 --num_attention_heads 2 --num_labels 2 --device cpu)
function(trainer_refusal name key)  # ARGN: the flags besides _fixed (a valid set plus one bad value)
  add_test(NAME trainer_cli_refuses_${name}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/trainer/expect_refusal.sh ${key} ${_refused}
                   ${LLMQS_MPIEXEC} --oversubscribe --allow-run-as-root -np 2 $<TARGET_FILE:llmqs-dist> train
                   ${_fixed} ${ARGN})
  set_tests_properties(trainer_cli_refuses_${name} PROPERTIES ENVIRONMENT "${LLMQS_TRAINER_TEST_ENV}"
                       FIXTURES_REQUIRED trainer_cli_data RESOURCE_LOCK trainer_cli_refused)
endfunction()
trainer_refusal(batch_size_0 per_device_train_batch_size ${_valid} --per_device_train_batch_size 0)
trainer_refusal(negative_learning_rate learning_rate ${_valid} --learning_rate -1e-4)
trainer_refusal(zero_learning_rate learning_rate ${_valid} --learning_rate 0)
trainer_refusal(warmup_ratio_1_5 warmup_ratio ${_valid} --warmup_ratio 1.5)
trainer_refusal(accumulation_0 gradient_accumulation_steps ${_valid} --gradient_accumulation_steps 0)
trainer_refusal(logging_steps_0 logging_steps ${_valid} --logging_steps 0)
trainer_refusal(unknown_scheduler lr_scheduler_type ${_valid} --lr_scheduler_type linearr)
trainer_refusal(max_steps_0 max_steps ${_valid} --max_steps 0)
trainer_refusal(unknown_eval_strategy eval_strategy ${_valid} --eval_strategy epochs)
trainer_refusal(adam_beta2_1 adam_beta2 ${_valid} --adam_beta2 1)
trainer_refusal(zero_stage_2 zero_stage ${_valid} --zero_stage 2)
trainer_refusal(unknown_device device --max_length 16 --num_attention_heads 2 --num_labels 2 --device tpu)
trainer_refusal(fp16_on_cpu precision ${_valid} --precision fp16)
trainer_refusal(num_labels_1 num_labels --max_length 16 --num_attention_heads 2 --num_labels 1 --device cpu)
trainer_refusal(heads_not_dividing_hidden num_attention_heads --max_length 16 --num_attention_heads 3 --num_labels 2 --device cpu)
trainer_refusal(max_length_beyond_positions max_length --max_length 32 --num_attention_heads 2 --num_labels 2 --device cpu)
# The data holds labels 1 and 2; read with label_offset 0 they are 1 and 2, beyond 2 labels.
trainer_refusal(labels_beyond_num_labels num_labels ${_valid} --label_offset 0)

# The shipped configs parse (every key known, every value of the right type).
file(GLOB _configs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/configs/*.ini)
foreach(config ${_configs})
  get_filename_component(config_name ${config} NAME_WE)
  string(MAKE_C_IDENTIFIER ${config_name} config_id)
  add_test(NAME trainer_config_parses_${config_id}
           COMMAND $<TARGET_FILE:llmqs-dist> train --config ${config} --print-config)
  set_tests_properties(trainer_config_parses_${config_id} PROPERTIES PASS_REGULAR_EXPRESSION "learning_rate = ")
endforeach()

# The "checkpoint directory already exists" trap, and eval's confusion matrix.
add_test(NAME trainer_output_dir_guard
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/trainer/output_dir_guard.sh $<TARGET_FILE:llmqs-dist>
                 ${CMAKE_CURRENT_BINARY_DIR}/trainer_output_dir_guard)
set_tests_properties(trainer_output_dir_guard PROPERTIES TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=1")
