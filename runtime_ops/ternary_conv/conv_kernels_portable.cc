// Portable instance of the fast TernaryConv kernels, on 4-float vectors of the GCC/Clang vector
// extension compiled for the baseline instruction set of the build (SSE2 on x86-64). Used on CPUs
// without AVX2 and when MICRONET_TERNARY_ISA=portable.
#include <cstdint>
#include <cstring>

#include "ternary_conv/conv_kernels.h"

namespace micronet {
namespace ternary_conv {
namespace kernels {
namespace {

// 4-float vectors with the GCC/Clang vector extension: the compiler lowers them to whatever the
// target has (an SSE2 register on baseline x86-64, NEON on AArch64, scalar code elsewhere).
typedef float F4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));

struct Isa {
  static constexpr const char* kName = "portable";
  static constexpr int kLanes = 4;
  static constexpr int kSparseVectors = 8;
  static constexpr int kDenseVectors = 3;
  static constexpr int kDenseRows = 4;
  using V = F4;
  using M = I4;  // all-ones lanes are valid
  static constexpr bool kLaneShift = false;  // no lane-shift kernel: unaligned loads instead
  static inline V Zero() { return V{0, 0, 0, 0}; }
  static inline V Load(const float* p) {
    V r;
    std::memcpy(&r, p, sizeof r);
    return r;
  }
  static inline V Add(V a, V b) { return a + b; }
  // acc + p[lanes in m]: every job reads a scratch copy with slack around it, so the whole vector
  // is readable
  static inline V AddMasked(V acc, M m, const float* p) {
    const I4 bits = reinterpret_cast<I4>(Load(p)) & m;
    return acc + reinterpret_cast<V>(bits);
  }
  static inline V FmaMasked(V acc, M m, V r, const float* p) {
    const I4 bits = reinterpret_cast<I4>(Load(p)) & m;
    return acc + r * reinterpret_cast<V>(bits);
  }
  static inline V AddMaskedReg(V acc, M, V) { return acc; }
  static inline V ZeroMasked(M m, V v) { return reinterpret_cast<V>(reinterpret_cast<I4>(v) & m); }
  static inline int ShiftIndex(int s) { return s; }
  static inline V Shift2(V a, int, V) { return a; }
  static inline M MaskFromBits(uint32_t bits) {
    const I4 lane_bits = {1, 2, 4, 8};
    const I4 b = lane_bits & static_cast<int32_t>(bits & 0xfu);
    return b != 0;
  }
  static inline V Mul(V a, V b) { return a * b; }
  static inline V Fma(V a, V b, V c) { return a * b + c; }
  static inline V Set1(float x) { return V{x, x, x, x}; }
  // y < 0 ? 0 : y lane-wise: NaN stays NaN, like the reference
  static inline V Relu(V y) { return reinterpret_cast<V>(reinterpret_cast<I4>(y) & ~(y < 0.0f)); }
  static inline void Store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
  static inline void StorePartial(float* p, V v, int n) {
    float tmp[4];
    std::memcpy(tmp, &v, sizeof v);
    for (int i = 0; i < n; ++i) p[i] = tmp[i];
  }
  // lane i = src[(q0 + i) * step + shift] for q0 + i in [q_lo, q_hi), else 0 (not read)
  static inline V GatherRange(const float* src, int64_t q0, int64_t step, int64_t shift, int64_t q_lo, int64_t q_hi) {
    float r[4];
    for (int i = 0; i < 4; ++i) {
      const int64_t q = q0 + i;
      r[i] = (q >= q_lo && q < q_hi) ? src[q * step + shift] : 0.0f;
    }
    return Load(r);
  }
  // lanes i in [lo, hi) loaded from p[i] (others 0, not read)
  static inline V LoadRange(const float* p, int64_t lo, int64_t hi) {
    float r[4];
    for (int i = 0; i < 4; ++i) r[i] = (i >= lo && i < hi) ? p[i] : 0.0f;
    return Load(r);
  }
};

#include "ternary_conv/conv_kernels_impl.inc"

}  // namespace

const KernelTable* PortableKernels() { return &kTable; }

}  // namespace kernels
}  // namespace ternary_conv
}  // namespace micronet
