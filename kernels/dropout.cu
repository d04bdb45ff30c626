// Inverted dropout, CUDA twin of kernels/cpu/dropout.h, masks from kernels/philox.h:
//   forward   out[e]  = keep(site, e) ? inp[e] / (1 - p) : 0
//   backward  dinp[e] = keep(site, e) ? dout[e] / (1 - p) : 0      (the same map)
// One thread per group of eight elements: Philox gives eight 16-bit uniforms per call, in
// dropout_keep's order (philox.h), so a thread draws once for its eight elements, which it moves
// as 16-byte packs when both pointers are aligned. In place is allowed.
// (The model fuses most dropout sites into LayerNorm and attention; this standalone form serves
// the pooled-output site and the tests.)
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

template <typename T>
__global__ void dropout_kernel(T* out, const T* inp, size_t n, DropoutSite site, bool packed) {
  site = resolve_site(site);  // the live key under CUDA graphs
  const size_t group = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t first = group * 8;
  if (first >= n) return;
  const float scale = 1.0f / (1.0f - site.p);
  if (packed && first + 8 <= n) {  // 16-byte loads and stores: one (bf16, fp16) or two (fp32) per thread
    constexpr int P = kPack<T>;
    float x[8];
#pragma unroll
    for (int k = 0; k < 8 / P; ++k) {
      float part[P];
      load_pack(inp + first + k * P, part);
#pragma unroll
      for (int i = 0; i < P; ++i) x[k * P + i] = part[i];
    }
    dropout_pack<8>(site, static_cast<int64_t>(first), x, scale);
#pragma unroll
    for (int k = 0; k < 8 / P; ++k) {
      float part[P];
#pragma unroll
      for (int i = 0; i < P; ++i) part[i] = x[k * P + i];
      store_pack(out + first + k * P, part);
    }
    return;
  }
  const uint32_t threshold = dropout_threshold(site.p);
  const Philox4x32 words = dropout_words(site, group);
  for (int j = 0; j < 8 && first + j < n; ++j) {
    const bool keep = dropout_keep_from_word(words.v[j >> 1], j & 1, threshold);
    out[first + j] = from_float<T>(keep ? to_float(inp[first + j]) * scale : 0.0f);
  }
}

void launch(void* out, const void* inp, DType type, size_t n, const DropoutSite& site, cudaStream_t stream) {
  if (n == 0) return;
  if (site.p <= 0.0f) {
    if (out != inp) CUDA_CHECK(cudaMemcpyAsync(out, inp, n * dtype_bytes(type), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const bool packed = reinterpret_cast<uintptr_t>(out) % 16 == 0 && reinterpret_cast<uintptr_t>(inp) % 16 == 0;
  LLMQS_DISPATCH_DTYPE(type, {
    dropout_kernel<scalar_t><<<ceil_div((n + 7) / 8, 256), 256, 0, stream>>>(
        static_cast<scalar_t*>(out), static_cast<const scalar_t*>(inp), n, site, packed);
  });
  CUDA_CHECK_LAUNCH("dropout_kernel");
}

}  // namespace

void dropout_forward(void* out, const void* inp, DType type, size_t n, const DropoutSite& site, cudaStream_t stream) {
  launch(out, inp, type, n, site, stream);
}

void dropout_backward(void* dinp, const void* dout, DType type, size_t n, const DropoutSite& site,
                      cudaStream_t stream) {
  launch(dinp, dout, type, n, site, stream);
}

}  // namespace llmqs::kernels::cuda
