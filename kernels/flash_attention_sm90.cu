// Fused attention on Hopper's warpgroup MMA (wgmma, sm_90a), head_dim 64: the forward, the
// dK/dV kernel of the backward and the dQ product over the dS^T it stores; for rows up to 128
// tokens a persistent forward and a persistent whole backward in one kernel each.
// Same math, buffers and layouts as kernels/flash_attention.cu (read its opening comment for the
// formulas; CPU twin kernels/cpu/attention.h), so the two are interchangeable call by call (the
// mask bits are shared). One exception: the dS^T scratch between the long-row dK/dV kernel and the
// dQ kernel here is in this pair's own query order, so those two always run together.
//
// Why a second file: mma.sync's operands pass through registers, so every 16-row warp tile reloads
// its B fragments from shared memory with ldmatrix, and the attention kernels stalled at ~200
// TFLOP/s forward and ~150 backward (docs/performance.md). wgmma reads B straight from shared
// memory for a whole warpgroup (64 rows), runs asynchronously, and lets the softmax or the dS
// arithmetic of one tile overlap the products of another (FlashAttention-3's ordering).
//
// Operand layouts (one warpgroup = 4 warps = 128 threads; warp w of it owns rows 16w .. 16w + 15):
// - A from registers: the mma.sync m16n8k16 A fragment per warp, so a 64 x N fp32 accumulator
//   (per warp the m16n8 C layout, block n of 8 columns in d[4n .. 4n + 3]) becomes the A operand
//   of the next product by packing pairs (acc_to_a): P in P V, P^T in dV, dS^T in dK.
// - B from shared memory: 64 x 64 16-bit tiles, one 128-byte row per token, in the 128-byte swizzle
//   (16-byte chunk c of row r at chunk c ^ (r % 8); tiles 1024-byte aligned). Read as "K-major"
//   (the reduction dimension contiguous: K in Q K^T, Q and dO in K Q^T and V dO^T) or, with the
//   transpose bit, "MN-major" (V in P V; dO and Q in P^T dO and dS^T Q). One descriptor layout for
//   both: 8-row groups 1024 bytes apart; a k-step of 16 moves the start by 32 bytes (K-major) or by
//   16 rows = 2048 bytes (MN-major).
// Shared memory written by cp.async is made visible to the tensor cores' (async) proxy with
// fence.proxy.async before the barrier that publishes it.
//
// Built for every architecture; the bodies exist only in sm_90a code (__CUDA_ARCH_FEAT_SM90_ALL),
// and the host calls these kernels only where that code runs (flash_attention.cu asks the device).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/flash_attention_common.cuh"
#include "kernels/flash_attention_sm90.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LLMQS_WGMMA 1
#endif
// The helpers below are used only by the sm_90a pass; the other passes see them unreferenced.
#pragma nv_diag_suppress 177

namespace llmqs::kernels::cuda::sm90 {

namespace {

constexpr int kHeadDim = 64;
constexpr int kGroupThreads = 128;         // one warpgroup
constexpr int kTileBytes = 64 * 128;       // 64 rows x 64 16-bit elements
constexpr int kForwardGroups = 2;          // warpgroups (64 queries each) per forward block
constexpr int kStages = 3;                 // streamed tiles in flight (see the loops' comments)

// ---- wgmma -------------------------------------------------------------------------------------
// Shared-memory matrix descriptor of a 128-byte-swizzled tile (PTX ISA "matrix descriptor"):
// start address >> 4 in bits 0-13, leading byte offset >> 4 in 16-29 (unused by these layouts: 1),
// stride byte offset >> 4 in 32-45 (1024: the next 8-row group), swizzle mode 1 (128 B) in 62-63.
__device__ __forceinline__ uint64_t tile_descriptor(const void* p) {
  const uint32_t address = smem_address(p);
  return uint64_t((address & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef LLMQS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef LLMQS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#ifdef LLMQS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// The compiler sees a wgmma's accumulators as written when the asm statement issues, but the
// tensor cores write them until the wait: this empty asm after the wait (and before the issue)
// keeps every read and write of them on its side of it. Same for A fragments still being read.
__device__ __forceinline__ void fence_registers(float (&d)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void fence_registers(uint32_t (&a)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
}
__device__ __forceinline__ void fence_proxy_async() {
#ifdef LLMQS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Waits for every wgmma of the warpgroup and fences the dK/dV kernels' accumulators and the A
// fragments their products read (after it, the registers are free to read and rewrite).
__device__ __forceinline__ void wait_for_key_products(float (&dv_acc)[32], float (&dk_acc)[32], uint32_t (&pa)[4][4],
                                                      uint32_t (&sa)[4][4]) {
  wgmma_wait<0>();
  fence_registers(dv_acc);
  fence_registers(dk_acc);
  fence_registers(pa);
  fence_registers(sa);
}

#define LLMQS_WGMMA_D32                                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LLMQS_WGMMA_D32_OPERANDS(d)                                                                       \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),           \
      "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),           \
      "+f"(d[30]), "+f"(d[31])

// d (64 x 64 fp32, the warpgroup's) = a (64 x 16, registers) x B (16 x 64, shared memory at desc)
// + (accumulate ? d : 0). kTransB = 0: B K-major; 1: B MN-major.
template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_64x64x16(float (&d)[32], const uint32_t (&a)[4], uint64_t desc,
                                               bool accumulate);

#define LLMQS_DEFINE_WGMMA_64x64x16(T, PTX_TYPE)                                                             \
  template <int kTransB>                                                                                   \
  struct Wgmma64x64x16_##PTX_TYPE {                                                                        \
    static __device__ __forceinline__ void run(float (&d)[32], const uint32_t (&a)[4], uint64_t desc,     \
                                               bool accumulate) {                                          \
      asm volatile(                                                                                        \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                     \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." #PTX_TYPE "." #PTX_TYPE " " LLMQS_WGMMA_D32        \
          ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"                                                \
          : LLMQS_WGMMA_D32_OPERANDS(d)                                                                    \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(int(accumulate)), "n"(kTransB));    \
    }                                                                                                      \
  };                                                                                                       \
  template <>                                                                                              \
  __device__ __forceinline__ void wgmma_64x64x16<T, 0>(float (&d)[32], const uint32_t (&a)[4], uint64_t desc, \
                                                       bool accumulate) {                                  \
    Wgmma64x64x16_##PTX_TYPE<0>::run(d, a, desc, accumulate);                                              \
  }                                                                                                        \
  template <>                                                                                              \
  __device__ __forceinline__ void wgmma_64x64x16<T, 1>(float (&d)[32], const uint32_t (&a)[4], uint64_t desc, \
                                                       bool accumulate) {                                  \
    Wgmma64x64x16_##PTX_TYPE<1>::run(d, a, desc, accumulate);                                              \
  }

#ifdef LLMQS_WGMMA
LLMQS_DEFINE_WGMMA_64x64x16(__nv_bfloat16, bf16)
LLMQS_DEFINE_WGMMA_64x64x16(__half, f16)
#else
template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_64x64x16(float (&)[32], const uint32_t (&)[4], uint64_t, bool) {
  __trap();
}
#endif

// Both operands from shared memory: d (64 x 64 fp32) = A (64 x 16 at desc_a) x B (16 x 64 at
// desc_b) + (accumulate ? d : 0). kTransA = 0: A K-major (the reduction dimension contiguous); 1:
// M-major. kTransB as above.
template <typename T, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_ss_64x64x16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, bool accumulate);

#define LLMQS_DEFINE_WGMMA_SS_64x64x16(T, PTX_TYPE, TA, TB)                                                 \
  template <>                                                                                              \
  __device__ __forceinline__ void wgmma_ss_64x64x16<T, TA, TB>(float (&d)[32], uint64_t desc_a, uint64_t desc_b, \
                                                               bool accumulate) {                          \
    asm volatile(                                                                                          \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                       \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." #PTX_TYPE "." #PTX_TYPE " " LLMQS_WGMMA_D32          \
        ", %32, %33, p, 1, 1, " #TA ", " #TB ";\n}\n"                                                      \
        : LLMQS_WGMMA_D32_OPERANDS(d)                                                                      \
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));                                                 \
  }

#ifdef LLMQS_WGMMA
LLMQS_DEFINE_WGMMA_SS_64x64x16(__nv_bfloat16, bf16, 0, 0)
LLMQS_DEFINE_WGMMA_SS_64x64x16(__nv_bfloat16, bf16, 1, 1)
LLMQS_DEFINE_WGMMA_SS_64x64x16(__half, f16, 0, 0)
LLMQS_DEFINE_WGMMA_SS_64x64x16(__half, f16, 1, 1)
#else
template <typename T, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_ss_64x64x16(float (&)[32], uint64_t, uint64_t, bool) {
  __trap();
}
#endif

// d = A B^T over 64 reduction columns with both operands from shared memory: A (64 rows) and B
// (64 rows) are K-major swizzled tiles, each row holding the 64 elements the product sums over
// (S = Q K^T, S^T = K Q^T, dPd^T = V dO^T); a k-step of 16 moves both starts by 32 bytes.
template <typename T>
__device__ __forceinline__ void wgmma_ss_64x64x64_kmajor(float (&d)[32], const uint8_t* a_tile, const uint8_t* b_tile,
                                                         bool accumulate) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    wgmma_ss_64x64x16<T, 0, 0>(d, tile_descriptor(a_tile + kk * 32), tile_descriptor(b_tile + kk * 32),
                               accumulate || kk > 0);
}

// d = a (64 x 64 in four k-steps of registers) x B where B's k-step kk starts kk * step_bytes past
// `tile` (32 for a K-major tile, 2048 for an MN-major one).
template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_64x64x64(float (&d)[32], const uint32_t (&a)[4][4], const uint8_t* tile,
                                               bool accumulate) {
  constexpr int kStepBytes = kTransB ? 16 * 128 : 32;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) wgmma_64x64x16<T, kTransB>(d, a[kk], tile_descriptor(tile + kk * kStepBytes),
                                                            accumulate || kk > 0);
}

// ---- tiles ---------------------------------------------------------------------------------------
// Rows [row0, row0 + 64) of a head slice (row stride ld elements, 64 columns) into a swizzled
// tile; rows at or past `limit` are zeros. kThreads threads (thread index tid < kThreads) share
// the copy: thread tid moves 16-byte chunk tid % 8 of rows tid / 8 + i kThreads / 8, so its
// swizzled destination (row % 8 is the same for every i) and source offsets are fixed per thread
// and the copies unroll (no index arithmetic per chunk).
template <int kThreads, typename T>
__device__ __forceinline__ void load_tile(uint8_t* tile, const T* src, int row0, int limit, int ld, int tid) {
  static_assert(kThreads % 64 == 0 && kThreads <= 512, "rows per step must keep row % 8");
  constexpr int kRowStep = kThreads / 8;
  const int row = tid >> 3, chunk = tid & 7;
  uint8_t* dst = tile + row * 128 + ((chunk ^ (row & 7)) << 4);
  const T* from = src + size_t(row0 + row) * ld + chunk * 8;
#pragma unroll
  for (int i = 0; i < 64 / kRowStep; ++i) {
    const bool in = row0 + row + i * kRowStep < limit;
    copy_async<16>(dst + i * kRowStep * 128, in ? from + size_t(i) * kRowStep * ld : src, in);
  }
}

// The warp's A fragments (rows 16 warp .. + 15, all 64 columns as four k-steps) of a swizzled tile.
__device__ __forceinline__ void load_a_fragments(uint32_t (&a)[4][4], const uint8_t* tile, int warp, int lane) {
  const int row = warp * 16 + (lane & 15);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const int chunk = 2 * kk + (lane >> 4);
    ldsm_x4(a[kk], tile + row * 128 + ((chunk ^ (row & 7)) << 4));
  }
}

// The 64 x 64 accumulator as the A operand of a product over its columns (four k-steps of 16).
template <typename T>
__device__ __forceinline__ void accumulator_to_a(uint32_t (&a)[4][4], const float (&d)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) acc_to_a<T>(a[kk], &d[8 * kk], &d[8 * kk + 4]);
}

// Dropout on P as A fragments (a[kk][j]: 16-bit pairs of column block n = 2 kk + j / 2, row half
// x = j % 2): the pair's two keep bits (bits 8 (n % 4) and + 1 of word n / 4 of keep[x], already
// shifted right by 2t) become a 0x0000 / 0xFFFF mask per half: shifted to the top bit of each
// byte, prmt's sign mode replicates them. Same bits as zeroing p before packing (+0 is 0x0000).
__device__ __forceinline__ uint32_t replicate_sign_bytes(uint32_t lo_signs, uint32_t hi_signs, uint32_t selector) {
  uint32_t mask;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(mask) : "r"(lo_signs), "r"(hi_signs), "r"(selector));
  return mask;
}
__device__ __forceinline__ void drop_packed(uint32_t (&a)[4][4], const uint2 (&keep)[2]) {
#pragma unroll
  for (int x = 0; x < 2; ++x)
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // columns 0-31 (word .x), 32-63 (.y)
      const uint32_t word = half ? keep[x].y : keep[x].x;
      const uint32_t lo = word << 7, hi = word << 6;  // bit 8b (+1) at the top of byte b
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int n = 4 * half + b;
        const uint32_t selector = (0x8u | b) | (0x8u | b) << 4 | (0xCu | b) << 8 | (0xCu | b) << 12;
        a[n / 2][2 * (n % 2) + x] &= replicate_sign_bytes(lo, hi, selector);
      }
    }
}

