// AVX2 + FMA instance of the fast TernaryConv kernels. Compiled with -mavx2 -mfma; only called
// after a cpuid check.
#include <immintrin.h>

#include "ternary_conv/conv_kernels.h"

namespace micronet {
namespace ternary_conv {
namespace kernels {
namespace {

struct Isa {
  static constexpr const char* kName = "avx2";
  static constexpr int kLanes = 8;
  static constexpr int kSparseVectors = 8;  // 64 outputs per tile
  static constexpr int kDenseVectors = 3;   // 24 outputs x 4 rows: 12 accumulators
  static constexpr int kDenseRows = 4;
  using V = __m256;
  using M = __m256i;  // all-ones lanes are valid
  static inline V Zero() { return _mm256_setzero_ps(); }
  static inline V Load(const float* p) { return _mm256_loadu_ps(p); }
  static inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
  // acc + p[lanes in m]: every job reads a scratch copy with slack around it, so the whole vector is
  // readable and an AND is cheaper than a masked load
  static inline V AddMasked(V acc, M m, const float* p) {
    return _mm256_add_ps(acc, _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(m)));
  }
  static inline V FmaMasked(V acc, M m, V r, const float* p) {
    return _mm256_fmadd_ps(r, _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(m)), acc);
  }
  static inline V ZeroMasked(M m, V v) { return _mm256_and_ps(v, _mm256_castsi256_ps(m)); }
  static constexpr bool kLaneShift = false;  // no lane-shift kernel: unaligned loads instead
  static inline V AddMaskedReg(V acc, M, V) { return acc; }
  static inline int ShiftIndex(int s) { return s; }
  static inline V Shift2(V a, int, V) { return a; }
  static inline M MaskFromBits(uint32_t bits) {
    const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i b = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits & 0xffu)), lane_bits);
    return _mm256_cmpeq_epi32(b, lane_bits);
  }
  static inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V Set1(float f) { return _mm256_set1_ps(f); }
  static inline V Relu(V y) { return _mm256_max_ps(_mm256_setzero_ps(), y); }
  static inline void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  // lane i = src[(q0 + i) * step + shift] for q0 + i in [q_lo, q_hi), else 0 (not read)
  static inline V GatherRange(const float* src, int64_t q0, int64_t step, int64_t shift, int64_t q_lo, int64_t q_hi) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i q = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(q0)));
    const __m256i ge = _mm256_cmpgt_epi32(q, _mm256_set1_epi32(static_cast<int>(q_lo) - 1));
    const __m256i lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(q_hi)), q);
    const __m256 m = _mm256_castsi256_ps(_mm256_and_si256(ge, lt));
    const __m256i idx = _mm256_add_epi32(_mm256_mullo_epi32(q, _mm256_set1_epi32(static_cast<int>(step))),
                                         _mm256_set1_epi32(static_cast<int>(shift)));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), src, idx, m, 4);
  }
  // lanes i in [lo, hi) loaded from p[i] (others 0, not read)
  static inline V LoadRange(const float* p, int64_t lo, int64_t hi) {
    if (lo <= 0 && hi >= 8) return _mm256_loadu_ps(p);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i l = _mm256_set1_epi32(static_cast<int>(lo < -1 ? -1 : (lo > 8 ? 8 : lo)));
    const __m256i h = _mm256_set1_epi32(static_cast<int>(hi < 0 ? 0 : (hi > 8 ? 8 : hi)));
    // lo <= lane < hi
    const __m256i m = _mm256_andnot_si256(_mm256_cmpgt_epi32(l, lane), _mm256_cmpgt_epi32(h, lane));
    return _mm256_maskload_ps(p, m);
  }
  static inline void StorePartial(float* p, V v, int n) {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (int i = 0; i < n; ++i) p[i] = tmp[i];
  }
};

#include "ternary_conv/conv_kernels_impl.inc"

}  // namespace

const KernelTable* Avx2Kernels() { return &kTable; }

}  // namespace kernels
}  // namespace ternary_conv
}  // namespace micronet
