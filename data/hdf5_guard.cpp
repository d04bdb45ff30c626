// See data/hdf5_guard.h.
#include "data/hdf5_guard.h"

#include <H5PLpublic.h>

namespace llmqs::data {

void disable_hdf5_plugins() {
  // 0 = no plugin type may be loaded (HDF5_PLUGIN_PRELOAD="::" in the environment does the same).
  H5PLset_loading_state(0);
}

std::string dataset_storage_problem(hid_t dataset) {
  const hid_t space = H5Dget_space(dataset);
  const hid_t type = H5Dget_type(dataset);
  const hid_t create = H5Dget_create_plist(dataset);
  std::string problem;
  if (space < 0 || type < 0 || create < 0) {
    problem = "cannot inspect its storage";
  } else {
    const hssize_t points = H5Sget_simple_extent_npoints(space);
    const size_t element_bytes = H5Tget_size(type);
    const int filters = H5Pget_nfilters(create);
    const uint64_t stored = H5Dget_storage_size(dataset);
    if (points < 0 || element_bytes == 0 || filters < 0) {
      problem = "cannot inspect its storage";
    } else {
      const auto n = static_cast<uint64_t>(points);
      // Dimensions are at most 2^64 - 1 each, so the product may overflow: compare by division.
      const bool overflows = element_bytes != 0 && n > UINT64_MAX / element_bytes;
      const uint64_t needed = overflows ? UINT64_MAX : n * element_bytes;
      const uint64_t floor = filters > 0 ? needed / kMaxFilterExpansion : needed;
      if (overflows || stored < floor) {
        problem = "declares " + std::to_string(n) + " elements (" +
                  (overflows ? std::string("more than 2^64") : std::to_string(needed)) + " bytes) but the file stores " +
                  std::to_string(stored) + " bytes for it" + (filters > 0 ? " compressed" : "") +
                  ": unwritten or damaged";
      }
    }
  }
  if (create >= 0) H5Pclose(create);
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  return problem;
}

}  // namespace llmqs::data