__device__ __forceinline__ uint8_t* align_1024(uint8_t* p) {
  return p + ((1024 - (smem_address(p) & 1023)) & 1023);
}

// This thread's keep bits of query row `row_index` (bh * seq + query) in 64-key tile `tile`: the
// tile's aligned word pair, shifted right by 2t (the bit of column 8n + 2t + c is then bit
// (n % 4) * 8 + c of word n / 4); all ones where there is no dropout or no such query.
__device__ __forceinline__ uint2 load_keep_pair(const uint32_t* mask, size_t row_index, int words, int tile, int t,
                                                bool use) {
  uint2 keep = use ? *reinterpret_cast<const uint2*>(mask + row_index * words + 2 * tile) : make_uint2(~0u, ~0u);
  keep.x >>= 2 * t;
  keep.y >>= 2 * t;
  return keep;
}

// The forward's result for this thread's query rows rows[0], rows[1] (those below seq): ctx = O x
// out_scale / sum (out_scale = 1 / (1 - p) under dropout, else 1), columns 8n + 2t, +1 of the head
// slice ctx_head (row stride C), and lse = max + log2(sum) (log2 domain) at lse_head[row].
template <typename T>
__device__ __forceinline__ void store_forward_rows(T* ctx_head, float* lse_head, int C, const int (&rows)[2], int seq,
                                                   const float (&o)[32], const float (&row_sum)[2],
                                                   const float (&row_max)[2], float out_scale, int t) {
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const float sum = quad_sum(row_sum[x]);
    if (rows[x] >= seq) continue;
    const float inv = sum > 0.0f ? out_scale / sum : 0.0f;
    T* out = ctx_head + size_t(rows[x]) * C;
#pragma unroll
    for (int n = 0; n < 8; ++n)
      *reinterpret_cast<uint32_t*>(out + n * 8 + 2 * t) =
          Pack2<T>::pack(o[4 * n + 2 * x] * inv, o[4 * n + 2 * x + 1] * inv);
    if (t == 0) lse_head[rows[x]] = row_max[x] + log2f(sum);
  }
}

// scale x acc into the rows rows[0] (the accumulator's row g) and rows[1] (row g + 8) of this
// thread (those below seq), columns 8n + 2t, +1 of the head slice `head` (row stride ld): dQ of
// its queries, or dK / dV of its keys.
template <typename T>
__device__ __forceinline__ void store_gradient_rows(T* head, int ld, const int (&rows)[2], int seq,
                                                    const float (&acc)[32], float scale, int t) {
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int i = rows[x];
    if (i >= seq) continue;
    T* out = head + size_t(i) * ld;
#pragma unroll
    for (int n = 0; n < 8; ++n)
      *reinterpret_cast<uint32_t*>(out + n * 8 + 2 * t) =
          Pack2<T>::pack(acc[4 * n + 2 * x] * scale, acc[4 * n + 2 * x + 1] * scale);
  }
}

