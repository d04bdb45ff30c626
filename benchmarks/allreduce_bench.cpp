// allreduce_bench: a plain float-sum all-reduce, nothing of llmqs-dist in the path: ncclAllReduce
// on device buffers (--device cuda) or MPI_Allreduce on host buffers (--device cpu). It is the
// yardstick for the gradient all-reduce that `llmqs-dist bench` reports under mpirun: run it at the
// same byte count on the same machine and the two busbw columns should agree.
//
//   mpirun -np N allreduce_bench --device cuda --bytes 437936128 [--iters 20 --warmup 5 --json]
//   mpirun -np N allreduce_bench --device cpu --min-bytes 1K --max-bytes 64M --factor 4
//
// Columns as nccl-tests print them: size (B), count (float elements), time (us), algbw = size /
// time, busbw = algbw x 2(N-1)/N (what each link carries in a ring; comparable across N), #wrong.
// Out-of-place (send and receive buffers), like nccl-tests' first column set. Each iteration is
// timed alone: device synchronised and ranks barriered first, then CUDA events around the one
// ncclAllReduce (MPI_Wtime for cpu); the iteration's time is the slowest rank's and the reported
// time is the median over --iters after --warmup untimed ones, the same method `bench` uses.
// Check: rank r sends (r+1) x ((i mod 13) + 1), so element i must be exactly
// N(N+1)/2 x ((i mod 13) + 1) (small integers: exact in fp32); #wrong counts misses on all ranks.
// --json also prints one JSON object per size (rank 0), for benchmarks/scaling.
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: mpirun -np N allreduce_bench [--device cuda|cpu] [--bytes B | --min-bytes B --max-bytes B --factor F]\n"
    "                                    [--iters 20] [--warmup 5] [--json]      (B may end in K, M or G)\n";

struct Options {
  std::string device = "cuda";
  int64_t min_bytes = int64_t(1) << 20;
  int64_t max_bytes = int64_t(1) << 20;
  int64_t factor = 2;
  int iters = 20;
  int warmup = 5;
  bool json = false;
};

int64_t parse_bytes(const std::string& key, const std::string& text) {
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    throw std::invalid_argument(key + ": not a byte count: '" + text + "'");
  }
  const std::string suffix = text.substr(used);
  int64_t scale = 1;
  if (suffix == "K") scale = int64_t(1) << 10;
  else if (suffix == "M") scale = int64_t(1) << 20;
  else if (suffix == "G") scale = int64_t(1) << 30;
  else if (!suffix.empty()) throw std::invalid_argument(key + ": unknown suffix in '" + text + "' (K, M, G)");
  if (value * scale < 4) throw std::invalid_argument(key + ": at least 4 bytes (one float), got '" + text + "'");
  return value * scale;
}

int parse_int(const std::string& key, const std::string& text, int minimum) {
  size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || used == 0 || value < minimum)
    throw std::invalid_argument(key + ": expected an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
  return value;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (key == "--json") {
      o.json = true;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(key + ": missing value");
    const std::string value = argv[++i];
    if (key == "--device") o.device = value;
    else if (key == "--bytes") o.min_bytes = o.max_bytes = parse_bytes(key, value);
    else if (key == "--min-bytes") o.min_bytes = parse_bytes(key, value);
    else if (key == "--max-bytes") o.max_bytes = parse_bytes(key, value);
    else if (key == "--factor") o.factor = parse_int(key, value, 2);
    else if (key == "--iters") o.iters = parse_int(key, value, 1);
    else if (key == "--warmup") o.warmup = parse_int(key, value, 0);
    else throw std::invalid_argument("unknown option '" + key + "' (--help lists them)");
  }
  if (o.device != "cuda" && o.device != "cpu")
    throw std::invalid_argument("--device: unknown value '" + o.device + "' (expected cuda, cpu)");
  if (o.max_bytes < o.min_bytes) throw std::invalid_argument("--max-bytes: smaller than --min-bytes");
  return o;
}

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(status));
}
void check_nccl(ncclResult_t status, const char* call) {
  if (status != ncclSuccess) throw std::runtime_error(std::string(call) + ": " + ncclGetErrorString(status));
}
void check_mpi(int status, const char* call) {
  if (status != MPI_SUCCESS) throw std::runtime_error(std::string(call) + " failed");
}

float expected_sum(int world, size_t i) { return float(world * (world + 1) / 2) * float(i % 13 + 1); }

