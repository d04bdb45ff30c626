// Deterministic column sums (see column_reduce.cuh for the two-launch scheme; 16-byte packs when
// the columns, the row stride and the pointer allow, else one element per thread). CPU twins: the
// dbias loop in kernels/cpu/matmul.cpp and the dgamma/dbeta sums in kernels/cpu/layernorm.cpp.
#include "kernels/column_reduce.cuh"

namespace llmqs::kernels::cuda {

namespace {
template <typename T>
struct LoadElement {
  // Rows in flight per thread (column_reduce.cuh): 8 two- or four-byte loads; 4 sixteen-byte ones
  // (8 took 106 registers on sm_90, 2 blocks per SM instead of 3; 4 x 16 bytes x 512+ threads per
  // SM already cover the ~32 KB per SM that 4.3 TB/s at ~1 us latency asks for).
  static constexpr int kRowsInFlight = 8;
  static constexpr int kPackRowsInFlight = 4;
  const T* x;
  int64_t ld;
  __device__ float operator()(int64_t r, int c) const { return to_float(x[r * ld + c]); }
  __device__ void pack(int64_t r, int c0, float (&values)[kPack<T>]) const { load_pack(x + r * ld + c0, values); }
};
}  // namespace

size_t column_reduce_scratch_floats(int64_t rows, int cols) {
  return static_cast<size_t>(ceil_div(rows, kColumnReduceChunk)) * cols;
}

void column_sum_accumulate(float* out, const void* x, DType type, int64_t rows, int cols, int64_t ld, float* scratch,
                           cudaStream_t stream) {
  LLMQS_DISPATCH_DTYPE(type, {
    const LoadElement<scalar_t> f{static_cast<const scalar_t*>(x), ld};
    constexpr int V = kPack<scalar_t>;
    if (kernel_variants().packed_column_sums && cols % V == 0 && ld % V == 0 && is_aligned16(x))
      column_reduce_packed<V>(f, rows, cols, out, cols, nullptr, scratch, stream);
    else
      column_reduce(f, rows, cols, out, cols, nullptr, scratch, stream);
  });
}

}  // namespace llmqs::kernels::cuda
