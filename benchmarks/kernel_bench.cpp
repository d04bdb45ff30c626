// kernel_bench: every CUDA kernel of a bert-base training step on its own, called the way
// core/cuda_backend.cpp calls it (same entry point, transposes, bias epilogue, beta, dropout sites),
// against peaks measured in the same run on the same GPU:
//   - the matmuls and the fused attention: TFLOP/s and % of a dense cuBLASLt 8192^3 product in the
//     run's type (bf16 by default: the denominator `llmqs-dist bench` uses for MFU);
//   - the bandwidth-bound kernels: GB/s and % of a 1 GiB device-to-device copy (read + write bytes).
//
//   kernel_bench [--dtype bf16|fp16|fp32] [--batch 64] [--seq 512] [--reps 20] [--warmup 3]
//                [--lengths full|yelp] [--no-flush] [--no-gate] [--json]
//
// Shape: bert-base (hidden 768, 12 heads of 64, intermediate 3072, vocab 28996), N = batch x seq
// tokens; the two headline shapes are 64 x 512 (the default) and 256 x 128 (both N = 32768).
// Method: the median over --reps calls after --warmup untimed ones. Each call is timed alone with
// CUDA events, after a memset of twice the L2's size (so every call starts with a cold L2, as after
// a large neighbour in the step; --no-flush keeps it warm), with the stream held by a host gate
// until the whole call is enqueued, so host work (cuBLASLt descriptors, the ~200 AdamW launches)
// never counts as GPU time (--no-gate: events only; a gate that times out turns itself off for
// the rest of the run and says so). Work comes from the shape alone:
//   matmul           2 M N K FLOPs (the bias epilogue not counted)
//   fused attention  forward 4 B H S^2 d (QK^T and PV); the backward counted as 2.5 x forward (the
//                    FlashAttention convention: 5 products of that size - QK^T recomputed, dV, dP, dQ,
//                    dK - against the forward's 2); with --lengths yelp, S^2 becomes S x length per
//                    row (the kernels skip key tiles past a row's length; every query row runs)
//   bandwidth        each input read once, each output written once (read and written when the
//                    kernel accumulates into it); the column-reduce scratch partials are not counted,
//                    so extra traffic shows as a lower GB/s
// Results are not checked here: tests/kernels_cuda_test.cpp compares every kernel with its CPU twin.
// The kernel variants follow the backend's switches: LLMQS_LAYERNORM / LLMQS_GELU / LLMQS_COLUMN_SUM
// =scalar pick the older kernels, LLMQS_ATTENTION_WGMMA=0 the mma.sync attention kernels on Hopper,
// LLMQS_ATTENTION=unfused skips the fused attention rows.
// Output: a table on stdout; --json adds one JSON object per line after each row (the `name`
// values are stable keys for benchmarks/RESULTS.md). Exit 1 when a row failed. Without a usable
// CUDA device it prints "kernel_bench: no CUDA device: <reason>" and exits 0 (a skip, like the
// CUDA test suites).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/bench.h"
#include "core/cuda_backend.h"
#include "core/device_memory.h"
#include "core/model_config.h"
#include "core/parameters.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_kernels.h"

namespace {

namespace core = llmqs::core;
namespace cu = llmqs::kernels::cuda;
using llmqs::kernels::DropoutSite;
using llmqs::kernels::DType;

constexpr const char* kUsage =
    "usage: kernel_bench [--dtype bf16|fp16|fp32] [--batch 64] [--seq 512] [--reps 20] [--warmup 3]\n"
    "                    [--lengths full|yelp] [--no-flush] [--no-gate] [--json]\n"
    "  bert-base kernels one by one, as core/cuda_backend.cpp calls them, against a dense 8192^3\n"
    "  cuBLASLt product (TFLOP/s) and a 1 GiB device-to-device copy (GB/s) measured in the same run.\n"
    "  --lengths yelp adds fused-attention lines at yelp-like row lengths (the bench's length model).\n";

constexpr int kPeakMatmulN = 8192;
constexpr size_t kPatternFloats = size_t(1) << 22;               // random source tiled into every buffer
constexpr size_t kMatmulWorkspaceBytes = size_t(32) << 20;        // the backend's (core/device_memory.cpp)
constexpr int64_t kMaxTokens = int64_t(1) << 18;                  // keeps N x 3072 below 2^31 elements
constexpr float kDropoutP = 0.1f;                                 // BERT's hidden and attention dropout

struct Options {
  std::string dtype = "bf16";
  int batch = 64;
  int seq = 512;
  int reps = 20;
  int warmup = 3;
  std::string lengths = "full";
  bool flush_l2 = true;
  bool gate = true;
  bool json = false;
};

int parse_int(const std::string& key, const std::string& text, int minimum, int maximum) {
  size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < minimum || value > maximum)
    throw std::invalid_argument(key + ": expected an integer in [" + std::to_string(minimum) + ", " +
                                std::to_string(maximum) + "], got '" + text + "'");
  return value;
}

Options parse_options(int argc, char** argv) {
  Options o;
  const core::BertConfig bert_base;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (key == "--json") {
      o.json = true;
      continue;
    }
    if (key == "--no-flush") {
      o.flush_l2 = false;
      continue;
    }
    if (key == "--no-gate") {
      o.gate = false;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(key + ": missing value");
    const std::string value = argv[++i];
    if (key == "--dtype") o.dtype = value;
    else if (key == "--batch") o.batch = parse_int(key, value, 1, 1 << 16);
    else if (key == "--seq") o.seq = parse_int(key, value, 8, bert_base.max_position_embeddings);
    else if (key == "--reps") o.reps = parse_int(key, value, 1, 100000);
    else if (key == "--warmup") o.warmup = parse_int(key, value, 0, 100000);
    else if (key == "--lengths") o.lengths = value;
    else throw std::invalid_argument("unknown option '" + key + "' (--help lists them)");
  }
  if (o.dtype != "bf16" && o.dtype != "fp16" && o.dtype != "fp32")
    throw std::invalid_argument("--dtype: unknown value '" + o.dtype + "' (expected bf16, fp16, fp32)");
  if (o.lengths != "full" && o.lengths != "yelp")
    throw std::invalid_argument("--lengths: unknown value '" + o.lengths + "' (expected full, yelp)");
  if (int64_t(o.batch) * o.seq > kMaxTokens)
    throw std::invalid_argument("--batch x --seq: at most " + std::to_string(kMaxTokens) + " tokens, got " +
                                std::to_string(int64_t(o.batch) * o.seq));
  return o;
}

std::string env_value(const char* name) {
  const char* env = std::getenv(name);
  return env ? std::string(env) : std::string();
}

// ---- device memory --------------------------------------------------------------------------

// Every buffer of the run: sizes registered first, then ONE cudaMalloc checked against free memory
// (nothing is allocated once timing starts). Offsets are 256-byte aligned like the backend's arena,
// since cuBLASLt picks its algorithm by pointer alignment too.
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() {
    if (base_) cudaFree(base_);
  }

  template <typename T>
  void add(T*& slot, size_t bytes) {
    const size_t at = used_;
    used_ += (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    assign_.push_back([&slot, at](char* base) { slot = static_cast<T*>(static_cast<void*>(base + at)); });
  }

  void allocate() {
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const size_t headroom = size_t(512) << 20;  // CUDA context growth, cuBLASLt's own allocations
    if (used_ + headroom > free_bytes)
      throw std::runtime_error("the benchmark's buffers need " + std::to_string(used_ >> 20) + " MiB (+ 512 MiB headroom), " +
                               std::to_string(free_bytes >> 20) + " MiB free; try a smaller --batch");
    CUDA_CHECK(cudaMalloc(&base_, used_));
    for (auto& assign : assign_) assign(base_);
  }

  size_t bytes() const { return used_; }

 private:
  char* base_ = nullptr;
  size_t used_ = 0;
  std::vector<std::function<void(char*)>> assign_;
};