// The column sums of a warpgroup's 64 x 64 gradient tile as store_gradient_rows stores it (scale x
// acc rounded to T, rows at or past seq left out): tile column c into out[c], a partial of the QKV
// bias gradient (flash_attention_backward's qkv_bias_partials). Per thread: its two rows, then the
// eight rows of its quad column over lanes (xor 4, 8, 16), then the four warps through `red` (this
// warpgroup's [4][64] in shared memory), each in a fixed order. Every thread of the block calls it
// (one __syncthreads); out == nullptr stores nothing.
template <typename T>
__device__ __forceinline__ void store_tile_column_sums(float* out, float (*red)[64], const int (&rows)[2], int seq,
                                                       const float (&acc)[32], float scale, int warp, int lane,
                                                       int group_tid) {
  const int g = lane >> 2, t = lane & 3;
  float col[16];
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float sum = 0.0f;
#pragma unroll
      for (int x = 0; x < 2; ++x)
        if (rows[x] < seq) sum += to_float(from_float<T>(acc[4 * n + 2 * x + e] * scale));
      col[2 * n + e] = sum;
    }
#pragma unroll
  for (int offset = 4; offset < 32; offset <<= 1)
#pragma unroll
    for (int i = 0; i < 16; ++i) col[i] += __shfl_xor_sync(0xffffffffu, col[i], offset);
  if (g == 0) {
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      red[warp][8 * n + 2 * t] = col[2 * n];
      red[warp][8 * n + 2 * t + 1] = col[2 * n + 1];
    }
  }
  __syncthreads();
  if (out != nullptr && group_tid < kHeadDim)
    out[group_tid] = ((red[0][group_tid] + red[1][group_tid]) + red[2][group_tid]) + red[3][group_tid];
}

// ---- forward -------------------------------------------------------------------------------------
// One block of kGroups warpgroups per (64 kGroups queries, row x head); warpgroup wg owns queries
// q0 + 64 wg .. + 63, its Q rows in registers as A fragments. The block streams 64-key K/V tiles
// below the row's length through kStages shared-memory stages. Per tile j, each warpgroup issues
// S_j = Q K_j^T and O += P_{j-1} V_{j-1}, waits for S_j only, and computes the online softmax of
// S_j while P_{j-1} V_{j-1} runs; then waits for it and rescales O. Tile j + 1 is loaded into the
// stage of tile j - 2 after the barrier of tile j: every warpgroup has passed its wait for
// P_{j-2} V_{j-2} by then, and V_{j-1} (still being read) is in the third stage.
template <typename T, int kGroups>
__global__ void __launch_bounds__(kGroups * kGroupThreads, 2)
    flash_forward_kernel(T* ctx, float* lse, const uint32_t* mask, const T* q, const T* k, const T* v,
                         const int32_t* lengths, int seq, int C, int ld, int heads, DropoutSite site) {
#ifdef LLMQS_WGMMA
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);  // stage s: K tile at 2s, V tile at 2s + 1 (kTileBytes each)
  const int tid = threadIdx.x, wg = tid / kGroupThreads, warp = (tid / 32) % 4, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int q0 = blockIdx.x * (64 * kGroups) + 64 * wg;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * ld + size_t(h) * kHeadDim;
  const size_t ctx_offset = size_t(r) * seq * C + size_t(h) * kHeadDim;
  const float scale2 = rsqrtf(float(kHeadDim)) * kLog2e;
  const bool dropout = site.p > 0.0f;
  const float keep_scale = 1.0f / (1.0f - site.p);
  const int words = mask_words_per_row(seq);
  const int tiles = (len + kTile - 1) / kTile;
  auto stage_tile = [&](int tile, int which) { return smem + (2 * (tile % kStages) + which) * kTileBytes; };
  auto load_kv = [&](int tile) {
    load_tile<kGroups * kGroupThreads>(stage_tile(tile, 0), k + head_offset, tile * kTile, seq, ld, tid);
    load_tile<kGroups * kGroupThreads>(stage_tile(tile, 1), v + head_offset, tile * kTile, seq, ld, tid);
    copy_async_commit();
  };

  // Q through the third stage (first streamed into by tile 2, after the first loop barrier).
  uint8_t* q_tile = smem + 2 * (kStages - 1) * kTileBytes + wg * kTileBytes;
  load_tile<kGroupThreads>(q_tile, q + head_offset, q0, seq, ld, tid % kGroupThreads);
  copy_async_commit();
  if (tiles > 0) load_kv(0);
  copy_async_wait<0>();
  __syncthreads();
  uint32_t qa[4][4];
  load_a_fragments(qa, q_tile, warp, lane);

  float o[32], s[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) o[i] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  uint32_t pa[4][4];  // P of the previous tile (dropped, unscaled) as A fragments
  int rows[2];
  for (int x = 0; x < 2; ++x) rows[x] = q0 + warp * 16 + g + 8 * x;

  // Tile jt's keys in shared memory for every warpgroup (its copies issued one tile earlier), the
  // next tile's copies issued, and this thread's keep bits of the tile (shifted right by 2t, as
  // the mma.sync forward: the bit of column 8n + 2t + c is bit (n % 4) * 8 + c of word n / 4).
  uint2 keep[2];
  auto begin_tile = [&](int jt) {
    copy_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (jt + 1 < tiles) load_kv(jt + 1);
#pragma unroll
    for (int x = 0; x < 2; ++x)
      keep[x] = load_keep_pair(mask, size_t(bh) * seq + rows[x], words, jt, t, dropout && rows[x] < seq);
  };
  // The online softmax of S_j (in s): new row maxima and sums, s <- p, and in `correction` the
  // factor that O (summed under the old maxima) must be rescaled by.
  float correction[2];
  auto softmax_tile = [&](int jt) {
    const int j0 = jt * kTile;
    if (j0 + kTile > len) {  // only the last tile masks keys
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (j0 + n * 8 + 2 * t + (e & 1) >= len) s[4 * n + e] = -INFINITY;
    }
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 32; ++i) tile_max[(i >> 1) & 1] = fmaxf(tile_max[(i >> 1) & 1], s[i]);
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      const float new_max = fmaxf(row_max[x], quad_max(tile_max[x]) * scale2);  // finite: key j0 is valid
      correction[x] = exp2f(row_max[x] - new_max);
      row_max[x] = new_max;
      row_sum[x] *= correction[x];
    }
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int x = e >> 1;
        const float p = exp2f(fmaf(s[4 * n + e], scale2, -row_max[x]));
        row_sum[x] += p;
        s[4 * n + e] = p;
      }
  };

  // Every wait below is unconditional: ptxas serialises the whole wgmma pipeline when some path
  // might touch registers of a product still in flight.
  if (tiles > 0) {
    begin_tile(0);
    wgmma_fence();
    wgmma_64x64x64<T, 0>(s, qa, stage_tile(0, 0), false);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(s);
    softmax_tile(0);
    accumulator_to_a<T>(pa, s);
    drop_packed(pa, keep);  // 1 / (1 - p) at the end
  }
  for (int jt = 1; jt < tiles; ++jt) {
    begin_tile(jt);
    wgmma_fence();
    wgmma_64x64x64<T, 0>(s, qa, stage_tile(jt, 0), false);
    wgmma_commit();
    fence_registers(o);
    wgmma_fence();
    wgmma_64x64x64<T, 1>(o, pa, stage_tile(jt - 1, 1), true);
    wgmma_commit();
    wgmma_wait<1>();  // S_j; P_{j-1} V_{j-1} may still run
    fence_registers(s);
    softmax_tile(jt);
    wgmma_wait<0>();  // P_{j-1} V_{j-1}: O and the previous P are free again
    fence_registers(o);
    fence_registers(pa);
#pragma unroll
    for (int i = 0; i < 32; ++i) o[i] *= correction[(i >> 1) & 1];
    accumulator_to_a<T>(pa, s);
    drop_packed(pa, keep);  // 1 / (1 - p) at the end
  }
  if (tiles > 0) {
    fence_registers(o);
    wgmma_fence();
    wgmma_64x64x64<T, 1>(o, pa, stage_tile(tiles - 1, 1), true);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(o);
    fence_registers(pa);
  }

  store_forward_rows<T>(ctx + ctx_offset, lse + size_t(bh) * seq, C, rows, seq, o, row_sum, row_max,
                        dropout ? keep_scale : 1.0f, t);
