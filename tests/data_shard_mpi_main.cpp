// MPI check of the data path as training uses it: rank 0 writes a synthetic token cache, every
// rank reads its own shard (ShardedSampler + hyperslab reads, and the same through BatchLoader),
// rank 0 gathers all shards and checks: equal sizes, disjoint apart from the padding repeats,
// covering every example, ids equal to the originals, and a new permutation in epoch 1.
// Run by CTest under mpirun -np 1, 3 and 4 (tests/data.cmake); exits non-zero on any failure.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/batch_loader.h"
#include "data/sharded_sampler.h"
#include "data/token_cache.h"
#include "data/tokenized_dataset.h"

using namespace llmqs::data;

namespace {

constexpr int64_t kExamples = 1003;  // odd on purpose: needs padding for 3 and 4 ranks
constexpr int kMaxLength = 48;
constexpr uint64_t kSeed = 42;

int g_rank = 0;
int g_failures = 0;

void check(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "data_shard_mpi: rank %d: FAILED: %s\n", g_rank, what.c_str());
  ++g_failures;
}

// The same on every rank, so rank 0 can compare what was read with what was written.
RaggedTokens originals() {
  SplitMix64 rng(2024);
  RaggedTokens data;
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < kExamples; ++i) {
    const auto length = static_cast<int32_t>(2 + rng.below(kMaxLength - 1));
    ids.resize(length);
    for (auto& id : ids) id = static_cast<int32_t>(rng.below(28996));
    data.append(ids.data(), length, static_cast<int32_t>(rng.below(5)));
  }
  return data;
}

template <typename T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<int64_t>() { return MPI_INT64_T; }
template <>
MPI_Datatype mpi_type<int32_t>() { return MPI_INT32_T; }

// Every rank's vector, on rank 0 (empty elsewhere).
template <typename T>
std::vector<std::vector<T>> gather_to_root(const std::vector<T>& mine, int world) {
  const int count = static_cast<int>(mine.size());
  std::vector<int> counts(world), displacements(world, 0);
  MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  for (int r = 1; r < world; ++r) displacements[r] = displacements[r - 1] + counts[r - 1];
  std::vector<T> all(g_rank == 0 ? static_cast<size_t>(displacements[world - 1] + counts[world - 1]) : 0);
  MPI_Gatherv(mine.data(), count, mpi_type<T>(), all.data(), counts.data(), displacements.data(), mpi_type<T>(), 0,
              MPI_COMM_WORLD);
  std::vector<std::vector<T>> per_rank;
  if (g_rank == 0) {
    for (int r = 0; r < world; ++r) {
      per_rank.emplace_back(all.begin() + displacements[r], all.begin() + displacements[r] + counts[r]);
    }
  }
  return per_rank;
}

struct Shard {
  std::vector<int64_t> indices;
  std::vector<int32_t> lengths;
  std::vector<int32_t> tokens;  // back to back
};

Shard read_shard(TokenizedDataset& cache, const ShardedSampler& sampler, int64_t epoch) {
  Shard shard;
  shard.indices = sampler.indices(epoch);
  // Batches of 16 as training reads them: one hyperslab union per call.
  for (size_t begin = 0; begin < shard.indices.size(); begin += 16) {
    const std::vector<int64_t> batch(shard.indices.begin() + begin,
                                     shard.indices.begin() + std::min(shard.indices.size(), begin + 16));
    std::vector<std::vector<int32_t>> rows;
    cache.read(batch, rows);
    for (const auto& row : rows) {
      shard.lengths.push_back(static_cast<int32_t>(row.size()));
      shard.tokens.insert(shard.tokens.end(), row.begin(), row.end());
    }
  }
  // The BatchLoader over the same shard must deliver the same rows in the same order.
  BatchLoader loader(cache, sampler, epoch, 16, 0);
  Batch batch;
  size_t row = 0;
  int64_t token = 0;
  while (loader.next(batch)) {
    for (int r = 0; r < batch.rows; ++r, ++row) {
      check(row < shard.indices.size() && batch.example_index[r] == shard.indices[row],
            "BatchLoader row " + std::to_string(row) + " is not the sampler's example");
      check(row < shard.lengths.size() && batch.lengths[r] == shard.lengths[row], "BatchLoader length differs");
      for (int t = 0; t < batch.lengths[r] && row < shard.lengths.size(); ++t) {
        if (batch.input_ids[static_cast<size_t>(r) * batch.seq_len + t] != shard.tokens[token + t]) {
          check(false, "BatchLoader token differs at row " + std::to_string(row));
          break;
        }
      }
      token += batch.lengths[r];
    }
  }
  check(row == shard.indices.size(), "BatchLoader delivered " + std::to_string(row) + " rows, the shard has " +
                                         std::to_string(shard.indices.size()));
  return shard;
}

