// `llmqs-dist bench`: synthetic training throughput of one backend on one device for a model
// shape (core/bench.h), printed as one JSON object with the keys of the PyTorch reference script
// (shared/bench/pytorch_bert_baseline.py), so both can be tabulated side by side
// (benchmarks/compare_pytorch.sh).
#include <chrono>
#include <iostream>
#include <string>

#include "core/bench.h"
#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

int run_bench(int argc, char** argv) {
  const auto launch = std::chrono::steady_clock::now();
  core::BenchConfig c;
  CommandLine cl;
  cl.command = "bench";
  cl.usage = "llmqs-dist bench [--seq 512 --batch 64 --precision bf16 --lengths full|yelp --padding ...]";
  cl.summary =
      "Times whole training steps (forward, backward, gradient norm, AdamW) on random weights and\n"
      "tokens, dropout 0.1, after a warm-up, and prints one JSON object: ms_per_step, tok_per_s,\n"
      "useful_tok_per_s, model TFLOP/s and MFU (6 x non-embedding params + 12 x layers x seq x\n"
      "hidden FLOPs per token, against a measured 8192^3 bf16 product), peak memory. --lengths yelp\n"
      "draws YelpReviewFull-like review lengths; --padding picks how batches are padded\n"
      "(max_length: to --seq; longest: to the batch's longest; grouped: HF group_by_length).";
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
      ("seed", po::value<uint64_t>(&c.seed)->default_value(c.seed), "weights, tokens, lengths and dropout");
  po::variables_map vm;
  if (!parse_command_line(cl, argc, argv, vm)) return 0;
  const core::BenchResult result = core::run_training_bench(c, launch);
  std::cout << core::bench_result_json(result) << std::endl;
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("bench", "training throughput on synthetic data (JSON, PyTorch-comparable)", 100,
                          run_bench);

}  // namespace llmqs::launch