#endif
}

// ---- forward of short rows (seq <= 64 kGroups) ----------------------------------------------------
// A block holds a whole row x head at a time: Q, K and V of all its (at most kGroups) tiles sit in
// shared memory, warpgroup wg owns queries 64 wg .. + 63. With every key of the row at hand the
// softmax needs no running maximum: S_j = Q K_j^T for all key tiles (both operands from shared
// memory), the row maxima and sums over all of them, then O = sum_j P_j V_j, scaled once.
// Persistent with two buffers, as the short backward below: the next row x head's copies are issued
// when this one's have landed. Same outputs and layouts as flash_forward_kernel (ctx, lse in the
// log2 domain); the sums run in another order, so the bits may differ from it in the last place.
template <typename T, int kGroups>
__global__ void __launch_bounds__(kGroups * kGroupThreads, kGroups == 1 ? 4 : 1) flash_forward_short_kernel(
    T* ctx, float* lse, const uint32_t* mask, const T* q, const T* k, const T* v, const int32_t* lengths, int items,
    int seq, int C, int ld, int heads, DropoutSite site) {
#ifdef LLMQS_WGMMA
  constexpr int kThreads = kGroups * kGroupThreads;
  constexpr int kBufferBytes = 3 * kGroups * kTileBytes;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  const int tid = threadIdx.x, wg = tid / kGroupThreads, warp = (tid / 32) % 4, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const float scale2 = rsqrtf(float(kHeadDim)) * kLog2e;
  const bool dropout = site.p > 0.0f;
  const float keep_scale = 1.0f / (1.0f - site.p);
  const int words = mask_words_per_row(seq);
  // Tile i of tensor `which` (0 Q, 1 K, 2 V) in buffer b.
  auto tile_of = [&](int b, int which, int i) { return smem + b * kBufferBytes + (which * kGroups + i) * kTileBytes; };
  auto issue_loads = [&](int bh, int b) {
    const int r = bh / heads, h = bh % heads;
    const size_t head_offset = size_t(r) * seq * ld + size_t(h) * kHeadDim;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      load_tile<kThreads>(tile_of(b, 0, i), q + head_offset, i * kTile, seq, ld, tid);
      load_tile<kThreads>(tile_of(b, 1, i), k + head_offset, i * kTile, seq, ld, tid);
      load_tile<kThreads>(tile_of(b, 2, i), v + head_offset, i * kTile, seq, ld, tid);
    }
    copy_async_commit();
  };
  int rows[2];
  for (int x = 0; x < 2; ++x) rows[x] = 64 * wg + warp * 16 + g + 8 * x;

  if (int(blockIdx.x) < items) issue_loads(blockIdx.x, 0);
  int b = 0;
  for (int bh = blockIdx.x; bh < items; bh += gridDim.x, b ^= 1) {
    const int r = bh / heads, h = bh % heads;
    const int len = lengths[r];
    // This thread's keep bits of every key tile (shifted right by 2t, as flash_forward_kernel's).
    uint2 keep[kGroups][2];
#pragma unroll
    for (int j = 0; j < kGroups; ++j)
#pragma unroll
      for (int x = 0; x < 2; ++x)
        keep[j][x] = load_keep_pair(mask, size_t(bh) * seq + rows[x], words, j, t, dropout && rows[x] < seq);
    copy_async_wait<0>();  // this row x head's tiles (the only copies in flight)
    fence_proxy_async();
    __syncthreads();  // also: every warpgroup is done with the previous row x head (buffer b ^ 1)
    if (bh + int(gridDim.x) < items) issue_loads(bh + gridDim.x, b ^ 1);

    float s[kGroups][32];
    const uint8_t* q_tile = tile_of(b, 0, wg);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < kGroups; ++j) wgmma_ss_64x64x64_kmajor<T>(s[j], q_tile, tile_of(b, 1, j), false);
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int j = 0; j < kGroups; ++j) fence_registers(s[j]);

    // Keys past the length (only in the tile that holds it, or past it) get no weight.
#pragma unroll
    for (int j = 0; j < kGroups; ++j)
      if (j * kTile + kTile > len) {
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (j * kTile + n * 8 + 2 * t + (e & 1) >= len) s[j][4 * n + e] = -INFINITY;
      }
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < kGroups; ++j)
#pragma unroll
      for (int i = 0; i < 32; ++i) row_max[(i >> 1) & 1] = fmaxf(row_max[(i >> 1) & 1], s[j][i]);
#pragma unroll
    for (int x = 0; x < 2; ++x) row_max[x] = quad_max(row_max[x]) * scale2;  // finite: key 0 is valid
    uint32_t pa[kGroups][4][4];  // P (dropped, unscaled) as A fragments
#pragma unroll
    for (int j = 0; j < kGroups; ++j) {
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int x = e >> 1;
          const float p = exp2f(fmaf(s[j][4 * n + e], scale2, -row_max[x]));
          row_sum[x] += p;
          s[j][4 * n + e] = p;
        }
      accumulator_to_a<T>(pa[j], s[j]);
      drop_packed(pa[j], keep[j]);  // 1 / (1 - p) at the end
    }
    float o[32];
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < kGroups; ++j) wgmma_64x64x64<T, 1>(o, pa[j], tile_of(b, 2, j), j > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(o);
#pragma unroll
    for (int j = 0; j < kGroups; ++j) fence_registers(pa[j]);

    store_forward_rows<T>(ctx + size_t(r) * seq * C + size_t(h) * kHeadDim, lse + size_t(bh) * seq, C, rows, seq, o,
                          row_sum, row_max, dropout ? keep_scale : 1.0f, t);
  }
#endif
}

// The dK/dV kernels' result: scale x dK and dV of this thread's keys kj[0], kj[1] = kj[0] + 8
// (those below seq) of a head slice (row stride ld).
template <typename T>
__device__ __forceinline__ void store_key_gradients(T* dk, T* dv, int ld, const WarpKeys& keys, int seq,
                                                    const float (&dk_acc)[32], const float (&dv_acc)[32], float scale,
                                                    int t) {
  store_gradient_rows<T>(dk, ld, keys.kj, seq, dk_acc, scale, t);
  store_gradient_rows<T>(dv, ld, keys.kj, seq, dv_acc, 1.0f, t);
}

// ---- backward: dK, dV (and dS^T for the dQ product) -----------------------------------------------
// One warpgroup per 64 keys j0 .. j0 + 63 (row x head); warp w owns keys j0 + 16 w .. + 15. K and V
// stay in shared memory for the whole block (both operands of the score products come from shared
// memory, which leaves registers for the pipeline: ptxas rematerialised indices at 255 with K and V
// as register fragments). Query tiles of 64 (Q, dO, lse, delta, mask words) stream through kStages
// stages. With transposed scores (keys x queries):
//   S^T = K Q^T, dPd^T = V dO^T (both K-major)
//   P^T, dS^T elementwise (the mma.sync kernel's formulas), dS^T also stored for dQ
//   dV += Pd^T dO, dK += dS^T Q   (A from registers, B = the same tiles, MN-major)
// Order per query tile i: the elementwise work on S_i / dPd_i runs while dV/dK += ..._{i-1} is on
// the tensor cores; then wait for it (its A registers are free), pack P_i and dS_i, publish tile
// i + 1 (barrier), store dS_i^T, issue S_{i+1} and dPd_{i+1}, then dV/dK += ..._i, and wait for the
// first two only. The dS^T stores come after the barrier: the proxy fence before it would otherwise
// wait for them to drain, every tile. Tile i + 2 goes into the stage of tile i - 1 after the
// barrier of tile i + 1's publication: the warpgroup has waited for dV/dK_{i-1} by then.
//
// dS^T is stored in this pair's own query order (the dQ kernel below reads it back the same way;
// no other kernel reads it): inside each 16-query group, thread t of a quad holds queries 2t, 2t+1
// and 2t+8, 2t+9 of a key row (two A-fragment words) and stores them as one 8-byte word at
// positions 4t .. 4t + 3, so a quad fills one 32-byte sector (the row-ordered 4-byte stores filled
// half-sectors: twice the L2 store traffic). ds_query_of_position maps a position back to its query.
__device__ __forceinline__ int ds_query_of_position(int p) { return 2 * (p >> 2) + (p & 1) + ((p & 2) ? 8 : 0); }

