// AVX-512 (F, with 16-lane mask registers) instance of the fast TernaryConv kernels. Compiled with
// -mavx512f -mavx512vl -mavx512bw -mavx512dq -mavx2 -mfma; only called after a cpuid check.
#include <immintrin.h>

#include "ternary_conv/conv_kernels.h"

namespace micronet {
namespace ternary_conv {
namespace kernels {
namespace {

struct Isa {
  static constexpr const char* kName = "avx512";
  static constexpr int kLanes = 16;
  static constexpr int kSparseVectors = 16;  // 256 outputs per tile
  static constexpr int kDenseVectors = 3;   // 48 outputs x 8 rows: 24 accumulators
  static constexpr int kDenseRows = 8;
  using V = __m512;
  using M = __mmask16;
  static inline V Zero() { return _mm512_setzero_ps(); }
  static inline V Load(const float* p) { return _mm512_loadu_ps(p); }
  static inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
  // acc + p[lanes in m] as one merge-masked add with a memory operand (masked lanes are not read).
  // Written in asm because GCC turns the intrinsic form into a separate masked load and masked add,
  // which needs every mask twice and spills the mask registers.
  static inline V AddMasked(V acc, M m, const float* p) {
    __asm__("vaddps %[mem], %[acc], %[acc]%{%[k]%}"
            : [acc] "+v"(acc)
            : [mem] "m"(*reinterpret_cast<const float(*)[16]>(p)), [k] "Yk"(m));
    return acc;
  }
  // acc + r * p[lanes in m], likewise one merge-masked FMA with a memory operand
  static inline V FmaMasked(V acc, M m, V r, const float* p) {
    __asm__("vfmadd231ps %[mem], %[r], %[acc]%{%[k]%}"
            : [acc] "+v"(acc)
            : [mem] "m"(*reinterpret_cast<const float(*)[16]>(p)), [r] "v"(r), [k] "Yk"(m));
    return acc;
  }
  static inline V ZeroMasked(M m, V v) { return _mm512_maskz_mov_ps(m, v); }
  static inline V AddMaskedReg(V acc, M m, V x) { return _mm512_mask_add_ps(acc, m, acc, x); }
  // lane shift: Shift2(a, ShiftIndex(s), b) lane i = lane i + s of the 32-lane pair (a, b)
  static constexpr bool kLaneShift = true;
  static inline __m512i ShiftIndex(int s) {
    return _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(s));
  }
  static inline V Shift2(V a, __m512i idx, V b) { return _mm512_permutex2var_ps(a, idx, b); }
  static inline M MaskFromBits(uint32_t bits) { return static_cast<__mmask16>(bits & 0xffffu); }
  static inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V Set1(float f) { return _mm512_set1_ps(f); }
  // max(0, y) returns its second operand y when y is NaN: NaN stays NaN, like the reference
  static inline V Relu(V y) { return _mm512_maskz_max_ps(static_cast<__mmask16>(0xffff), _mm512_setzero_ps(), y); }
  static inline void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  // lane i = src[(q0 + i) * step + shift] for q0 + i in [q_lo, q_hi), else 0 (not read)
  static inline V GatherRange(const float* src, int64_t q0, int64_t step, int64_t shift, int64_t q_lo, int64_t q_hi) {
    if (step == 2) {
      // two range-limited loads of the 32 source floats, then the even lanes
      const float* s = src + 2 * q0 + shift;
      const int64_t lo = 2 * (q_lo - q0), hi = 2 * (q_hi - q0) - 1;
      const V a = LoadRange(s, lo, hi), b = LoadRange(s + 16, lo - 16, hi - 16);
      const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      return _mm512_permutex2var_ps(a, even, b);
    }
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i q = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(q0)));
    const __mmask16 m = _mm512_cmpge_epi32_mask(q, _mm512_set1_epi32(static_cast<int>(q_lo))) &
                        _mm512_cmplt_epi32_mask(q, _mm512_set1_epi32(static_cast<int>(q_hi)));
    const __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(q, _mm512_set1_epi32(static_cast<int>(step))),
                                         _mm512_set1_epi32(static_cast<int>(shift)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, src, 4);
  }
  // lanes i in [lo, hi) loaded from p[i] (others 0, not read)
  static inline V LoadRange(const float* p, int64_t lo, int64_t hi) {
    if (lo <= 0 && hi >= 16) return _mm512_loadu_ps(p);
    lo = lo < 0 ? 0 : lo;
    hi = hi > 16 ? 16 : hi;
    if (hi <= lo) return _mm512_setzero_ps();
    const uint32_t m = ((1u << hi) - 1u) & ~((1u << lo) - 1u);
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p);
  }
  static inline void StorePartial(float* p, V v, int n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
  }
};

#include "ternary_conv/conv_kernels_impl.inc"

}  // namespace

const KernelTable* Avx512Kernels() { return &kTable; }

}  // namespace kernels
}  // namespace ternary_conv
}  // namespace micronet
