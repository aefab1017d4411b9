// CUDA kernels of the Sobel and GELU-gate ops: float32, float16 (float32 accumulation) and
// float64. Only kernels and plain launchers live here (see cuda_kernels.h); every launch goes to
// the caller's stream and reports cudaGetLastError back as a message.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda_kernels.h"

namespace refusion {
namespace cuda {
namespace {

using i64 = std::int64_t;

// Accumulation type: float for half and float, double for double.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type load(const T* p) {
  return static_cast<typename Acc<T>::type>(*p);
}
template <> __device__ __forceinline__ float load<__half>(const __half* p) {
  return __half2float(*p);
}
template <typename T> __device__ __forceinline__ void store(T* p, typename Acc<T>::type v) {
  *p = static_cast<T>(v);
}
template <> __device__ __forceinline__ void store<__half>(__half* p, float v) {
  *p = __float2half_rn(v);
}

__device__ __forceinline__ i64 clampi(i64 i, i64 n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// Adjoint weight of the replicate-bordered 3-tap correlation (see csrc/cpu/kernels_impl.h).
template <typename A>
__device__ __forceinline__ A adjoint_weight(A k0, A k1, A k2, i64 i, i64 r, i64 n) {
  A w = 0;
  if (clampi(r - 1, n) == i) w += k0;
  if (clampi(r, n) == i) w += k1;
  if (clampi(r + 1, n) == i) w += k2;
  return w;
}

// One thread per output pixel; x is read through the read-only cache, neighbours are shared
// between adjacent threads so the 9 loads per pixel mostly hit L1.
template <typename T>
__global__ void sobel_fwd_kernel(const T* __restrict__ x, T* __restrict__ sx,
                                 T* __restrict__ sy, i64 C, i64 H, i64 W, i64 sB, i64 sC,
                                 i64 sH, i64 total) {
  using A = typename Acc<T>::type;
  for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total;
       idx += (i64)gridDim.x * blockDim.x) {
    const i64 j = idx % W;
    const i64 i = (idx / W) % H;
    const i64 p = idx / (W * H);
    const T* plane = x + (p / C) * sB + (p % C) * sC;
    const T* up = plane + clampi(i - 1, H) * sH;
    const T* mid = plane + i * sH;
    const T* dn = plane + clampi(i + 1, H) * sH;
    const i64 jl = clampi(j - 1, W), jr = clampi(j + 1, W);
    const A ul = load(up + jl), uc = load(up + j), ur = load(up + jr);
    const A ml = load(mid + jl), mr = load(mid + jr);
    const A dl = load(dn + jl), dc = load(dn + j), dr = load(dn + jr);
    store(sx + idx, (ur - ul) + A(2) * (mr - ml) + (dr - dl));
    store(sy + idx, (dl - ul) + A(2) * (dc - uc) + (dr - ur));
  }
}

// Transposed Sobel as a gather: output (i, j) collects the rows/columns whose clamped taps
// landed on it, with the adjoint weights, so no atomics are needed.
template <typename T>
__global__ void sobel_bwd_kernel(const T* __restrict__ gx, const T* __restrict__ gy,
                                 T* __restrict__ gin, i64 C, i64 H, i64 W, i64 xB, i64 xC,
                                 i64 xH, i64 yB, i64 yC, i64 yH, i64 total) {
  using A = typename Acc<T>::type;
  for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total;
       idx += (i64)gridDim.x * blockDim.x) {
    const i64 j = idx % W;
    const i64 i = (idx / W) % H;
    const i64 p = idx / (W * H);
    const T* px = gx + (p / C) * xB + (p % C) * xC;
    const T* py = gy + (p / C) * yB + (p % C) * yC;
    A acc = 0;
    for (i64 r = i - 1; r <= i + 1; ++r) {
      if (r < 0 || r >= H) continue;
      const A vs = adjoint_weight<A>(1, 2, 1, i, r, H);
      const A vd = adjoint_weight<A>(-1, 0, 1, i, r, H);
      for (i64 c = j - 1; c <= j + 1; ++c) {
        if (c < 0 || c >= W) continue;
        const A hd = adjoint_weight<A>(-1, 0, 1, j, c, W);
        const A hs = adjoint_weight<A>(1, 2, 1, j, c, W);
        acc += vs * hd * load(px + r * xH + c) + vd * hs * load(py + r * yH + c);
      }
    }
    store(gin + idx, acc);
  }
}

// Normal CDF / PDF: normcdf avoids the cancellation of 1 + erf(x / sqrt 2) for x << 0.
__device__ __forceinline__ float cdf(float x) { return normcdff(x); }
__device__ __forceinline__ double cdf(double x) { return normcdf(x); }
// expf, not the __expf intrinsic: its error grows with |arg| (about 100 ulp near -87) and it
// flushes denormals, so a * pdf(a) vanished where normcdff does not and GELU' changed sign.
__device__ __forceinline__ float pdf(float x) { return 0.3989422804014327f * expf(-0.5f * x * x); }
__device__ __forceinline__ double pdf(double x) { return 0.3989422804014327 * exp(-0.5 * x * x); }

template <typename T>
__global__ void gelu_mul_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                T* __restrict__ y, i64 inner, i64 sa, i64 sb, i64 sy,
                                i64 total) {
  using A = typename Acc<T>::type;
  for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total;
       idx += (i64)gridDim.x * blockDim.x) {
    const i64 n = idx / inner, k = idx % inner;
    const A x = load(a + n * sa + k);
    store(y + n * sy + k, x * cdf(x) * load(b + n * sb + k));
  }
}

