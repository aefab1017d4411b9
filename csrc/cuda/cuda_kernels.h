// Plain-C++ launchers of the CUDA kernels (defined in kernels.cu). Only raw pointers, sizes,
// strides (in elements), a dtype code (0 float32, 1 float64, 2 float16), the device index and
// the caller's stream (a cudaStream_t passed as an integer) cross this boundary, so the binding
// code needs neither CUDA headers nor nvcc, and nvcc never sees pybind11.
// Each launcher returns nullptr on success or the CUDA error message. The gate's outputs have
// their own batch stride (sy, so), as in the CPU kernels (csrc/cpu/kernels_impl.h).
#pragma once
#include <cstdint>

namespace refusion {
namespace cuda {

const char* sobel_fwd(const void* x, void* sx, void* sy, int dtype, std::int64_t B,
                      std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t sB,
                      std::int64_t sC, std::int64_t sH, std::uintptr_t stream, int device);

const char* sobel_bwd(const void* gx, const void* gy, void* gin, int dtype, std::int64_t B,
                      std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t xB,
                      std::int64_t xC, std::int64_t xH, std::int64_t yB, std::int64_t yC,
                      std::int64_t yH, std::uintptr_t stream, int device);

const char* gelu_mul_fwd(const void* a, const void* b, void* y, int dtype, std::int64_t B,
                         std::int64_t inner, std::int64_t sa, std::int64_t sb, std::int64_t sy,
                         std::uintptr_t stream, int device);

const char* gelu_mul_bwd(const void* g, const void* a, const void* b, void* ga, void* gb,
                         int dtype, std::int64_t B, std::int64_t inner, std::int64_t sg,
                         std::int64_t sa, std::int64_t sb, std::int64_t so, std::uintptr_t stream,
                         int device);

// nullptr when the kernels can run on `device`, else why not (CUDA's message). Launches nothing.
const char* probe(int device);

// CUDA versions as 1000 * major + 10 * minor (0: unknown): the static runtime compiled in, and
// the newest the installed driver supports (0 when there is no driver).
int runtime_version();
int driver_version();

}  // namespace cuda
}  // namespace refusion
