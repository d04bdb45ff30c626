// `llmqs-dist bench` measurement (see bench.h). CUDA runs are timed with CUDA events on the
// legacy default stream, which orders against the backend's (blocking) stream, so the elapsed
// time covers every kernel and every host gap of the timed steps; cpu runs use a steady clock.
// Several ranks: the step time is the slowest rank's (each step ends in the gradient all-reduce,
// so the ranks run in lockstep anyway); the all-reduce is then timed again on its own, each
// repetition between a device synchronisation and a barrier, so that it measures the reduction
// and not the skew between ranks.
#include "core/bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <cstring>
#include <random>
#include <stdexcept>

#include "core/backend.h"
#include "core/cpu_backend.h"
#include "core/cuda_backend.h"
#include "core/device_memory.h"
#include "core/gradient_reduction.h"
#include "core/parameters.h"
#include "data/batch.h"
#include "kernels/cuda_check.h"
#include "kernels/matmul_cublaslt.h"

namespace llmqs::core {

namespace {

constexpr double kYelpMu = 4.846, kYelpSigma = 0.826;  // the reference script's log-normal
constexpr double kYelpEpochReviews = 650000.0;
constexpr int kMaxDistinctBatches = 64;
constexpr int kGroupedMegaBatches = 50;  // HF group_by_length: 50 batches per sorted mega-batch
constexpr float kFp16LossScale = 1024.0f;

data::Batch make_batch(const BertConfig& model, const BenchBatchShape& shape, std::mt19937_64& rng) {
  data::Batch batch;
  batch.rows = static_cast<int>(shape.lengths.size());
  batch.seq_len = shape.width;
  batch.lengths = shape.lengths;
  batch.input_ids.assign(static_cast<size_t>(batch.rows) * shape.width, model.pad_token_id);
  std::uniform_int_distribution<int32_t> token(1, model.vocab_size - 1);
  std::uniform_int_distribution<int32_t> label(0, model.num_labels - 1);
  for (int r = 0; r < batch.rows; ++r) {
    for (int s = 0; s < shape.lengths[r]; ++s) batch.input_ids[static_cast<size_t>(r) * shape.width + s] = token(rng);
    batch.labels.push_back(label(rng));
  }
  return batch;
}

double gib(double bytes) { return bytes / double(1ull << 30); }

// Every rank's `value`, in rank order, on every rank (the Communicator only sums).
std::vector<double> gather_on_every_rank(comm::Communicator& comm, double value) {
  std::vector<double> all(static_cast<size_t>(comm.world_size()), 0.0);
  all[static_cast<size_t>(comm.rank())] = value;
  comm.all_reduce_sum_host(all.data(), all.size());
  return all;
}

double slowest_rank(comm::Communicator* comm, double value) {
  if (!comm) return value;
  const std::vector<double> all = gather_on_every_rank(*comm, value);
  return *std::max_element(all.begin(), all.end());
}

// FNV-1a over the bit patterns: equal hashes <=> (practically) bitwise-equal replicas.
uint64_t parameter_hash(const std::vector<float>& params) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (float x : params) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    h = (h ^ bits) * 0x100000001B3ull;
  }
  return h;
}

double round_to(double x, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(x * scale) / scale;
}

}  // namespace

std::vector<BenchBatchShape> bench_batch_shapes(const BenchConfig& c) {
  if (c.seq < 8) throw std::invalid_argument("seq: must be at least 8, got " + std::to_string(c.seq));
  if (c.batch < 1) throw std::invalid_argument("batch: must be positive, got " + std::to_string(c.batch));
  if (c.padding != "max_length" && c.padding != "longest" && c.padding != "grouped")
    throw std::invalid_argument("padding: unknown value '" + c.padding + "' (expected max_length, longest, grouped)");
  std::vector<BenchBatchShape> shapes;
  if (c.lengths == "full") {
    for (int i = 0; i < 4; ++i) shapes.push_back({c.seq, std::vector<int32_t>(c.batch, c.seq)});
    return shapes;
  }
  if (c.lengths != "yelp") throw std::invalid_argument("lengths: unknown value '" + c.lengths + "' (expected full, yelp)");
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t n = static_cast<int64_t>(c.batch) * kGroupedMegaBatches * 2;
  std::vector<int32_t> lengths(n);
  for (auto& l : lengths)
    l = static_cast<int32_t>(std::clamp(std::round(std::exp(kYelpMu + kYelpSigma * normal(rng))), 8.0, double(c.seq)));
  const bool grouped = c.padding == "grouped";
  if (grouped) {
    const int64_t mega = static_cast<int64_t>(c.batch) * kGroupedMegaBatches;
    for (int64_t k = 0; k < n; k += mega)
      std::sort(lengths.begin() + k, lengths.begin() + std::min(n, k + mega), std::greater<int32_t>());
  }
  std::vector<std::vector<int32_t>> rows;
  for (int64_t k = 0; k < n; k += c.batch)
    rows.emplace_back(lengths.begin() + k, lengths.begin() + std::min(n, k + c.batch));
  if (grouped) std::shuffle(rows.begin(), rows.end(), rng);
  if (rows.size() > kMaxDistinctBatches) rows.resize(kMaxDistinctBatches);
  for (auto& r : rows) {
    const int longest = *std::max_element(r.begin(), r.end());
    const int width = c.padding == "max_length" ? c.seq : std::min(c.seq, (longest + 7) / 8 * 8);
    shapes.push_back({width, std::move(r)});
  }
  return shapes;
}

