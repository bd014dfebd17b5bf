// Execution of the fast engines (see fast_engine.h): Prepare() finds (or builds and caches) the plan
// of a run's input size and splits the run into work items; a work item fills its band's scratch
// copy of the input and hands the band to the SIMD kernel of the engine's instruction set.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "ternary_conv/conv_math.h"
#include "ternary_conv/fast_engine.h"

namespace micronet {
namespace ternary_conv {
namespace fast {

namespace {

using kernels::BandJob;
using kernels::DenseWeights;
using kernels::SparseWeights;

// Band scratch buffers of kMaxScratchFloats floats (192 KiB), shared by every node and session of the
// process: a work item takes one for its duration and gives it back, so the pool holds as many
// buffers as work items ever ran at once (about the number of threads), allocated on first need and
// then reused. Before, the buffer was on the work item's stack, and a run from a thread with a small
// stack (128-200 KiB, legal for embedders) overflowed it. The free list is kept inside the free
// buffers (no allocation to give one back) under a spin lock (held for a few instructions); the
// pool is never destroyed, so its buffers stay reachable and nothing runs at unload.
class ScratchPool {
 public:
  static ScratchPool& Get() {
    static ScratchPool* pool = new ScratchPool;
    return *pool;
  }
  float* Acquire() noexcept {
    Lock();
    void* b = head_;
    if (b != nullptr) head_ = *static_cast<void**>(b);
    Unlock();
    if (b == nullptr) b = std::aligned_alloc(64, static_cast<size_t>(kMaxScratchFloats) * sizeof(float));
    return static_cast<float*>(b);
  }
  void Release(float* buffer) noexcept {
    Lock();
    *reinterpret_cast<void**>(buffer) = head_;
    head_ = buffer;
    Unlock();
  }

 private:
  void Lock() noexcept {
    while (busy_.test_and_set(std::memory_order_acquire)) {
    }
  }
  void Unlock() noexcept { busy_.clear(std::memory_order_release); }
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  void* head_ = nullptr;
};

// True when every float of [p, p + n) is finite (neither NaN nor infinite): exponent bits not all set.
bool AllFinite(const float* p, int64_t n) noexcept {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, p + i, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

class FastRun final : public ConvRun {
 public:
  FastRun(const FastEngine& e, std::shared_ptr<const Plan> plan, const RunGeometry& g, int64_t parts,
          int64_t part_len, std::unique_ptr<DirectRows> non_finite)
      : e_(e), plan_(std::move(plan)), g_(g), parts_(parts), part_len_(part_len), non_finite_(std::move(non_finite)) {}
  size_t NumWorkItems() const override {
    return g_.batch <= 0 ? 0
                         : static_cast<size_t>(g_.batch) * static_cast<size_t>(plan_->num_bands) *
                               static_cast<size_t>(parts_);
  }
  double Cost() const override { return plan_->cost_per_image * static_cast<double>(g_.batch); }
  void RunWorkItem(const RunIO& io, size_t item) const noexcept override;
  bool Failed() const noexcept override { return failed_.load(std::memory_order_relaxed); }

 private:
  const FastEngine& e_;
  std::shared_ptr<const Plan> plan_;
  RunGeometry g_;
  int64_t parts_, part_len_;
  std::unique_ptr<DirectRows> non_finite_;  // dense engine: bands with a NaN/inf input (see FastEngine::Run)
  mutable std::atomic<bool> failed_{false};
};

}  // namespace

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
  std::unique_ptr<DirectRows> non_finite = dense_ ? PrepareDirectRows(s_, g) : nullptr;
  return std::make_unique<FastRun>(*this, std::move(plan), g, parts, part_len, std::move(non_finite));
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
    w.lead = coef_[0];
    w.ratio = coef_[1];
    w.relu = s.activation == Activation::kRelu;
    isa_->sparse_band(w, job);
  }
}

bool FastEngine::Run(const Plan& p, const RunGeometry& g, int64_t parts, int64_t part_len, const RunIO& io,
                     size_t item, const DirectRows* non_finite) const noexcept {
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
    ScratchPool& pool = ScratchPool::Get();
    float* scratch = pool.Acquire();
    if (scratch == nullptr) return false;
    FillScratch(p, g, xb, oh0, scratch);
    if (non_finite != nullptr && !AllFinite(scratch, p.scratch_floats)) {
      // The dense kernel multiplies every input by its weight, zeros included, and 0 * NaN or
      // 0 * inf is NaN; the rule (docs/runtime.md, "Numerics") is that a zero weight is no term,
      // as in the sparse and direct kernels. Such bands (rare) take the direct engine's code.
      const int64_t r_end = std::min(s.m_stored, u1 * isa_->dense_block);
      for (int64_t r = u0 * isa_->dense_block; r < r_end; ++r) {
        non_finite->ComputeRows(io, b, out_channel_[static_cast<size_t>(r)], oh0, oh0 + rows);
      }
    } else {
      RunBand(p, g, scratch, yb + oh0 * g.out_w, rb != nullptr ? rb + oh0 * g.out_w : nullptr, rows, u0, u1);
    }
    pool.Release(scratch);
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
  return true;
}

void FastRun::RunWorkItem(const RunIO& io, size_t item) const noexcept {
  if (!e_.Run(*plan_, g_, parts_, part_len_, io, item, non_finite_.get())) failed_.store(true, std::memory_order_relaxed);
}

}  // namespace fast
}  // namespace ternary_conv
}  // namespace micronet