// One all-reduce implementation: the device or host buffers and the call itself.
class AllReducer {
 public:
  AllReducer(const Options& o, size_t max_count, int rank, int world, int local_rank)
      : cuda_(o.device == "cuda"), max_count_(max_count), world_(world) {
    std::vector<float> send(max_count);
    for (size_t i = 0; i < max_count; ++i) send[i] = float(rank + 1) * float(i % 13 + 1);
    if (!cuda_) {
      host_send_ = std::move(send);
      host_recv_.assign(max_count, 0.0f);
      return;
    }
    int devices = 0;
    check_cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    if (devices == 0) throw std::runtime_error("no CUDA device visible; use --device cpu");
    check_cuda(cudaSetDevice(local_rank % devices), "cudaSetDevice");
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
    check_cuda(cudaMalloc(&device_send_, max_count * sizeof(float)), "cudaMalloc");
    check_cuda(cudaMalloc(&device_recv_, max_count * sizeof(float)), "cudaMalloc");
    check_cuda(cudaMemcpy(device_send_, send.data(), max_count * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    ncclUniqueId id;
    if (rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
    check_nccl(ncclCommInitRank(&nccl_, world, id, rank), "ncclCommInitRank");
    check_cuda(cudaEventCreate(&start_), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~AllReducer() {
    if (!cuda_) return;
    if (nccl_) ncclCommDestroy(nccl_);
    cudaFree(device_send_);
    cudaFree(device_recv_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    cudaStreamDestroy(stream_);
  }

  // Milliseconds of one all-reduce of `count` floats on this rank, started after a barrier.
  double timed(size_t count) {
    if (cuda_) check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
    if (cuda_) {
      check_cuda(cudaEventRecord(start_, stream_), "cudaEventRecord");
      check_nccl(ncclAllReduce(device_send_, device_recv_, count, ncclFloat32, ncclSum, nccl_, stream_),
                 "ncclAllReduce");
      check_cuda(cudaEventRecord(stop_, stream_), "cudaEventRecord");
      check_cuda(cudaEventSynchronize(stop_), "cudaEventSynchronize");
      float ms = 0.0f;
      check_cuda(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
      return ms;
    }
    const double t0 = MPI_Wtime();
    // MPI counts are int: a large buffer goes in chunks.
    constexpr size_t kChunk = size_t(1) << 30;
    for (size_t done = 0; done < count; done += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, count - done));
      check_mpi(MPI_Allreduce(host_send_.data() + done, host_recv_.data() + done, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce");
    }
    return (MPI_Wtime() - t0) * 1e3;
  }

  // Elements of the last result (first `count`) that differ from the exact sum.
  int64_t wrong(size_t count) {
    std::vector<float> result;
    if (cuda_) {
      result.resize(count);
      check_cuda(cudaMemcpy(result.data(), device_recv_, count * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    }
    const float* r = cuda_ ? result.data() : host_recv_.data();
    int64_t misses = 0;
    for (size_t i = 0; i < count; ++i) misses += r[i] != expected_sum(world_, i);
    return misses;
  }

  void clear_result(size_t count) {
    if (cuda_) check_cuda(cudaMemset(device_recv_, 0xFF, count * sizeof(float)), "cudaMemset");  // NaNs
    else std::fill(host_recv_.begin(), host_recv_.begin() + count, -1.0f);
  }

 private:
  bool cuda_;
  size_t max_count_;
  int world_;
  std::vector<float> host_send_, host_recv_;
  float* device_send_ = nullptr;
  float* device_recv_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  ncclComm_t nccl_ = nullptr;
};

int run(int argc, char** argv, int rank, int world) {
  const Options o = parse_options(argc, argv);
  MPI_Comm local;
  check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local),
            "MPI_Comm_split_type");
  int local_rank = 0;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_free(&local);

  const size_t max_count = static_cast<size_t>(o.max_bytes / 4);
  AllReducer reducer(o, max_count, rank, world, local_rank);
  if (rank == 0) {
    std::printf("# allreduce_bench: %s, %d ranks, float sum, out-of-place, median of %d (warm-up %d), "
                "each op timed alone after a barrier\n#\n",
                o.device == "cuda" ? "ncclAllReduce" : "MPI_Allreduce", world, o.iters, o.warmup);
    std::printf("# %12s %12s %6s %6s %11s %8s %8s %7s\n", "size", "count", "type", "redop", "time", "algbw",
                "busbw", "#wrong");
    std::printf("# %12s %12s %6s %6s %11s %8s %8s %7s\n", "(B)", "(elements)", "", "", "(us)", "(GB/s)", "(GB/s)", "");
  }
  for (int64_t bytes = o.min_bytes;; bytes *= o.factor) {
    const size_t count = static_cast<size_t>(std::min(bytes, o.max_bytes) / 4);
    reducer.clear_result(count);
    for (int i = 0; i < o.warmup; ++i) reducer.timed(count);
    std::vector<double> ms(static_cast<size_t>(o.iters));
    for (auto& t : ms) t = reducer.timed(count);
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, ms.data(), o.iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
    std::sort(ms.begin(), ms.end());
    const double median_ms = ms[ms.size() / 2];
    long long wrong = reducer.wrong(count);
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    const double size_bytes = double(count) * 4.0;
    const double algbw = size_bytes / (median_ms / 1e3) / 1e9;
    const double busbw = algbw * 2.0 * (world - 1) / world;
    if (rank == 0) {
      std::printf("  %12.0f %12zu %6s %6s %11.1f %8.2f %8.2f %7lld\n", size_bytes, count, "float", "sum",
                  median_ms * 1e3, algbw, busbw, wrong);
      if (o.json)
        std::printf("{\"system\":\"allreduce_bench\",\"op\":\"%s\",\"world_size\":%d,\"bytes\":%.0f,\"count\":%zu,"
                    "\"time_us\":%.1f,\"algbw_gbps\":%.3f,\"busbw_gbps\":%.3f,\"wrong\":%lld,\"iters\":%d}\n",
                    o.device == "cuda" ? "ncclAllReduce" : "MPI_Allreduce", world, size_bytes, count,
                    median_ms * 1e3, algbw, busbw, wrong, o.iters);
      std::fflush(stdout);
    }
    if (bytes >= o.max_bytes) break;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      if (rank == 0) std::printf("%s", kUsage);
      MPI_Finalize();
      return 0;
    }
  }
  int rc = 0;
  try {
    rc = run(argc, argv, rank, world);
  } catch (const std::invalid_argument& e) {
    // Options are the same on every rank: every rank stops here, rank 0 says why.
    if (rank == 0) std::fprintf(stderr, "allreduce_bench: %s\n", e.what());
    rc = 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "allreduce_bench: rank %d: %s\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}
