// The fast TernaryConv engines (sparse and dense), shared by their translation units:
//   fast_decode.cc  geometry-independent decode of the spec (slots, tap lists, complement rows,
//                   dense weight blocks), once per kernel
//   fast_plan.cc    per-input-size plan (band layout, tap offsets, groups, lane masks), cached
//   fast_run.cc     work split of a run and the execution of one work item (scratch fill, SIMD kernel)
// The choice between them and the instruction set is made in engine_dispatch.cc.
//
// Both share one execution scheme (see conv_kernels.h and docs/runtime.md, "Kernels and
// performance"): a run is split into work items (image, band of output rows, part of the stored
// rows); an item copies the input rows its band reads into a zero-padded scratch buffer (from a
// process-wide pool, fast_run.cc), laid out so that every tap is one constant offset (one plane per
// input channel plus lane masks in the common stride-1 "same" geometry, pre-shifted planes
// otherwise), then runs the SIMD
// kernel of the instruction set chosen at kernel creation over that band:
//
// - sparse: for every stored row, its non-zero taps as scratch offsets, positive and negative apart
//   and grouped by kw (and, with lane-shift kernels, by offset mod 16); each tap adds a contiguous
//   input run to the accumulators of a tile of output pixels; the two centroid products, the folded
//   BatchNorm scale/bias and the ReLU are applied once per output.
// - dense: the decoded float32 weight (zeros included), several output rows per tile sharing each
//   input load (a register-blocked direct convolution, no im2col); faster when few weights are zero.
//
// Plans are built on the first run of an input size and cached. Work items are fixed by the geometry
// and batch, not by the thread count, and each output element is computed by one item in a fixed
// order, so results do not depend on the number of threads.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "ternary_conv/conv_engine.h"
#include "ternary_conv/conv_kernels.h"

namespace micronet {
namespace ternary_conv {
namespace fast {

// Scratch floats a work item may use (a buffer of the pool in fast_run.cc): 192 KiB. Every tap offset is below it, so
// offsets are stored as kernels::Offset (16 bits).
constexpr int64_t kMaxScratchFloats = 48 * 1024;
static_assert(kMaxScratchFloats <= 65536, "tap offsets must fit kernels::Offset");
// Output floats a band aims at (one or two sparse tiles).
constexpr int64_t kBandTarget = 256;
// Additions a work item aims at when a run has to be split further than image x band, and the
// most items worth making for that (enough to balance a few threads).
constexpr double kWorkPerItem = 192.0 * 1024.0;
constexpr int64_t kMaxItemsWanted = 2;
// Average non-zero taps per (row, sign, kw) from which the lane-shift sparse kernel is used.
constexpr double kLaneShiftMinTaps = 4.0;

// The spec's tap range of list `list` (0: A, 1: B) of stored row r (see FastEngine::negative_first_).
inline int64_t ListIndex(int64_t r, int list, bool negative_first) { return 2 * r + (list ^ (negative_first ? 1 : 0)); }

// Everything that depends on the input size (H, W): band layout, tap offsets, lane masks. Built on
// the first run of a size and shared by every later run of that size.
struct Plan {
  int64_t in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  bool same = false;          // "same" layout (one plane per channel + lane masks); else shifted planes
  int64_t band_rows = 0;      // R: output rows per band
  int64_t num_bands = 0;
  int64_t min_dr = 0;         // scratch plane row 0 is (phase) row oh0 + min_dr
  int64_t scratch_rows = 0;   // R + max_dr - min_dr
  int64_t plane_stride = 0;   // floats per scratch plane
  int64_t chan_stride = 0;    // floats per slot (same: one plane; else k_w * stride_h planes)
  int64_t lead = 0;           // floats before plane 0 (masked lanes may point there)
  int64_t scratch_floats = 0;
  int64_t groups = 1;
  std::vector<int64_t> col_shift;    // shifted layout: X column of plane column q is q * stride_w + col_shift[kw]
  std::vector<int64_t> group_start;  // sparse: [2 * sparse_rows * groups + 1]; dense: [groups + 1]
  std::vector<kernels::Offset> offsets;  // per tap in group order: scratch offsets
  std::vector<uint16_t> masks;       // [groups][mask_stride]
  int64_t mask_stride = 0;
  std::vector<uint8_t> group_masked;
  std::vector<int32_t> group_shift;  // per group, for lane-shift kernels (else all 0)
  int mask_period = 0;               // see BandJob::mask_period
  int tile_vectors = 0;              // see BandJob::tile_vectors
  double cost_per_image = 0;         // additions (sparse) or multiply-adds (dense) of one image
};

// How the sparse kernel sums each stored row: its positive and negative taps (taps: the taps it adds
// per output position, the non-zero weights). The complement forms that once summed a row from its
// zero taps and a shared window sum were dropped (their error grew with the inputs under zero
// weights); the report's complement_rows is therefore 0.
struct RowPlan {
  int64_t taps = 0;
};

RowPlan PlanRows(const TernaryConvSpec& s);  // fast_decode.cc

// Per-geometry offsets of the kernel's rows and columns (fast_plan.cc): kernel row kh reads (phase)
// row oh + dr[kh] of row phase ph[kh]; kernel column kw reads column ow + dc[kw] (same layout) or
// plane column ow of the kw-shifted plane.
struct PlanAxes {
  std::vector<int64_t> dr, ph, dc;
  int64_t min_dr = 0, max_dr = 0, min_dc = 0, max_dc = 0;
  int64_t planes = 1;    // scratch planes per slot
  int64_t tile_max = 0;  // the larger of the sparse and dense tiles
};

class FastEngine final : public ConvEngine {
 public:
  // `rows` is PlanRows(spec) (used by the sparse engine; the dense one ignores it)
  FastEngine(const TernaryConvSpec& spec, const kernels::KernelTable* isa, bool dense, const RowPlan& rows);
  const char* Name() const override { return dense_ ? "dense" : "sparse"; }

