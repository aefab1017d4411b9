// Baseline build of the CPU kernels (whatever the compiler targets by default, e.g. SSE2).
#define REFUSION_ISA_NS isa_base
#include "cpu/kernels_impl.h"
