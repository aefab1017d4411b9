// pybind11 bindings of the CPU kernels. Python passes data pointers (as integers), sizes and
// strides in elements; the tensors stay owned by torch on the Python side, which also validates
// shapes, dtypes and devices before calling (see refusion/ops/_kernels.py). The GIL is released
// while a kernel runs.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/parallel.h"
#include "refusion_ops.h"

#include <pybind11/stl.h>

namespace py = pybind11;

namespace refusion {
namespace {

using i64 = std::int64_t;

bool cpu_supports(const char* isa) {
#if defined(__GNUC__) || defined(__clang__)
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (std::strcmp(isa, "avx2+fma") == 0) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  if (std::strcmp(isa, "avx512") == 0) {
    // libgcc also checks that the OS saves the ZMM state (XGETBV) before reporting avx512f.
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("fma");
  }
#endif
#endif
  return std::strcmp(isa, "baseline") == 0;
}

// One table of kernels per compiled instruction set, widest last.
struct CpuKernels {
  decltype(&isa_base::sobel_fwd) sobel_fwd;
  decltype(&isa_base::sobel_bwd) sobel_bwd;
  decltype(&isa_base::gelu_mul_fwd) gelu_mul_fwd;
  decltype(&isa_base::gelu_mul_bwd) gelu_mul_bwd;
  const char* isa;
};

#define REFUSION_KERNEL_TABLE(NS, NAME) \
  CpuKernels { &NS::sobel_fwd, &NS::sobel_bwd, &NS::gelu_mul_fwd, &NS::gelu_mul_bwd, NAME }

const CpuKernels kCompiled[] = {
    REFUSION_KERNEL_TABLE(isa_base, "baseline"),
#ifdef REFUSION_HAVE_AVX2_TU
    REFUSION_KERNEL_TABLE(isa_avx2, "avx2+fma"),
#endif
#ifdef REFUSION_HAVE_AVX512_TU
    REFUSION_KERNEL_TABLE(isa_avx512, "avx512"),
#endif
};
constexpr int kNumCompiled = sizeof(kCompiled) / sizeof(kCompiled[0]);

int widest_supported() {
  int best = 0;
  for (int i = 0; i < kNumCompiled; ++i) {
    if (cpu_supports(kCompiled[i].isa)) best = i;
  }
  return best;
}

// Index into kCompiled of the kernels in use: the widest this CPU runs unless REFUSION_CPU_ISA
// (read once, at the first call) or set_cpu_isa() asks for another one. Atomic so that a switch
// from Python while another thread runs a kernel is well defined.
std::atomic<int>& selected() {
  static std::atomic<int> sel{[] {
    int best = widest_supported();
    if (const char* want = std::getenv("REFUSION_CPU_ISA")) {
      for (int i = 0; i < kNumCompiled; ++i) {
        if (std::strcmp(want, kCompiled[i].isa) == 0 && cpu_supports(want)) return i;
      }
    }
    return best;
  }()};
  return sel;
}

const CpuKernels& kernels() { return kCompiled[selected().load(std::memory_order_relaxed)]; }

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (int i = 0; i < kNumCompiled; ++i) {
    if (cpu_supports(kCompiled[i].isa)) out.emplace_back(kCompiled[i].isa);
  }
  return out;
}

std::string set_cpu_isa(const std::string& name) {
  const std::string previous = kernels().isa;
  const std::string want = name.empty() ? kCompiled[widest_supported()].isa : name;
  for (int i = 0; i < kNumCompiled; ++i) {
    if (want == kCompiled[i].isa) {
      if (!cpu_supports(kCompiled[i].isa)) {
        throw std::invalid_argument("this CPU cannot run the '" + want + "' kernels");
      }
      selected().store(i);
      return previous;
    }
  }
  throw std::invalid_argument("no CPU kernels built for '" + want + "'");
}

void check_dtype(int dtype) {
  if (dtype != kFloat32 && dtype != kFloat64) {
    throw std::invalid_argument("refusion CPU kernels support float32 and float64, got code " +
                                std::to_string(dtype));
  }
}

void check_nonneg(i64 v, const char* what) {
  if (v < 0) throw std::invalid_argument(std::string("negative ") + what);
}

const void* cptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* mptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

}  // namespace

