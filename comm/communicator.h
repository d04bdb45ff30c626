// Moves buffers between the ranks of one data-parallel job. The trainer holds a Communicator
// and never asks which one: MpiCommunicator reduces host memory (the CPU backend),
// NcclCommunicator reduces device memory (the CUDA backend). Host-side scalars (losses,
// counters, flags) always go through the *_host calls, which use MPI in both.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace llmqs::comm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* name() const = 0;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;  // rank among the processes on this host (picks the GPU)

  // In place: data[i] = sum over ranks of data[i]. `data` lives where the backend keeps its
  // gradients (host for mpi, device for nccl).
  virtual void all_reduce_sum(float* data, size_t count) = 0;
  // Overlapped gradient reduction (the trainer's backward hook, Backend::set_gradient_ready_hook).
  // start_all_reduce_sum reduces data[0, count) in place as all_reduce_sum does, but may return
  // before it is done: on a device communicator it runs after all work issued so far on `stream`
  // (the backend's device_stream()) and alongside work issued there later, and
  // wait_all_reduces(stream) makes work issued on `stream` afterwards wait for every reduction
  // started since the last wait. Every rank starts the same ranges in the same order. The defaults
  // (host memory) reduce at once and have nothing to wait for; overlaps_all_reduce() says whether
  // starting early can pay.
  virtual bool overlaps_all_reduce() const { return false; }
  virtual void start_all_reduce_sum(float* data, size_t count, void* stream) {
    (void)stream;
    all_reduce_sum(data, count);
  }
  virtual void wait_all_reduces(void* stream) { (void)stream; }
  // ZeRO-1 (core/optimizer_shard.h), in place over data[0, world x count) of backend memory, rank r's
  // block being data[r x count, (r + 1) x count). reduce_scatter_sum: each rank's block becomes
  // the sum over ranks of that block (what the other blocks then hold is unspecified).
  // all_gather: every rank's block is copied into the same block on every other rank.
  virtual void reduce_scatter_sum(float* data, size_t count) = 0;
  virtual void all_gather(float* data, size_t count) = 0;
  // In place broadcast of `bytes` bytes of backend memory from `root`.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;

  // Host memory, always through MPI.
  virtual void all_reduce_sum_host(double* data, size_t count) = 0;
  virtual void all_reduce_sum_host(int64_t* data, size_t count) = 0;
  virtual void broadcast_host(void* data, size_t bytes, int root) = 0;
  // Every rank's block of `count` floats to `root`: there, data holds world x count floats and
  // receives rank r's block at r x count (its own in place, as all_gather does); on the other
  // ranks data is their own block of `count` floats only (sent, left as it is).
  virtual void gather_host(float* data, size_t count, int root) = 0;
  virtual void barrier() = 0;
  // Called by the collective watchdog (core/trainer.h) from its own thread when a collective has
  // hung past the timeout, just before the job ends: makes collectives in flight on this rank
  // return instead of waiting forever (NCCL: ncclCommAbort). After it, no collective may be
  // called again. Default: nothing to do (MPI_Abort follows).
  virtual void abort() {}
};

// MPI must be initialised first (see MpiSession). Never null.
std::unique_ptr<Communicator> make_mpi_communicator();

// RAII MPI_Init / MPI_Finalize; safe for single-process runs started without mpirun.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  std::string host() const;

 private:
  int rank_ = 0;
  int world_size_ = 1;
};

}  // namespace llmqs::comm