template <typename T>
__global__ void __launch_bounds__(kGroupThreads, 2) flash_backward_kv_kernel(
    T* dk, T* dv, T* ds_t, float* bias_partials, const T* q, const T* k, const T* v, const T* dctx, const float* lse,
    const float* delta, const uint32_t* mask, const int32_t* lengths, int seq, int seq_pad, int C, int ld, int heads,
    DropoutSite site) {
#ifdef LLMQS_WGMMA
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);  // stage s: Q tile at 2s, dO tile at 2s + 1; then K, V
  __shared__ __align__(16) float lse_s[kStages][kTile], delta_s[kStages][kTile];
  __shared__ __align__(16) uint2 mask_s[kStages][kTile];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int j0 = blockIdx.x * kTile;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * ld + size_t(h) * kHeadDim;  // q, k, v, dk, dv
  const size_t ctx_offset = size_t(r) * seq * C + size_t(h) * kHeadDim;   // dctx
  const float scale = rsqrtf(float(kHeadDim)), scale2 = scale * kLog2e;
  const bool dropout = site.p > 0.0f;
  const float keep_scale = dropout ? 1.0f / (1.0f - site.p) : 1.0f;
  const int words = mask_words_per_row(seq);
  const WarpKeys keys = warp_keys(j0, warp, g, len);

  float dk_acc[32], dv_acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) dk_acc[i] = dv_acc[i] = 0.0f;

  if (j0 < len) {  // key tiles past the length get zero gradients
    auto stage_tile = [&](int tile, int which) { return smem + (2 * (tile % kStages) + which) * kTileBytes; };
    auto load_queries = [&](int tile) {
      const int i0 = tile * kTile, st = tile % kStages;
      load_tile<kGroupThreads>(stage_tile(tile, 0), q + head_offset, i0, seq, ld, tid);
      load_tile<kGroupThreads>(stage_tile(tile, 1), dctx + ctx_offset, i0, seq, C, tid);
      const int x = tid & (kTile - 1);
      const bool in = i0 + x < seq;
      const size_t row = size_t(bh) * seq + (in ? i0 + x : 0);
      if (tid < kTile) {
        copy_async<4>(&lse_s[st][x], lse + row, in);
        if (dropout) copy_async<8>(&mask_s[st][x], mask + row * words + 2 * (j0 / kTile), in);
      } else {
        copy_async<4>(&delta_s[st][x], delta + row, in);
      }
      copy_async_commit();
    };
    const int tiles = (seq + kTile - 1) / kTile;

    const uint8_t* k_tile = smem + 2 * kStages * kTileBytes;
    const uint8_t* v_tile = k_tile + kTileBytes;
    load_tile<kGroupThreads>(smem + 2 * kStages * kTileBytes, k + head_offset, j0, seq, ld, tid);
    load_tile<kGroupThreads>(smem + (2 * kStages + 1) * kTileBytes, v + head_offset, j0, seq, ld, tid);
    copy_async_commit();
    load_queries(0);
    copy_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (tiles > 1) load_queries(1);

    float s[32], dp[32];
    uint32_t pa[4][4], sa[4][4];
    wgmma_fence();
    wgmma_ss_64x64x64_kmajor<T>(s, k_tile, stage_tile(0, 0), false);
    wgmma_ss_64x64x64_kmajor<T>(dp, v_tile, stage_tile(0, 1), false);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(s);
    fence_registers(dp);

    // S^T, dPd^T of query tile it (in s, dp) -> Pd^T, dS^T (fp32, in place), one 8-query column
    // block (accumulator block n: s[4n .. 4n + 3]) at a time. Only a warpgroup's last key tile or the
    // last query tile (kEdge) has keys or queries outside the row to zero; the others skip the tests.
    auto elementwise_tile = [&](int it, auto edge) {
      constexpr bool kEdge = decltype(edge)::value;
      const int st = it % kStages, query_room = seq - it * kTile - 2 * t;
#pragma unroll
      for (int n = 0; n < 8; ++n)
        scores_to_ds_block<kEdge>(&s[4 * n], &dp[4 * n], lse_s[st], delta_s[st], mask_s[st], n * 8 + 2 * t, n * 8,
                                  query_room, dropout, keys, scale2, keep_scale);
    };
    const bool last_key_tile = j0 + kTile > len;
    auto elementwise = [&](int it) {
      if (last_key_tile || (it + 1) * kTile > seq)
        elementwise_tile(it, std::true_type{});
      else
        elementwise_tile(it, std::false_type{});
    };
    // Waits for dV/dK += ..._{it-1} (their A registers), packs Pd^T and dS^T as A fragments.
    auto pack = [&](int it) {
      wait_for_key_products(dv_acc, dk_acc, pa, sa);
      accumulator_to_a<T>(pa, s);
      accumulator_to_a<T>(sa, dp);
    };
    // dS^T of query tile it for the dQ kernel: key rows kj[0], kj[1], each k-step's 16 queries as
    // one 8-byte word per thread at positions 16 kk + 4t (ds_query_of_position's order).
    auto store_ds = [&](int it) {
      if (!ds_t) return;
      T* row0 = ds_t + (size_t(bh) * seq_pad + keys.kj[0]) * seq_pad + it * kTile + 4 * t;
      T* row1 = row0 + 8 * size_t(seq_pad);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        *reinterpret_cast<uint2*>(row0 + kk * 16) = make_uint2(sa[kk][0], sa[kk][2]);
        *reinterpret_cast<uint2*>(row1 + kk * 16) = make_uint2(sa[kk][1], sa[kk][3]);
      }
    };
    auto accumulate_dv_dk = [&](int it) {
      wgmma_fence();
      wgmma_64x64x64<T, 1>(dv_acc, pa, stage_tile(it, 1), true);
      wgmma_64x64x64<T, 1>(dk_acc, sa, stage_tile(it, 0), true);
      wgmma_commit();
    };

    // Every wait is unconditional (the last tile is peeled): ptxas serialises the whole wgmma
    // pipeline when some path might touch registers of a product still in flight.
    for (int it = 0; it + 1 < tiles; ++it) {
      elementwise(it);
      pack(it);
      copy_async_wait<0>();  // tile it + 1 (the only group in flight)
      fence_proxy_async();
      __syncthreads();
      if (it + 2 < tiles) load_queries(it + 2);
      store_ds(it);
      wgmma_fence();
      wgmma_ss_64x64x64_kmajor<T>(s, k_tile, stage_tile(it + 1, 0), false);
      wgmma_ss_64x64x64_kmajor<T>(dp, v_tile, stage_tile(it + 1, 1), false);
      wgmma_commit();
      accumulate_dv_dk(it);
      wgmma_wait<1>();  // S^T and dPd^T of tile it + 1; dV/dK may still run
      fence_registers(s);
      fence_registers(dp);
    }
    elementwise(tiles - 1);
    pack(tiles - 1);
    store_ds(tiles - 1);
    accumulate_dv_dk(tiles - 1);
    wait_for_key_products(dv_acc, dk_acc, pa, sa);
  }
  store_key_gradients<T>(dk + head_offset, dv + head_offset, ld, keys, seq, dk_acc, dv_acc, scale, t);
  if (bias_partials != nullptr) {  // this key tile's partial of the K and V bias gradients (partial row r x tiles + tile)
    __shared__ float red[2][4][kHeadDim];
    float* part = bias_partials + (size_t(r) * gridDim.x + blockIdx.x) * 3 * C + size_t(h) * kHeadDim;
    store_tile_column_sums<T>(part + C, red[0], keys.kj, seq, dk_acc, scale, warp, lane, tid);
    store_tile_column_sums<T>(part + 2 * C, red[1], keys.kj, seq, dv_acc, 1.0f, warp, lane, tid);
  }
#endif
}

