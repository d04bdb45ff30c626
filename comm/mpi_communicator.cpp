// Communicator over MPI for host buffers (the CPU backend), and the MPI session itself.
#include <mpi.h>
#include <unistd.h>

#include <cstring>

#include <stdexcept>
#include <string>

#include "comm/communicator.h"

namespace llmqs::comm {

namespace {

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  throw std::runtime_error(std::string(call) + " failed on rank " + std::to_string(rank) + ": " +
                           std::string(text, len));
}

// MPI counts are int; split large buffers so a 110M-parameter gradient never overflows them.
constexpr size_t kMaxChunk = size_t(1) << 30;

// The per-rank count of the block collectives (ZeRO-1 shards), which are not split.
int block_count(size_t count) {
  if (count > kMaxChunk)
    throw std::invalid_argument("MPI block collective: " + std::to_string(count) + " floats per rank exceed " +
                                std::to_string(kMaxChunk));
  return static_cast<int>(count);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local),
              "MPI_Comm_split_type");
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
  }
  const char* name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  int local_rank() const override { return local_rank_; }

  void all_reduce_sum(float* data, size_t count) override {
    if (size_ == 1) return;
    for (size_t done = 0; done < count; done += kMaxChunk) {
      const int n = static_cast<int>(std::min(kMaxChunk, count - done));
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + done, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    }
  }
  void reduce_scatter_sum(float* data, size_t count) override {
    if (size_ == 1) return;
    // In place, MPI leaves the sum of block `rank` at the start of the buffer: move it home.
    check_mpi(MPI_Reduce_scatter_block(MPI_IN_PLACE, data, block_count(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Reduce_scatter_block");
    if (rank_ != 0) std::memmove(data + count * static_cast<size_t>(rank_), data, count * sizeof(float));
  }
  void all_gather(float* data, size_t count) override {
    if (size_ == 1) return;
    check_mpi(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, block_count(count), MPI_FLOAT, MPI_COMM_WORLD),
              "MPI_Allgather");
  }
  void gather_host(float* data, size_t count, int root) override {
    if (size_ == 1) return;
    const int n = block_count(count);
    if (rank_ == root)
      check_mpi(MPI_Gather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, n, MPI_FLOAT, root, MPI_COMM_WORLD), "MPI_Gather");
    else
      check_mpi(MPI_Gather(data, n, MPI_FLOAT, nullptr, 0, MPI_DATATYPE_NULL, root, MPI_COMM_WORLD), "MPI_Gather");
  }
  void broadcast(void* data, size_t bytes, int root) override { broadcast_host(data, bytes, root); }
  void all_reduce_sum_host(double* data, size_t count) override {
    if (size_ == 1) return;
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
  }
  void all_reduce_sum_host(int64_t* data, size_t count) override {
    if (size_ == 1) return;
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
  }
  void broadcast_host(void* data, size_t bytes, int root) override {
    if (size_ == 1) return;
    auto* p = static_cast<char*>(data);
    for (size_t done = 0; done < bytes; done += kMaxChunk) {
      const int n = static_cast<int>(std::min(kMaxChunk, bytes - done));
      check_mpi(MPI_Bcast(p + done, n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
  }
  void barrier() override { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

 private:
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    // The batch prefetch thread never calls MPI. The collective watchdog's thread (core/trainer.h)
    // calls MPI_Abort when a collective hangs, which MPI allows only at MPI_THREAD_MULTIPLE; with
    // less, the watchdog _exit(1)s instead and mpirun ends the job, so any level works.
    MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  }
  // Errors come back as return codes, so a failing call raises an exception that names it.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::string MpiSession::host() const {
  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  return name;
}

}  // namespace llmqs::comm
