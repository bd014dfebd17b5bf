// The fast TernaryConv engines (sparse and dense) and CreateEngine(), which picks one per layer.
//
// Both share one execution scheme (see conv_kernels.h and docs/runtime.md, "Kernels and
// performance"): a run is split into work items (image, band of output rows, part of the stored
// rows); an item copies the input rows its band reads into a zero-padded scratch buffer on its
// stack, laid out so that every tap is one constant offset (one plane per input channel plus lane
// masks in the common stride-1 "same" geometry, pre-shifted planes otherwise), then runs the SIMD
// kernel of the instruction set chosen at kernel creation over that band:
//
// - sparse: for every stored row, its non-zero taps as scratch offsets, positive and negative apart
//   and grouped by kw (and, with lane-shift kernels, by offset mod 16); each tap adds a contiguous
//   input run to the accumulators of a tile of output pixels; the two centroid products, the folded
//   BatchNorm scale/bias and the ReLU are applied once per output.
// - dense: the decoded float32 weight (zeros included), several output rows per tile sharing each
//   input load (a register-blocked direct convolution, no im2col); faster when few weights are zero.
//
// The choice of kernel (and of the instruction set: AVX-512, AVX2 or portable, from cpuid) is made
// once per node at kernel creation; MICRONET_TERNARY_KERNEL / MICRONET_TERNARY_ISA force it and
// MICRONET_TERNARY_LOG=1 prints it. Plans (band layout, tap offsets, masks) are built on the first
// run of an input size and cached. Work items are fixed by the geometry and batch, not by the thread
// count, and each output element is computed by one item in a fixed order, so results do not depend
// on the number of threads.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>  // for (int period : {1, 2, 4})
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "ternary_conv/conv_engine.h"
#include "ternary_conv/conv_kernels.h"
#include "ternary_conv/ternary_format.h"

