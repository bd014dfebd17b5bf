// The fast TernaryConv compute kernels: plain-data job descriptions shared by the engine
// (fast_engine.h and its fast_*.cc units) and the per-instruction-set kernel translation units
// (conv_kernels_avx512.cc, conv_kernels_avx2.cc, conv_kernels_portable.cc), each compiled with its
// own target flags from the same template source (conv_kernels_impl.inc).
//
// Data layout. Output pixels are processed in "bands" of whole output rows, flattened: the
// band-local flat index of output (oh, ow) is f = (oh - oh0) * OW + ow. For every tap (input channel,
// kh, kw) the input value an output needs sits at base + f + offset(tap): one constant offset per
// tap, so a tap adds a contiguous run of input floats into the accumulators of a run of output
// pixels (vectorised over output pixels across rows, no im2col). Two layouts provide that:
//
// - "same" geometry (stride 1 and OW == W, MicroNet's 3x3 pad-1 convs): the input planes of X
//   themselves (pitch W). Bands whose taps only read rows inside X read X directly; the first and
//   last bands (vertical zero padding) read a zero-padded copy of their rows. Lanes whose column
//   falls into the horizontal padding are cut by per-kw lane masks (bit f % 16 of
//   masks[g * mask_stride + f / 16]), so there are neither wasted columns nor a copy of X.
// - any other geometry (strides, ...): a scratch copy with one zero-padded plane per (input channel,
//   kw, row phase), pre-shifted so that plane column q of kw holds X column q * stride_w + kw * dil_w
//   - pad_left: no masks.
//
// Taps are grouped by kw in the first layout (one lane-mask set per group), in one group otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

namespace micronet {
namespace ternary_conv {
namespace kernels {

// A tap's offset into the band scratch. The scratch holds at most 48 Ki floats (kMaxScratchFloats
// in fast_engine.h), so 16 bits suffice, and the tap tables of a whole model (about 1.4 M taps
// for MicroNet-C100 at 90 % sparsity) take half the cache they took as int32.
using Offset = uint16_t;

// What one call computes: one band of output rows of one image, for stored rows (sparse) or row
// blocks (dense) [row_begin, row_end).
struct BandJob {
  const float* base = nullptr;       // input position of band-local output 0 (X or a scratch copy)
  const Offset* offsets = nullptr;   // tap offsets for this base, in the weights' tap order
  int64_t band_flat = 0;             // outputs of the band: rows_in_band * OW
  float* y_band = nullptr;           // Y + (b * M_out) * OH * OW + oh0 * OW: channel 0 of the band
  const float* r_band = nullptr;     // the residual at the same place as y_band (format v2), or nullptr
  int64_t y_plane = 0;               // OH * OW
  int64_t row_begin = 0, row_end = 0;
  int64_t groups = 1;                     // tap groups per sign (kw groups, or 1)
  const uint16_t* masks = nullptr;        // [groups][mask_stride] lane-valid bits over band-local f
  int64_t mask_stride = 0;
  const uint8_t* group_masked = nullptr;  // [groups]: 1 when some lane of the group needs its mask
  int mask_period = 0;  // 1, 2 or 4: the masks of vector v equal those of vector v % period; 0: none
  int tile_vectors = 0;  // sparse: vectors per tile (a power of two up to KernelTable::sparse_tile / lanes)
  // sparse, KernelTable::lane_shift kernels: per group, the lane shift s in [0, 16) of its taps; the
  // group's offsets are then 16-float aligned and the tap's input run starts s floats after them
  const int32_t* group_shift = nullptr;
};

// Decoded weight for the sparse kernels: stored row r, list s (0: A, 1: B), group g has the taps
// offsets[group_start[(2 * r + s) * groups + g] .. group_start[(2 * r + s) * groups + g + 1]).
struct SparseWeights {
  const int64_t* group_start = nullptr;  // [2 * m_stored * groups + 1]
  const int32_t* out_channel = nullptr;  // [m_stored]
  const float* scale = nullptr;          // [m_out]
  const float* bias = nullptr;           // [m_out]
  // every stored row: y = lead * (sum(list A) + ratio * sum(list B)), |ratio| <= 1
  float lead = 0.0f, ratio = 0.0f;
  bool relu = false;
};

// Decoded weight for the dense kernels: stored rows in blocks of `block` rows (the last block may be
// shorter: its missing rows have zero weights and are not stored). For block b, tap k the weights
// are weights[(b * k_total + k) * block + j] for row b * block + j; taps of group g are
// [group_start[g], group_start[g + 1]). Dense jobs always read a scratch copy (safe to over-read).
struct DenseWeights {
  int64_t block = 0;
  int64_t k_total = 0;
  int64_t m_stored = 0;
  const int64_t* group_start = nullptr;  // [groups + 1]
  const float* weights = nullptr;        // [blocks * k_total * block]
  const int32_t* out_channel = nullptr;
  const float* scale = nullptr;
  const float* bias = nullptr;
  bool relu = false;
};

struct KernelTable {
  const char* isa;        // "avx512", "avx2", "portable"
  int lanes;              // floats per vector
  int sparse_tile;        // floats per sparse tile
  int dense_block;        // rows per dense block
  int dense_tile;         // floats per dense tile
  bool lane_shift;        // sparse kernel takes BandJob::group_shift (aligned loads + one permute per vector)
  void (*sparse_band)(const SparseWeights& w, const BandJob& job);
  void (*dense_band)(const DenseWeights& w, const BandJob& job);
  // Fills `rows` plane rows of pitch `ow`: dst[j * ow + q] = src[j * src_stride + q * step + shift] for
  // q in [q_lo, q_hi), 0 elsewhere (src is only read there). With `affine` = {a, c} (the input affine
  // of format v2) the copied values are fma(a, src, c); the zeros stay zeros.
  void (*copy_rows)(float* dst, const float* src, int64_t src_stride, int64_t rows, int64_t ow, int64_t step,
                    int64_t shift, int64_t q_lo, int64_t q_hi, const float* affine);
  // dst[0, before) = 0, dst[before, before + n) = src[0, n) (or fma(a, src, c)), dst[before + n, total) = 0
  void (*fill_plane)(float* dst, const float* src, int64_t before, int64_t n, int64_t total, const float* affine);
};

const KernelTable* PortableKernels();
const KernelTable* Avx2Kernels();    // nullptr when not compiled in
const KernelTable* Avx512Kernels();  // nullptr when not compiled in

}  // namespace kernels
}  // namespace ternary_conv
}  // namespace micronet
