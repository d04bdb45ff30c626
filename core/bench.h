// Synthetic training throughput of one backend (`llmqs-dist bench`): random weights, random
// tokens, dropout 0.1, AdamW, whole steps (zero grads, forward+backward, grad norm, AdamW) timed
// after a warm-up. The batches, the padding rules and the reported keys are those of the PyTorch
// reference script (shared/bench/pytorch_bert_baseline.py), so one JSON line of each can be put
// side by side: same FLOP formula (6 x non-embedding parameters + 12 x layers x seq x hidden per
// token), same yelp length model (log-normal mu 4.846, sigma 0.826, clamped to 8..seq), same
// max_length / longest / grouped padding.
//
// Under mpirun every rank runs the same replica (same seed for the weights) on its own synthetic
// batches (seed mixed with the rank) and the gradients are summed through the Communicator each
// step (NCCL for cuda, MPI for cpu), so a step is a real data-parallel step: weak scaling at a
// fixed per-rank batch. The reduction is the trainer's (core/gradient_reduction.h): one all-reduce
// after the backward, or on NCCL with LLMQS_ALLREDUCE_OVERLAP=1 each layer's gradients while the
// backward goes on (allreduce_overlap); with --zero-stage 1 (ZeRO-1, core/optimizer_shard.h) a
// reduce-scatter, each rank's AdamW on its shard, and an all-gather of the parameters.
// comm_ms_per_step times the step's collectives on the whole buffer on their own (one all-reduce,
// or the reduce-scatter plus the all-gather), between synchronisations.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/model_config.h"

namespace llmqs::core {

struct BenchConfig {
  BertConfig model;                    // dropout probabilities as in BERT (0.1)
  std::string backend = "cuda";        // cuda | cpu
  std::string precision = "auto";      // cuda: auto | bf16 | fp16 | fp32 | tf32; cpu: fp32
  int seq = 512;                       // padded width of a full batch (max_length)
  int batch = 64;                      // rows per step
  int steps = 20;                      // timed steps (yelp: at least the number of distinct batches)
  int warmup = 10;                     // untimed steps first (yelp: at least twice the distinct batches)
  std::string lengths = "full";        // full | yelp
  std::string padding = "max_length";  // max_length | longest | grouped (only with yelp lengths)
  double peak_tflops = 0.0;            // dense bf16 peak for MFU; 0 = measure an 8192^3 product
  uint64_t seed = 1;
  int comm_iters = 20;                 // all-reduces timed on their own after the steps (median)
  int zero_stage = 0;                  // 1: ZeRO-1 over the ranks (no effect on one process)
};

// One distinct batch of the run: padded width and the real length of each row.
struct BenchBatchShape {
  int width = 0;
  std::vector<int32_t> lengths;
};

// The script's make_batches: 4 full batches, or up to 64 batches drawn from batch x 100 yelp
// lengths (grouped: sorted in mega-batches of 50 batches, then the batches shuffled).
// Throws std::invalid_argument naming the option for unknown lengths/padding or sizes < 1.
std::vector<BenchBatchShape> bench_batch_shapes(const BenchConfig& config);

struct BenchResult {
  std::string system = "llmqs-dist";
  std::string backend, gpu, dtype, lengths, padding;
  int seq = 0, batch = 0, layers = 0, hidden = 0, steps = 0, warmup = 0;
  double ms_per_step = 0, seq_per_s = 0, tok_per_s = 0, useful_tok_per_s = 0;
  double yelp_epoch_s = -1;  // < 0: not a yelp run (JSON null)
  double model_tflops = 0, peak_tflops = 0, mfu = 0;
  double peak_mem_gib = 0;        // the backend's device arena (what it allocates; cf. torch max_memory_allocated)
  double device_used_gib = 0;     // cudaMemGetInfo total - free after the run: arena + CUDA context + cuBLASLt
  double warmup_s = 0, launch_to_first_step_s = 0;
  int64_t non_embedding_params = 0;
  double final_loss = 0;          // mean loss of the last timed step (finite: the step really ran)

  // Data parallelism. ms_per_step is the slowest rank's; tok_per_s, useful_tok_per_s, seq_per_s
  // and mfu are per rank (global / world_size), so one rank compares with one PyTorch GPU.
  int world_size = 1;
  std::string communicator = "none";  // none (single process, no all-reduce) | mpi | nccl
  double global_tok_per_s = 0;        // padded tokens of every rank per second
  double comm_ms_per_step = 0;        // median gradient all-reduce, timed alone (slowest rank)
  bool allreduce_overlap = false;     // gradients reduced layer by layer during the backward
  int zero_stage = 0;                 // 1: AdamW moments sharded over the ranks (ZeRO-1)
  double optimizer_state_gib = 0;     // this rank's AdamW moments (m and v)
  double exposed_comm_share = 0;      // comm_ms_per_step / ms_per_step: all exposed without overlap, an upper bound with
  int64_t allreduce_bytes = 0;        // the fp32 gradient buffer
  double allreduce_algbw_gbps = -1;   // bytes / time; < 0: world_size 1, nothing reduced (null)
  double allreduce_busbw_gbps = -1;   // algbw x 2(n-1)/n, as nccl-tests
  int64_t replica_mismatches = 0;     // ranks whose parameters differ bitwise from rank 0's after the steps
};

// `launch` is when the process started (launch_to_first_step_s counts from it). `comm`: the
// communicator of config.backend (MPI for cpu, NCCL for cuda, created before this call because
// NCCL picks the rank's GPU); nullptr runs one process with no all-reduce. Every rank must call
// this; the result is complete on every rank.
BenchResult run_training_bench(const BenchConfig& config, std::chrono::steady_clock::time_point launch,
                               comm::Communicator* comm = nullptr);

// Dense bf16 cuBLASLt throughput of an n x n x n product (mean of 10 after 3 warm-ups), TFLOP/s.
double measure_matmul_peak_tflops(int n = 8192);

// One JSON object, the reference script's keys first (yelp_epoch_s null unless yelp lengths).
std::string bench_result_json(const BenchResult& result);

}  // namespace llmqs::core