void register_cpu_ops(py::module_& m) {
  m.attr("has_cpu_kernels") = true;
  m.def("cpu_isa", [] { return std::string(kernels().isa); },
        "Instruction set of the CPU kernels in use (the widest the CPU runs, unless "
        "REFUSION_CPU_ISA or set_cpu_isa() chose another).");
  m.def("cpu_isas", &available_isas,
        "Instruction sets with built CPU kernels that this CPU runs, narrowest first.");
  m.def("set_cpu_isa", &set_cpu_isa, py::arg("name"),
        "Use the CPU kernels of instruction set `name` ('' = the widest); returns the previous "
        "one. For parity tests and benchmarks; raises ValueError for an unknown or unsupported "
        "name.");

  m.def(
      "sobel_xy_cpu",
      [](std::uintptr_t x, std::uintptr_t sx, std::uintptr_t sy, int dtype, i64 B, i64 C, i64 H,
         i64 W, i64 sB, i64 sC, i64 sH, int nthreads) {
        check_dtype(dtype);
        check_nonneg(B | C | H | W, "size");
        kernels().sobel_fwd(cptr(x), mptr(sx), mptr(sy), dtype, B, C, H, W, sB, sC, sH,
                            nthreads);
      },
      py::arg("x"), py::arg("sx"), py::arg("sy"), py::arg("dtype"), py::arg("B"), py::arg("C"),
      py::arg("H"), py::arg("W"), py::arg("sB"), py::arg("sC"), py::arg("sH"),
      py::arg("nthreads"), py::call_guard<py::gil_scoped_release>(),
      "Sobel x/y responses of x (unit W stride) into contiguous sx, sy.");

  m.def(
      "sobel_xy_backward_cpu",
      [](std::uintptr_t gx, std::uintptr_t gy, std::uintptr_t gin, int dtype, i64 B, i64 C,
         i64 H, i64 W, i64 xB, i64 xC, i64 xH, i64 yB, i64 yC, i64 yH, int nthreads) {
        check_dtype(dtype);
        check_nonneg(B | C | H | W, "size");
        kernels().sobel_bwd(cptr(gx), cptr(gy), mptr(gin), dtype, B, C, H, W, xB, xC, xH, yB,
                            yC, yH, nthreads);
      },
      py::arg("gx"), py::arg("gy"), py::arg("gin"), py::arg("dtype"), py::arg("B"),
      py::arg("C"), py::arg("H"), py::arg("W"), py::arg("xB"), py::arg("xC"), py::arg("xH"),
      py::arg("yB"), py::arg("yC"), py::arg("yH"), py::arg("nthreads"),
      py::call_guard<py::gil_scoped_release>(),
      "Transposed Sobel: gin = Sx^T gx + Sy^T gy (replicate-border adjoint), contiguous gin.");

  m.def(
      "gelu_mul_cpu",
      [](std::uintptr_t a, std::uintptr_t b, std::uintptr_t y, int dtype, i64 B, i64 inner,
         i64 sa, i64 sb, i64 sy, int nthreads) {
        check_dtype(dtype);
        check_nonneg(B | inner, "size");
        kernels().gelu_mul_fwd(cptr(a), cptr(b), mptr(y), dtype, B, inner, sa, sb, sy,
                               nthreads);
      },
      py::arg("a"), py::arg("b"), py::arg("y"), py::arg("dtype"), py::arg("B"),
      py::arg("inner"), py::arg("sa"), py::arg("sb"), py::arg("sy"), py::arg("nthreads"),
      py::call_guard<py::gil_scoped_release>(),
      "y = GELU(a) * b over B per-batch contiguous slabs of `inner` elements; sa, sb, sy are "
      "the batch strides of a, b, y.");

  m.def(
      "gelu_mul_backward_cpu",
      [](std::uintptr_t g, std::uintptr_t a, std::uintptr_t b, std::uintptr_t ga,
         std::uintptr_t gb, int dtype, i64 B, i64 inner, i64 sg, i64 sa, i64 sb, i64 so,
         int nthreads) {
        check_dtype(dtype);
        check_nonneg(B | inner, "size");
        kernels().gelu_mul_bwd(cptr(g), cptr(a), cptr(b), mptr(ga), mptr(gb), dtype, B, inner,
                               sg, sa, sb, so, nthreads);
      },
      py::arg("g"), py::arg("a"), py::arg("b"), py::arg("ga"), py::arg("gb"), py::arg("dtype"),
      py::arg("B"), py::arg("inner"), py::arg("sg"), py::arg("sa"), py::arg("sb"),
      py::arg("so"), py::arg("nthreads"), py::call_guard<py::gil_scoped_release>(),
      "ga = g * b * GELU'(a), gb = g * GELU(a); ga and gb share the output batch stride so "
      "(inner for two tensors, 2 * inner for the halves of one (B, 2C, H, W) gradient).");

  m.def("cpu_pool_workers", &pool_workers,
        "Worker threads the CPU kernels' pool has started (the calling thread is not counted).");
}

}  // namespace refusion
