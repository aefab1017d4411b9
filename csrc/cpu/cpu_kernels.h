// Declarations of the CPU kernels, one set per instruction-set namespace (see kernels_impl.h).
// Everything is type-erased (void pointers + a dtype code) so that the bindings stay small.
#pragma once
#include <cstdint>

namespace refusion {

enum DTypeCode : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2 };

#define REFUSION_DECLARE_CPU_KERNELS(NS)                                                        \
  namespace NS {                                                                                \
  void sobel_fwd(const void* x, void* sx, void* sy, int dtype, std::int64_t B, std::int64_t C,  \
                 std::int64_t H, std::int64_t W, std::int64_t sB, std::int64_t sC,              \
                 std::int64_t sH, int nthreads);                                                \
  void sobel_bwd(const void* gx, const void* gy, void* gin, int dtype, std::int64_t B,          \
                 std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t xB,               \
                 std::int64_t xC, std::int64_t xH, std::int64_t yB, std::int64_t yC,            \
                 std::int64_t yH, int nthreads);                                                \
  void gelu_mul_fwd(const void* a, const void* b, void* y, int dtype, std::int64_t B,           \
                    std::int64_t inner, std::int64_t sa, std::int64_t sb, std::int64_t sy,      \
                    int nthreads);                                                              \
  void gelu_mul_bwd(const void* g, const void* a, const void* b, void* ga, void* gb, int dtype, \
                    std::int64_t B, std::int64_t inner, std::int64_t sg, std::int64_t sa,       \
                    std::int64_t sb, std::int64_t so, int nthreads);                            \
  }

REFUSION_DECLARE_CPU_KERNELS(isa_base)
#ifdef REFUSION_HAVE_AVX2_TU
REFUSION_DECLARE_CPU_KERNELS(isa_avx2)
#endif
#ifdef REFUSION_HAVE_AVX512_TU
REFUSION_DECLARE_CPU_KERNELS(isa_avx512)
#endif

}  // namespace refusion
