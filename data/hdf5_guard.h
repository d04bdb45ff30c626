// Checks shared by the two HDF5 readers (data/token_cache.cpp, core/checkpoint.cpp) for files
// that are data, not instructions: see docs/security.md.
//
// - HDF5 can load filter plugins (shared libraries) named by a filter id stored in the file;
//   disable_hdf5_plugins() switches that off, so opening a file never loads code. The filters
//   our files use (deflate, shuffle) are built into libhdf5.
// - A dataset's dimensions are numbers read from the file. A few bytes of HDF5 can declare a
//   dataset of 2^40 elements whose chunks were never written (reads return the fill value) or a
//   deflate stream that expands 1000-fold, and a reader that sizes its buffer from the dimensions
//   would allocate what the file does not hold. dataset_storage_problem() compares the bytes the
//   dimensions imply with the bytes the file stores for that dataset.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>

namespace llmqs::data {

// Idempotent; call before opening a file.
void disable_hdf5_plugins();

// deflate cannot expand more than 1032:1 (RFC 1951: a 258-byte match costs at least 2 bits).
inline constexpr uint64_t kMaxFilterExpansion = 1032;

// "" when the dataset's storage can hold its declared elements: without filters the file must
// store every byte (npoints x element size), with filters at least 1/kMaxFilterExpansion of them.
// Otherwise a sentence for an error message ("declares 1099511627776 elements (4398046511104 bytes)
// but the file stores 0 bytes for it: unwritten or damaged").
std::string dataset_storage_problem(hid_t dataset);

}  // namespace llmqs::data