double measure_matmul_peak_tflops(int n) {
  const size_t elements = static_cast<size_t>(n) * n, workspace_bytes = size_t(32) << 20;
  // Random bf16 bit patterns in about [-2, 2] (zeros would overstate the peak by ~10%).
  std::vector<uint16_t> host(elements);
  uint64_t state = 0x9E3779B97F4A7C15ull;
  void* buffers[4] = {nullptr, nullptr, nullptr, nullptr};
  for (int i = 0; i < 3; ++i) CUDA_CHECK(cudaMalloc(&buffers[i], elements * 2));
  CUDA_CHECK(cudaMalloc(&buffers[3], workspace_bytes));
  for (int i = 0; i < 2; ++i) {
    for (auto& x : host) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      x = static_cast<uint16_t>((state & 0x807F) | (0x3F00 + ((state >> 16) & 0x0080)));
    }
    CUDA_CHECK(cudaMemcpy(buffers[i], host.data(), elements * 2, cudaMemcpyHostToDevice));
  }
  double tflops = 0.0;
  {
    // The heuristic's algorithm, untuned, as torch.matmul in the PyTorch script's peak measurement.
    kernels::cuda::MatmulContext matmul(buffers[3], workspace_bytes, false, /*tune=*/false);
    kernels::cuda::GemmArgs g;
    g.trans_b = true;
    g.m = g.n = g.k = n;
    g.ab_type = g.y_type = kernels::DType::kBF16;
    g.a = buffers[0], g.lda = n;
    g.b = buffers[1], g.ldb = n;
    g.y = buffers[2], g.ldy = n;
    for (int i = 0; i < 3; ++i) matmul.gemm(g, nullptr);
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    CUDA_CHECK(cudaEventRecord(start, nullptr));
    const int reps = 10;
    for (int i = 0; i < reps; ++i) matmul.gemm(g, nullptr);
    CUDA_CHECK(cudaEventRecord(stop, nullptr));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    tflops = 2.0 * double(n) * n * n * reps / (ms / 1e3) / 1e12;
  }
  for (void* p : buffers) cudaFree(p);
  return tflops;
}

