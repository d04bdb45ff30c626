// Error checks for CUDA runtime, cuBLASLt and NCCL calls. A failing call throws
// std::runtime_error naming the call, file:line, the MPI rank and the host, so that a failure on
// rank 5 of 8 says where it happened. Header-only (inline state), so comm/ can use NCCL_CHECK
// without linking the kernels library. The rank and host are set once per process by whoever
// knows them (the NCCL communicator, the trainer); until then they read "rank ?".
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace llmqs::kernels {

struct CudaErrorContext {
  int rank = -1;
  std::string host;
};

inline CudaErrorContext& cuda_error_context() {
  static CudaErrorContext context;
  return context;
}

inline void set_cuda_error_context(int rank, const std::string& host) {
  cuda_error_context().rank = rank;
  cuda_error_context().host = host;
}

[[noreturn]] inline void throw_gpu_error(const char* library, const char* call, const std::string& what,
                                         const char* file, int line) {
  const CudaErrorContext& context = cuda_error_context();
  std::string where = context.rank >= 0 ? "rank " + std::to_string(context.rank) : std::string("rank ?");
  if (!context.host.empty()) where += " on " + context.host;
  throw std::runtime_error(std::string(library) + " call " + call + " failed at " + file + ":" +
                           std::to_string(line) + " (" + where + "): " + what);
}

}  // namespace llmqs::kernels

#define CUDA_CHECK(call)                                                                          \
  do {                                                                                            \
    const cudaError_t llmqs_status_ = (call);                                                     \
    if (llmqs_status_ != cudaSuccess)                                                             \
      ::llmqs::kernels::throw_gpu_error("CUDA", #call, cudaGetErrorString(llmqs_status_), __FILE__, \
                                        __LINE__);                                                \
  } while (0)

// After a kernel launch: a bad launch configuration is reported here, not at the next sync.
#define CUDA_CHECK_LAUNCH(kernel_name)                                                              \
  do {                                                                                            \
    const cudaError_t llmqs_status_ = cudaGetLastError();                                         \
    if (llmqs_status_ != cudaSuccess)                                                             \
      ::llmqs::kernels::throw_gpu_error("CUDA", "launch of " kernel_name,                         \
                                        cudaGetErrorString(llmqs_status_), __FILE__, __LINE__);   \
  } while (0)

// cublasStatus_t: cublasLt.h must be included before the macro is used.
#define CUBLAS_CHECK(call)                                                                       \
  do {                                                                                           \
    const cublasStatus_t llmqs_status_ = (call);                                                 \
    if (llmqs_status_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::llmqs::kernels::throw_gpu_error("cuBLASLt", #call,                                       \
                                        cublasLtGetStatusString(llmqs_status_), \
                                        __FILE__, __LINE__);                                     \
  } while (0)

// ncclResult_t: nccl.h must be included before the macro is used.
#define NCCL_CHECK(call)                                                                          \
  do {                                                                                            \
    const ncclResult_t llmqs_status_ = (call);                                                    \
    if (llmqs_status_ != ncclSuccess)                                                             \
      ::llmqs::kernels::throw_gpu_error("NCCL", #call, ncclGetErrorString(llmqs_status_), __FILE__, \
                                        __LINE__);                                                \
  } while (0)
