// NcclCommunicator: ncclAllReduce / ncclReduceScatter / ncclAllGather / ncclBroadcast on device
// memory, MPI for host buffers.
// Every CUDA, NCCL and MPI call is checked; failures name the call, the rank and the host.
#include "comm/nccl_communicator.h"

#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda_check.h"

namespace llmqs::comm {

namespace {

std::string host_name() {
  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  return name;
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(cudaStream_t stream) : stream_(stream), host_(make_mpi_communicator()) {
    rank_ = host_->rank();
    size_ = host_->world_size();
    kernels::set_cuda_error_context(rank_, host_name());
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0)
      throw std::runtime_error("rank " + std::to_string(rank_) + " on " + host_name() +
                               ": no CUDA device visible (cudaGetDeviceCount: " +
                               (status != cudaSuccess ? cudaGetErrorString(status) : "0 devices") +
                               "); use device=cpu or check CUDA_VISIBLE_DEVICES");
    device_ = host_->local_rank() % devices;
    CUDA_CHECK(cudaSetDevice(device_));
    ncclUniqueId id;
    if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    host_->broadcast_host(&id, sizeof(id), 0);
    NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
    const char* overlap = std::getenv("LLMQS_ALLREDUCE_OVERLAP");
    overlap_ = size_ > 1 && overlap != nullptr && std::string(overlap) == "1";
  }

  ~NcclCommunicator() override {
    if (comm_ && !aborted_.load()) ncclCommDestroy(comm_);
    for (cudaEvent_t e : ready_) cudaEventDestroy(e);
    if (reduced_) cudaEventDestroy(reduced_);
    if (overlap_stream_) cudaStreamDestroy(overlap_stream_);
  }

  // From the watchdog's thread while this rank's main thread may be blocked in a collective:
  // ncclCommAbort is the call NCCL provides for exactly that (it frees the communicator, which
  // must not be destroyed again). Only the first call aborts.
  void abort() override {
    if (comm_ && !aborted_.exchange(true)) ncclCommAbort(comm_);
  }

  const char* name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  int local_rank() const override { return host_->local_rank(); }

  void all_reduce_sum(float* data, size_t count) override {
    if (size_ == 1 || count == 0) return;
    NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream_));
  }
  // Overlapped reductions run on their own non-blocking stream at the highest priority (so the
  // backward's kernels do not starve NCCL's), each after an event recorded on the producer stream.
  // Opt-in (LLMQS_ALLREDUCE_OVERLAP=1): on 2 H200s over NVLink it measured no faster than one
  // all-reduce after the backward (docs/scaling.md), so the default stays the single all-reduce.
  // Read once, when the communicator is created.
  bool overlaps_all_reduce() const override { return overlap_; }
  void start_all_reduce_sum(float* data, size_t count, void* stream) override {
    if (size_ == 1 || count == 0) return;
    if (!overlap_stream_) {
      int lowest = 0, highest = 0;
      CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
      CUDA_CHECK(cudaStreamCreateWithPriority(&overlap_stream_, cudaStreamNonBlocking, highest));
      CUDA_CHECK(cudaEventCreateWithFlags(&reduced_, cudaEventDisableTiming));
    }
    if (started_ == ready_.size()) {
      cudaEvent_t e = nullptr;
      CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      ready_.push_back(e);
    }
    cudaEvent_t ready = ready_[started_++];
    CUDA_CHECK(cudaEventRecord(ready, static_cast<cudaStream_t>(stream)));
    CUDA_CHECK(cudaStreamWaitEvent(overlap_stream_, ready, 0));
    NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, overlap_stream_));
  }
  void wait_all_reduces(void* stream) override {
    if (started_ == 0) return;
    CUDA_CHECK(cudaEventRecord(reduced_, overlap_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), reduced_, 0));
    started_ = 0;
  }
  // In place as NCCL defines it: the reduce-scatter's output block is the input's block `rank`,
  // the all-gather's input is the output's block `rank`.
  void reduce_scatter_sum(float* data, size_t count) override {
    if (size_ == 1 || count == 0) return;
    NCCL_CHECK(ncclReduceScatter(data, data + count * static_cast<size_t>(rank_), count, ncclFloat32, ncclSum, comm_,
                                 stream_));
  }
  void all_gather(float* data, size_t count) override {
    if (size_ == 1 || count == 0) return;
    NCCL_CHECK(ncclAllGather(data + count * static_cast<size_t>(rank_), data, count, ncclFloat32, comm_, stream_));
  }
  void gather_host(float* data, size_t count, int root) override { host_->gather_host(data, count, root); }
  void broadcast(void* data, size_t bytes, int root) override {
    if (size_ == 1 || bytes == 0) return;
    NCCL_CHECK(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_));
  }
  void all_reduce_sum_host(double* data, size_t count) override { host_->all_reduce_sum_host(data, count); }
  void all_reduce_sum_host(int64_t* data, size_t count) override { host_->all_reduce_sum_host(data, count); }
  void broadcast_host(void* data, size_t bytes, int root) override { host_->broadcast_host(data, bytes, root); }
  void barrier() override {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (overlap_stream_) CUDA_CHECK(cudaStreamSynchronize(overlap_stream_));
    host_->barrier();
  }

 private:
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Communicator> host_;  // MPI, for host buffers and the unique id
  int rank_ = 0, size_ = 1, device_ = 0;
  ncclComm_t comm_ = nullptr;
  std::atomic<bool> aborted_{false};
  bool overlap_ = false;                   // LLMQS_ALLREDUCE_OVERLAP=1 and more than one rank
  cudaStream_t overlap_stream_ = nullptr;  // start_all_reduce_sum's (created at the first call)
  std::vector<cudaEvent_t> ready_;         // one per started range, reused every step
  cudaEvent_t reduced_ = nullptr;
  size_t started_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(cudaStream_t stream) {
  return std::make_unique<NcclCommunicator>(stream);
}

}  // namespace llmqs::comm
