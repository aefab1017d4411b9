// Portable CPU kernel bodies, compiled once per instruction set (kernels_base.cpp, and
// kernels_avx2.cpp with -mavx2 -mfma on x86-64). Each includer defines REFUSION_ISA_NS first, so
// every symbol lands in an ISA-specific namespace: no inline function compiled for AVX2 can be
// merged by the linker into the baseline build (the classic multi-ISA ODR trap). For the same
// reason the hot code uses no std:: templates, only raw loops and malloc'd scratch buffers.
//
// Layout conventions (all sizes and strides in elements):
//   * images are (B, C, H, W) with unit stride along W and arbitrary B/C/H strides;
//   * outputs are always contiguous (B, C, H, W);
//   * the gate reads per-batch contiguous slabs of `inner` = C*H*W elements.
#ifndef REFUSION_ISA_NS
#error "define REFUSION_ISA_NS before including kernels_impl.h"
#endif

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cpu/cpu_kernels.h"
#include "cpu/parallel.h"

namespace refusion {
namespace REFUSION_ISA_NS {
namespace {

using i64 = std::int64_t;

// Below this many output elements waking a pool worker costs more than it saves.
constexpr i64 kParallelGrain = 1 << 16;
// Elements per work item: small enough that a worker preempted mid-item delays the caller only
// briefly, large enough that claiming an item (one compare-exchange) is noise.
constexpr i64 kItem = 1 << 14;

inline int threads_for(i64 work, int nthreads) { return work < kParallelGrain ? 1 : nthreads; }

inline i64 clamp_index(i64 i, i64 n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// Weight of input row/column r in output position i of the adjoint of the replicate-bordered
// 3-tap correlation y[r] = sum_a k[a+1] * x[clamp(r + a)]: the sum of the taps whose clamped
// source is i. For interior positions this is just the flipped kernel; at the borders it
// accumulates the taps that the forward pass read from the replicated edge pixel.
template <typename T>
inline T adjoint_weight(const T k[3], i64 i, i64 r, i64 n) {
  T w = 0;
  for (int a = -1; a <= 1; ++a) {
    if (clamp_index(r + a, n) == i) w += k[a + 1];
  }
  return w;
}

template <typename T>
T* scratch(i64 n) {
  void* p = std::malloc(static_cast<size_t>(n > 0 ? n : 1) * sizeof(T));
  if (p == nullptr) {  // a worker thread cannot raise; say why instead of a segfault
    std::fputs("refusion: out of memory for a kernel scratch row\n", stderr);
    std::abort();
  }
  return static_cast<T*>(p);
}

// ---------------------------------------------------------------------------------------------
// Sobel forward. Sobel is separable and so is replicate padding (clamp rows, clamp columns), so
// Sx = Hdiff(Vsmooth(x)) and Sy = Hsmooth(Vdiff(x)) exactly. Per output row: one vertical pass
// over three input rows into two scratch rows, then one horizontal pass writing both outputs.

template <typename T>
inline void vertical_fwd(const T* __restrict__ up, const T* __restrict__ mid,
                         const T* __restrict__ dn, T* __restrict__ s, T* __restrict__ d, i64 w) {
  for (i64 j = 0; j < w; ++j) {
    s[j] = up[j] + T(2) * mid[j] + dn[j];
    d[j] = dn[j] - up[j];
  }
}

template <typename T>
inline void horizontal_fwd(const T* __restrict__ s, const T* __restrict__ d, T* __restrict__ ox,
                           T* __restrict__ oy, i64 w) {
  // s and d point one past the left replicated element: s[-1] and s[w] are valid.
  for (i64 j = 0; j < w; ++j) {
    ox[j] = s[j + 1] - s[j - 1];
    oy[j] = d[j - 1] + T(2) * d[j] + d[j + 1];
  }
}

template <typename T>
struct SobelFwdArgs {
  const T* x;
  T* sx;
  T* sy;
  i64 C, H, W, sB, sC, sH;
};

template <typename T>
void sobel_fwd_rows(void* ctx, i64 r0, i64 r1) {
  const SobelFwdArgs<T>& p = *static_cast<const SobelFwdArgs<T>*>(ctx);
  const i64 C = p.C, H = p.H, W = p.W;
  T* s = scratch<T>(W + 2);
  T* d = scratch<T>(W + 2);
  for (i64 r = r0; r < r1; ++r) {
    const i64 i = r % H;
    const i64 q = r / H;
    const T* plane = p.x + (q / C) * p.sB + (q % C) * p.sC;
    const T* up = plane + clamp_index(i - 1, H) * p.sH;
    const T* mid = plane + i * p.sH;
    const T* dn = plane + clamp_index(i + 1, H) * p.sH;
    vertical_fwd(up, mid, dn, s + 1, d + 1, W);
    s[0] = s[1];
    s[W + 1] = s[W];
    d[0] = d[1];
    d[W + 1] = d[W];
    horizontal_fwd(s + 1, d + 1, p.sx + r * W, p.sy + r * W, W);
  }
  std::free(s);
  std::free(d);
}

inline i64 rows_per_item(i64 W) { return W >= kItem ? 1 : kItem / W; }

template <typename T>
void sobel_fwd_impl(const T* x, T* sx, T* sy, i64 B, i64 C, i64 H, i64 W, i64 sB, i64 sC,
                    i64 sH, int nthreads) {
  const i64 rows = B * C * H;
  if (rows == 0 || W == 0) return;
  SobelFwdArgs<T> args{x, sx, sy, C, H, W, sB, sC, sH};
  parallel_chunks(rows, rows_per_item(W), threads_for(rows * W, nthreads), &sobel_fwd_rows<T>,
                  &args);
}

// ---------------------------------------------------------------------------------------------
// Sobel backward = the transposed operator: gin = Vs^T Hd^T gx + Vd^T Hs^T gy. The vertical and
// horizontal adjoints act on different axes and commute, so per output row we first combine the
// (up to three) contributing rows with their adjoint weights, then apply the horizontal adjoint.

template <typename T>
inline void vertical_bwd(const T* __restrict__ x0, const T* __restrict__ x1,
                         const T* __restrict__ x2, T c0, T c1, T c2, T* __restrict__ out, i64 w) {
  for (i64 j = 0; j < w; ++j) out[j] = c0 * x0[j] + c1 * x1[j] + c2 * x2[j];
}

template <typename T>
inline void horizontal_bwd(const T* __restrict__ u, const T* __restrict__ v, T* __restrict__ o,
                           i64 w) {
  // u, v are zero-padded (u[-1] = u[w] = 0): this is the "full" transposed correlation
  // restricted to the interior; the border fold happens in the caller.
  for (i64 j = 0; j < w; ++j) {
    o[j] = (u[j - 1] - u[j + 1]) + (v[j - 1] + T(2) * v[j] + v[j + 1]);
  }
}

template <typename T>
struct SobelBwdArgs {
  const T* gx;
  const T* gy;
  T* gin;
  i64 C, H, W, xB, xC, xH, yB, yC, yH;
};

template <typename T>
void sobel_bwd_rows(void* ctx, i64 r0, i64 r1) {
  const SobelBwdArgs<T>& p = *static_cast<const SobelBwdArgs<T>*>(ctx);
  const i64 C = p.C, H = p.H, W = p.W;
  const T kSmooth[3] = {T(1), T(2), T(1)};
  const T kDiff[3] = {T(-1), T(0), T(1)};
  T* u = scratch<T>(W + 2);
  T* v = scratch<T>(W + 2);
  u[0] = u[W + 1] = v[0] = v[W + 1] = T(0);
  for (i64 r = r0; r < r1; ++r) {
    const i64 i = r % H;
    const i64 q = r / H;
    const T* px = p.gx + (q / C) * p.xB + (q % C) * p.xC;
    const T* py = p.gy + (q / C) * p.yB + (q % C) * p.yC;
    // Rows i-1, i, i+1 (missing ones get weight 0 and alias row i to keep one loop shape).
    i64 src[3];
    T cs[3], cd[3];
    for (int k = 0; k < 3; ++k) {
      const i64 rr = i - 1 + k;
      const bool ok = rr >= 0 && rr < H;
      src[k] = ok ? rr : i;
      cs[k] = ok ? adjoint_weight(kSmooth, i, rr, H) : T(0);
      cd[k] = ok ? adjoint_weight(kDiff, i, rr, H) : T(0);
    }
    const i64 xH = p.xH, yH = p.yH;
    vertical_bwd(px + src[0] * xH, px + src[1] * xH, px + src[2] * xH, cs[0], cs[1], cs[2],
                 u + 1, W);
    vertical_bwd(py + src[0] * yH, py + src[1] * yH, py + src[2] * yH, cd[0], cd[1], cd[2],
                 v + 1, W);
    T* o = p.gin + r * W;
    horizontal_bwd(u + 1, v + 1, o, W);
    // Fold the taps that landed on the replicated columns -1 and W back onto the edges:
    // Hd^T puts -u[0] on column -1 and +u[W-1] on column W; Hs^T puts v[0] and v[W-1].
    o[0] += -u[1] + v[1];
    o[W - 1] += u[W] + v[W];
  }
  std::free(u);
  std::free(v);
}

template <typename T>
void sobel_bwd_impl(const T* gx, const T* gy, T* gin, i64 B, i64 C, i64 H, i64 W, i64 xB,
                    i64 xC, i64 xH, i64 yB, i64 yC, i64 yH, int nthreads) {
  const i64 rows = B * C * H;
  if (rows == 0 || W == 0) return;
  SobelBwdArgs<T> args{gx, gy, gin, C, H, W, xB, xC, xH, yB, yC, yH};
  parallel_chunks(rows, rows_per_item(W), threads_for(rows * W, nthreads), &sobel_bwd_rows<T>,
                  &args);
}

// ---------------------------------------------------------------------------------------------
// GELU gate. The float path evaluates the normal CDF through erfc with a Chebyshev fit
// (Numerical Recipes' erfcc, relative error < 1.2e-7 for every argument) and a Cody-Waite exp,
// both branch-free so gcc vectorises the loops (libm's erff/expf are scalar calls that block
// vectorisation). Going through erfc rather than 1 + erf keeps full relative accuracy in the
// negative tail, where 1 + erf(a / sqrt 2) cancels (torch's float32 GELU loses ~1e-6 there).
// double uses libm: it serves gradcheck, where exactness matters more than speed.

// exp(x) for x <= ~0; Cephes expf polynomial after Cody-Waite range reduction. Arguments
// below -87.3 (float's smallest normal exponent) give 0: the clamp only keeps the exponent
// bit-shift in range, the final select makes the result exact there (without it, a * pdf(a)
// grew with |a| past 1e30). A NaN argument is mapped to -80 before the integer conversion.
inline float exp_neg_f32(float x) {
  const float x0 = x;
  x = x < -80.f ? -80.f : x;
  x = x != x ? -80.f : x;
  // Round-to-nearest through the 1.5 * 2^23 trick; needs IEEE semantics (no -ffast-math).
  const float magic = 12582912.f;
  const float n = (x * 1.44269504088896341f + magic) - magic;
  const float f = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  float y = p * f * f + f + 1.f;
  std::int32_t bits;
  std::memcpy(&bits, &y, sizeof(bits));
  bits += static_cast<std::int32_t>(n) * (1 << 23);
  std::memcpy(&y, &bits, sizeof(bits));
  y = x0 < -87.3f ? 0.f : y;
  return x0 != x0 ? x0 : y;
}

// erfc(z) for z >= 0.
inline float erfc_pos_f32(float z) {
  const float t = 1.f / (1.f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t + -0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t + -1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t + -0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t + -1.26551223f;
  return t * exp_neg_f32(p - z * z);
}

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

inline float cdf(float x) {
  const float tail = 0.5f * erfc_pos_f32((x < 0.f ? -x : x) * float(kSqrt1_2));
  return x < 0.f ? tail : 1.f - tail;
}
// erfc, not 1 + erf: no cancellation in the negative tail (as the float path, and as CUDA's
// normcdf), so CPU and CUDA agree there in double too
inline double cdf(double x) { return 0.5 * std::erfc(-x * kSqrt1_2); }
inline float pdf(float x) { return float(kInvSqrt2Pi) * exp_neg_f32(-0.5f * x * x); }
inline double pdf(double x) { return kInvSqrt2Pi * std::exp(-0.5 * x * x); }

template <typename T>
inline void gelu_mul_row(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                         i64 n) {
  for (i64 j = 0; j < n; ++j) {
    const T x = a[j];
    y[j] = x * cdf(x) * b[j];
  }
}

template <typename T>
inline void gelu_mul_bwd_row(const T* __restrict__ g, const T* __restrict__ a,
                             const T* __restrict__ b, T* __restrict__ ga, T* __restrict__ gb,
                             i64 n) {
  for (i64 j = 0; j < n; ++j) {
    const T x = a[j];
    const T c = cdf(x);
    ga[j] = g[j] * b[j] * (c + x * pdf(x));
    gb[j] = g[j] * x * c;
  }
}

// Work items are kItem-element pieces of the per-batch slabs, so that B = 1 still spreads over
// the threads. Outputs have their own batch stride: the whole-tensor gate backward writes the
// gradients of both halves into one (B, 2C, H, W) tensor (ga and gb then interleave per batch).

// Short slabs (channels-last gates: one pixel's C channels per "batch" item) are grouped so
// that a claimed chunk still holds about kItem elements.
inline i64 items_per_chunk(i64 inner) { return inner >= kItem ? 1 : kItem / inner; }

template <typename T>
struct GeluMulArgs {
  const T* a;
  const T* b;
  T* y;
  i64 inner, per_batch, sa, sb, sy;
};

template <typename T>
void gelu_mul_items(void* ctx, i64 t0, i64 t1) {
  const GeluMulArgs<T>& p = *static_cast<const GeluMulArgs<T>*>(ctx);
  for (i64 t = t0; t < t1; ++t) {
    const i64 n = t / p.per_batch;
    const i64 lo = (t % p.per_batch) * kItem;
    const i64 len = p.inner - lo < kItem ? p.inner - lo : kItem;
    gelu_mul_row(p.a + n * p.sa + lo, p.b + n * p.sb + lo, p.y + n * p.sy + lo, len);
  }
}

template <typename T>
void gelu_mul_impl(const T* a, const T* b, T* y, i64 B, i64 inner, i64 sa, i64 sb, i64 sy,
                   int nthreads) {
  if (B == 0 || inner == 0) return;
  const i64 per_batch = (inner + kItem - 1) / kItem;
  GeluMulArgs<T> args{a, b, y, inner, per_batch, sa, sb, sy};
  parallel_chunks(B * per_batch, items_per_chunk(inner), threads_for(B * inner, nthreads),
                  &gelu_mul_items<T>, &args);
}

template <typename T>
struct GeluMulBwdArgs {
  const T* g;
  const T* a;
  const T* b;
  T* ga;
  T* gb;
  i64 inner, per_batch, sg, sa, sb, so;
};

template <typename T>
void gelu_mul_bwd_items(void* ctx, i64 t0, i64 t1) {
  const GeluMulBwdArgs<T>& p = *static_cast<const GeluMulBwdArgs<T>*>(ctx);
  for (i64 t = t0; t < t1; ++t) {
    const i64 n = t / p.per_batch;
    const i64 lo = (t % p.per_batch) * kItem;
    const i64 len = p.inner - lo < kItem ? p.inner - lo : kItem;
    gelu_mul_bwd_row(p.g + n * p.sg + lo, p.a + n * p.sa + lo, p.b + n * p.sb + lo,
                     p.ga + n * p.so + lo, p.gb + n * p.so + lo, len);
  }
}

template <typename T>
void gelu_mul_bwd_impl(const T* g, const T* a, const T* b, T* ga, T* gb, i64 B, i64 inner,
                       i64 sg, i64 sa, i64 sb, i64 so, int nthreads) {
  if (B == 0 || inner == 0) return;
  const i64 per_batch = (inner + kItem - 1) / kItem;
  GeluMulBwdArgs<T> args{g, a, b, ga, gb, inner, per_batch, sg, sa, sb, so};
  parallel_chunks(B * per_batch, items_per_chunk(inner), threads_for(B * inner, nthreads),
                  &gelu_mul_bwd_items<T>, &args);
}

}  // namespace

// Type-erased entry points (declared in cpu_kernels.h); dtype 0 = float32, 1 = float64.
void sobel_fwd(const void* x, void* sx, void* sy, int dtype, i64 B, i64 C, i64 H, i64 W, i64 sB,
               i64 sC, i64 sH, int nthreads) {
  const i64 bytes = B * C * H * W * (dtype == kFloat64 ? 8 : 4);
  advise_huge_pages(sx, bytes);
  advise_huge_pages(sy, bytes);
  if (dtype == kFloat64) {
    sobel_fwd_impl(static_cast<const double*>(x), static_cast<double*>(sx),
                   static_cast<double*>(sy), B, C, H, W, sB, sC, sH, nthreads);
  } else {
    sobel_fwd_impl(static_cast<const float*>(x), static_cast<float*>(sx),
                   static_cast<float*>(sy), B, C, H, W, sB, sC, sH, nthreads);
  }
}

void sobel_bwd(const void* gx, const void* gy, void* gin, int dtype, i64 B, i64 C, i64 H, i64 W,
               i64 xB, i64 xC, i64 xH, i64 yB, i64 yC, i64 yH, int nthreads) {
  advise_huge_pages(gin, B * C * H * W * (dtype == kFloat64 ? 8 : 4));
  if (dtype == kFloat64) {
    sobel_bwd_impl(static_cast<const double*>(gx), static_cast<const double*>(gy),
                   static_cast<double*>(gin), B, C, H, W, xB, xC, xH, yB, yC, yH, nthreads);
  } else {
    sobel_bwd_impl(static_cast<const float*>(gx), static_cast<const float*>(gy),
                   static_cast<float*>(gin), B, C, H, W, xB, xC, xH, yB, yC, yH, nthreads);
  }
}

void gelu_mul_fwd(const void* a, const void* b, void* y, int dtype, i64 B, i64 inner, i64 sa,
                  i64 sb, i64 sy, int nthreads) {
  if (B > 0) advise_huge_pages(y, ((B - 1) * sy + inner) * (dtype == kFloat64 ? 8 : 4));
  if (dtype == kFloat64) {
    gelu_mul_impl(static_cast<const double*>(a), static_cast<const double*>(b),
                  static_cast<double*>(y), B, inner, sa, sb, sy, nthreads);
  } else {
    gelu_mul_impl(static_cast<const float*>(a), static_cast<const float*>(b),
                  static_cast<float*>(y), B, inner, sa, sb, sy, nthreads);
  }
}

void gelu_mul_bwd(const void* g, const void* a, const void* b, void* ga, void* gb, int dtype,
                  i64 B, i64 inner, i64 sg, i64 sa, i64 sb, i64 so, int nthreads) {
  if (B > 0) {
    const i64 esize = dtype == kFloat64 ? 8 : 4;
    // The whole-tensor backward passes gb = ga + inner: advise the union once.
    const bool joint = static_cast<const char*>(gb) == static_cast<const char*>(ga) + inner * esize;
    advise_huge_pages(ga, ((B - 1) * so + (joint ? 2 * inner : inner)) * esize);
    if (!joint) advise_huge_pages(gb, ((B - 1) * so + inner) * esize);
  }
  if (dtype == kFloat64) {
    gelu_mul_bwd_impl(static_cast<const double*>(g), static_cast<const double*>(a),
                      static_cast<const double*>(b), static_cast<double*>(ga),
                      static_cast<double*>(gb), B, inner, sg, sa, sb, so, nthreads);
  } else {
    gelu_mul_bwd_impl(static_cast<const float*>(g), static_cast<const float*>(a),
                      static_cast<const float*>(b), static_cast<float*>(ga),
                      static_cast<float*>(gb), B, inner, sg, sa, sb, so, nthreads);
  }
}

}  // namespace REFUSION_ISA_NS
}  // namespace refusion