// ---- backward: dQ from the stored dS^T ------------------------------------------------------------
// dQ_i = c sum_j dS_ij k_j over the dS^T blocks the dK/dV kernel above stored ([rows x heads] blocks
// of seq_pad x seq_pad, key-major, queries in ds_query_of_position's order in each group of 16;
// flash_attention.cu pairs this kernel only with that one). A plain
// product that moves 403 MB of dS^T per bert-base layer at 64 x 512, so what counts is keeping
// enough copies in flight: one block of two warpgroups per 128 queries streams the key tiles below
// the length through kDqStages stages (the K tile shared, each warpgroup's 64 x 64 dS^T block
// beside it), and each tile's product is A = dS^T read M-major (the short backward's dQ product),
// B = K read MN-major. A warpgroup whose 64 queries start at or past seq_pad has no dS^T to read:
// it keeps the block's barriers and stores nothing.
constexpr int kDqStages = 4;
constexpr int kDqStageBytes = 3 * kTileBytes;  // K, dS^T of warpgroup 0, dS^T of warpgroup 1

template <typename T>
__global__ void __launch_bounds__(2 * kGroupThreads, 2) flash_dq_from_ds_kernel(
    T* dq, float* bias_partials, const T* ds_t, const T* k, const int32_t* lengths, int seq, int seq_pad, int C,
    int ld, int heads) {
#ifdef LLMQS_WGMMA
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  const int tid = threadIdx.x, wg = tid / kGroupThreads, warp = (tid / 32) % 4, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int i0 = blockIdx.x * 2 * kTile + wg * kTile;
  const bool queries = i0 < seq_pad;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * ld + size_t(h) * kHeadDim;  // k, dq
  const T* ds_block = ds_t + size_t(bh) * seq_pad * seq_pad + (queries ? i0 : 0);
  const float scale = rsqrtf(float(kHeadDim));
  const int tiles = (len + kTile - 1) / kTile;
  auto stage_tile = [&](int tile, int which) { return smem + (tile % kDqStages) * kDqStageBytes + which * kTileBytes; };
  auto load = [&](int tile) {  // always commits a group, so that the waits below count tiles
    if (tile < tiles) {
      load_tile<2 * kGroupThreads>(stage_tile(tile, 0), k + head_offset, tile * kTile, seq, ld, tid);
      if (queries) load_tile<kGroupThreads>(stage_tile(tile, 1 + wg), ds_block, tile * kTile, seq_pad, seq_pad,
                                            tid % kGroupThreads);
    }
    copy_async_commit();
  };
#pragma unroll
  for (int s = 0; s < kDqStages - 1; ++s) load(s);
  float dq_acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) dq_acc[i] = 0.0f;
  for (int jt = 0; jt < tiles; ++jt) {
    copy_async_wait<kDqStages - 2>();  // tile jt has landed (this thread's copies)
    fence_proxy_async();
    __syncthreads();  // every thread's copies of tile jt; every warpgroup is done with tile jt - 1
    load(jt + kDqStages - 1);  // into tile jt - 1's stage
    const uint8_t* ds_tile = stage_tile(jt, 1 + wg);
    const uint8_t* k_tile = stage_tile(jt, 0);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_ss_64x64x16<T, 1, 1>(dq_acc, tile_descriptor(ds_tile + kk * 2048), tile_descriptor(k_tile + kk * 2048),
                                 true);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(dq_acc);
  }
  copy_async_wait<0>();
  // The accumulator's rows are dS^T positions (flash_backward_kv_kernel's order): row g of the warp
  // holds query ds_query_of_position(g), row g + 8 query ds_query_of_position(g + 8).
  const int rows[2] = {i0 + warp * 16 + ds_query_of_position(g), i0 + warp * 16 + ds_query_of_position(g + 8)};
  if (queries) store_gradient_rows<T>(dq + head_offset, ld, rows, seq, dq_acc, scale, t);
  if (bias_partials != nullptr) {  // this query tile's partial of the Q bias gradient (partial row r x tiles + tile)
    __shared__ float red[2][4][kHeadDim];
    float* part = queries ? bias_partials + (size_t(r) * (seq_pad / kTile) + i0 / kTile) * 3 * C + size_t(h) * kHeadDim
                          : nullptr;
    store_tile_column_sums<T>(part, red[wg], rows, seq, dq_acc, scale, warp, lane, tid % kGroupThreads);
  }
#endif
}

// ---- backward of short rows: dQ, dK, dV in one kernel (seq <= 64 kGroups) ------------------------
// A block holds a whole row x head at a time: warpgroup wg owns keys 64 wg .. + 63, and every
// query tile (at most kGroups) is in shared memory with K, V, dO and O (both operands of the score
// products come from shared memory, so no registers hold K or V). Per query tile i each warpgroup
// computes S^T = K Q_i^T and dPd^T = V dO_i^T for its keys, the elementwise Pd^T, dS^T,
// dV += Pd^T dO_i, dK += dS^T Q_i (as the dK/dV kernel above), and writes dS^T into shared
// memory; once every tile is done, warpgroup wg forms dQ of query tile wg = dS K over all keys of
// the row (A = dS^T read M-major, B = K read MN-major) and stores it. So dS never leaves the SM,
// no dQ kernel runs, and the sum over keys has one fixed order (no atomics: runs repeat bit for bit).
// delta = dO . O is formed here from the tiles in the delta kernel's order (pack_dot and
// sum_over_head_lanes, flash_attention_common.cuh), so that kernel does not run.
// Persistent: a block takes row x heads blockIdx.x, + gridDim.x, ... (the launcher sizes the grid to
// the resident blocks), with two input buffers: the next row x head's copies are issued as soon as
// this one's have landed, so they overlap its products instead of leaving the SM idle.
// Shared memory, 64 x 64 tiles of 8 KiB: per buffer K[kGroups], V[kGroups], Q[kGroups],
// dO[kGroups], O[kGroups]; then dS^T[query tile][key tile] (kGroups^2; one query tile's key tiles
// adjacent, so its 16-key k-steps are 2048 bytes apart across the tiles, as they are across K's).
// The launcher picks kGroups = ceil(seq / 64), so every loop over tiles has a fixed trip count (a
// data-dependent exit between a wgmma and its wait makes ptxas serialise them all, C7515); the loop
// over rows x heads has nothing in flight at its back edge.
template <int kGroups>
constexpr int kShortBufferTiles = 5 * kGroups;