struct Buffers {
  // Linear layers, LayerNorm, GELU, dropout: activations in the run's type, [N x 768] or [N x 3072].
  void *x = nullptr, *y = nullptr, *dy = nullptr, *dx = nullptr, *dx_dropped = nullptr;
  void *ln_out = nullptr, *ln_sum = nullptr, *dropped = nullptr;
  void *ffn_pre = nullptr, *ffn_act = nullptr, *d_ffn = nullptr, *dx_ffn = nullptr;
  // The low-precision weight copy the matmuls read (the backend's params_low), and fp32 gradients.
  // w_qkv is [3C x C] (the fused QKV product); its first C x C block doubles as the output projection.
  void *w_qkv = nullptr, *w_ffn1 = nullptr, *w_ffn2 = nullptr, *b_768 = nullptr, *b_3072 = nullptr, *b_qkv = nullptr;
  float *dw_qkv = nullptr, *dw_ffn1 = nullptr, *dw_ffn2 = nullptr, *dbias = nullptr;
  float *gamma = nullptr, *beta = nullptr, *dgamma = nullptr, *dbeta = nullptr, *mean = nullptr, *rstd = nullptr;
  float* reduce_scratch = nullptr;
  // Fused attention: q, k, v, ctx and their gradients [N x 768]; lse and delta [B x H x S] fp32.
  // qkv, dqkv [N x 3C] as the backend holds them; q, k, v (dq, dk, dv) point at their column blocks.
  void *qkv = nullptr, *dqkv = nullptr;
  void *q = nullptr, *k = nullptr, *v = nullptr, *ctx = nullptr, *dctx = nullptr;
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *lse = nullptr, *delta = nullptr;
  uint32_t* attn_mask = nullptr;  // dropout keep bits: flash_attention_mask_words(B, S, H) words
  uint32_t* ln_keep = nullptr;    // a residual LayerNorm's keep bits: layernorm_keep_bits_words(N, C) (null if 0)
  void* attn_ds = nullptr;        // dS^T for the dQ product: flash_attention_ds_elements(B, S, H), or null
  float* qkv_bias_partials = nullptr;  // the attention backward's QKV bias partials, or null where it sums none
  int32_t *lengths_full = nullptr, *lengths_yelp = nullptr;
  // Embeddings: ids [N], fp32 tables, output [N x 768].
  int32_t* ids = nullptr;
  float *word = nullptr, *position = nullptr, *token_type0 = nullptr;
  void* emb_out = nullptr;
  // AdamW over the whole bert-base parameter buffer.
  float *params = nullptr, *grads = nullptr, *adam_m = nullptr, *adam_v = nullptr;
  void* params_low = nullptr;
  uint32_t* decay_mask = nullptr;  // core::build_adamw_decay_mask, as the backend's arena holds it
  // Peaks and method.
  void *peak_a = nullptr, *peak_b = nullptr, *peak_y = nullptr, *copy_src = nullptr, *copy_dst = nullptr;
  void *l2_flush = nullptr, *matmul_workspace = nullptr;
  float* pattern = nullptr;
};

// Fills `count` elements of `type` at dst with uniform values in [lo, hi): a fp32 pattern of up to
// kPatternFloats values (host xorshift, seeded per buffer) converted on the device and tiled. Not
// zeros: zero operands make tensor-core products look faster than they are. Synchronises.
void fill(void* dst, DType type, size_t count, float lo, float hi, uint64_t seed, float* pattern_device,
          cudaStream_t stream) {
  const size_t n = std::min(count, kPatternFloats);
  std::vector<float> host(n);
  uint64_t state = 0x9E3779B97F4A7C15ull ^ (seed * 0xBF58476D1CE4E5B9ull);
  for (auto& value : host) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    value = lo + (hi - lo) * static_cast<float>(state >> 40) * (1.0f / 16777216.0f);
  }
  CUDA_CHECK(cudaMemcpyAsync(pattern_device, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
  const size_t es = llmqs::kernels::dtype_bytes(type);
  for (size_t done = 0; done < count; done += n)
    cu::convert(static_cast<char*>(dst) + done * es, type, pattern_device, DType::kF32, std::min(n, count - done),
                stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));  // the pattern is reused by the next fill
}

// ---- timing -----------------------------------------------------------------------------------

// Holds a stream until the host has enqueued a whole timed call, so the events around it time GPU
// work only. The host function spins for at most 10 s (then lets the stream go and counts a
// timeout, reported with the row) so a call that unexpectedly waits on the stream cannot hang.
class StreamGate {
 public:
  void close(cudaStream_t stream) {
    open_.store(false, std::memory_order_release);
    CUDA_CHECK(cudaLaunchHostFunc(stream, &StreamGate::hold, this));
  }
  void open() { open_.store(true, std::memory_order_release); }
  int timeouts() const { return timeouts_.load(); }

 private:
  static void CUDART_CB hold(void* self) {
    auto* gate = static_cast<StreamGate*>(self);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!gate->open_.load(std::memory_order_acquire)) {
      if (std::chrono::steady_clock::now() > deadline) {
        gate->timeouts_.fetch_add(1);
        return;
      }
      std::this_thread::yield();
    }
  }
  std::atomic<bool> open_{true};
  std::atomic<int> timeouts_{0};
};

struct Timing {
  double median_ms = 0.0, min_ms = 0.0;
  int gate_timeouts = 0;
};

class Timer {
 public:
  Timer(cudaStream_t stream, int reps, int warmup, void* flush, size_t flush_bytes, bool gated)
      : stream_(stream), reps_(reps), warmup_(warmup), flush_(flush), flush_bytes_(flush_bytes), gated_(gated) {
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  ~Timer() {
    gate_.open();
    cudaStreamSynchronize(stream_);  // no host function may still read gate_
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }

  Timing time(const std::function<void()>& call) {
    for (int i = 0; i < warmup_; ++i) call();
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    const int timeouts_before = gate_.timeouts();
    std::vector<double> ms;
    for (int i = 0; i < reps_; ++i) {
      if (flush_bytes_) CUDA_CHECK(cudaMemsetAsync(flush_, i & 0xFF, flush_bytes_, stream_));
      {
        if (gated_) gate_.close(stream_);
        struct Reopen {
          StreamGate& gate;
          ~Reopen() { gate.open(); }
        } reopen{gate_};
        CUDA_CHECK(cudaEventRecord(start_, stream_));
        call();
        CUDA_CHECK(cudaEventRecord(stop_, stream_));
      }
      CUDA_CHECK(cudaEventSynchronize(stop_));
      float elapsed = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&elapsed, start_, stop_));
      ms.push_back(elapsed);
      if (gate_.timeouts() > timeouts_before) gated_ = false;  // something in the call waits on the stream
    }
    std::sort(ms.begin(), ms.end());
    Timing t;
    const size_t n = ms.size();
    t.median_ms = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
    t.min_ms = ms.front();
    t.gate_timeouts = gate_.timeouts() - timeouts_before;
    return t;
  }

  bool gated() const { return gated_; }

 private:
  cudaStream_t stream_;
  int reps_, warmup_;
  void* flush_;
  size_t flush_bytes_;
  bool gated_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  StreamGate gate_;
};