BenchResult run_training_bench(const BenchConfig& config, std::chrono::steady_clock::time_point launch,
                               comm::Communicator* comm) {
  using Clock = std::chrono::steady_clock;
  BenchConfig c = config;
  c.model.max_position_embeddings = std::max(c.model.max_position_embeddings, c.seq);
  c.model.validate();
  if (c.steps < 1 || c.warmup < 1)
    throw std::invalid_argument("steps and warmup: must be at least 1 (got " + std::to_string(c.steps) + ", " +
                                std::to_string(c.warmup) + ")");
  const int rank = comm ? comm->rank() : 0;
  const int world = comm ? comm->world_size() : 1;
  // Each rank draws its own batches (rank 0 those of a single-process run); the weights below
  // use c.seed unchanged, so every replica starts equal, as after the trainer's broadcast.
  const uint64_t rank_salt = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(rank);
  BenchConfig rank_shapes = c;
  rank_shapes.seed = c.seed + rank_salt;
  const std::vector<BenchBatchShape> shapes = bench_batch_shapes(rank_shapes);
  const int distinct = static_cast<int>(shapes.size());
  // Every distinct shape is seen twice before timing, so its one-off set-up stays out of the timed
  // steps, as in a real epoch, where each of the ~64 shapes recurs ~160 times: the CUDA backend
  // tunes a shape's products on its first micro-batch and captures its graphs on the second.
  const int warmup = c.lengths == "full" ? c.warmup : std::max(c.warmup, 2 * distinct);
  const int steps = c.lengths == "full" ? c.steps : std::max(c.steps, distinct);

  BenchResult r;
  r.backend = c.backend;
  r.lengths = c.lengths;
  r.padding = c.lengths == "yelp" ? c.padding : "none";
  r.seq = c.seq, r.batch = c.batch, r.layers = c.model.num_hidden_layers, r.hidden = c.model.hidden_size;
  r.steps = steps, r.warmup = warmup;

  const bool cuda = c.backend == "cuda";
  if (!cuda && c.backend != "cpu")
    throw std::invalid_argument("backend: unknown value '" + c.backend + "' (expected cuda, cpu)");
  // The gradient buffer lives on the device for cuda and on the host for cpu: only NCCL, resp.
  // MPI, can reduce it.
  if (comm && std::string(comm->name()) != (cuda ? "nccl" : "mpi"))
    throw std::logic_error("run_training_bench: backend " + c.backend + " needs the " + (cuda ? "nccl" : "mpi") +
                           " communicator, got " + comm->name());
  if (c.comm_iters < 1)
    throw std::invalid_argument("comm-iters: must be at least 1, got " + std::to_string(c.comm_iters));
  const size_t numel = ParameterLayout::for_bert(c.model).total_numel();
  if (c.zero_stage != 0 && c.zero_stage != 1)
    throw std::invalid_argument("zero-stage: must be 0 or 1, got " + std::to_string(c.zero_stage));
  const OptimizerShard shard =
      comm && c.zero_stage == 1 ? OptimizerShard::of_rank(numel, rank, world) : OptimizerShard::whole(numel);
  std::unique_ptr<Backend> backend;
  if (cuda) {
    std::string why;
    if (!cuda_device_available(&why)) throw std::runtime_error("no CUDA device: " + why);
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    r.gpu = prop.name;
    r.dtype = resolve_cuda_precision(c.precision, device);
    r.peak_tflops = c.peak_tflops;
    if (r.peak_tflops <= 0) {  // one GPU measures; the others would only add heat and time
      if (rank == 0) r.peak_tflops = measure_matmul_peak_tflops();
      if (comm) comm->broadcast_host(&r.peak_tflops, sizeof(r.peak_tflops), 0);
    }
    backend = make_cuda_backend(c.model, r.dtype, c.batch, c.seq, shard);
    r.peak_mem_gib = gib(double(plan_device_memory(c.model, c.batch, c.seq, r.dtype, true, shard).arena_bytes));
  } else {
    if (c.precision != "auto" && c.precision != "fp32")
      throw std::invalid_argument("precision: the cpu backend computes in fp32 only, got '" + c.precision + "'");
    r.gpu = "cpu";
    r.dtype = "fp32";
    r.peak_tflops = c.peak_tflops;
    backend = make_cpu_backend(c.model, shard);
  }
  r.zero_stage = shard.sharded() ? 1 : 0;
  r.optimizer_state_gib = gib(2.0 * double(shard.count) * sizeof(float));
  {  // random weights, as HF initialises them
    std::vector<float> params(backend->layout().total_numel());
    init_bert_parameters(c.model, backend->layout(), c.seed, params.data());
    backend->set_parameters(params.data());
  }
  std::mt19937_64 rng((c.seed ^ 0x5DEECE66Dull) + rank_salt);
  std::vector<data::Batch> batches;
  for (const auto& shape : shapes) batches.push_back(make_batch(c.model, shape, rng));

  const float loss_scale = r.dtype == "fp16" ? kFp16LossScale : 1.0f;
  AdamWHyper hyper;
  hyper.weight_decay = 0.01f;
  DropoutKey key;
  key.seed = c.seed;
  key.rank = static_cast<uint32_t>(rank);
  const size_t gradient_count = backend->layout().total_numel();
  double last_loss = 0.0;
  // The trainer's reduction (overlapped with the backward where the communicator can), armed each step.
  std::unique_ptr<GradientReduction> reduction;
  if (comm) reduction = std::make_unique<GradientReduction>(*backend, *comm);
  auto step = [&](int i) {
    const data::Batch& batch = batches[i % distinct];
    key.step = static_cast<uint64_t>(i);
    backend->zero_gradients();
    if (reduction) reduction->arm();
    // Mean over the rows of every rank, as the trainer weights an equal-size global batch.
    const BatchStats stats = backend->forward_backward(batch, loss_scale / (float(batch.rows) * world), key);
    last_loss = stats.loss_sum / std::max<int64_t>(1, stats.rows);
    if (reduction) reduction->finish();
    // The trainer's step: global norm for clipping at 1.0 (HF's max_grad_norm), then AdamW;
    // a non-finite norm is an fp16 overflow and skips the update, as in the trainer.
    const double norm = std::sqrt(reduction ? reduction->gradient_sq_norm() : backend->gradient_sq_norm()) / loss_scale;
    if (!std::isfinite(norm)) return;
    hyper.grad_scale = static_cast<float>((1.0 / loss_scale) * std::min(1.0, 1.0 / (norm + 1e-6)));
    hyper.step = i + 1;
    backend->adamw_step(hyper);
    if (reduction) reduction->share_updated_parameters();
  };
  auto finish = [&] {
    if (cuda) CUDA_CHECK(cudaDeviceSynchronize());
  };

  const Clock::time_point warm_start = Clock::now();
  for (int i = 0; i < warmup; ++i) {
    step(i);
    if (i == 0) {
      finish();
      r.launch_to_first_step_s = std::chrono::duration<double>(Clock::now() - launch).count();
    }
  }
  finish();
  r.warmup_s = std::chrono::duration<double>(Clock::now() - warm_start).count();
  if (comm) comm->barrier();  // every rank starts the clock together

  double elapsed_ms = 0.0;
  if (cuda) {
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    CUDA_CHECK(cudaEventRecord(start, nullptr));
    for (int i = 0; i < steps; ++i) step(warmup + i);
    CUDA_CHECK(cudaEventRecord(stop, nullptr));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    elapsed_ms = ms;
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    r.device_used_gib = gib(double(total_bytes - free_bytes));
  } else {
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < steps; ++i) step(warmup + i);
    elapsed_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  }
  r.final_loss = last_loss;
  elapsed_ms = slowest_rank(comm, elapsed_ms);

  r.world_size = world;
  r.communicator = comm ? comm->name() : "none";
  r.allreduce_overlap = reduction && reduction->overlapped();
  r.allreduce_bytes = static_cast<int64_t>(gradient_count * sizeof(float));
  if (comm && world > 1) {
    // Data parallelism is only right if every replica took the same updates.
    std::vector<float> params(gradient_count);
    backend->get_parameters(params.data());
    const uint64_t mine = parameter_hash(params);
    uint64_t rank0 = mine;
    comm->broadcast_host(&rank0, sizeof(rank0), 0);
    int64_t mismatch = mine != rank0 ? 1 : 0;
    comm->all_reduce_sum_host(&mismatch, 1);
    r.replica_mismatches = mismatch;

    // What a step moves: one all-reduce of the gradients, or (ZeRO-1) their reduce-scatter and
    // the all-gather of as many parameter floats (timed on the gradient buffer, which holds zeros).
    const auto step_collectives = [&] {
      if (shard.sharded()) {
        comm->reduce_scatter_sum(backend->gradient_buffer(), shard.count);
        comm->all_gather(backend->gradient_buffer(), shard.count);
      } else {
        comm->all_reduce_sum(backend->gradient_buffer(), gradient_count);
      }
    };
    std::vector<double> comm_ms;
    cudaEvent_t start = nullptr, stop = nullptr;
    if (cuda) {
      CUDA_CHECK(cudaEventCreate(&start));
      CUDA_CHECK(cudaEventCreate(&stop));
    }
    for (int i = 0; i < c.comm_iters; ++i) {
      backend->zero_gradients();  // repeated sums would grow without bound
      finish();
      comm->barrier();
      double ms = 0.0;
      if (cuda) {
        CUDA_CHECK(cudaEventRecord(start, nullptr));
        step_collectives();
        CUDA_CHECK(cudaEventRecord(stop, nullptr));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float event_ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&event_ms, start, stop));
        ms = event_ms;
      } else {
        const Clock::time_point t0 = Clock::now();
        step_collectives();
        ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      }
      comm_ms.push_back(slowest_rank(comm, ms));
    }
    if (cuda) {
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
    std::sort(comm_ms.begin(), comm_ms.end());
    r.comm_ms_per_step = comm_ms[comm_ms.size() / 2];
    r.allreduce_algbw_gbps = double(r.allreduce_bytes) / (r.comm_ms_per_step / 1e3) / 1e9;
    r.allreduce_busbw_gbps = r.allreduce_algbw_gbps * 2.0 * (world - 1) / world;
  }

  double tokens[2] = {0.0, 0.0};  // padded, useful, summed over the timed steps of every rank
  for (int i = 0; i < steps; ++i) {
    const data::Batch& b = batches[(warmup + i) % distinct];
    tokens[0] += double(b.rows) * b.seq_len;
    tokens[1] += double(b.real_tokens());
  }
  if (comm) comm->all_reduce_sum_host(tokens, 2);
  r.ms_per_step = elapsed_ms / steps;
  const double step_s = r.ms_per_step / 1e3;
  r.seq_per_s = c.batch / step_s;
  r.global_tok_per_s = tokens[0] / steps / step_s;
  r.tok_per_s = r.global_tok_per_s / world;
  r.useful_tok_per_s = tokens[1] / steps / step_s / world;
  r.exposed_comm_share = r.comm_ms_per_step / r.ms_per_step;
  if (c.lengths == "yelp") r.yelp_epoch_s = kYelpEpochReviews / (r.seq_per_s * world);
  for (const ParameterInfo& p : backend->layout().parameters())
    if (p.name.find("embeddings") == std::string::npos) r.non_embedding_params += static_cast<int64_t>(p.numel);
  const double flops_per_token =
      6.0 * double(r.non_embedding_params) + 12.0 * c.model.num_hidden_layers * double(c.seq) * c.model.hidden_size;
  r.model_tflops = r.tok_per_s * flops_per_token / 1e12;
  r.mfu = r.peak_tflops > 0 ? r.model_tflops / r.peak_tflops : 0.0;
  return r;
}