namespace micronet {
namespace ternary_conv {

namespace {

namespace tf = ::micronet::ternary_format;
using kernels::BandJob;
using kernels::DenseWeights;
using kernels::KernelTable;
using kernels::SparseWeights;

// Scratch floats a work item may use (on its stack): 192 KiB. Every tap offset is below it, so
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

// Effective density (taps the sparse kernel adds, complement forms and S included, over all taps of
// the stored weight; see PlanRows) from which `auto` uses the dense kernel. The sparse kernel's cost
// is proportional to its taps, the dense kernel's to all taps. Measured on MicroNet's shapes (mnx
// bench --layers, batch 1, one thread; docs/runtime.md): at unit stride on 16x16 and 32x32 planes the
// sparse kernel wins at every sparsity (at 0 % zeros its complement form adds half the taps and runs
// 1.4x the dense kernel; at 33 % zeros, the worst case with two thirds of the taps, 1.15x), so the
// bound is above what it can reach; on planes of at most 64 outputs (8x8) its tiles are short and
// the dense kernel wins from about 0.55; strided layers read a pre-shifted copy per (kw, row phase)
// whose taps run slower, and there the dense kernel wins from about 0.4.
constexpr double kDenseDensityUnitStride = 0.75;
constexpr double kDenseDensitySmallPlane = 0.55;
constexpr int64_t kSmallPlane = 64;
constexpr double kDenseDensityStrided = 0.4;

inline int64_t FloorDiv(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
inline int64_t FloorMod(int64_t a, int64_t b) { return a - FloorDiv(a, b) * b; }
inline int64_t RoundUp(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

inline float Activate(float v, Activation act) { return (act == Activation::kRelu && v < 0.0f) ? 0.0f : v; }

// ---------------------------------------------------------------------------------------------
// kernel selection

enum class Algo { kAuto, kSparse, kDense, kDirect };

struct Choice {
  Algo algo = Algo::kAuto;
  const KernelTable* isa = nullptr;
  bool log = false;
};

bool CpuHasAvx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool CpuHasAvx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const KernelTable* BestIsa() {
  // cpuid first: nothing compiled for an instruction set runs before the CPU is known to have it
  if (CpuHasAvx512() && kernels::Avx512Kernels() != nullptr) return kernels::Avx512Kernels();
  if (CpuHasAvx2() && kernels::Avx2Kernels() != nullptr) return kernels::Avx2Kernels();
  return kernels::PortableKernels();
}

std::string EnvString(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

Choice ReadChoice() {
  Choice c;
  const std::string kernel = EnvString("MICRONET_TERNARY_KERNEL");
  const std::string isa = EnvString("MICRONET_TERNARY_ISA");
  const std::string log = EnvString("MICRONET_TERNARY_LOG");
  c.log = !log.empty() && log != "0";
  c.isa = BestIsa();
  if (kernel.empty() || kernel == "auto") {
    c.algo = Algo::kAuto;
  } else if (kernel == "sparse") {
    c.algo = Algo::kSparse;
  } else if (kernel == "dense") {
    c.algo = Algo::kDense;
  } else if (kernel == "direct") {
    c.algo = Algo::kDirect;
  } else if (kernel == "portable") {  // the sparse kernel in portable C++
    c.algo = Algo::kSparse;
    c.isa = kernels::PortableKernels();
  } else {
    throw std::invalid_argument("MICRONET_TERNARY_KERNEL='" + kernel.substr(0, 32) +
                                "' is not one of auto, sparse, dense, portable, direct");
  }
  if (isa.empty() || isa == "auto") {
    // keep
  } else if (isa == "portable") {
    c.isa = kernels::PortableKernels();
  } else if (isa == "avx2") {
    if (!CpuHasAvx2() || kernels::Avx2Kernels() == nullptr) {
      throw std::invalid_argument("MICRONET_TERNARY_ISA=avx2 but this CPU (or build) has no AVX2 + FMA");
    }
    c.isa = kernels::Avx2Kernels();
  } else if (isa == "avx512") {
    if (!CpuHasAvx512() || kernels::Avx512Kernels() == nullptr) {
      throw std::invalid_argument("MICRONET_TERNARY_ISA=avx512 but this CPU (or build) has no AVX-512 F/VL/BW/DQ");
    }
    c.isa = kernels::Avx512Kernels();
  } else {
    throw std::invalid_argument("MICRONET_TERNARY_ISA='" + isa.substr(0, 32) +
                                "' is not one of auto, avx512, avx2, portable");
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// per-geometry plan

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

// How the sparse kernel sums each stored row. A ternary row's output is c_pos * P + c_neg * N, with P
// (N) the sum of the inputs under its positive (negative) taps. With Z the inputs under its zero
// taps and S the sum under every tap of the window (shared by all rows), N = S - P - Z, so the row is
// also (c_pos - c_neg) * P - c_neg * Z + c_neg * S, or likewise from N and Z: each row adds the
// smaller two of its three tap lists. A dense ternary weight (no zeros) then costs half its taps,
// and no layer more than about two thirds. Only with group == 1 (one S for all rows).
struct RowPlan {
  std::vector<int8_t> mode;  // per stored row: 0 = (P, N), 1 = (P, Z) + S, 2 = (N, Z) + S
  bool use_sum = false;      // some row uses S: the engine computes it as an extra row
  int64_t taps = 0;          // taps the sparse kernel adds per output position (S included)
};

RowPlan PlanRows(const TernaryConvSpec& s) {
  RowPlan rp;
  rp.mode.assign(static_cast<size_t>(s.m_stored), 0);
  rp.taps = s.nnz;
  if (s.group != 1) return rp;
  const int64_t row_len = s.cin_per_group * s.k_h * s.k_w;
  int64_t saving = 0;
  std::vector<int8_t> mode(rp.mode);
  for (int64_t r = 0; r < s.m_stored; ++r) {
    const int64_t np = s.row_start[static_cast<size_t>(2 * r + 1)] - s.row_start[static_cast<size_t>(2 * r)];
    const int64_t nn = s.row_start[static_cast<size_t>(2 * r + 2)] - s.row_start[static_cast<size_t>(2 * r + 1)];
    const int64_t nz = row_len - np - nn;
    int64_t best = np + nn;
    if (np + nz < best) best = np + nz, mode[static_cast<size_t>(r)] = 1;
    if (nn + nz < best) best = nn + nz, mode[static_cast<size_t>(r)] = 2;
    saving += np + nn - best;
  }
  // S costs one row of row_len taps; worth it when the rows save more than that
  if (saving > row_len) {
    rp.mode = std::move(mode);
    rp.use_sum = true;
    rp.taps = s.nnz - saving + row_len;
  }
  return rp;
}

class FastEngine;

class FastRun final : public ConvRun {
 public:
  FastRun(const FastEngine& e, std::shared_ptr<const Plan> plan, const RunGeometry& g, int64_t parts,
          int64_t part_len)
      : e_(e), plan_(std::move(plan)), g_(g), parts_(parts), part_len_(part_len) {}
  size_t NumWorkItems() const override {
    return g_.batch <= 0 ? 0
                         : static_cast<size_t>(g_.batch) * static_cast<size_t>(plan_->num_bands) *
                               static_cast<size_t>(parts_);
  }
  double Cost() const override { return plan_->cost_per_image * static_cast<double>(g_.batch); }
  void RunWorkItem(const RunIO& io, size_t item) const noexcept override;

 private:
  const FastEngine& e_;
  std::shared_ptr<const Plan> plan_;
  RunGeometry g_;
  int64_t parts_, part_len_;
};

class FastEngine final : public ConvEngine {
 public:
  // `rows` is PlanRows(spec) (used by the sparse engine; the dense one ignores it)
  FastEngine(const TernaryConvSpec& spec, const KernelTable* isa, bool dense, const RowPlan& rows)
      : s_(spec), isa_(isa), dense_(dense) {
    Decode(rows);
  }
  const char* Name() const override { return dense_ ? "dense" : "sparse"; }

  std::unique_ptr<ConvRun> Prepare(const RunGeometry& g) const override;
  void Run(const Plan& p, const RunGeometry& g, int64_t parts, int64_t part_len, const RunIO& io,
           size_t item) const noexcept;

 private:
  void Decode(const RowPlan& rp);
  const float* SlotAffine(int64_t slot) const {
    return slot_affine_.empty() ? nullptr : slot_affine_.data() + 2 * slot;
  }
  std::shared_ptr<Plan> BuildPlan(const RunGeometry& g) const;
  void FillScratch(const Plan& p, const RunGeometry& g, const float* xb, int64_t oh0, float* scratch) const noexcept;
  void RunBand(const Plan& p, const RunGeometry& g, const float* scratch, float* y_band, const float* r_band,
               int64_t rows, int64_t u0, int64_t u1) const noexcept;

  const TernaryConvSpec& s_;
  const KernelTable* isa_;
  const bool dense_;

  // geometry-independent decode
  std::vector<int32_t> slot_channel_;  // slot -> X channel
  std::vector<float> slot_affine_;     // format v2 input affine per slot: {in_scale, in_bias}; empty if none
  std::vector<int32_t> out_channel_;   // stored row -> output channel
  std::vector<int32_t> dead_;          // output channels without a stored row
  // taps as (slot, kh, kw): sparse in row_start_ order; dense k = (kw, slot, kh) row-major
  std::vector<int32_t> tap_slot_, tap_kh_, tap_kw_;
  // sparse: stored row r sums the taps of list A = [row_start_[2r], row_start_[2r+1]) and of list B =
  // [row_start_[2r+1], row_start_[2r+2]) and computes coef_[3r] * (A + coef_[3r+1] * B) + coef_[3r+2] * S,
  // where S (the sum over every tap of the window, all stored channels) is the extra row m_stored,
  // present when some row uses a complement form (see RowPlan).
  std::vector<int64_t> row_start_;
  std::vector<float> coef_;
  int64_t sparse_rows_ = 0;  // m_stored, + 1 with the S row
  bool has_sum_ = false;
  int64_t k_total_ = 0, blocks_ = 0;
  std::vector<float> dense_weights_;

  mutable std::mutex mu_;
  mutable std::shared_ptr<const Plan> cached_;
  mutable std::unique_ptr<ConvEngine> direct_;
};

void FastEngine::Decode(const RowPlan& rp) {
  const TernaryConvSpec& s = s_;
  has_sum_ = !dense_ && rp.use_sum;
  // slots: the channels of X that some tap reads, in increasing order (a channel that no non-zero
  // weight reads is neither copied nor visited), or every stored channel when S is summed
  int64_t max_channel = -1;
  for (const Tap& t : s.taps) max_channel = std::max<int64_t>(max_channel, t.channel);
  if (has_sum_) {
    for (int32_t c : s.stored_channels) max_channel = std::max<int64_t>(max_channel, c);
  }
  std::vector<int32_t> slot_of(static_cast<size_t>(max_channel + 1), -1);  // X channel -> slot
  for (const Tap& t : s.taps) slot_of[static_cast<size_t>(t.channel)] = 0;
  if (has_sum_) {
    for (int32_t c : s.stored_channels) slot_of[static_cast<size_t>(c)] = 0;
  }
  for (size_t c = 0; c < slot_of.size(); ++c) {
    if (slot_of[c] < 0) continue;
    slot_of[c] = static_cast<int32_t>(slot_channel_.size());
    slot_channel_.push_back(static_cast<int32_t>(c));
  }
  const int64_t slots = static_cast<int64_t>(slot_channel_.size());
  if (s.has_in_affine) {
    for (int32_t c : slot_channel_) {
      slot_affine_.push_back(s.in_scale[static_cast<size_t>(c)]);
      slot_affine_.push_back(s.in_bias[static_cast<size_t>(c)]);
    }
  }

  out_channel_.assign(static_cast<size_t>(s.m_stored), 0);
  for (int64_t o = 0; o < s.m_out; ++o) {
    const int32_t r = s.out_row[static_cast<size_t>(o)];
    if (r < 0) {
      dead_.push_back(static_cast<int32_t>(o));
    } else {
      out_channel_[static_cast<size_t>(r)] = static_cast<int32_t>(o);
    }
  }

  if (!dense_) {
    auto push = [&](int32_t channel, int32_t kh, int32_t kw) {
      tap_slot_.push_back(slot_of[static_cast<size_t>(channel)]);
      tap_kh_.push_back(kh);
      tap_kw_.push_back(kw);
    };
    const int64_t k_area = s.k_h * s.k_w, row_len = s.cin_per_group * k_area;
    std::vector<int32_t> ci_of;  // X channel -> stored input channel (group == 1 when S is used)
    if (has_sum_) {
      ci_of.assign(static_cast<size_t>(max_channel + 1), -1);
      for (size_t c = 0; c < s.stored_channels.size(); ++c) {
        ci_of[static_cast<size_t>(s.stored_channels[c])] = static_cast<int32_t>(c);
      }
    }
    std::vector<uint8_t> nonzero(static_cast<size_t>(row_len));
    sparse_rows_ = s.m_stored + (has_sum_ ? 1 : 0);
    row_start_.assign(static_cast<size_t>(2 * sparse_rows_ + 1), 0);
    coef_.assign(static_cast<size_t>(3 * s.m_stored), 0.0f);
    tap_slot_.reserve(static_cast<size_t>(rp.taps));
    tap_kh_.reserve(static_cast<size_t>(rp.taps));
    tap_kw_.reserve(static_cast<size_t>(rp.taps));
    struct T3 {
      int32_t channel, kh, kw;
    };
    std::vector<T3> list_a, list_b;
    auto take = [&](std::vector<T3>* list, int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const Tap& t = s.taps[static_cast<size_t>(i)];
        list->push_back(T3{t.channel, t.kh, t.kw});
      }
    };
    for (int64_t r = 0; r < s.m_stored; ++r) {
      const int64_t p0 = s.row_start[static_cast<size_t>(2 * r)], n0 = s.row_start[static_cast<size_t>(2 * r + 1)];
      const int64_t n1 = s.row_start[static_cast<size_t>(2 * r + 2)];
      const int mode = rp.mode[static_cast<size_t>(r)];
      list_a.clear();
      list_b.clear();
      float k_a = s.c_pos, k_b = s.c_neg, k_s = 0.0f;
      if (mode == 0) {  // (P, N)
        take(&list_a, p0, n0);
        take(&list_b, n0, n1);
      } else {  // (P, Z) or (N, Z): list B is the zero taps
        if (mode == 1) {
          take(&list_a, p0, n0);
          k_a = s.c_pos - s.c_neg, k_b = -s.c_neg, k_s = s.c_neg;
        } else {
          take(&list_a, n0, n1);
          k_a = s.c_neg - s.c_pos, k_b = -s.c_pos, k_s = s.c_pos;
        }
        std::fill(nonzero.begin(), nonzero.end(), 0);
        for (int64_t i = p0; i < n1; ++i) {
          const Tap& t = s.taps[static_cast<size_t>(i)];
          nonzero[static_cast<size_t>(ci_of[static_cast<size_t>(t.channel)] * k_area + t.kh * s.k_w + t.kw)] = 1;
        }
        for (int64_t j = 0; j < row_len; ++j) {
          if (nonzero[static_cast<size_t>(j)]) continue;
          list_b.push_back(T3{s.stored_channels[static_cast<size_t>(j / k_area)],
                              static_cast<int32_t>((j % k_area) / s.k_w), static_cast<int32_t>(j % s.k_w)});
        }
      }
      // k_a * A + k_b * B = lead * (A' + ratio * B') with the larger coefficient as lead (|ratio| <= 1)
      if (std::fabs(k_b) > std::fabs(k_a)) {
        std::swap(list_a, list_b);
        std::swap(k_a, k_b);
      }
      float* k = &coef_[static_cast<size_t>(3 * r)];
      k[0] = k_a;
      k[1] = k_a != 0.0f ? k_b / k_a : 0.0f;
      k[2] = k_s;
      row_start_[static_cast<size_t>(2 * r)] = static_cast<int64_t>(tap_slot_.size());
      for (const T3& t : list_a) push(t.channel, t.kh, t.kw);
      row_start_[static_cast<size_t>(2 * r + 1)] = static_cast<int64_t>(tap_slot_.size());
      for (const T3& t : list_b) push(t.channel, t.kh, t.kw);
    }
    if (has_sum_) {  // row m_stored: S, every tap of every stored channel (list B empty)
      row_start_[static_cast<size_t>(2 * s.m_stored)] = static_cast<int64_t>(tap_slot_.size());
      for (int64_t j = 0; j < row_len; ++j) {
        push(s.stored_channels[static_cast<size_t>(j / k_area)], static_cast<int32_t>((j % k_area) / s.k_w),
             static_cast<int32_t>(j % s.k_w));
      }
      row_start_[static_cast<size_t>(2 * s.m_stored + 1)] = static_cast<int64_t>(tap_slot_.size());
    }
    row_start_[static_cast<size_t>(2 * sparse_rows_)] = static_cast<int64_t>(tap_slot_.size());
    return;
  }

  // dense (group == 1): k = (kw, slot, kh), weights packed in blocks of isa_->dense_block rows
  const int64_t block = isa_->dense_block;
  k_total_ = slots * s.k_h * s.k_w;
  blocks_ = (s.m_stored + block - 1) / block;
  for (int64_t kw = 0; kw < s.k_w; ++kw) {
    for (int64_t sl = 0; sl < slots; ++sl) {
      for (int64_t kh = 0; kh < s.k_h; ++kh) {
        tap_slot_.push_back(static_cast<int32_t>(sl));
        tap_kh_.push_back(static_cast<int32_t>(kh));
        tap_kw_.push_back(static_cast<int32_t>(kw));
      }
    }
  }
  dense_weights_.assign(static_cast<size_t>(blocks_ * k_total_ * block), 0.0f);
  for (int64_t r = 0; r < s.m_stored; ++r) {
    const int64_t bl = r / block, j = r % block;
    for (int sign = 0; sign < 2; ++sign) {
      const float value = sign == 0 ? s.c_pos : s.c_neg;
      const int64_t b = s.row_start[static_cast<size_t>(2 * r + sign)];
      const int64_t e = s.row_start[static_cast<size_t>(2 * r + sign + 1)];
      for (int64_t i = b; i < e; ++i) {
        const Tap& t = s.taps[static_cast<size_t>(i)];
        const int64_t k = (t.kw * slots + slot_of[static_cast<size_t>(t.channel)]) * s.k_h + t.kh;
        dense_weights_[static_cast<size_t>((bl * k_total_ + k) * block + j)] = value;
      }
    }
  }
}

std::shared_ptr<Plan> FastEngine::BuildPlan(const RunGeometry& g) const {
  const TernaryConvSpec& s = s_;
  auto p = std::make_shared<Plan>();
  p->in_h = g.in_h;
  p->in_w = g.in_w;
  p->out_h = g.out_h;
  p->out_w = g.out_w;
  const int64_t sh = s.stride_h, sw = s.stride_w;
  const int64_t OW = g.out_w, Wd = g.in_w;
  p->same = sh == 1 && sw == 1 && OW == Wd;
  // kernel row kh reads (phase) row oh + dr[kh] of row phase ph[kh]; kernel column kw reads
  // column ow + dc[kw] (same layout) or plane column ow of the kw-shifted plane
  std::vector<int64_t> dr(static_cast<size_t>(s.k_h)), ph(static_cast<size_t>(s.k_h)), dc(static_cast<size_t>(s.k_w));
  int64_t min_dr = INT64_MAX, max_dr = INT64_MIN, min_dc = 0, max_dc = 0;
  for (int64_t kh = 0; kh < s.k_h; ++kh) {
    const int64_t e = kh * s.dil_h - s.pad_top;
    dr[static_cast<size_t>(kh)] = FloorDiv(e, sh);
    ph[static_cast<size_t>(kh)] = FloorMod(e, sh);
    min_dr = std::min(min_dr, dr[static_cast<size_t>(kh)]);
    max_dr = std::max(max_dr, dr[static_cast<size_t>(kh)]);
  }
  p->col_shift.resize(static_cast<size_t>(s.k_w));
  for (int64_t kw = 0; kw < s.k_w; ++kw) {
    p->col_shift[static_cast<size_t>(kw)] = kw * s.dil_w - s.pad_left;
    dc[static_cast<size_t>(kw)] = p->same ? p->col_shift[static_cast<size_t>(kw)] : 0;
    min_dc = std::min(min_dc, dc[static_cast<size_t>(kw)]);
    max_dc = std::max(max_dc, dc[static_cast<size_t>(kw)]);
  }
  p->min_dr = min_dr;
  const int64_t halo = max_dr - min_dr;
  const int64_t slots = static_cast<int64_t>(slot_channel_.size());
  const int64_t tile_max = std::max<int64_t>(isa_->sparse_tile, isa_->dense_tile);
  p->lead = RoundUp(-min_dc + 16, 16);
  // the last tile of a band may read up to a tile (plus a column shift) past the band's rows
  const int64_t tail = RoundUp(tile_max + max_dc + 16, 16);
  const int64_t planes = p->same ? 1 : s.k_w * sh;
  auto layout = [&](int64_t rows) {
    p->band_rows = rows;
    p->scratch_rows = rows + halo;
    p->plane_stride = RoundUp(p->scratch_rows * OW, 16);
    if (p->plane_stride % 1024 == 0) p->plane_stride += 16;  // planes 4 KiB apart would share L1 sets
    p->chan_stride = p->plane_stride * planes;
    p->scratch_floats = p->lead + std::max<int64_t>(slots, 1) * p->chan_stride + tail;
  };
  // Band height: about kBandTarget outputs (whole tiles when possible), within the scratch limit.
  const int64_t tile = isa_->sparse_tile;
  int64_t rows = std::max<int64_t>(1, std::min<int64_t>(g.out_h, (kBandTarget + OW - 1) / OW));
  // two bands rather than one when each still holds a full tile of outputs: a second item for a
  // second thread without a second copy of the whole input (parts of one band copy it each)
  if (rows >= g.out_h && g.out_h >= 2 && (g.out_h + 1) / 2 * OW >= kBandTarget / 2) rows = (g.out_h + 1) / 2;
  layout(rows);
  while (p->scratch_floats > kMaxScratchFloats && rows > 1) layout(--rows);
  if (p->scratch_floats > kMaxScratchFloats) return nullptr;  // every offset then fits an Offset
  if (rows < g.out_h && (rows * OW) % tile != 0) {
    for (int64_t r = rows; r >= 1; --r) {
      if ((r * OW) % tile == 0) {
        rows = r;
        break;
      }
    }
    layout(rows);
  }
  p->num_bands = (g.out_h + rows - 1) / rows;

  // Sparse tile: the largest (up to the kernel's, at least 4 vectors) whose input rows over all
  // channels fit in L1 (48 KiB): a tile's inputs are reused by every output row before the next tile.
  {
    int64_t tv = isa_->sparse_tile / isa_->lanes;
    while (tv > 4) {
      const double tile_rows = std::ceil(static_cast<double>(tv * isa_->lanes) / static_cast<double>(OW));
      const double bytes = static_cast<double>(slots * planes) * (tile_rows + static_cast<double>(halo)) *
                           static_cast<double>(OW) * 4.0;
      if (bytes <= 48.0 * 1024.0) break;
      tv /= 2;
    }
    p->tile_vectors = static_cast<int>(tv);
  }

  // Tap groups. Same layout: taps are grouped by kw (the lane masks of the horizontal padding depend
  // on kw) and, with lane-shift kernels, by the lane shift s = offset mod 16 of their input run (the
  // group's offsets become 16-float aligned). Shifted-plane layout: one group, no masks.
  // (worth its fixed per-group cost only when a group has several taps per output row: about 8)
  const double taps_per_group = dense_ ? 0.0
                                      : static_cast<double>(tap_slot_.size()) /
                                            static_cast<double>(2 * sparse_rows_ * s.k_w);
  const bool lane_shift = !dense_ && p->same && isa_->lane_shift && taps_per_group >= kLaneShiftMinTaps;
  std::vector<int32_t> group_of(static_cast<size_t>(s.k_h * s.k_w), 0);  // (kh, kw) -> group
  std::vector<int64_t> group_kw;
  auto rel_offset = [&](int64_t kh, int64_t kw) {  // offset within a slot's plane(s)
    const int64_t plane = p->same ? 0 : kw * sh + ph[static_cast<size_t>(kh)];
    return plane * p->plane_stride + (dr[static_cast<size_t>(kh)] - min_dr) * OW + dc[static_cast<size_t>(kw)];
  };
  if (p->same) {
    for (int64_t kw = 0; kw < s.k_w; ++kw) {
      const size_t first = group_kw.size();
      std::vector<int64_t> shifts;
      for (int64_t kh = 0; kh < s.k_h; ++kh) {
        const int64_t sft = lane_shift ? FloorMod(rel_offset(kh, kw), 16) : 0;
        auto it = std::find(shifts.begin(), shifts.end(), sft);
        if (it == shifts.end()) {
          shifts.push_back(sft);
          group_kw.push_back(kw);
          p->group_shift.push_back(static_cast<int32_t>(sft));
          it = shifts.end() - 1;
        }
        group_of[static_cast<size_t>(kh * s.k_w + kw)] = static_cast<int32_t>(first + static_cast<size_t>(it - shifts.begin()));
      }
    }
  } else {
    group_kw.push_back(0);
    p->group_shift.push_back(0);
  }
  p->groups = static_cast<int64_t>(group_kw.size());
  if (lane_shift) p->tile_vectors = std::min(p->tile_vectors, 8);  // N + 1 shifted vectors + N sums in registers

  // lane masks per group over one band (+ a tile of overhang): output lane f reads column
  // f % OW + dc of its row, which must lie inside [0, OW)
  p->mask_stride = (rows * OW + tile_max + 15) / 16;
  p->masks.assign(static_cast<size_t>(p->groups * p->mask_stride), 0xffff);
  p->group_masked.assign(static_cast<size_t>(p->groups), 0);
  if (p->same) {
    for (int64_t grp = 0; grp < p->groups; ++grp) {
      const int64_t d = dc[static_cast<size_t>(group_kw[static_cast<size_t>(grp)])];
      p->group_masked[static_cast<size_t>(grp)] = d != 0 ? 1 : 0;
      for (int64_t f = 0; f < p->mask_stride * 16; ++f) {
        const int64_t q = f % OW + d;
        if (q < 0 || q >= OW) {
          p->masks[static_cast<size_t>(grp * p->mask_stride + f / 16)] &= static_cast<uint16_t>(~(1u << (f % 16)));
        }
      }
    }
  }

  // the smallest period (in vectors) of every group's lane masks over a band, if 1, 2 or 4
  {
    const int64_t lanes = isa_->lanes;
    const int64_t nvec = (rows * OW + lanes - 1) / lanes;
    auto vec_mask = [&](int64_t grp, int64_t v) {
      const int64_t f = v * lanes;
      return (p->masks[static_cast<size_t>(grp * p->mask_stride + f / 16)] >> (f % 16)) & ((1u << lanes) - 1u);
    };
    p->mask_period = 0;
    for (int period : {1, 2, 4}) {
      bool ok = true;
      for (int64_t grp = 0; grp < p->groups && ok; ++grp) {
        for (int64_t v = period; v < nvec && ok; ++v) ok = vec_mask(grp, v) == vec_mask(grp, v % period);
      }
      if (ok) {
        p->mask_period = period;
        break;
      }
    }
  }

  // taps in group order with their scratch offsets (lane-shifted groups: aligned down to 16)
  auto tap_offset = [&](size_t t) {
    const int64_t kh = tap_kh_[t], kw = tap_kw_[t];
    const int32_t grp = group_of[static_cast<size_t>(kh * s.k_w + kw)];
    return static_cast<int32_t>(p->lead + tap_slot_[t] * p->chan_stride + rel_offset(kh, kw) -
                                p->group_shift[static_cast<size_t>(grp)]);
  };
  std::vector<size_t> order;  // tap indices in group order
  const int64_t G = p->groups;
  if (!dense_) {
    p->group_start.assign(static_cast<size_t>(2 * sparse_rows_ * G + 1), 0);
    order.reserve(tap_slot_.size());
    std::vector<std::vector<size_t>> buckets(static_cast<size_t>(G));
    for (int64_t rs = 0; rs < 2 * sparse_rows_; ++rs) {  // (row, list)
      const size_t b = static_cast<size_t>(row_start_[static_cast<size_t>(rs)]);
      const size_t e = static_cast<size_t>(row_start_[static_cast<size_t>(rs + 1)]);
      for (auto& bucket : buckets) bucket.clear();
      for (size_t i = b; i < e; ++i) {
        buckets[static_cast<size_t>(group_of[static_cast<size_t>(tap_kh_[i] * s.k_w + tap_kw_[i])])].push_back(i);
      }
      for (int64_t grp = 0; grp < G; ++grp) {
        p->group_start[static_cast<size_t>(rs * G + grp)] = static_cast<int64_t>(order.size());
        auto& bucket = buckets[static_cast<size_t>(grp)];
        // increasing offsets: the loads walk the input forwards
        std::sort(bucket.begin(), bucket.end(), [&](size_t u, size_t v) { return tap_offset(u) < tap_offset(v); });
        order.insert(order.end(), bucket.begin(), bucket.end());
      }
    }
    p->group_start[static_cast<size_t>(2 * sparse_rows_ * G)] = static_cast<int64_t>(order.size());
  } else {
    // dense taps are ordered by kw, and (same layout) the groups are the kw values
    p->group_start.assign(static_cast<size_t>(G + 1), 0);
    for (size_t i = 0; i < tap_slot_.size(); ++i) order.push_back(i);
    for (int64_t grp = 0; grp <= G; ++grp) {
      p->group_start[static_cast<size_t>(grp)] = G == 1 ? (grp == 0 ? 0 : k_total_) : grp * (k_total_ / s.k_w);
    }
  }
  p->offsets.resize(order.size());
  for (size_t i = 0; i < order.size(); ++i) p->offsets[i] = static_cast<kernels::Offset>(tap_offset(order[i]));
  const double plane = static_cast<double>(g.out_h) * static_cast<double>(OW);
  p->cost_per_image = dense_ ? plane * (static_cast<double>(k_total_) * static_cast<double>(s.m_stored) +
                                        2.0 * static_cast<double>(s.m_out))
                             : plane * (static_cast<double>(tap_slot_.size()) + 2.0 * static_cast<double>(s.m_out));
  return p;
}

std::unique_ptr<ConvRun> FastEngine::Prepare(const RunGeometry& g) const {
  std::shared_ptr<const Plan> plan;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_ && cached_->in_h == g.in_h && cached_->in_w == g.in_w) plan = cached_;
  }
  if (!plan) {
    std::shared_ptr<Plan> fresh = BuildPlan(g);
    if (!fresh) {  // the band scratch would not fit: the simple direct engine does any size
      std::lock_guard<std::mutex> lock(mu_);
      if (!direct_) direct_ = CreateDirectEngine(s_);
      return direct_->Prepare(g);
    }
    plan = fresh;
    std::lock_guard<std::mutex> lock(mu_);
    cached_ = plan;
  }
  // Split further than image x band only when that gives too few items for the run's cost (small
  // batches of a costly layer): each part is a range of stored rows (dense: row blocks) and makes its
  // own copy of the band's input. Sharing one copy made the other parts wait for it and read it from
  // another core's cache, which measured slower.
  const int64_t units = dense_ ? blocks_ : s_.m_stored;
  const double total = plan->cost_per_image * static_cast<double>(g.batch);
  const double wanted = std::min(std::ceil(total / kWorkPerItem), static_cast<double>(kMaxItemsWanted));
  const double have = static_cast<double>(std::max<int64_t>(g.batch, 1) * plan->num_bands);
  int64_t parts = static_cast<int64_t>(std::ceil(wanted / have));
  parts = std::max<int64_t>(1, std::min<int64_t>(parts, std::max<int64_t>(units, 1)));
  const int64_t part_len = std::max<int64_t>(1, (units + parts - 1) / parts);
  parts = std::max<int64_t>(1, (units + part_len - 1) / part_len);
  return std::make_unique<FastRun>(*this, std::move(plan), g, parts, part_len);
}

void FastEngine::FillScratch(const Plan& p, const RunGeometry& g, const float* xb, int64_t oh0,
                             float* scratch) const noexcept {
  const TernaryConvSpec& s = s_;
  const int64_t sh = s.stride_h, sw = s.stride_w;
  const int64_t H = g.in_h, Wd = g.in_w, OW = g.out_w;
  const int64_t slots = static_cast<int64_t>(slot_channel_.size());
  const int64_t r0 = oh0 + p.min_dr;  // phase row of plane row 0
  std::memset(scratch, 0, static_cast<size_t>(p.lead) * sizeof(float));
  const int64_t body = p.lead + slots * p.chan_stride;
  std::memset(scratch + body, 0, static_cast<size_t>(p.scratch_floats - body) * sizeof(float));
  if (p.same) {
    // one plane per slot: X rows [r0 + lo, r0 + hi) are contiguous, zeros around them
    int64_t lo = 0, hi = p.scratch_rows;
    while (lo < hi && r0 + lo < 0) ++lo;
    while (hi > lo && r0 + hi - 1 >= H) --hi;
    for (int64_t slot = 0; slot < slots; ++slot) {
      const float* xc = xb + static_cast<int64_t>(slot_channel_[static_cast<size_t>(slot)]) * H * Wd;
      isa_->fill_plane(scratch + p.lead + slot * p.chan_stride, hi > lo ? xc + (r0 + lo) * Wd : xc, lo * OW,
                       (hi - lo) * OW, p.plane_stride, SlotAffine(slot));
    }
    return;
  }
  const int64_t kws = p.same ? 1 : s.k_w;
  for (int64_t slot = 0; slot < slots; ++slot) {
    const float* xc = xb + static_cast<int64_t>(slot_channel_[static_cast<size_t>(slot)]) * H * Wd;
    for (int64_t kw = 0; kw < kws; ++kw) {
      // plane columns q in [q_lo, q_hi) read X columns q * sw + shift inside [0, W)
      const int64_t shift = p.same ? 0 : p.col_shift[static_cast<size_t>(kw)];
      const int64_t q_lo = std::min(OW, std::max<int64_t>(0, -FloorDiv(shift, sw)));
      const int64_t q_hi = std::max(q_lo, std::min(OW, FloorDiv(Wd - 1 - shift, sw) + 1));
      for (int64_t phr = 0; phr < sh; ++phr) {
        // plane rows [lo, hi) read X rows (r0 + j) * sh + phr inside [0, H); the others are zero
        int64_t lo = 0, hi = p.scratch_rows;
        while (lo < hi && (r0 + lo) * sh + phr < 0) ++lo;
        while (hi > lo && (r0 + hi - 1) * sh + phr >= H) --hi;
        float* plane = scratch + p.lead + slot * p.chan_stride + (kw * sh + phr) * p.plane_stride;
        if (lo > 0) std::memset(plane, 0, static_cast<size_t>(lo * OW) * sizeof(float));
        if (hi > lo) {
          const float* src = xc + ((r0 + lo) * sh + phr) * Wd;
          isa_->copy_rows(plane + lo * OW, src, sh * Wd, hi - lo, OW, sw, shift, q_lo, q_hi, SlotAffine(slot));
        }
        // zero rows below X and the padding up to the next plane, in one go
        const int64_t tail_from = std::max(hi, lo) * OW;
        if (tail_from < p.plane_stride) {
          std::memset(plane + tail_from, 0, static_cast<size_t>(p.plane_stride - tail_from) * sizeof(float));
        }
      }
    }
  }
}

void FastEngine::RunBand(const Plan& p, const RunGeometry& g, const float* scratch, float* y_band,
                         const float* r_band, int64_t rows, int64_t u0, int64_t u1) const noexcept {
  const TernaryConvSpec& s = s_;
  BandJob job;
  job.base = scratch;
  job.offsets = p.offsets.data();
  job.band_flat = rows * g.out_w;
  job.y_band = y_band;
  job.r_band = r_band;
  job.y_plane = g.out_h * g.out_w;
  job.row_begin = u0;
  job.row_end = u1;
  job.groups = p.groups;
  job.masks = p.masks.data();
  job.mask_stride = p.mask_stride;
  job.group_masked = p.group_masked.data();
  job.mask_period = p.mask_period;
  job.tile_vectors = p.tile_vectors;
  job.group_shift = p.group_shift.data();
  if (dense_) {
    DenseWeights w;
    w.block = isa_->dense_block;
    w.k_total = k_total_;
    w.m_stored = s.m_stored;
    w.group_start = p.group_start.data();
    w.weights = dense_weights_.data();
    w.out_channel = out_channel_.data();
    w.scale = s.scale.data();
    w.bias = s.bias.data();
    w.relu = s.activation == Activation::kRelu;
    isa_->dense_band(w, job);
  } else {
    SparseWeights w;
    w.group_start = p.group_start.data();
    w.out_channel = out_channel_.data();
    w.scale = s.scale.data();
    w.bias = s.bias.data();
    w.coef = coef_.data();
    w.sum_group_start = has_sum_ ? p.group_start.data() + 2 * s.m_stored * p.groups : nullptr;
    w.relu = s.activation == Activation::kRelu;
    isa_->sparse_band(w, job);
  }
}

void FastEngine::Run(const Plan& p, const RunGeometry& g, int64_t parts, int64_t part_len, const RunIO& io,
                     size_t item) const noexcept {
  const TernaryConvSpec& s = s_;
  const int64_t per_image = p.num_bands * parts;
  const int64_t b = static_cast<int64_t>(item) / per_image;
  const int64_t rem = static_cast<int64_t>(item) % per_image;
  const int64_t band = rem / parts, part = rem % parts;
  const int64_t oh0 = band * p.band_rows;
  const int64_t rows = std::min(p.band_rows, g.out_h - oh0);
  const int64_t plane = g.out_h * g.out_w;
  float* yb = io.y + b * s.m_out * plane;
  const float* rb = io.residual != nullptr ? io.residual + b * s.m_out * plane : nullptr;
  const float* xb = io.x + b * g.channels * g.in_h * g.in_w;

  const int64_t units = dense_ ? blocks_ : s.m_stored;
  const int64_t u0 = part * part_len, u1 = std::min(units, u0 + part_len);
  if (u1 > u0) {
    alignas(64) float scratch[kMaxScratchFloats];
    FillScratch(p, g, xb, oh0, scratch);
    RunBand(p, g, scratch, yb + oh0 * g.out_w, rb != nullptr ? rb + oh0 * g.out_w : nullptr, rows, u0, u1);
  }
  if (part == 0) {  // output channels without a stored row: act(scale * 0 + bias (+ residual))
    for (int32_t o : dead_) {
      const size_t oc = static_cast<size_t>(o);
      const float v = s.scale[oc] * 0.0f + s.bias[oc];
      float* dst = yb + o * plane + oh0 * g.out_w;
      if (rb != nullptr) {
        const float* r = rb + o * plane + oh0 * g.out_w;
        for (int64_t i = 0; i < rows * g.out_w; ++i) dst[i] = Activate(v + r[i], s.activation);
      } else {
        std::fill(dst, dst + rows * g.out_w, Activate(v, s.activation));
      }
    }
  }
}

void FastRun::RunWorkItem(const RunIO& io, size_t item) const noexcept {
  e_.Run(*plan_, g_, parts_, part_len_, io, item);
}

const char* AlgoName(Algo a) {
  switch (a) {
    case Algo::kAuto: return "auto";
    case Algo::kSparse: return "sparse";
    case Algo::kDense: return "dense";
    case Algo::kDirect: return "direct";
  }
  return "?";
}

}  // namespace

std::unique_ptr<ConvEngine> CreateEngine(const TernaryConvSpec& spec, const std::string& label,
                                         const ShapeHint& hint) {
  const Choice c = ReadChoice();
  const double numel = static_cast<double>(spec.m_stored) * static_cast<double>(spec.cin_per_group) *
                       static_cast<double>(spec.k_h) * static_cast<double>(spec.k_w);
  const double density = numel > 0 ? static_cast<double>(spec.nnz) / numel : 0.0;
  const RowPlan rows = PlanRows(spec);
  const double effective = numel > 0 ? static_cast<double>(rows.taps) / numel : 0.0;
  const bool unit_stride = spec.stride_h == 1 && spec.stride_w == 1;
  // output plane from the graph's X size when known (0 otherwise)
  int64_t plane = 0;
  if (hint.in_h > 0 && hint.in_w > 0) {
    const int64_t oh = (hint.in_h + spec.pad_top + spec.pad_bottom - spec.dil_h * (spec.k_h - 1) - 1) / spec.stride_h + 1;
    const int64_t ow = (hint.in_w + spec.pad_left + spec.pad_right - spec.dil_w * (spec.k_w - 1) - 1) / spec.stride_w + 1;
    if (oh > 0 && ow > 0 && oh <= tf::kMaxAttributeValue && ow <= tf::kMaxAttributeValue) plane = oh * ow;
  }
  const double threshold = !unit_stride                            ? kDenseDensityStrided
                           : (plane > 0 && plane <= kSmallPlane) ? kDenseDensitySmallPlane
                                                                 : kDenseDensityUnitStride;
  // dense kernels need group == 1 (one weight matrix over all stored input channels)
  const bool dense_ok = spec.group == 1;
  Algo algo = c.algo;
  if (algo == Algo::kAuto) algo = (dense_ok && effective >= threshold) ? Algo::kDense : Algo::kSparse;
  if (algo == Algo::kDense && !dense_ok) algo = Algo::kSparse;
  std::unique_ptr<ConvEngine> engine;
  if (algo == Algo::kDirect) {
    engine = CreateDirectEngine(spec);
  } else {
    engine = std::make_unique<FastEngine>(spec, c.isa, algo == Algo::kDense, rows);
  }
  if (c.log) {
    int64_t complement = 0;
    for (int8_t m : rows.mode) complement += m != 0 ? 1 : 0;
    std::fprintf(stderr,
                 "micronet: %s: kernel=%s isa=%s density=%.4f nnz=%lld weight=[%lld,%lld,%lld,%lld] group=%lld "
                 "effective=%.4f complement_rows=%lld plane=%lld (requested %s; auto picks dense at effective >= "
                 "%.2f)\n",
                 label.c_str(), engine->Name(), algo == Algo::kDirect ? "scalar" : c.isa->isa, density,
                 static_cast<long long>(spec.nnz), static_cast<long long>(spec.m_stored),
                 static_cast<long long>(spec.cin_per_group), static_cast<long long>(spec.k_h),
                 static_cast<long long>(spec.k_w), static_cast<long long>(spec.group), effective,
                 static_cast<long long>(complement), static_cast<long long>(plane), AlgoName(c.algo), threshold);
    std::fflush(stderr);
  }
  return engine;
}

}  // namespace ternary_conv
}  // namespace micronet
