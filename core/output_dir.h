// The training run's output folder, checked before training starts (rank 0 only): a directory
// that exists or can be created, that we can write in, with room for a checkpoint, and no name
// a checkpoint of this run will take held by something that is not a checkpoint. Leftover
// temporaries of writes that a crash interrupted are removed. Every refusal is one
// std::runtime_error naming the path and the problem; docs/faults.md lists them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmqs::core {

// About how many bytes a checkpoint takes on disk (docs/checkpoint_schema.md, "Sizes"): fp32
// weights, and two AdamW moments when `with_optimizer`, for `parameters` floats in `tensors`
// datasets (HDF5 headers), the vocabulary, and `log_entries` lines of log history.
uint64_t estimated_checkpoint_bytes(uint64_t parameters, uint64_t tensors, bool with_optimizer,
                                    const std::vector<std::string>& vocab, uint64_t log_entries);

// What the file system offers one file in output_dir.
struct OutputDirSpace {
  uint64_t free_bytes = 0;                // statvfs: f_bavail x f_frsize
  uint64_t file_size_limit = UINT64_MAX;  // RLIMIT_FSIZE (ulimit -f); UINT64_MAX: unlimited
};
OutputDirSpace output_dir_space(const std::string& output_dir);

// Throws std::runtime_error naming output_dir when one checkpoint of `checkpoint_bytes` cannot
// be written there (less free space, or a lower file size limit); otherwise returns the line that
// reports the free space against the checkpoint size.
std::string check_checkpoint_fits(const std::string& output_dir, uint64_t checkpoint_bytes, const OutputDirSpace& space);

// Before the datasets are read, creating nothing: output_dir is a directory, or can be created
// (its nearest existing parent is a directory; a file there, or a file as one of its parents, is
// refused); a probe file can be created, written and removed there; one checkpoint fits
// (check_checkpoint_fits). Returns the report line.
std::string check_output_dir(const std::string& output_dir, uint64_t checkpoint_bytes);

// When the run's first step is known (after a resume): creates output_dir; refuses when anything that is not an
// llmqs-dist checkpoint (a directory, a link, another file, a damaged file) holds the name
// checkpoint-<step>.h5 of a step in (first_step, last_step], which this run may write; removes
// checkpoint-*.h5.tmp.<pid> and metrics.jsonl.tmp.<pid> left by a process that no longer runs
// (a write a crash interrupted). Returns one line per removed file.
std::vector<std::string> prepare_output_dir_for_steps(const std::string& output_dir, int64_t first_step,
                                                      int64_t last_step);

// "1.3 GB", "640 KB": decimal units, three significant digits.
std::string format_bytes(uint64_t bytes);

}  // namespace llmqs::core