// ---- rows and the report ------------------------------------------------------------------------

struct Row {
  std::string name;          // stable key for RESULTS.md, e.g. "linear_fwd.ffn1"
  std::string shape;         // for the table
  std::string call;          // the exact call, for the JSON line
  double flops = 0.0;        // compute-bound rows: FLOPs of one call
  double bytes = 0.0;        // bandwidth-bound rows: compulsory bytes of one call
  int calls_per_step = 0;    // how often one bert-base training step makes this call (0: not as is)
  std::string note;
  std::function<void()> enqueue;
};

std::string fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

double rounded(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

class Report {
 public:
  Report(const Options& o, std::string gpu, std::string variants, int tokens)
      : o_(o), gpu_(std::move(gpu)), variants_(std::move(variants)), tokens_(tokens) {}

  void set_peaks(double tflops, double gbps) {
    peak_tflops_ = tflops;
    peak_gbps_ = gbps;
  }
  bool failed() const { return errors_ > 0; }

  void column_titles() const {
    std::printf("# %-27s %-42s %5s %9s %9s %12s %15s %6s\n", "name", "shape", "calls", "median", "min", "work",
                "achieved", "%peak");
    std::printf("# %-27s %-42s %5s %9s %9s %12s %15s %6s\n", "", "", "/step", "(ms)", "(ms)", "", "", "");
  }

  // Measures one row (errors are reported on the row and the run continues) and prints it.
  // Returns the achieved TFLOP/s or GB/s (0 when the row did not run).
  double measure(Timer& timer, const Row& row) {
    Timing t;
    std::string status = "ok", why;
    const bool gated = timer.gated();
    try {
      t = timer.time(row.enqueue);
    } catch (const std::invalid_argument& e) {  // a shape or type the kernel refuses: nothing ran
      status = "skipped";
      why = e.what();
    } catch (const std::exception& e) {
      status = "error";
      why = e.what();
      ++errors_;
      cudaGetLastError();  // clear a non-sticky error so the next rows can run
    }
    const bool compute = row.flops > 0.0;
    const double work = compute ? row.flops : row.bytes;
    const double achieved = status == "ok" ? work / (t.median_ms * 1e-3) / (compute ? 1e12 : 1e9) : 0.0;
    const double peak = compute ? peak_tflops_ : peak_gbps_;
    const double pct = peak > 0.0 ? 100.0 * achieved / peak : 100.0;
    const std::string calls = row.calls_per_step > 0 ? std::to_string(row.calls_per_step) : "-";
    const std::string work_text = compute ? fixed(row.flops / 1e9, 1) + " GFLOP" : fixed(row.bytes / 1e6, 1) + " MB";
    if (status == "ok") {
      std::printf("  %-27s %-42s %5s %9.4f %9.4f %12s %15s %6.1f\n", row.name.c_str(), row.shape.c_str(),
                  calls.c_str(), t.median_ms, t.min_ms, work_text.c_str(),
                  (fixed(achieved, 1) + (compute ? " TFLOP/s" : " GB/s")).c_str(), pct);
      if (row.calls_per_step > 0) step_ms_ += row.calls_per_step * t.median_ms;
    } else {
      std::printf("  %-27s %-42s %5s %s: %s\n", row.name.c_str(), row.shape.c_str(), calls.c_str(), status.c_str(),
                  why.c_str());
    }
    if (t.gate_timeouts > 0)
      std::printf("  %-27s note: the stream gate timed out %d time(s) (host enqueue time is inside those reps);"
                  " the rows after this one run ungated\n",
                  "", t.gate_timeouts);
    if (o_.json) {
      nlohmann::ordered_json j;
      j["system"] = "kernel_bench";
      j["name"] = row.name;
      j["shape"] = row.shape;
      j["call"] = row.call;
      j["gpu"] = gpu_;
      j["dtype"] = o_.dtype;
      j["batch"] = o_.batch;
      j["seq"] = o_.seq;
      j["tokens"] = tokens_;
      j["calls_per_step"] = row.calls_per_step;
      j["status"] = status;
      if (status == "ok") {
        j["median_ms"] = rounded(t.median_ms, 5);
        j["min_ms"] = rounded(t.min_ms, 5);
      }
      if (compute) {
        j["gflop"] = rounded(row.flops / 1e9, 3);
        j["tflops"] = rounded(achieved, 2);
        j["peak_tflops"] = rounded(peak_tflops_, 2);
      } else {
        j["mb"] = rounded(row.bytes / 1e6, 3);
        j["gbps"] = rounded(achieved, 1);
        j["peak_gbps"] = rounded(peak_gbps_, 1);
      }
      j["pct_of_peak"] = status == "ok" ? rounded(pct, 2) : 0.0;
      j["reps"] = o_.reps;
      j["warmup"] = o_.warmup;
      j["l2_flush"] = o_.flush_l2;
      j["gated"] = gated;
      j["variants"] = variants_;
      if (!row.note.empty()) j["note"] = row.note;
      if (!why.empty()) j["why"] = why;
      if (t.gate_timeouts > 0) j["gate_timeouts"] = t.gate_timeouts;
      std::printf("%s\n", j.dump().c_str());
    }
    std::fflush(stdout);
    return achieved;
  }

  void footer(int layers) const {
    std::printf("#\n# the rows with calls/step, times their calls in one bert-base training step (%d layers): %.2f ms\n"
                "#   (not included: embeddings/LayerNorm-0 backward, pooler/classifier, grad norm, upload; cold L2 per"
                " call)\n",
                layers, step_ms_);
    if (o_.json) {
      nlohmann::ordered_json j;
      j["system"] = "kernel_bench";
      j["name"] = "step_estimate";
      j["gpu"] = gpu_;
      j["dtype"] = o_.dtype;
      j["batch"] = o_.batch;
      j["seq"] = o_.seq;
      j["tokens"] = tokens_;
      j["ms_per_step"] = rounded(step_ms_, 3);
      j["errors"] = errors_;
      std::printf("%s\n", j.dump().c_str());
    }
  }

 private:
  const Options& o_;
  std::string gpu_, variants_;
  int tokens_;
  double peak_tflops_ = 0.0, peak_gbps_ = 0.0;
  double step_ms_ = 0.0;
  int errors_ = 0;
};

// ---- the fused attention rows ------------------------------------------------------------------

// The two flash_attention calls in one place: when their signatures change (e.g. a dropout-mask
// buffer), adapt these two functions and the buffers they take.
struct AttentionShape {
  int rows, seq, C, heads;
  DType type;
};

void enqueue_flash_forward(const Buffers& b, const AttentionShape& s, const int32_t* lengths,
                           const DropoutSite& site, cudaStream_t stream) {
  cu::flash_attention_forward(b.ctx, b.lse, b.attn_mask, b.q, b.k, b.v, lengths, s.type, s.rows, s.seq, s.C, s.heads,
                              3 * s.C, site, stream);
}

void enqueue_flash_backward(const Buffers& b, const AttentionShape& s, const int32_t* lengths,
                            const DropoutSite& site, cudaStream_t stream) {
  cu::flash_attention_backward(b.dq, b.dk, b.dv, b.dctx, b.ctx, b.q, b.k, b.v, b.lse, b.attn_mask, b.delta,
                               b.attn_ds, b.qkv_bias_partials, lengths, s.type, s.rows, s.seq, s.C, s.heads, 3 * s.C,
                               site, stream);
}

// Forward and backward rows at one set of row lengths (`tag`: "full" or "yelp").
void attention_rows(Report& report, Timer& timer, const Buffers& b, const AttentionShape& s,
                    const int32_t* lengths_device, const std::vector<int32_t>& lengths_host, const std::string& tag,
                    int calls_per_step, cudaStream_t stream) {
  const int d = s.C / s.heads;
  double key_positions = 0.0;  // sum over rows of S x length: the query-key pairs the kernels compute
  for (int32_t length : lengths_host) key_positions += double(s.seq) * length;
  const double forward_flops = 4.0 * s.heads * d * key_positions;
  DropoutSite site;
  site.seed = 1234;
  site.step = 1;
  site.tensor_id = llmqs::kernels::bert_dropout_tensor_id(0, llmqs::kernels::LayerDropoutSite::kAttentionProbs);
  site.p = kDropoutP;
  double mean_length = 0.0;
  for (int32_t length : lengths_host) mean_length += length;
  mean_length /= double(lengths_host.size());
  const std::string shape = std::to_string(s.rows) + "x" + std::to_string(s.seq) + " h" + std::to_string(s.heads) +
                            " d" + std::to_string(d) + (tag == "full" ? " full" : " len~" + fixed(mean_length, 0)) +
                            " p0.1";
  if (tag == "full") {  // the keep bits the forward and backward read (drawn per layer, on a side stream in a step)
    Row mask;
    mask.name = "attention_dropout_mask";
    mask.shape = std::to_string(s.rows) + "x" + std::to_string(s.seq) + " h" + std::to_string(s.heads) + " p0.1";
    mask.call = "flash_attention_dropout_mask(dropout_mask, B, S, 12, site p=0.1)";
    mask.bytes = 4.0 * double(cu::flash_attention_mask_words(s.rows, s.seq, s.heads));
    mask.calls_per_step = calls_per_step;
    mask.note = "Philox-bound: one call per 8 keys; bytes = the mask written";
    mask.enqueue = [&] { cu::flash_attention_dropout_mask(b.attn_mask, s.rows, s.seq, s.heads, site, stream); };
    report.measure(timer, mask);
  }
  Row fwd;
  fwd.name = "flash_attention_fwd." + tag;
  fwd.shape = shape;
  fwd.call = "flash_attention_forward(ctx, lse, dropout_mask, q, k, v, lengths, type, B, S, 768, 12, site p=0.1)";
  fwd.flops = forward_flops;
  fwd.calls_per_step = calls_per_step;
  fwd.note = "FLOPs = 4 H d sum_rows(S x length) = 4 B H S^2 d at full lengths";
  fwd.enqueue = [&] { enqueue_flash_forward(b, s, lengths_device, site, stream); };
  report.measure(timer, fwd);

  Row bwd;
  bwd.name = "flash_attention_bwd." + tag;
  bwd.shape = shape;
  bwd.call = std::string("flash_attention_backward(dq, dk, dv, dctx, ctx, q, k, v, lse, dropout_mask, delta, ") +
             (b.attn_ds ? "ds" : "null: dQ recomputed") + ", lengths, type, B, S, 768, 12, site)";
  bwd.flops = 2.5 * forward_flops;
  bwd.calls_per_step = calls_per_step;
  bwd.note = "FLOPs counted as 2.5 x the forward's (FlashAttention convention)";
  bwd.enqueue = [&] { enqueue_flash_backward(b, s, lengths_device, site, stream); };
  // lse, ctx and the dropout mask must be this length set's forward output (the forward row just
  // wrote them, unless it was skipped; then the backward is refused the same way).
  report.measure(timer, bwd);
}

// ---- the run ------------------------------------------------------------------------------------

int run(const Options& o) {
  std::string why;
  if (!core::cuda_device_available(&why)) {
    std::printf("kernel_bench: no CUDA device: %s\n", why.c_str());
    return 0;
  }
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  core::resolve_cuda_precision(o.dtype, device);  // refuses bf16 below sm_80, naming the device
  const DType type = o.dtype == "bf16" ? DType::kBF16 : o.dtype == "fp16" ? DType::kF16 : DType::kF32;
  const size_t es = llmqs::kernels::dtype_bytes(type);

  cu::KernelVariants variants;  // the backend's switches, read the same way
  variants.packed_layernorm = env_value("LLMQS_LAYERNORM") != "scalar";
  variants.packed_gelu = env_value("LLMQS_GELU") != "scalar";
  variants.packed_column_sums = env_value("LLMQS_COLUMN_SUM") != "scalar";
  variants.wgmma_attention = env_value("LLMQS_ATTENTION_WGMMA") != "0";
  cu::set_kernel_variants(variants);
  const std::string variant_text = std::string("layernorm=") + (variants.packed_layernorm ? "packed" : "scalar") +
                                   " gelu=" + (variants.packed_gelu ? "packed" : "scalar") +
                                   " column_sum=" + (variants.packed_column_sums ? "packed" : "scalar") +
                                   " attention=" + (cu::flash_attention_uses_wgmma(DType::kBF16, 768, 12) ? "wgmma" : "mma.sync");

  const core::BertConfig model;  // bert-base-cased
  const int B = o.batch, S = o.seq, N = B * S;
  const int C = model.hidden_size, H = model.num_attention_heads, I = model.intermediate_size;
  const int V = model.vocab_size, layers = model.num_hidden_layers;
  const float eps = model.layer_norm_eps;
  const size_t nC = size_t(N) * C, nI = size_t(N) * I;
  const core::ParameterLayout layout = core::ParameterLayout::for_bert(model);
  const size_t P = layout.total_numel();
  const bool low_copy = type != DType::kF32;  // the backend keeps a low copy of the weights unless fp32
  const size_t flush_bytes = o.flush_l2 ? std::max<size_t>(size_t(2) * prop.l2CacheSize, size_t(32) << 20) : 0;
  // yelp-like lengths from the one owner of that model (the bench's max_length batches)
  std::vector<int32_t> lengths_yelp_host;
  if (o.lengths == "yelp") {
    core::BenchConfig config;
    config.seq = S;
    config.batch = B;
    config.lengths = "yelp";
    config.padding = "max_length";
    lengths_yelp_host = core::bench_batch_shapes(config).front().lengths;
  }
  const std::vector<int32_t> lengths_full_host(static_cast<size_t>(B), S);

  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  size_t copy_bytes = std::min(size_t(1) << 30, free_bytes / 16);
  copy_bytes = std::max<size_t>(copy_bytes / (size_t(1) << 20), 1) << 20;
  const size_t peak_elements = size_t(kPeakMatmulN) * kPeakMatmulN;

  Buffers b;
  Arena arena;
  for (void** slot : {&b.x, &b.y, &b.dy, &b.dx, &b.dx_dropped, &b.ln_out, &b.ln_sum, &b.dropped, &b.ctx, &b.dctx,
                      &b.emb_out})
    arena.add(*slot, nC * es);
  arena.add(b.qkv, 3 * nC * es);
  arena.add(b.dqkv, 3 * nC * es);
  for (void** slot : {&b.ffn_pre, &b.ffn_act, &b.d_ffn, &b.dx_ffn}) arena.add(*slot, nI * es);
  arena.add(b.w_qkv, size_t(3 * C) * C * es);
  arena.add(b.b_qkv, size_t(3 * C) * es);
  arena.add(b.w_ffn1, size_t(I) * C * es);
  arena.add(b.w_ffn2, size_t(C) * I * es);
  arena.add(b.b_768, size_t(C) * es);
  arena.add(b.b_3072, size_t(I) * es);
  arena.add(b.dw_qkv, size_t(3 * C) * C * 4);
  arena.add(b.dw_ffn1, size_t(I) * C * 4);
  arena.add(b.dw_ffn2, size_t(C) * I * 4);
  arena.add(b.dbias, size_t(std::max(3 * C, I)) * 4);
  for (float** slot : {&b.gamma, &b.beta, &b.dgamma, &b.dbeta}) arena.add(*slot, size_t(C) * 4);
  arena.add(b.mean, size_t(N) * 4);
  arena.add(b.rstd, size_t(N) * 4);
  // The widest column reduction of the rows below: bias sums (C columns), LayerNorm backward (3C
  // with the dense layer's bias), QKV bias (3C), dGELU + FFN1 bias (I):
  // column_reduce_scratch_floats(N, cols) each (kernels/cuda_kernels.h).
  const size_t scratch_floats = std::max({cu::column_reduce_scratch_floats(N, C), cu::column_reduce_scratch_floats(N, 2 * C),
                                          cu::column_reduce_scratch_floats(N, 3 * C),
                                          cu::layernorm_backward_scratch_floats(N, C),
                                          cu::column_reduce_scratch_floats(N, I)});
  arena.add(b.reduce_scratch, scratch_floats * 4);
  arena.add(b.lse, size_t(B) * H * S * 4);    // [rows x heads x seq] fp32
  arena.add(b.delta, size_t(B) * H * S * 4);  // delta_scratch: [rows x heads x seq] fp32
  const size_t mask_bytes = cu::flash_attention_mask_words(B, S, H) * 4;
  arena.add(b.attn_mask, mask_bytes);
  if (const size_t keep_words = cu::layernorm_keep_bits_words(N, C, type)) arena.add(b.ln_keep, keep_words * 4);
  // The backend's choice (core::attention_ds_planned: LLMQS_ATTENTION_DQ=recompute turns it off).
  const bool stored_ds = core::attention_ds_planned();
  arena.add(b.attn_ds, stored_ds ? cu::flash_attention_ds_elements(B, S, H) * es : 0);
  // As the backend: the attention backward sums the QKV bias gradient's partials where it can.
  const bool attention_bias = cu::flash_attention_backward_sums_qkv_bias(type, C, H, S, stored_ds);
  const size_t bias_partial_rows = attention_bias ? cu::flash_attention_qkv_bias_partial_rows(B, S) : 0;
  arena.add(b.qkv_bias_partials, bias_partial_rows * 3 * C * 4);
  arena.add(b.lengths_full, size_t(B) * 4);
  arena.add(b.lengths_yelp, size_t(B) * 4);
  arena.add(b.ids, size_t(N) * 4);
  arena.add(b.word, size_t(V) * C * 4);
  arena.add(b.position, size_t(model.max_position_embeddings) * C * 4);
  arena.add(b.token_type0, size_t(C) * 4);
  for (float** slot : {&b.params, &b.grads, &b.adam_m, &b.adam_v}) arena.add(*slot, P * 4);
  arena.add(b.params_low, low_copy ? P * es : 0);
  arena.add(b.decay_mask, cu::adamw_decay_mask_words(P) * 4);
  for (void** slot : {&b.peak_a, &b.peak_b, &b.peak_y}) arena.add(*slot, peak_elements * es);
  arena.add(b.copy_src, copy_bytes);
  arena.add(b.copy_dst, copy_bytes);
  arena.add(b.l2_flush, flush_bytes);
  arena.add(b.matmul_workspace, kMatmulWorkspaceBytes);
  arena.add(b.pattern, kPatternFloats * 4);
  arena.allocate();
  if (!stored_ds) b.attn_ds = nullptr;  // the backward then recomputes dQ
  if (!attention_bias) b.qkv_bias_partials = nullptr;
  b.q = b.qkv, b.k = static_cast<char*>(b.qkv) + size_t(C) * es, b.v = static_cast<char*>(b.qkv) + size_t(2 * C) * es;
  b.dq = b.dqkv, b.dk = static_cast<char*>(b.dqkv) + size_t(C) * es;
  b.dv = static_cast<char*>(b.dqkv) + size_t(2 * C) * es;

  cudaStream_t stream = nullptr;  // non-blocking: nothing on the legacy stream can wait behind the gate
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  } stream_guard{stream};

  // Data: random activations in [-1, 1), BERT-sized weights, LayerNorm statistics in range.
  uint64_t seed = 1;
  auto fill_act = [&](void* p, size_t n) { fill(p, type, n, -1.0f, 1.0f, seed++, b.pattern, stream); };
  auto fill_f32 = [&](float* p, size_t n, float lo, float hi) { fill(p, DType::kF32, n, lo, hi, seed++, b.pattern, stream); };
  for (void* p : {b.x, b.y, b.dy, b.dx, b.dx_dropped, b.ln_out, b.ln_sum, b.dropped, b.ctx, b.dctx, b.emb_out})
    fill_act(p, nC);
  for (void* p : {b.qkv, b.dqkv}) fill_act(p, 3 * nC);
  for (void* p : {b.ffn_pre, b.ffn_act, b.d_ffn, b.dx_ffn}) fill_act(p, nI);
  fill(b.w_qkv, type, size_t(3 * C) * C, -0.03f, 0.03f, seed++, b.pattern, stream);
  fill(b.b_qkv, type, 3 * C, -0.03f, 0.03f, seed++, b.pattern, stream);
  fill(b.w_ffn1, type, size_t(I) * C, -0.03f, 0.03f, seed++, b.pattern, stream);
  fill(b.w_ffn2, type, size_t(C) * I, -0.03f, 0.03f, seed++, b.pattern, stream);
  fill(b.b_768, type, C, -0.03f, 0.03f, seed++, b.pattern, stream);
  fill(b.b_3072, type, I, -0.03f, 0.03f, seed++, b.pattern, stream);
  fill_f32(b.gamma, C, 0.9f, 1.1f);
  fill_f32(b.beta, C, -0.1f, 0.1f);
  fill_f32(b.mean, N, -0.1f, 0.1f);
  fill_f32(b.rstd, N, 0.5f, 1.5f);
  fill_f32(b.word, size_t(V) * C, -0.03f, 0.03f);
  fill_f32(b.position, size_t(model.max_position_embeddings) * C, -0.03f, 0.03f);
  fill_f32(b.token_type0, C, -0.03f, 0.03f);
  fill_f32(b.params, P, -0.03f, 0.03f);
  fill_f32(b.grads, P, -1e-3f, 1e-3f);
  if (low_copy) cu::convert(b.params_low, type, b.params, DType::kF32, P, stream);
  {
    const std::vector<uint32_t> mask = core::build_adamw_decay_mask(layout);
    CUDA_CHECK(cudaMemcpy(b.decay_mask, mask.data(), mask.size() * 4, cudaMemcpyHostToDevice));
  }
  for (void* p : {b.peak_a, b.peak_b}) fill_act(p, peak_elements);
  CUDA_CHECK(cudaMemsetAsync(b.dw_qkv, 0, size_t(3 * C) * C * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.dw_ffn1, 0, size_t(I) * C * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.dw_ffn2, 0, size_t(C) * I * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.dbias, 0, size_t(std::max(3 * C, I)) * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.dgamma, 0, size_t(C) * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.dbeta, 0, size_t(C) * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.adam_m, 0, P * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.adam_v, 0, P * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.lse, 0, size_t(B) * H * S * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.attn_mask, 0, mask_bytes, stream));
  CUDA_CHECK(cudaMemsetAsync(b.delta, 0, size_t(B) * H * S * 4, stream));
  CUDA_CHECK(cudaMemsetAsync(b.copy_src, 0x3C, copy_bytes, stream));
  {
    std::vector<int32_t> ids(static_cast<size_t>(N));
    uint64_t state = 0x2545F4914F6CDD1Dull;
    for (auto& id : ids) {  // uniform over the vocabulary, padding id 0 left out
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      id = 1 + static_cast<int32_t>(state % uint64_t(V - 1));
    }
    CUDA_CHECK(cudaMemcpyAsync(b.ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(b.lengths_full, lengths_full_host.data(), size_t(B) * 4, cudaMemcpyHostToDevice, stream));
    const std::vector<int32_t>& yelp = lengths_yelp_host.empty() ? lengths_full_host : lengths_yelp_host;
    CUDA_CHECK(cudaMemcpyAsync(b.lengths_yelp, yelp.data(), size_t(B) * 4, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // the host vectors go out of scope
  }
  const bool flash = cu::flash_attention_supported(type, C, H);  // asks the device once, before any timing
  CUDA_CHECK(cudaStreamSynchronize(stream));

  // As the backend makes it: tf32 only if asked, tuned unless LLMQS_MATMUL_TUNING=0.
  cu::MatmulContext matmul(b.matmul_workspace, kMatmulWorkspaceBytes, false, core::matmul_tuning_planned());
  Timer timer(stream, o.reps, o.warmup, b.l2_flush, flush_bytes, o.gate);
  const std::string gpu = prop.name;
  const std::string sizes = std::to_string(N) + "x" + std::to_string(C);
  Report report(o, gpu, variant_text, N);

  std::printf("# kernel_bench: %s (sm_%d%d, running code sm_%d), %s, bert-base batch %d x seq %d = %d tokens, hidden %d,"
              " %d heads, intermediate %d\n",
              prop.name, prop.major, prop.minor, cu::loaded_code_arch() / 10, o.dtype.c_str(), B, S, N, C, H, I);
  const std::string method =
      std::string(o.flush_l2 ? "L2 flushed first by a " + std::to_string(flush_bytes >> 20) + " MiB memset"
                             : "L2 not flushed") +
      (o.gate ? ", stream held until the call is enqueued" : ", stream not gated");
  std::printf("# each row: one call as core/cuda_backend.cpp makes it; median of %d reps after %d warm-ups, each rep timed"
              " alone (CUDA events,\n#   %s); kernel variants: %s\n",
              o.reps, o.warmup, method.c_str(), variant_text.c_str());
  std::printf("# work: matmul 2MNK FLOPs; fused attention forward 4*B*H*S^2*d (keys up to each row's length), backward"
              " counted as 2.5x forward;\n#   bytes: inputs read once + outputs written once (read too when"
              " accumulated into), scratch not counted. %%peak: of the peak rows below\n");
  std::printf("# not checked here: tests/kernels_cuda_test.cpp compares every kernel with its CPU twin\n#\n");
  report.column_titles();

  // ---- peaks, measured first: the denominators of every other row ----
  Row peak_matmul;
  peak_matmul.name = "peak.matmul";
  peak_matmul.shape = o.dtype + " " + std::to_string(kPeakMatmulN) + "^3 dense cuBLASLt";
  peak_matmul.call = "MatmulContext::gemm, Y = A B^T, M = N = K = 8192, fp32 accumulation";
  peak_matmul.flops = 2.0 * kPeakMatmulN * double(kPeakMatmulN) * kPeakMatmulN;
  peak_matmul.enqueue = [&] {
    cu::GemmArgs g;
    g.trans_b = true;
    g.m = g.n = g.k = kPeakMatmulN;
    g.ab_type = g.y_type = type;
    g.a = b.peak_a, g.lda = kPeakMatmulN;
    g.b = b.peak_b, g.ldb = kPeakMatmulN;
    g.y = b.peak_y, g.ldy = kPeakMatmulN;
    matmul.gemm(g, stream);
  };
  Row peak_copy;
  peak_copy.name = "peak.copy";
  peak_copy.shape = std::to_string(copy_bytes >> 20) + " MiB device-to-device";
  peak_copy.call = "cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)";
  peak_copy.bytes = 2.0 * double(copy_bytes);
  peak_copy.note = "bytes = read + write";
  peak_copy.enqueue = [&] {
    CUDA_CHECK(cudaMemcpyAsync(b.copy_dst, b.copy_src, copy_bytes, cudaMemcpyDeviceToDevice, stream));
  };
  const double peak_tflops = report.measure(timer, peak_matmul);
  const double peak_gbps = report.measure(timer, peak_copy);
  if (peak_tflops <= 0.0 || peak_gbps <= 0.0) throw std::runtime_error("a peak row did not run; no denominators");
  report.set_peaks(peak_tflops, peak_gbps);

  std::vector<Row> rows;
  auto add = [&](Row r) { rows.push_back(std::move(r)); };
  auto linear_fwd = [&](const std::string& name, int in, int out, const void* x, const void* w, const void* bias,
                        void* y, int calls) {
    Row r;
    r.name = "linear_fwd." + name;
    r.shape = std::to_string(N) + "x" + std::to_string(in) + " -> " + std::to_string(out) + " +bias";
    r.call = "linear_forward(ctx, stream, type, x[N," + std::to_string(in) + "], W[" + std::to_string(out) + "," +
             std::to_string(in) + "], bias, y, N, " + std::to_string(in) + ", " + std::to_string(out) + ")";
    r.flops = 2.0 * N * double(in) * out;
    r.calls_per_step = calls;
    r.enqueue = [&matmul, &stream, type, x, w, bias, y, N, in, out] {
      cu::linear_forward(matmul, stream, type, x, w, bias, y, N, in, out);
    };
    add(std::move(r));
  };
  auto linear_bwd = [&](const std::string& name, int in, int out, const void* dy, const void* x, const void* w,
                        void* dx, float* dw, float beta, int calls_input, int calls_weight) {
    Row r;
    r.name = "linear_bwd_input." + name;
    r.shape = "dy " + std::to_string(N) + "x" + std::to_string(out) + " . W -> dx " + std::to_string(N) + "x" +
              std::to_string(in) + (beta != 0.0f ? " +=" : "");
    r.call = "linear_backward_input(ctx, stream, type, dy, W, dx, N, " + std::to_string(in) + ", " +
             std::to_string(out) + ", beta=" + fixed(beta, 0) + ")";
    r.flops = 2.0 * N * double(in) * out;
    r.calls_per_step = calls_input;
    r.enqueue = [&matmul, &stream, type, dy, w, dx, N, in, out, beta] {
      cu::linear_backward_input(matmul, stream, type, dy, w, dx, N, in, out, beta);
    };
    add(std::move(r));
    Row g;
    g.name = "linear_bwd_weight." + name;
    g.shape = "dy^T x -> dW " + std::to_string(out) + "x" + std::to_string(in) + " fp32 +=, K=" + std::to_string(N);
    g.call = "linear_backward_weight(ctx, stream, type, dy, x, dW fp32, N, " + std::to_string(in) + ", " +
             std::to_string(out) + ")";
    g.flops = 2.0 * N * double(in) * out;
    g.calls_per_step = calls_weight;
    g.enqueue = [&matmul, &stream, type, dy, x, dw, N, in, out] {
      cu::linear_backward_weight(matmul, stream, type, dy, x, dw, N, in, out);
    };
    add(std::move(g));
  };

  // ---- the Linear layers, forward: q, k, v as one product (N x C -> 3C), then the output projection ----
  linear_fwd("qkv", C, 3 * C, b.x, b.w_qkv, b.b_qkv, b.qkv, layers);
  rows.back().note = "q, k, v in one product: the layout keeps [Wq; Wk; Wv] adjacent";
  linear_fwd("o", C, C, b.ctx, b.w_qkv, b.b_768, b.y, layers);
  linear_fwd("ffn1", C, I, b.x, b.w_ffn1, b.b_3072, b.ffn_pre, layers);
  linear_fwd("ffn2", I, C, b.ffn_act, b.w_ffn2, b.b_768, b.y, layers);
  // ---- backward: dx (+)= dy W and dW += dy^T x, with the beta each call site uses ----
  linear_bwd("qkv", C, 3 * C, b.dqkv, b.x, b.w_qkv, b.dx, b.dw_qkv, 1.0f, layers, layers);
  rows[rows.size() - 2].note = "adds into d(layer input) (beta 1)";
  linear_bwd("o", C, C, b.dy, b.ctx, b.w_qkv, b.dctx, b.dw_qkv, 0.0f, layers, layers);
  linear_bwd("ffn1", C, I, b.d_ffn, b.x, b.w_ffn1, b.dx, b.dw_ffn1, 1.0f, layers, layers);
  linear_bwd("ffn2", I, C, b.dy, b.ffn_act, b.w_ffn2, b.dx_ffn, b.dw_ffn2, 0.0f, layers, layers);

  // ---- bias gradients: the fused QKV product's; o and FFN2's are summed inside layernorm_backward
  // (dbias_dropped), FFN1's inside dGELU; the 768-column sum stays as the reference for that fusion ----
  {
    Row r;
    r.name = "linear_bwd_bias.768";
    r.shape = sizes + " column sums -> dbias fp32 +=";
    r.call = "linear_backward_bias(dbias, dy, type, N, 768, scratch, stream)";
    r.bytes = double(nC) * es + 2.0 * C * 4;
    r.calls_per_step = 0;
    r.note = "not called by the backend (layernorm_backward's dbias_dropped sums o and FFN2); for comparison";
    r.enqueue = [&, N, C] { cu::linear_backward_bias(b.dbias, b.dy, type, N, C, b.reduce_scratch, stream); };
    add(std::move(r));
    Row q;
    q.name = "linear_bwd_bias.qkv";
    q.shape = std::to_string(N) + "x" + std::to_string(3 * C) + " column sums -> dbias fp32 +=";
    q.call = "linear_backward_bias(dbias, dqkv, type, N, 2304, scratch, stream)";
    q.bytes = 3.0 * double(nC) * es + 2.0 * 3 * C * 4;
    q.calls_per_step = attention_bias ? 0 : layers;
    if (attention_bias) q.note = "not called by the backend here: the attention backward sums partials (next row)";
    q.enqueue = [&, N, C] { cu::linear_backward_bias(b.dbias, b.dqkv, type, N, 3 * C, b.reduce_scratch, stream); };
    add(std::move(q));
    if (attention_bias) {
      Row pq;
      pq.name = "linear_bwd_bias.qkv_partials";
      pq.shape = std::to_string(bias_partial_rows) + "x" + std::to_string(3 * C) + " fp32 partials -> dbias +=";
      pq.call = "linear_backward_bias(dbias, qkv_bias_partials, fp32, B ceil(S/64), 2304, scratch, stream)";
      pq.bytes = double(bias_partial_rows) * 3 * C * 4 + 2.0 * 3 * C * 4;
      pq.calls_per_step = layers;
      pq.note = "the attention backward's column sums of dq | dk | dv per 64-position tile, summed";
      pq.enqueue = [&, C, bias_partial_rows] {
        cu::linear_backward_bias(b.dbias, b.qkv_bias_partials, DType::kF32, static_cast<int>(bias_partial_rows), 3 * C,
                                 b.reduce_scratch, stream);
      };
      add(std::move(pq));
    }
  }

  // ---- LayerNorm after attention / FFN: x = dropout(dense_out) + residual, LayerNorm, no output dropout ----
  DropoutSite hidden_site;
  hidden_site.seed = 1234;
  hidden_site.step = 1;
  hidden_site.tensor_id =
      llmqs::kernels::bert_dropout_tensor_id(0, llmqs::kernels::LayerDropoutSite::kAttentionOutput);
  hidden_site.p = kDropoutP;
  const DropoutSite none;
  {
    Row r;
    r.name = "layernorm_fwd.residual";
    r.shape = sizes + " dropout(a) + b, p0.1";
    r.call = "layernorm_forward(out, sum, mean, rstd, a=dense_out, b=residual, gamma, beta, type, N, 768, eps, "
             "a_site p=0.1, none, stream, keep bits)";
    // a, b in; out, sum out; mean, rstd; gamma, beta; the keep bits out
    r.bytes = 4.0 * double(nC) * es + 2.0 * N * 4 + 2.0 * C * 4 + double(N) * 32 * 4 * (b.ln_keep != nullptr);
    r.calls_per_step = 2 * layers;
    r.enqueue = [&, N, C, eps] {
      cu::layernorm_forward(b.ln_out, b.ln_sum, b.mean, b.rstd, b.y, b.x, b.gamma, b.beta, type, N, C, eps, hidden_site,
                            none, stream, b.ln_keep);
    };
    add(std::move(r));
  }
  {
    Row r;
    r.name = "layernorm_bwd.residual";
    r.shape = sizes + " -> dx, dropout^T(dx), dgamma, dbeta, dbias";
    r.call = "layernorm_backward(dx, dx_dropped, dgamma, dbeta, dbias_dropped, dout, x=sum, mean, rstd, gamma, type, "
             "N, 768, a_site p=0.1, none, scratch, stream, keep bits)";
    // dout, x in; dx, dx_dropped out; mean, rstd, gamma in; dgamma, dbeta, dbias read and written; keep bits in
    r.bytes = 4.0 * double(nC) * es + 2.0 * N * 4 + double(C) * 4 + 6.0 * C * 4 + double(N) * 32 * 4 * (b.ln_keep != nullptr);
    r.calls_per_step = 2 * layers;
    r.enqueue = [&, N, C] {
      cu::layernorm_backward(b.dx, b.dx_dropped, b.dgamma, b.dbeta, b.dbias, b.dy, b.ln_sum, b.mean, b.rstd, b.gamma,
                             type, N, C, hidden_site, none, b.reduce_scratch, stream, b.ln_keep);
    };
    add(std::move(r));
  }

  // ---- GELU over the FFN's N x 3072 ----
  const std::string sizes_i = std::to_string(N) + "x" + std::to_string(I);
  {
    Row r;
    r.name = "gelu_fwd";
    r.shape = sizes_i + " erf GELU";
    r.call = "gelu_forward(ffn_act, ffn_pre, type, N*3072, stream)";
    r.bytes = 2.0 * double(nI) * es;
    r.calls_per_step = layers;
    r.enqueue = [&, nI] { cu::gelu_forward(b.ffn_act, b.ffn_pre, type, nI, stream); };
    add(std::move(r));
  }
  {
    Row r;
    r.name = "gelu_bwd";
    r.shape = sizes_i;
    r.call = "gelu_backward(dinp, inp, dout, type, N*3072, stream)";
    r.bytes = 3.0 * double(nI) * es;
    r.note = "not called by the backend (gelu_backward_bias_grad is); for comparison";
    r.enqueue = [&, nI] { cu::gelu_backward(b.dx_ffn, b.ffn_pre, b.d_ffn, type, nI, stream); };
    add(std::move(r));
  }
  {
    Row r;
    r.name = "gelu_bwd_bias_grad";
    r.shape = sizes_i + " dGELU + FFN1 dbias +=";
    r.call = "gelu_backward_bias_grad(dinp, dbias, inp, dout, type, N, 3072, scratch, stream)";
    r.bytes = 3.0 * double(nI) * es + 2.0 * I * 4;
    r.calls_per_step = layers;
    r.note = "the backend passes dinp == dout (in place); here dinp is a separate buffer, same bytes";
    r.enqueue = [&, N, I] {
      cu::gelu_backward_bias_grad(b.dx_ffn, b.dbias, b.ffn_pre, b.d_ffn, type, N, I, b.reduce_scratch, stream);
    };
    add(std::move(r));
  }

  // ---- standalone dropout (the backend fuses the per-layer ones; only the pooled B x 768 runs alone) ----
  {
    Row r;
    r.name = "dropout_fwd";
    r.shape = sizes + " p0.1";
    r.call = "dropout_forward(out, inp, type, N*768, site p=0.1, stream)";
    r.bytes = 2.0 * double(nC) * es;
    r.note = "per-layer dropouts are fused into LayerNorm and attention; standalone only on the pooled B x 768";
    r.enqueue = [&, nC] { cu::dropout_forward(b.dropped, b.y, type, nC, hidden_site, stream); };
    add(std::move(r));
  }

  // ---- embeddings ----
  {
    Row r;
    r.name = "embeddings_fwd";
    r.shape = sizes + " word+position+type, fp32 tables";
    r.call = "embeddings_forward(out, type, ids, word, position, token_type0, B, S, 768, stream)";
    // ids; one fp32 word row per token; the position rows and token-type row once; the output
    r.bytes = double(N) * 4 + double(nC) * 4 + double(S) * C * 4 + double(C) * 4 + double(nC) * es;
    r.calls_per_step = 1;
    r.note = "bytes count one word-table row per token (random ids), the position table once";
    r.enqueue = [&, B, S, C] {
      cu::embeddings_forward(b.emb_out, type, b.ids, b.word, b.position, b.token_type0, B, S, C, stream);
    };
    add(std::move(r));
  }

  // ---- AdamW over every bert-base parameter ----
  {
    const double bytes_per_param = 16.0 + 12.0 + (low_copy ? double(es) : 0.0);  // p, g, m, v in; p, m, v (+ low) out
    cu::AdamWScalars s;
    s.lr = 5e-5f;
    s.weight_decay = 0.01f;
    s.step = 10;
    Row one;
    one.name = "adamw.one_launch";
    one.shape = std::to_string(P) + " params in one launch";
    one.call = "adamw_update(params, grads, m, v, decay_mask, P, scalars, params_low, type, stream)";
    one.bytes = (bytes_per_param + 0.125) * double(P);
    one.note = "as CudaBackend::adamw_step: p, g, m, v read; p, m, v written (+ the low copy unless fp32): " +
               fixed(bytes_per_param, 0) + " B/param, + 1 decay-mask bit";
    one.enqueue = [&, s, P, low_copy] {
      cu::adamw_update(b.params, b.grads, b.adam_m, b.adam_v, b.decay_mask, P, s, low_copy ? b.params_low : nullptr,
                       type, stream);
    };
    one.calls_per_step = 1;
    add(std::move(one));
    Row per;
    per.name = "adamw.per_tensor";
    per.shape = std::to_string(layout.parameters().size()) + " launches, " + std::to_string(P) + " params";
    per.call = "adamw_update per parameter tensor (no mask), the backend's former path";
    per.bytes = bytes_per_param * double(P);
    per.note = "one launch per tensor; weight decay off for biases and LayerNorm weights";
    per.enqueue = [&, s, low_copy, es] {
      cu::AdamWScalars t = s;
      for (const core::ParameterInfo& p : layout.parameters()) {
        t.weight_decay = p.weight_decay ? s.weight_decay : 0.0f;
        void* low = low_copy ? static_cast<char*>(b.params_low) + p.offset * es : nullptr;
        cu::adamw_update(b.params + p.offset, b.grads + p.offset, b.adam_m + p.offset, b.adam_v + p.offset, nullptr,
                         p.numel, t, low, type, stream);
      }
    };
    add(std::move(per));
  }

  for (const Row& r : rows) report.measure(timer, r);

  // ---- fused attention ----
  const AttentionShape attention{B, S, C, H, type};
  if (flash && env_value("LLMQS_ATTENTION") != "unfused") {
    attention_rows(report, timer, b, attention, b.lengths_full, lengths_full_host, "full", layers, stream);
    if (!lengths_yelp_host.empty())
      attention_rows(report, timer, b, attention, b.lengths_yelp, lengths_yelp_host, "yelp", 0, stream);
  } else if (!flash) {
    std::printf("  %-27s flash_attention_supported(%s, %d, %d) is false (needs bf16/fp16, head_dim 32/64, bf16 on"
                " sm_80+ code): skipped\n",
                "flash_attention_*", o.dtype.c_str(), C, H);
  } else {
    std::printf("  %-27s skipped: LLMQS_ATTENTION=unfused (the backend's switch; set when the fused tests fail)\n",
                "flash_attention_*");
  }

  report.footer(layers);
  if (matmul.bias_fallbacks() > 0)
    std::printf("# note: %d product shape(s) had no cuBLASLt algorithm with the BIAS epilogue; their bias ran as a"
                " separate kernel (inside the timed call)\n",
                matmul.bias_fallbacks());
  std::printf("# device buffers: %.2f GiB in one allocation\n", double(arena.bytes()) / double(1ull << 30));
  return report.failed() ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
  }
  try {
    return run(parse_options(argc, argv));
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "kernel_bench: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_bench: %s\n", e.what());
    return 1;
  }
}