  std::unique_ptr<ConvRun> Prepare(const RunGeometry& g) const override;  // fast_run.cc
  // Computes work item `item` of a run split into `parts` parts of `part_len` units per band; bands
  // whose input holds a NaN or an infinity go to `non_finite` when given (the dense engine). False
  // when no scratch buffer could be allocated (the item's output is then not written).
  bool Run(const Plan& p, const RunGeometry& g, int64_t parts, int64_t part_len, const RunIO& io, size_t item,
           const DirectRows* non_finite) const noexcept;

 private:
  // fast_decode.cc
  void DecodeSlots();
  void DecodeOutputs();
  void DecodeSparse();
  void DecodeDense();

  // fast_plan.cc
  std::shared_ptr<Plan> BuildPlan(const RunGeometry& g) const;
  PlanAxes PlanKernelAxes(const RunGeometry& g, Plan* p) const;
  bool PlanBands(const RunGeometry& g, const PlanAxes& ax, Plan* p) const;
  void PlanTile(const RunGeometry& g, const PlanAxes& ax, Plan* p) const;
  void PlanGroups(const PlanAxes& ax, int64_t out_w, Plan* p, std::vector<int32_t>* group_of,
                  std::vector<int64_t>* group_kw) const;
  void PlanMasks(const PlanAxes& ax, int64_t out_w, const std::vector<int64_t>& group_kw, Plan* p) const;
  void PlanTaps(const PlanAxes& ax, int64_t out_w, const std::vector<int32_t>& group_of, Plan* p) const;

  // fast_run.cc
  const float* SlotAffine(int64_t slot) const {
    return slot_affine_.empty() ? nullptr : slot_affine_.data() + 2 * slot;
  }
  void FillScratch(const Plan& p, const RunGeometry& g, const float* xb, int64_t oh0, float* scratch) const noexcept;
  void RunBand(const Plan& p, const RunGeometry& g, const float* scratch, float* y_band, const float* r_band,
               int64_t rows, int64_t u0, int64_t u1) const noexcept;

  const TernaryConvSpec& s_;
  const kernels::KernelTable* isa_;
  const bool dense_;

  // geometry-independent decode
  std::vector<int32_t> slot_channel_;  // slot -> X channel
  std::vector<float> slot_affine_;     // format v2 input affine per slot: {in_scale, in_bias}; empty if none
  std::vector<int32_t> out_channel_;   // stored row -> output channel
  std::vector<int32_t> dead_;          // output channels without a stored row
  std::vector<int32_t> slot_of_;       // X channel -> slot (-1: no tap reads it)
  // sparse: stored row r sums list A = the spec's positive taps of r (negative when negative_first_)
  // and list B = the other sign's, as coef_[0] * (A + coef_[1] * B); the taps are read from the spec
  // itself (s_.taps, s_.row_start) when a plan is built, so the engine keeps no per-tap table
  bool negative_first_ = false;
  float coef_[2] = {0.0f, 0.0f};
  int64_t k_total_ = 0, blocks_ = 0;
  std::vector<float> dense_weights_;

  mutable std::mutex mu_;
  mutable std::shared_ptr<const Plan> cached_;
  mutable std::unique_ptr<ConvEngine> direct_;
};

}  // namespace fast
}  // namespace ternary_conv
}  // namespace micronet