template <typename T, int kGroups>
__global__ void __launch_bounds__(kGroups * kGroupThreads, 1) flash_backward_short_kernel(
    T* dq, T* dk, T* dv, const T* q, const T* k, const T* v, const T* dctx, const T* ctx, const float* lse,
    const uint32_t* mask, const int32_t* lengths, int items, int seq, int C, int ld, int heads, DropoutSite site) {
#ifdef LLMQS_WGMMA
  constexpr int kThreads = kGroups * kGroupThreads, kRows = kGroups * kTile;
  constexpr int kBufferBytes = kShortBufferTiles<kGroups> * kTileBytes;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align_1024(smem_raw);
  uint8_t* ds_s = smem + 2 * kBufferBytes;
  __shared__ __align__(16) float lse_s[2][kRows], delta_s[kRows];
  __shared__ __align__(16) uint2 mask_s[2][kGroups][kRows];  // [buffer][key tile][query]
  const int tid = threadIdx.x, wg = tid / kGroupThreads, warp = (tid / 32) % 4, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const float scale = rsqrtf(float(kHeadDim)), scale2 = scale * kLog2e;
  const bool dropout = site.p > 0.0f;
  const float keep_scale = dropout ? 1.0f / (1.0f - site.p) : 1.0f;
  const int words = mask_words_per_row(seq);
  const int j0 = wg * kTile;
  // Tile i of tensor `which` (0 K, 1 V, 2 Q, 3 dO, 4 O) in buffer b.
  auto tile_of = [&](int b, int which, int i) { return smem + b * kBufferBytes + (which * kGroups + i) * kTileBytes; };
  auto issue_loads = [&](int bh, int b) {
    const int r = bh / heads, h = bh % heads;
    const size_t head_offset = size_t(r) * seq * ld + size_t(h) * kHeadDim;
    const size_t ctx_offset = size_t(r) * seq * C + size_t(h) * kHeadDim;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      load_tile<kThreads>(tile_of(b, 0, i), k + head_offset, i * kTile, seq, ld, tid);
      load_tile<kThreads>(tile_of(b, 1, i), v + head_offset, i * kTile, seq, ld, tid);
      load_tile<kThreads>(tile_of(b, 2, i), q + head_offset, i * kTile, seq, ld, tid);
      load_tile<kThreads>(tile_of(b, 3, i), dctx + ctx_offset, i * kTile, seq, C, tid);
      load_tile<kThreads>(tile_of(b, 4, i), ctx + ctx_offset, i * kTile, seq, C, tid);
    }
    const int x = tid % kRows;  // a query of the row
    const bool in = x < seq;
    const size_t row = size_t(bh) * seq + (in ? x : 0);
    if (tid < kRows) {
      copy_async<4>(&lse_s[b][x], lse + row, in);
      if (dropout)
#pragma unroll
        for (int kt = 0; kt < kGroups; ++kt)
          copy_async<8>(&mask_s[b][kt][x], mask + row * words + 2 * kt, in && kt * kTile < seq);
    }
    copy_async_commit();
  };

  if (int(blockIdx.x) < items) issue_loads(blockIdx.x, 0);
  int b = 0;
  for (int bh = blockIdx.x; bh < items; bh += gridDim.x, b ^= 1) {
    const int r = bh / heads, h = bh % heads;
    const int len = lengths[r];
    const size_t head_offset = size_t(r) * seq * ld + size_t(h) * kHeadDim;  // q, k, v, dq, dk, dv
    const WarpKeys keys = warp_keys(j0, warp, g, len);
    copy_async_wait<0>();  // this row x head's tiles (the only copies in flight)
    fence_proxy_async();
    __syncthreads();  // also: every warpgroup is done with the previous row x head (buffer b ^ 1, dS^T)
    if (bh + int(gridDim.x) < items) issue_loads(bh + gridDim.x, b ^ 1);

    // delta of every query: lanes 8 m .. 8 m + 7 of a warp take the eight 16-byte packs of one query.
    {
      constexpr int kQueriesPerPass = 4 * (kThreads / 32);
      const int pack = lane & 7;
#pragma unroll 1
      for (int pass = 0; pass < kRows / kQueriesPerPass; ++pass) {
        const int x = pass * kQueriesPerPass + (tid / 32) * 4 + (lane >> 3);
        const int row = x % kTile;
        const int offset = row * 128 + ((pack ^ (row & 7)) << 4);
        float a[8], o[8];
        load_pack(reinterpret_cast<const T*>(tile_of(b, 3, x / kTile) + offset), a);
        load_pack(reinterpret_cast<const T*>(tile_of(b, 4, x / kTile) + offset), o);
        const float sum = sum_over_head_lanes<kHeadDim / 8>(pack_dot(a, o));
        if (pack == 0) delta_s[x] = sum;
      }
    }
    __syncthreads();

    float dk_acc[32], dv_acc[32], s[32], dp[32];
    uint32_t pa[4][4], sa[4][4];
#pragma unroll
    for (int i = 0; i < 32; ++i) dk_acc[i] = dv_acc[i] = 0.0f;
    const uint8_t* k_tile = tile_of(b, 0, wg);
    const uint8_t* v_tile = tile_of(b, 1, wg);
    const bool last_key_tile = j0 + kTile > len;
    // This thread's dS^T words in a swizzled tile: key rows warp 16 + g (+ 8), query column pairs
    // 16 kk + 2t (+ 8) (chunk 2 kk (+ 1), bytes 4t of it).
    const int ds_row = warp * 16 + g;
#pragma unroll
    for (int it = 0; it < kGroups; ++it) {
      const uint8_t* q_tile = tile_of(b, 2, it);
      const uint8_t* do_tile = tile_of(b, 3, it);
      wgmma_fence();
      wgmma_ss_64x64x64_kmajor<T>(s, k_tile, q_tile, false);
      wgmma_ss_64x64x64_kmajor<T>(dp, v_tile, do_tile, false);
      wgmma_commit();
      wgmma_wait<0>();  // also dV/dK += ..._{it-1}: its A registers are free below
      fence_registers(s);
      fence_registers(dp);
      fence_registers(dv_acc);
      fence_registers(dk_acc);
      fence_registers(pa);
      fence_registers(sa);
      const int query_room = seq - it * kTile - 2 * t;
      if (last_key_tile || (it + 1) * kTile > seq) {
#pragma unroll
        for (int n = 0; n < 8; ++n)
          scores_to_ds_block<true>(&s[4 * n], &dp[4 * n], lse_s[b] + it * kTile, delta_s + it * kTile,
                                   mask_s[b][wg] + it * kTile, n * 8 + 2 * t, n * 8, query_room, dropout, keys, scale2,
                                   keep_scale);
      } else {
#pragma unroll
        for (int n = 0; n < 8; ++n)
          scores_to_ds_block<false>(&s[4 * n], &dp[4 * n], lse_s[b] + it * kTile, delta_s + it * kTile,
                                    mask_s[b][wg] + it * kTile, n * 8 + 2 * t, n * 8, query_room, dropout, keys,
                                    scale2, keep_scale);
      }
      accumulator_to_a<T>(pa, s);
      accumulator_to_a<T>(sa, dp);
      uint8_t* ds_tile = ds_s + (it * kGroups + wg) * kTileBytes;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int half = 0; half < 2; ++half) {  // query columns 16 kk + 2t and + 8
          const int chunk = 2 * kk + half;
#pragma unroll
          for (int x = 0; x < 2; ++x) {  // key rows ds_row, + 8
            const int row = ds_row + 8 * x;
            *reinterpret_cast<uint32_t*>(ds_tile + row * 128 + ((chunk ^ (row & 7)) << 4) + 4 * t) =
                sa[kk][2 * half + x];
          }
        }
      wgmma_fence();
      wgmma_64x64x64<T, 1>(dv_acc, pa, do_tile, true);
      wgmma_64x64x64<T, 1>(dk_acc, sa, q_tile, true);
      wgmma_commit();
    }
    wait_for_key_products(dv_acc, dk_acc, pa, sa);

    store_key_gradients<T>(dk + head_offset, dv + head_offset, ld, keys, seq, dk_acc, dv_acc, scale, t);

    // dQ of query tile wg: dS (64 queries x all keys of the row) K, in k-steps of 16 keys.
    fence_proxy_async();  // the dS^T stores above, for the tensor cores
    __syncthreads();
    {
      float dq_acc[32];
      const uint8_t* ds_tiles = ds_s + wg * kGroups * kTileBytes;
      const uint8_t* k_tiles = tile_of(b, 0, 0);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4 * kGroups; ++kk)
        wgmma_ss_64x64x16<T, 1, 1>(dq_acc, tile_descriptor(ds_tiles + kk * 2048), tile_descriptor(k_tiles + kk * 2048),
                                   kk > 0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_registers(dq_acc);
      const int rows[2] = {wg * kTile + warp * 16 + g, wg * kTile + warp * 16 + g + 8};
      store_gradient_rows<T>(dq + head_offset, ld, rows, seq, dq_acc, scale, t);
    }
  }
#endif
}

constexpr int kForwardSmemBytes = 2 * kStages * kTileBytes + 1024;   // + alignment slack
constexpr int kBackwardSmemBytes = (2 * kStages + 2) * kTileBytes + 1024;  // + K, V
constexpr int kDqSmemBytes = kDqStages * kDqStageBytes + 1024;
template <int kGroups>
constexpr int kShortForwardSmemBytes = 2 * 3 * kGroups * kTileBytes + 1024;
template <int kGroups>
constexpr int kShortBackwardSmemBytes = (2 * kShortBufferTiles<kGroups> + kGroups * kGroups) * kTileBytes + 1024;

// Raises a kernel's dynamic shared-memory limit past the default 48 KB, once per process
// (one GPU per process, as the backend runs).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, int bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// The persistent kernels' grid: every block that fits the device at once (one GPU per process).
template <typename Kernel>
int persistent_grid(Kernel kernel, int threads, int smem_bytes) {
  allow_shared_memory(kernel, smem_bytes);
  return resident_blocks_of(kernel, threads, smem_bytes);
}

template <typename T, int kGroups>
void launch_forward_short(void* ctx, float* lse, const uint32_t* mask, const void* q, const void* k, const void* v,
                          const int32_t* lengths, int rows, int seq, int C, int ld, int heads, const DropoutSite& site,
                          cudaStream_t stream) {
  constexpr auto kernel = flash_forward_short_kernel<T, kGroups>;
  constexpr int kThreads = kGroups * kGroupThreads, kSmem = kShortForwardSmemBytes<kGroups>;
  static const int resident = persistent_grid(kernel, kThreads, kSmem);
  const int items = rows * heads;
  kernel<<<std::min(items, resident), kThreads, kSmem, stream>>>(
      static_cast<T*>(ctx), lse, mask, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      lengths, items, seq, C, ld, heads, site);
  CUDA_CHECK_LAUNCH("sm90::flash_forward_short_kernel");
}

