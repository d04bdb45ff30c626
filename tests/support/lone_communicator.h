// A Communicator for in-process trainer tests: no MPI, every collective is the identity, as for
// one rank. `world`/`rank` let a test play one rank of a larger job (its sharding), without peers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "comm/communicator.h"

namespace llmqs::test_support {

class LoneCommunicator final : public comm::Communicator {
 public:
  explicit LoneCommunicator(int world = 1, int rank = 0) : world_(world), rank_(rank) {}
  const char* name() const override { return "lone"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return rank_; }
  void all_reduce_sum(float*, size_t) override {}
  void reduce_scatter_sum(float*, size_t) override {}
  void all_gather(float*, size_t) override {}
  void gather_host(float*, size_t, int) override {}
  void broadcast(void*, size_t, int) override {}
  void all_reduce_sum_host(double*, size_t) override {}
  void all_reduce_sum_host(int64_t*, size_t) override {}
  void broadcast_host(void*, size_t, int) override {}
  void barrier() override {}
  void abort() override { ++aborts; }
  int aborts = 0;  // calls of abort() (the collective watchdog's hook)

 private:
  int world_;
  int rank_;
};

}  // namespace llmqs::test_support
