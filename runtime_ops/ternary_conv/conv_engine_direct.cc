// The direct row-wise engine: for each (batch, output channel) it walks the decoded +/- tap lists
// of the channel's stored row over tiles of the output plane, accumulating sum(+inputs) and
// sum(-inputs) separately, then y = act(scale * (c_pos * sum_pos + c_neg * sum_neg) + bias).
// Output channels without a stored row get act(scale * 0 + bias + residual). With an input affine
// (format v2) every input read inside the image is fma(in_scale, x, in_bias); the padding stays 0.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ternary_conv/conv_engine.h"
#include "ternary_conv/conv_math.h"

namespace micronet {
namespace ternary_conv {
namespace {

// accumulator floats per tile (x2: positive and negative), on the stack: 8 KiB in all, so that runs
// from threads with small stacks are safe (each output's sum does not depend on the tiling)
constexpr int64_t kTile = 1024;
constexpr double kWorkPerItem = 32768.0;  // target additions per parallel work item

// Output positions o in [lo, hi) whose input position o * stride + offset lies in [0, size).
struct ValidRange {
  int64_t lo, hi;
};
ValidRange Valid(int64_t offset, int64_t stride, int64_t size, int64_t out_size) {
  const int64_t lo = std::max<int64_t>(0, CeilDiv(-offset, stride));
  const int64_t hi = std::min<int64_t>(out_size, FloorDiv(size - 1 - offset, stride) + 1);
  return {lo, std::max(lo, hi)};
}

class DirectRun final : public ConvRun, public DirectRows {
 public:
  DirectRun(const TernaryConvSpec& spec, const RunGeometry& g) : s_(spec), g_(g) {
    // Valid output rows per kernel row and valid output columns per kernel column.
    rows_.resize(static_cast<size_t>(s_.k_h));
    for (int64_t kh = 0; kh < s_.k_h; ++kh) {
      rows_[static_cast<size_t>(kh)] = Valid(kh * s_.dil_h - s_.pad_top, s_.stride_h, g.in_h, g.out_h);
    }
    cols_.resize(static_cast<size_t>(s_.k_w));
    for (int64_t kw = 0; kw < s_.k_w; ++kw) {
      cols_[static_cast<size_t>(kw)] = Valid(kw * s_.dil_w - s_.pad_left, s_.stride_w, g.in_w, g.out_w);
    }
    const double plane = static_cast<double>(g.out_h) * static_cast<double>(g.out_w);
    const double per_channel = plane * (static_cast<double>(s_.nnz) / static_cast<double>(s_.m_out) + 2.0);
    cost_ = static_cast<double>(g.batch) * per_channel * static_cast<double>(s_.m_out);
    int64_t per_chunk = per_channel >= kWorkPerItem ? 1 : static_cast<int64_t>(kWorkPerItem / std::max(per_channel, 1.0));
    per_chunk_ = std::max<int64_t>(1, std::min(per_chunk, s_.m_out));
    chunks_ = (s_.m_out + per_chunk_ - 1) / per_chunk_;
  }

  size_t NumWorkItems() const override {
    return g_.batch <= 0 ? 0 : static_cast<size_t>(g_.batch) * static_cast<size_t>(chunks_);
  }

  double Cost() const override { return cost_; }

  void RunWorkItem(const RunIO& io, size_t item) const noexcept override {
    const float* x = io.x;
    float* y = io.y;
    const int64_t b = static_cast<int64_t>(item) / chunks_;
    const int64_t chunk = static_cast<int64_t>(item) % chunks_;
    const int64_t o_begin = chunk * per_chunk_;
    const int64_t o_end = std::min(s_.m_out, o_begin + per_chunk_);
    const int64_t plane = g_.out_h * g_.out_w;
    const float* xb = x + b * g_.channels * g_.in_h * g_.in_w;
    for (int64_t o = o_begin; o < o_end; ++o) {
      float* yo = y + (b * s_.m_out + o) * plane;
      const float* ro = io.residual != nullptr ? io.residual + (b * s_.m_out + o) * plane : nullptr;
      const int32_t r = s_.out_row[static_cast<size_t>(o)];
      if (r < 0) {
        const size_t oc = static_cast<size_t>(o);
        const float v = s_.scale[oc] * 0.0f + s_.bias[oc];
        for (int64_t i = 0; i < plane; ++i) yo[i] = Activate(ro != nullptr ? v + ro[i] : v, s_.activation);
      } else {
        ComputeChannel(xb, r, o, yo, ro, 0, g_.out_h);
      }
    }
  }

  void ComputeRows(const RunIO& io, int64_t b, int64_t o, int64_t oh0, int64_t oh1) const noexcept override {
    const int32_t r = s_.out_row[static_cast<size_t>(o)];
    if (r < 0) return;  // dead channels are written by the caller
    const int64_t plane = g_.out_h * g_.out_w;
    const float* xb = io.x + b * g_.channels * g_.in_h * g_.in_w;
    const float* ro = io.residual != nullptr ? io.residual + (b * s_.m_out + o) * plane : nullptr;
    ComputeChannel(xb, r, o, io.y + (b * s_.m_out + o) * plane, ro, oh0, oh1);
  }