template <typename T>
__global__ void gelu_mul_bwd_kernel(const T* __restrict__ g, const T* __restrict__ a,
                                    const T* __restrict__ b, T* __restrict__ ga,
                                    T* __restrict__ gb, i64 inner, i64 sg, i64 sa, i64 sb,
                                    i64 so, i64 total) {
  using A = typename Acc<T>::type;
  for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total;
       idx += (i64)gridDim.x * blockDim.x) {
    const i64 n = idx / inner, k = idx % inner;
    const A x = load(a + n * sa + k);
    const A gv = load(g + n * sg + k);
    const A c = cdf(x);
    // so = 2 * inner when ga/gb are the two halves of one (B, 2C, H, W) gradient.
    store(ga + n * so + k, gv * load(b + n * sb + k) * (c + x * pdf(x)));
    store(gb + n * so + k, gv * x * c);
  }
}

constexpr int kThreads = 256;

unsigned grid_for(i64 total) {
  // Grid-stride loops: cap the grid, the loop covers the rest.
  const i64 blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

// Makes `device` current for this thread while a launch runs (torch's device guard lives in
// another CUDA runtime instance), restoring the previous device afterwards. A failed switch is
// reported (error()), never launched through: the kernel would run on the previous device with
// a stream of another, and fail there with an unrelated "invalid resource handle".
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaError_t err = cudaGetDevice(&prev_);
    if (err == cudaSuccess && prev_ != device) {
      err = cudaSetDevice(device);
      changed_ = err == cudaSuccess;
    }
    if (err != cudaSuccess) {
      error_ = cudaGetErrorString(err);
      cudaGetLastError();  // not sticky: leave no error for the next launch to misreport
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(prev_);
  }
  const char* error() const { return error_; }

 private:
  int prev_ = -1;
  bool changed_ = false;
  const char* error_ = nullptr;
};

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <template <typename> class Launch, typename... Args>
const char* dispatch(int dtype, Args... args) {
  switch (dtype) {
    case 0: Launch<float>::run(args...); break;
    case 1: Launch<double>::run(args...); break;
    case 2: Launch<__half>::run(args...); break;
    default: return "refusion CUDA kernels: unsupported dtype code";
  }
  return last_error();
}

template <typename T> struct SobelFwd {
  static void run(const void* x, void* sx, void* sy, i64 B, i64 C, i64 H, i64 W, i64 sB,
                  i64 sC, i64 sH, cudaStream_t s) {
    const i64 total = B * C * H * W;
    sobel_fwd_kernel<T><<<grid_for(total), kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<T*>(sx), static_cast<T*>(sy), C, H, W, sB, sC, sH,
        total);
  }
};

template <typename T> struct SobelBwd {
  static void run(const void* gx, const void* gy, void* gin, i64 B, i64 C, i64 H, i64 W, i64 xB,
                  i64 xC, i64 xH, i64 yB, i64 yC, i64 yH, cudaStream_t s) {
    const i64 total = B * C * H * W;
    sobel_bwd_kernel<T><<<grid_for(total), kThreads, 0, s>>>(
        static_cast<const T*>(gx), static_cast<const T*>(gy), static_cast<T*>(gin), C, H, W, xB,
        xC, xH, yB, yC, yH, total);
  }
};

