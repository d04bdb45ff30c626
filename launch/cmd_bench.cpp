// `llmqs-dist bench`: synthetic training throughput of one backend on one device for a model
// shape (core/bench.h), printed as one JSON object with the keys of the PyTorch reference script
// (shared/bench/pytorch_bert_baseline.py), so both can be tabulated side by side
// (benchmarks/compare_pytorch.sh). Under `mpirun -np N` it is a weak-scaling step: every rank
// runs its own batch and the gradients are all-reduced (NCCL for cuda, MPI for cpu); rank 0
// prints the line, with the all-reduce keys that benchmarks/scaling tabulates.
#include <chrono>
#include <iostream>
#include <stdexcept>
#include <string>

#include "comm/communicator.h"
#include "core/bench.h"
#include "core/trainer.h"
#include "launch/options.h"
#include "launch/subcommand.h"
#include "launch/train_options.h"

namespace llmqs::launch {

int run_bench(int argc, char** argv) {
  const auto launch = std::chrono::steady_clock::now();
  core::BenchConfig c;
  CommandLine cl;
  cl.command = "bench";
  cl.usage =
      "[mpirun -np N] llmqs-dist bench [--seq 512 --batch 64 --precision bf16 --lengths full|yelp --padding ...]";
  cl.summary =
      "Times whole training steps (forward, backward, gradient norm, AdamW) on random weights and\n"
      "tokens, dropout 0.1, after a warm-up, and prints one JSON object: ms_per_step, tok_per_s,\n"
      "useful_tok_per_s, model TFLOP/s and MFU (6 x non-embedding params + 12 x layers x seq x\n"
      "hidden FLOPs per token, against a measured 8192^3 bf16 product), peak memory. --lengths yelp\n"
      "draws YelpReviewFull-like review lengths; --padding picks how batches are padded\n"
      "(max_length: to --seq; longest: to the batch's longest; grouped: HF group_by_length).\n"
      "Under mpirun -np N (N > 1) each rank trains on its own batch of --batch rows and the\n"
      "gradients are all-reduced every step (NCCL for cuda, MPI for cpu): ms_per_step is the\n"
      "slowest rank's, tok_per_s per rank, global_tok_per_s of all ranks; comm_ms_per_step is\n"
      "the all-reduce timed alone (median of --comm-iters), allreduce_busbw_gbps its bus\n"
      "bandwidth (algbw x 2(N-1)/N, as nccl-tests). The all-reduce runs after the backward\n"
      "(comm_overlap \"none\": exposed_comm_share is all of it); with LLMQS_ALLREDUCE_OVERLAP=1\n"
      "on NCCL each layer's gradients are all-reduced while the backward goes on (\"layers\").\n"
      "--zero-stage 1 (ZeRO-1): a reduce-scatter instead, AdamW on each rank's 1/N shard and an\n"
      "all-gather of the parameters (comm_ms_per_step times both; optimizer_state_gib per rank).";
  cl.options.add_options()
      ("backend", po::value<std::string>(&c.backend)->default_value(c.backend), "cuda | cpu")
      ("precision", po::value<std::string>(&c.precision)->default_value(c.precision),
       "auto | bf16 | fp16 | fp32 | tf32 (cpu: fp32)")
      ("layers", po::value<int>(&c.model.num_hidden_layers)->default_value(c.model.num_hidden_layers), "encoder layers")
      ("hidden", po::value<int>(&c.model.hidden_size)->default_value(c.model.hidden_size), "hidden size")
      ("heads", po::value<int>(&c.model.num_attention_heads)->default_value(c.model.num_attention_heads),
       "attention heads")
      ("intermediate", po::value<int>(&c.model.intermediate_size)->default_value(c.model.intermediate_size),
       "feed-forward size")
      ("vocab", po::value<int>(&c.model.vocab_size)->default_value(c.model.vocab_size), "vocabulary size")
      ("labels", po::value<int>(&c.model.num_labels)->default_value(c.model.num_labels), "classes")
      ("seq", po::value<int>(&c.seq)->default_value(c.seq), "padded sequence length (max_length)")
      ("batch", po::value<int>(&c.batch)->default_value(c.batch), "rows per step")
      ("steps", po::value<int>(&c.steps)->default_value(c.steps), "timed steps")
      ("warmup", po::value<int>(&c.warmup)->default_value(c.warmup), "untimed steps before timing")
      ("lengths", po::value<std::string>(&c.lengths)->default_value(c.lengths), "full | yelp")
      ("padding", po::value<std::string>(&c.padding)->default_value(c.padding),
       "max_length | longest | grouped (with --lengths yelp)")
      ("peak-tflops", po::value<double>(&c.peak_tflops)->default_value(c.peak_tflops),
       "dense matmul peak for MFU; 0 = measure an 8192^3 bf16 cuBLASLt product")
      ("seed", po::value<uint64_t>(&c.seed)->default_value(c.seed), "weights, tokens, lengths and dropout")
      ("comm-iters", po::value<int>(&c.comm_iters)->default_value(c.comm_iters),
       "gradient all-reduces timed on their own after the steps (median; N > 1 only)")
      ("zero-stage", po::value<int>(&c.zero_stage)->default_value(c.zero_stage),
       "0 | 1: ZeRO-1, each rank keeps and updates 1/N of the AdamW moments (N > 1 only)");
  po::variables_map vm;
  comm::MpiSession mpi(&argc, &argv);
  std::unique_ptr<comm::Communicator> control = comm::make_mpi_communicator();
  bool proceed = true;
  if (!succeeded_on_every_rank(*control, [&] {
        proceed = parse_command_line(cl, argc, argv, vm);
        if (proceed && c.comm_iters < 1)
          throw std::invalid_argument("comm-iters: must be at least 1, got " + std::to_string(c.comm_iters));
      }))
    return 1;
  if (!proceed) return 0;
  // One process reduces nothing: no communicator (and no NCCL start-up in launch_to_first_step_s),
  // so a single-GPU line stays comparable with the PyTorch script's.
  std::unique_ptr<comm::Communicator> comm;
  if (mpi.world_size() > 1 &&
      !succeeded_on_every_rank(*control, [&] { comm = core::make_communicator(c.backend); }))
    return 1;
  core::BenchResult result;
  try {
    result = core::run_training_bench(c, launch, comm.get());
  } catch (...) {
    // A rank that fails mid-run would leave the others blocked in the all-reduce.
    if (!comm) throw;
    fail_collective(*comm, std::current_exception());
  }
  if (mpi.rank() == 0) std::cout << core::bench_result_json(result) << std::endl;
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("bench", "training throughput on synthetic data (JSON, PyTorch-comparable)", 100,
                          run_bench);

}  // namespace llmqs::launch