 private:
  // Adds the inputs under each tap of [first, last) into acc for output rows [oh0, oh1) and
  // columns [ow0, ow1) (acc is row-major with row length ow1 - ow0).
  void Accumulate(const float* xb, const Tap* first, const Tap* last, int64_t oh0, int64_t oh1, int64_t ow0,
                  int64_t ow1, float* acc) const noexcept {
    const int64_t tw = ow1 - ow0;
    const int64_t sh = s_.stride_h, sw = s_.stride_w;
    const int64_t in_h = g_.in_h, in_w = g_.in_w;
    for (const Tap* t = first; t != last; ++t) {
      const ValidRange& rv = rows_[static_cast<size_t>(t->kh)];
      const ValidRange& cv = cols_[static_cast<size_t>(t->kw)];
      const int64_t h_lo = std::max(oh0, rv.lo), h_hi = std::min(oh1, rv.hi);
      const int64_t w_lo = std::max(ow0, cv.lo), w_hi = std::min(ow1, cv.hi);
      if (h_lo >= h_hi || w_lo >= w_hi) continue;
      const int64_t dy = static_cast<int64_t>(t->kh) * s_.dil_h - s_.pad_top;   // ih = oh * sh + dy
      const int64_t dx = static_cast<int64_t>(t->kw) * s_.dil_w - s_.pad_left;  // iw = ow * sw + dx
      const int64_t n = w_hi - w_lo;
      const float* xc = xb + static_cast<int64_t>(t->channel) * in_h * in_w;
      for (int64_t oh = h_lo; oh < h_hi; ++oh) {
        const float* xr = xc + (oh * sh + dy) * in_w + (w_lo * sw + dx);
        float* ar = acc + (oh - oh0) * tw + (w_lo - ow0);
        if (s_.has_in_affine) {
          const float a = s_.in_scale[static_cast<size_t>(t->channel)], c = s_.in_bias[static_cast<size_t>(t->channel)];
          for (int64_t j = 0; j < n; ++j) ar[j] += std::fma(a, xr[j * sw], c);
        } else if (sw == 1) {
          for (int64_t j = 0; j < n; ++j) ar[j] += xr[j];
        } else {
          for (int64_t j = 0; j < n; ++j) ar[j] += xr[j * sw];
        }
      }
    }
  }

  // Output rows [oh_begin, oh_end) of channel o (stored row r); yo and ro point at the channel's plane.
  void ComputeChannel(const float* xb, int32_t r, int64_t o, float* yo, const float* ro, int64_t oh_begin,
                      int64_t oh_end) const noexcept {
    float pos[kTile];
    float neg[kTile];
    const Tap* taps = s_.taps.data();
    const Tap* p_first = taps + s_.row_start[static_cast<size_t>(2 * r)];
    const Tap* p_last = taps + s_.row_start[static_cast<size_t>(2 * r + 1)];
    const Tap* n_last = taps + s_.row_start[static_cast<size_t>(2 * r + 2)];
    const float cp = s_.c_pos, cn = s_.c_neg;
    const float scale = s_.scale[static_cast<size_t>(o)], bias = s_.bias[static_cast<size_t>(o)];
    const int64_t tile_w = std::min(g_.out_w, kTile);
    const int64_t tile_h = std::max<int64_t>(1, kTile / tile_w);
    for (int64_t oh0 = oh_begin; oh0 < oh_end; oh0 += tile_h) {
      const int64_t oh1 = std::min(oh_end, oh0 + tile_h);
      for (int64_t ow0 = 0; ow0 < g_.out_w; ow0 += tile_w) {
        const int64_t ow1 = std::min(g_.out_w, ow0 + tile_w);
        const int64_t tw = ow1 - ow0;
        const int64_t count = (oh1 - oh0) * tw;
        std::fill(pos, pos + count, 0.0f);
        std::fill(neg, neg + count, 0.0f);
        Accumulate(xb, p_first, p_last, oh0, oh1, ow0, ow1, pos);
        Accumulate(xb, p_last, n_last, oh0, oh1, ow0, ow1, neg);
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const float* pr = pos + (oh - oh0) * tw;
          const float* nr = neg + (oh - oh0) * tw;
          float* yr = yo + oh * g_.out_w + ow0;
          if (ro != nullptr) {
            const float* rr = ro + oh * g_.out_w + ow0;
            for (int64_t j = 0; j < tw; ++j) {
              const float t = scale * (cp * pr[j] + cn * nr[j]) + bias;
              yr[j] = Activate(t + rr[j], s_.activation);
            }
          } else {
            for (int64_t j = 0; j < tw; ++j) yr[j] = Activate(scale * (cp * pr[j] + cn * nr[j]) + bias, s_.activation);
          }
        }
      }
    }
  }

  const TernaryConvSpec& s_;
  const RunGeometry g_;
  std::vector<ValidRange> rows_, cols_;
  double cost_ = 0;
  int64_t per_chunk_ = 1, chunks_ = 1;
};

class DirectEngine final : public ConvEngine {
 public:
  explicit DirectEngine(const TernaryConvSpec& spec) : s_(spec) {}
  const char* Name() const override { return "direct"; }
  std::unique_ptr<ConvRun> Prepare(const RunGeometry& g) const override { return std::make_unique<DirectRun>(s_, g); }

 private:
  const TernaryConvSpec& s_;
};

}  // namespace

std::unique_ptr<ConvEngine> CreateDirectEngine(const TernaryConvSpec& spec) {
  return std::make_unique<DirectEngine>(spec);
}

std::unique_ptr<DirectRows> PrepareDirectRows(const TernaryConvSpec& spec, const RunGeometry& geometry) {
  return std::make_unique<DirectRun>(spec, geometry);
}

}  // namespace ternary_conv
}  // namespace micronet