// Rank 0: the gathered shards of one epoch against the originals.
void check_epoch(int64_t epoch, int world, const std::vector<std::vector<int64_t>>& indices,
                 const std::vector<std::vector<int32_t>>& lengths, const std::vector<std::vector<int32_t>>& tokens,
                 const RaggedTokens& data) {
  const std::string at = "epoch " + std::to_string(epoch) + ": ";
  const int64_t per_rank = (kExamples + world - 1) / world;
  std::map<int64_t, int> seen;
  for (int r = 0; r < world; ++r) {
    check(static_cast<int64_t>(indices[r].size()) == per_rank,
          at + "rank " + std::to_string(r) + " has " + std::to_string(indices[r].size()) + " examples, expected " +
              std::to_string(per_rank));
    int64_t token = 0;
    for (size_t k = 0; k < indices[r].size(); ++k) {
      const int64_t i = indices[r][k];
      if (i < 0 || i >= kExamples) {
        check(false, at + "index " + std::to_string(i) + " out of range");
        continue;
      }
      ++seen[i];
      const std::vector<int32_t> expected(data.tokens.begin() + data.offsets[i], data.tokens.begin() + data.offsets[i + 1]);
      const std::vector<int32_t> got(tokens[r].begin() + token, tokens[r].begin() + token + lengths[r][k]);
      check(got == expected, at + "rank " + std::to_string(r) + " read wrong ids for example " + std::to_string(i));
      token += lengths[r][k];
    }
  }
  check(static_cast<int64_t>(seen.size()) == kExamples,
        at + "shards cover " + std::to_string(seen.size()) + " of " + std::to_string(kExamples) + " examples");
  int64_t repeats = 0;
  for (const auto& [index, times] : seen) repeats += times - 1;
  check(repeats == per_rank * world - kExamples,
        at + std::to_string(repeats) + " repeated examples, padding explains " + std::to_string(per_rank * world - kExamples));
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const RaggedTokens data = originals();

  // Rank 0 writes the cache and tells the others where it is.
  std::string path;
  if (g_rank == 0) {
    const auto dir = std::filesystem::temp_directory_path() / ("llmqs_shard_mpi_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    path = (dir / "cache.h5").string();
    TokenCacheInfo info;
    info.max_length = kMaxLength;
    info.num_labels = 5;
    TokenCacheWriteOptions options;
    options.chunk_tokens = 1000;
    try {
      write_token_cache(path, info, data, options);
    } catch (const std::exception& e) {
      check(false, e.what());
      path.clear();  // the other ranks see no path and fail instead of waiting
    }
  }
  int path_length = static_cast<int>(path.size());
  MPI_Bcast(&path_length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  path.resize(path_length);
  MPI_Bcast(path.data(), path_length, MPI_CHAR, 0, MPI_COMM_WORLD);

  int exit_code = 0;
  try {
    if (path.empty()) throw std::runtime_error("rank 0 could not write the cache");
    auto cache = open_token_cache(path);
    check(cache->size() == kExamples, "cache holds " + std::to_string(cache->size()) + " examples");
    ShardedSampler sampler(kExamples, world, g_rank, kSeed, /*shuffle=*/true, /*drop_last=*/false);
    std::vector<std::vector<int64_t>> epoch_indices[2];
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      const Shard shard = read_shard(*cache, sampler, epoch);
      epoch_indices[epoch] = gather_to_root(shard.indices, world);
      const auto lengths = gather_to_root(shard.lengths, world);
      const auto tokens = gather_to_root(shard.tokens, world);
      if (g_rank == 0) check_epoch(epoch, world, epoch_indices[epoch], lengths, tokens, data);
    }
    if (g_rank == 0) {
      for (int r = 0; r < world; ++r) {
        check(epoch_indices[0][r] != epoch_indices[1][r],
              "rank " + std::to_string(r) + " got the same examples in epoch 1 as in epoch 0");
      }
    }
  } catch (const std::exception& e) {
    check(false, e.what());
  }

  int failures = g_failures;
  MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) {
    std::error_code ignored;
    std::filesystem::remove_all(std::filesystem::path(path).parent_path(), ignored);
    if (failures == 0) {
      std::printf("data_shard_mpi: %d ranks, %lld examples, %lld per rank, epochs 0 and 1: OK\n", world,
                  static_cast<long long>(kExamples), static_cast<long long>((kExamples + world - 1) / world));
    } else {
      std::printf("data_shard_mpi: %d ranks: %d failures\n", world, failures);
    }
  }
  exit_code = failures == 0 ? 0 : 1;
  MPI_Finalize();
  return exit_code;
}
