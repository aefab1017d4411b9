// Host-side bindings of the CUDA kernels (the .cu files hold only kernels and plain launchers,
// so nvcc never sees pybind11). Compiled only when CUDA is enabled. Python passes data pointers,
// sizes, strides, torch's current stream for the tensors' device and the device index; shape,
// dtype and device consistency are checked on the Python side (refusion/ops/_kernels.py).
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/cuda_kernels.h"
#include "refusion_ops.h"

namespace py = pybind11;

namespace refusion {
namespace {

using i64 = std::int64_t;

void raise_if(const char* err, const char* op) {
  // std::runtime_error surfaces in Python as RuntimeError with the CUDA message.
  if (err != nullptr) throw std::runtime_error(std::string(op) + ": CUDA error: " + err);
}

const void* cptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* mptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

}  // namespace

void register_cuda_ops(py::module_& m) {
  m.attr("has_cuda_kernels") = true;

  m.def(
      "cuda_probe",
      [](int device) -> py::object {
        const char* why = nullptr;
        {
          py::gil_scoped_release release;  // loading the module may take a while; no Python here
          why = cuda::probe(device);
        }
        return why == nullptr ? py::object(py::none()) : py::object(py::str(why));
      },
      "None when the CUDA kernels can run on `device`, else CUDA's reason. Launches nothing.");
  m.def("cuda_runtime_version", &cuda::runtime_version,
        "Version of the CUDA runtime compiled in (1000 * major + 10 * minor).");
  m.def("cuda_driver_version", &cuda::driver_version,
        "Newest CUDA version the installed driver supports (0: no driver).");

  m.def(
      "sobel_xy_cuda",
      [](std::uintptr_t x, std::uintptr_t sx, std::uintptr_t sy, int dtype, i64 B, i64 C, i64 H,
         i64 W, i64 sB, i64 sC, i64 sH, std::uintptr_t stream, int device) {
        raise_if(cuda::sobel_fwd(cptr(x), mptr(sx), mptr(sy), dtype, B, C, H, W, sB, sC, sH,
                                 stream, device),
                 "sobel_xy");
      },
      py::call_guard<py::gil_scoped_release>(),
      "Sobel x/y responses on `stream` (see sobel_xy_cpu for the layout).");

  m.def(
      "sobel_xy_backward_cuda",
      [](std::uintptr_t gx, std::uintptr_t gy, std::uintptr_t gin, int dtype, i64 B, i64 C,
         i64 H, i64 W, i64 xB, i64 xC, i64 xH, i64 yB, i64 yC, i64 yH, std::uintptr_t stream,
         int device) {
        raise_if(cuda::sobel_bwd(cptr(gx), cptr(gy), mptr(gin), dtype, B, C, H, W, xB, xC, xH,
                                 yB, yC, yH, stream, device),
                 "sobel_xy_backward");
      },
      py::call_guard<py::gil_scoped_release>(), "Transposed Sobel on `stream`.");

  m.def(
      "gelu_mul_cuda",
      [](std::uintptr_t a, std::uintptr_t b, std::uintptr_t y, int dtype, i64 B, i64 inner,
         i64 sa, i64 sb, i64 sy, std::uintptr_t stream, int device) {
        raise_if(cuda::gelu_mul_fwd(cptr(a), cptr(b), mptr(y), dtype, B, inner, sa, sb, sy,
                                    stream, device),
                 "gelu_mul");
      },
      py::call_guard<py::gil_scoped_release>(), "y = GELU(a) * b on `stream`.");

  m.def(
      "gelu_mul_backward_cuda",
      [](std::uintptr_t g, std::uintptr_t a, std::uintptr_t b, std::uintptr_t ga,
         std::uintptr_t gb, int dtype, i64 B, i64 inner, i64 sg, i64 sa, i64 sb, i64 so,
         std::uintptr_t stream, int device) {
        raise_if(cuda::gelu_mul_bwd(cptr(g), cptr(a), cptr(b), mptr(ga), mptr(gb), dtype, B,
                                    inner, sg, sa, sb, so, stream, device),
                 "gelu_mul_backward");
      },
      py::call_guard<py::gil_scoped_release>(), "Fused gate gradients on `stream`.");
}

}  // namespace refusion
