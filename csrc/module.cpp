// pybind11 entry point of refusion._C. It never links libtorch: the Python side passes data
// pointers, shapes, strides and a CUDA stream handle, so the wheel is independent of the torch
// build. Kernels register themselves through the functions declared in refusion_ops.h.
#include <pybind11/pybind11.h>

#include "refusion_ops.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
#ifdef REFUSION_CXX_COMPILER
  info["cxx_compiler"] = REFUSION_CXX_COMPILER;
#endif
#ifdef REFUSION_BUILD_TYPE
  info["build_type"] = REFUSION_BUILD_TYPE;
#endif
  // Kept for callers that read it; CPU threading is the std::thread pool of csrc/cpu/parallel.cpp.
  info["openmp"] = false;
  info["cpu_threading"] = "thread pool (work stealing)";
#ifdef REFUSION_WITH_CUDA
  info["cuda"] = true;
  info["cuda_compiler"] = REFUSION_CUDA_COMPILER;
  info["cuda_architectures"] = REFUSION_CUDA_ARCHITECTURES;
#else
  info["cuda"] = false;
#endif
  info["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                     std::to_string(PYBIND11_VERSION_MINOR) + "." +
                     std::to_string(PYBIND11_VERSION_PATCH);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ReFusion native kernels (CPU, and CUDA when built with a toolkit)";
  m.def("build_info", &build_info, "How this native module was built.");
  refusion::register_cpu_ops(m);
#ifdef REFUSION_WITH_CUDA
  refusion::register_cuda_ops(m);
#endif
}