template <typename T>
void launch_forward(void* ctx, float* lse, const uint32_t* mask, const void* q, const void* k, const void* v,
                    const int32_t* lengths, int rows, int seq, int C, int ld, int heads, const DropoutSite& site,
                    cudaStream_t stream) {
  if (seq <= kTile)
    return launch_forward_short<T, 1>(ctx, lse, mask, q, k, v, lengths, rows, seq, C, ld, heads, site, stream);
  if (seq <= 2 * kTile)
    return launch_forward_short<T, 2>(ctx, lse, mask, q, k, v, lengths, rows, seq, C, ld, heads, site, stream);
  static const bool ready = (allow_shared_memory(flash_forward_kernel<T, kForwardGroups>, kForwardSmemBytes), true);
  (void)ready;
  const dim3 grid(ceil_div(seq, 64 * kForwardGroups), rows * heads);
  flash_forward_kernel<T, kForwardGroups><<<grid, kForwardGroups * kGroupThreads, kForwardSmemBytes, stream>>>(
      static_cast<T*>(ctx), lse, mask, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      lengths, seq, C, ld, heads, site);
  CUDA_CHECK_LAUNCH("sm90::flash_forward_kernel");
}

template <typename T>
void launch_backward_kv(void* dk, void* dv, void* ds_t, float* bias_partials, const void* q, const void* k,
                        const void* v, const void* dctx, const float* lse, const float* delta, const uint32_t* mask,
                        const int32_t* lengths, int rows, int seq, int seq_pad, int C, int ld, int heads,
                        const DropoutSite& site, cudaStream_t stream) {
  static const bool ready = (allow_shared_memory(flash_backward_kv_kernel<T>, kBackwardSmemBytes), true);
  (void)ready;
  const dim3 grid(ceil_div(seq, kTile), rows * heads);
  flash_backward_kv_kernel<T><<<grid, kGroupThreads, kBackwardSmemBytes, stream>>>(
      static_cast<T*>(dk), static_cast<T*>(dv), static_cast<T*>(ds_t), bias_partials, static_cast<const T*>(q),
      static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dctx), lse, delta, mask, lengths, seq,
      seq_pad, C, ld, heads, site);
  CUDA_CHECK_LAUNCH("sm90::flash_backward_kv_kernel");
}

template <typename T>
void launch_dq_from_ds(void* dq, float* bias_partials, const void* ds_t, const void* k, const int32_t* lengths,
                       int rows, int seq, int seq_pad, int C, int ld, int heads, cudaStream_t stream) {
  static const bool ready = (allow_shared_memory(flash_dq_from_ds_kernel<T>, kDqSmemBytes), true);
  (void)ready;
  const dim3 grid(ceil_div(seq, 2 * kTile), rows * heads);
  flash_dq_from_ds_kernel<T><<<grid, 2 * kGroupThreads, kDqSmemBytes, stream>>>(
      static_cast<T*>(dq), bias_partials, static_cast<const T*>(ds_t), static_cast<const T*>(k), lengths, seq,
      seq_pad, C, ld, heads);
  CUDA_CHECK_LAUNCH("sm90::flash_dq_from_ds_kernel");
}

template <typename T, int kGroups>
void launch_backward_short(void* dq, void* dk, void* dv, const void* q, const void* k, const void* v, const void* dctx,
                           const void* ctx, const float* lse, const uint32_t* mask, const int32_t* lengths, int rows,
                           int seq, int C, int ld, int heads, const DropoutSite& site, cudaStream_t stream) {
  constexpr auto kernel = flash_backward_short_kernel<T, kGroups>;
  constexpr int kThreads = kGroups * kGroupThreads, kSmem = kShortBackwardSmemBytes<kGroups>;
  static const int resident = persistent_grid(kernel, kThreads, kSmem);
  const int items = rows * heads;
  kernel<<<std::min(items, resident), kThreads, kSmem, stream>>>(
      static_cast<T*>(dq), static_cast<T*>(dk), static_cast<T*>(dv), static_cast<const T*>(q),
      static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dctx), static_cast<const T*>(ctx), lse,
      mask, lengths, items, seq, C, ld, heads, site);
  CUDA_CHECK_LAUNCH("sm90::flash_backward_short_kernel");
}

template <typename T>
void launch_backward_short(void* dq, void* dk, void* dv, const void* q, const void* k, const void* v, const void* dctx,
                           const void* ctx, const float* lse, const uint32_t* mask, const int32_t* lengths, int rows,
                           int seq, int C, int ld, int heads, const DropoutSite& site, cudaStream_t stream) {
  static_assert(kShortBackwardMaxSeq == 2 * kTile, "one or two warpgroups of 64 keys");
  if (seq <= kTile)
    launch_backward_short<T, 1>(dq, dk, dv, q, k, v, dctx, ctx, lse, mask, lengths, rows, seq, C, ld, heads, site,
                                stream);
  else
    launch_backward_short<T, 2>(dq, dk, dv, q, k, v, dctx, ctx, lse, mask, lengths, rows, seq, C, ld, heads, site,
                                stream);
}

}  // namespace

void flash_forward(bool bf16, void* ctx, float* lse, const uint32_t* mask, const void* q, const void* k,
                   const void* v, const int32_t* lengths, int rows, int seq, int C, int ld, int heads,
                   const DropoutSite& site, cudaStream_t stream) {
  if (bf16)
    launch_forward<__nv_bfloat16>(ctx, lse, mask, q, k, v, lengths, rows, seq, C, ld, heads, site, stream);
  else
    launch_forward<__half>(ctx, lse, mask, q, k, v, lengths, rows, seq, C, ld, heads, site, stream);
}

void flash_backward_kv(bool bf16, void* dk, void* dv, void* ds_t, float* bias_partials, const void* q, const void* k,
                       const void* v, const void* dctx, const float* lse, const float* delta, const uint32_t* mask,
                       const int32_t* lengths, int rows, int seq, int seq_pad, int C, int ld, int heads,
                       const DropoutSite& site, cudaStream_t stream) {
  if (bf16)
    launch_backward_kv<__nv_bfloat16>(dk, dv, ds_t, bias_partials, q, k, v, dctx, lse, delta, mask, lengths, rows, seq,
                                      seq_pad, C, ld, heads, site, stream);
  else
    launch_backward_kv<__half>(dk, dv, ds_t, bias_partials, q, k, v, dctx, lse, delta, mask, lengths, rows, seq,
                               seq_pad, C, ld, heads, site, stream);
}

void flash_dq_from_ds(bool bf16, void* dq, float* bias_partials, const void* ds_t, const void* k,
                      const int32_t* lengths, int rows, int seq, int seq_pad, int C, int ld, int heads,
                      cudaStream_t stream) {
  if (bf16)
    launch_dq_from_ds<__nv_bfloat16>(dq, bias_partials, ds_t, k, lengths, rows, seq, seq_pad, C, ld, heads, stream);
  else
    launch_dq_from_ds<__half>(dq, bias_partials, ds_t, k, lengths, rows, seq, seq_pad, C, ld, heads, stream);
}

void flash_backward_short(bool bf16, void* dq, void* dk, void* dv, const void* q, const void* k, const void* v,
                          const void* dctx, const void* ctx, const float* lse, const uint32_t* mask,
                          const int32_t* lengths, int rows, int seq, int C, int ld, int heads, const DropoutSite& site,
                          cudaStream_t stream) {
  if (seq <= 0 || seq > kShortBackwardMaxSeq) throw std::invalid_argument("sm90::flash_backward_short: seq out of range");
  if (bf16)
    launch_backward_short<__nv_bfloat16>(dq, dk, dv, q, k, v, dctx, ctx, lse, mask, lengths, rows, seq, C, ld, heads,
                                         site, stream);
  else
    launch_backward_short<__half>(dq, dk, dv, q, k, v, dctx, ctx, lse, mask, lengths, rows, seq, C, ld, heads, site,
                                  stream);
}

}  // namespace llmqs::kernels::cuda::sm90
