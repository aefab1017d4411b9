// AVX2 + FMA build of the CPU kernels; CMake adds -mavx2 -mfma to this file only (x86-64) and
// registry_cpu.cpp picks it at run time when the CPU supports it, so the wheel stays portable.
#ifdef REFUSION_HAVE_AVX2_TU
#define REFUSION_ISA_NS isa_avx2
#include "cpu/kernels_impl.h"
#endif