template <typename T> struct GeluMulFwd {
  static void run(const void* a, const void* b, void* y, i64 B, i64 inner, i64 sa, i64 sb,
                  i64 sy, cudaStream_t s) {
    const i64 total = B * inner;
    gelu_mul_kernel<T><<<grid_for(total), kThreads, 0, s>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(y), inner, sa, sb,
        sy, total);
  }
};

template <typename T> struct GeluMulBwd {
  static void run(const void* g, const void* a, const void* b, void* ga, void* gb, i64 B,
                  i64 inner, i64 sg, i64 sa, i64 sb, i64 so, cudaStream_t s) {
    const i64 total = B * inner;
    gelu_mul_bwd_kernel<T><<<grid_for(total), kThreads, 0, s>>>(
        static_cast<const T*>(g), static_cast<const T*>(a), static_cast<const T*>(b),
        static_cast<T*>(ga), static_cast<T*>(gb), inner, sg, sa, sb, so, total);
  }
};

cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

const char* sobel_fwd(const void* x, void* sx, void* sy, int dtype, i64 B, i64 C, i64 H, i64 W,
                      i64 sB, i64 sC, i64 sH, std::uintptr_t stream, int device) {
  if (B * C * H * W == 0) return nullptr;
  DeviceGuard guard(device);
  if (guard.error()) return guard.error();
  return dispatch<SobelFwd>(dtype, x, sx, sy, B, C, H, W, sB, sC, sH, as_stream(stream));
}

const char* sobel_bwd(const void* gx, const void* gy, void* gin, int dtype, i64 B, i64 C, i64 H,
                      i64 W, i64 xB, i64 xC, i64 xH, i64 yB, i64 yC, i64 yH,
                      std::uintptr_t stream, int device) {
  if (B * C * H * W == 0) return nullptr;
  DeviceGuard guard(device);
  if (guard.error()) return guard.error();
  return dispatch<SobelBwd>(dtype, gx, gy, gin, B, C, H, W, xB, xC, xH, yB, yC, yH,
                            as_stream(stream));
}

const char* gelu_mul_fwd(const void* a, const void* b, void* y, int dtype, i64 B, i64 inner,
                         i64 sa, i64 sb, i64 sy, std::uintptr_t stream, int device) {
  if (B * inner == 0) return nullptr;
  DeviceGuard guard(device);
  if (guard.error()) return guard.error();
  return dispatch<GeluMulFwd>(dtype, a, b, y, B, inner, sa, sb, sy, as_stream(stream));
}

const char* gelu_mul_bwd(const void* g, const void* a, const void* b, void* ga, void* gb,
                         int dtype, i64 B, i64 inner, i64 sg, i64 sa, i64 sb, i64 so,
                         std::uintptr_t stream, int device) {
  if (B * inner == 0) return nullptr;
  DeviceGuard guard(device);
  if (guard.error()) return guard.error();
  return dispatch<GeluMulBwd>(dtype, g, a, b, ga, gb, B, inner, sg, sa, sb, so,
                              as_stream(stream));
}

const char* probe(int device) {
  // Loads (without launching) one kernel of each op on `device`. A GPU older than every
  // compiled architecture fails here with "no kernel image is available", a driver older than
  // the static runtime with "driver version is insufficient"; the first kernel call would
  // otherwise be where that surfaces. All instantiations share one fatbinary, so two stand for
  // all of them.
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess && (device < 0 || device >= count)) return "no such CUDA device";
  int prev = -1;
  if (err == cudaSuccess) err = cudaGetDevice(&prev);
  // an explicit switch, so that a failed one is told apart from a failed probe
  if (err == cudaSuccess && prev != device) err = cudaSetDevice(device);
  if (err == cudaSuccess) {
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, sobel_fwd_kernel<float>);
    if (err == cudaSuccess) err = cudaFuncGetAttributes(&attr, gelu_mul_bwd_kernel<__half>);
  }
  if (prev >= 0 && prev != device) cudaSetDevice(prev);
  if (err == cudaSuccess) return nullptr;
  // clear the (non-sticky) error, or the next launch's cudaGetLastError here would report it
  cudaGetLastError();
  return cudaGetErrorString(err);
}

int runtime_version() {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

int driver_version() {
  int v = 0;
  return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

}  // namespace cuda
}  // namespace refusion
