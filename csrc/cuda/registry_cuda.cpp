// Host-side bindings of the CUDA kernels (the .cu files hold only kernels and plain-C launchers,
// so nvcc never sees pybind11). Compiled only when CUDA is enabled.
#include "refusion_ops.h"

namespace refusion {
void register_cuda_ops(pybind11::module_& m) { m.attr("has_cuda_kernels") = false; }
}  // namespace refusion
