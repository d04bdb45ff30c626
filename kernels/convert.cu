// Element type conversions: dst[i] = (dst_type) src[i] for n elements, fp32 <-> bf16 / fp16,
// round to nearest even. Used for the low-precision weight copy the matmuls read and for test
// inputs. One thread per element (memory bound; nothing to fuse here).
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {
template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = from_float<D>(to_float(src[i]));
}
}  // namespace

void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (dst_type == src_type) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, n * dtype_bytes(dst_type), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  LLMQS_DISPATCH_DTYPE(dst_type, {
    using dst_t = scalar_t;
    LLMQS_DISPATCH_DTYPE(src_type, {
      convert_kernel<dst_t, scalar_t><<<ceil_div(n, 256), 256, 0, stream>>>(static_cast<dst_t*>(dst),
                                                                          static_cast<const scalar_t*>(src), n);
    });
  });
  CUDA_CHECK_LAUNCH("convert_kernel");
}

}  // namespace llmqs::kernels::cuda
