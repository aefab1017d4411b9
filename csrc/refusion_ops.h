// Registration hooks of the native kernels; one implementation file per device.
#pragma once
#include <pybind11/pybind11.h>

namespace refusion {
void register_cpu_ops(pybind11::module_& m);
#ifdef REFUSION_WITH_CUDA
void register_cuda_ops(pybind11::module_& m);
#endif
}  // namespace refusion