std::string bench_result_json(const BenchResult& r) {
  nlohmann::ordered_json j;
  j["system"] = r.system;
  j["backend"] = r.backend;
  j["lengths"] = r.lengths;
  j["padding"] = r.padding;
  j["gpu"] = r.gpu;
  j["dtype"] = r.dtype;
  j["seq"] = r.seq;
  j["batch"] = r.batch;
  j["layers"] = r.layers;
  j["hidden"] = r.hidden;
  j["ms_per_step"] = round_to(r.ms_per_step, 3);
  j["seq_per_s"] = round_to(r.seq_per_s, 1);
  j["tok_per_s"] = std::llround(r.tok_per_s);
  j["useful_tok_per_s"] = std::llround(r.useful_tok_per_s);
  j["yelp_epoch_s"] = r.yelp_epoch_s >= 0 ? nlohmann::ordered_json(round_to(r.yelp_epoch_s, 1)) : nullptr;
  j["model_tflops"] = round_to(r.model_tflops, 1);
  j["peak_tflops"] = round_to(r.peak_tflops, 1);
  j["mfu"] = round_to(r.mfu, 4);
  j["peak_mem_gib"] = round_to(r.peak_mem_gib, 3);
  j["device_used_gib"] = round_to(r.device_used_gib, 3);
  j["warmup_s"] = round_to(r.warmup_s, 1);
  j["launch_to_first_step_s"] = round_to(r.launch_to_first_step_s, 2);
  j["steps"] = r.steps;
  j["warmup"] = r.warmup;
  j["final_loss"] = round_to(r.final_loss, 4);
  j["world_size"] = r.world_size;
  j["communicator"] = r.communicator;
  j["global_tok_per_s"] = std::llround(r.global_tok_per_s);
  j["comm_ms_per_step"] = round_to(r.comm_ms_per_step, 5);
  j["exposed_comm_share"] = round_to(r.exposed_comm_share, 6);
  // "layers": each layer's gradients reduced during the backward; "none": after it (all exposed).
  j["comm_overlap"] = r.allreduce_overlap ? "layers" : "none";
  j["zero_stage"] = r.zero_stage;
  j["optimizer_state_gib"] = round_to(r.optimizer_state_gib, 3);
  j["allreduce_bytes"] = r.allreduce_bytes;
  auto gbps = [](double x) { return x >= 0 ? nlohmann::ordered_json(round_to(x, 3)) : nlohmann::ordered_json(nullptr); };
  j["allreduce_algbw_gbps"] = gbps(r.allreduce_algbw_gbps);
  j["allreduce_busbw_gbps"] = gbps(r.allreduce_busbw_gbps);
  j["replica_mismatches"] = r.replica_mismatches;
  return j.dump();
}

}  // namespace llmqs::core
