// AVX-512 build of the CPU kernels (512-bit vectors, FMA); CMake adds the flags to this file
// only (x86-64) and registry_cpu.cpp picks it at run time when the CPU and the OS support it.
// The GELU gate is compute-bound on CPUs with a large last-level cache (the erfc polynomial and
// the exp cost ~30 vector ops per element group), so the wider vectors nearly halve its time.
#ifdef REFUSION_HAVE_AVX512_TU
#define REFUSION_ISA_NS isa_avx512
#include "cpu/kernels_impl.h"
#endif
