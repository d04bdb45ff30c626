// Deterministic column sums (see column_reduce.cuh for the two-launch scheme). CPU twins: the
// dbias loop in kernels/cpu/matmul.cpp and the dgamma/dbeta sums in kernels/cpu/layernorm.cpp.
#include "kernels/column_reduce.cuh"

namespace llmqs::kernels::cuda {

namespace {
template <typename T>
struct LoadElement {
  const T* x;
  int64_t ld;
  __device__ float operator()(int64_t r, int c) const { return to_float(x[r * ld + c]); }
};
}  // namespace

size_t column_reduce_scratch_floats(int64_t rows, int cols) {
  return static_cast<size_t>(ceil_div(rows, kColumnReduceChunk)) * cols;
}

void column_sum_accumulate(float* out, const void* x, DType type, int64_t rows, int cols, int64_t ld, float* scratch,
                           cudaStream_t stream) {
  LLMQS_DISPATCH_DTYPE(type, {
    column_reduce(LoadElement<scalar_t>{static_cast<const scalar_t*>(x), ld}, rows, cols, out, cols, nullptr, scratch,
                  stream);
  });
}

}  // namespace llmqs::kernels::cuda
