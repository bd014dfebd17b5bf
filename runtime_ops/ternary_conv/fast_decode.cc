// Geometry-independent decode of the fast engines (see fast_engine.h): which channels of X the taps
// read (slots), the output channel of every stored row, and the weight in the form its kernel reads:
// per-row coefficients over the spec's own tap lists (sparse: no copy of the taps) or float32 weight
// blocks (dense). Runs once per kernel, at session creation.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ternary_conv/fast_engine.h"

namespace micronet {
namespace ternary_conv {
namespace fast {

RowPlan PlanRows(const TernaryConvSpec& s) {
  // Every row adds its positive and its negative taps. The complement forms (a row from its zero taps
  // and the window sum S) were dropped: S - Z - P cancels, and its error grows with the inputs under
  // zero weights, not with the result (docs/runtime.md, "Numerics").
  RowPlan rp;
  rp.taps = s.nnz;
  return rp;
}

FastEngine::FastEngine(const TernaryConvSpec& spec, const kernels::KernelTable* isa, bool dense, const RowPlan& rows)
    : s_(spec), isa_(isa), dense_(dense) {
  (void)rows;
  DecodeSlots();
  DecodeOutputs();
  if (dense_) {
    DecodeDense();
  } else {
    DecodeSparse();
  }
}

// Slots: the channels of X that some tap reads, in increasing order (a channel that no non-zero
// weight reads is neither copied nor visited); slot_of_ maps a channel of X to its slot (-1: not read).
void FastEngine::DecodeSlots() {
  const TernaryConvSpec& s = s_;
  int64_t max_channel = -1;
  for (const Tap& t : s.taps) max_channel = std::max<int64_t>(max_channel, t.channel);
  slot_of_.assign(static_cast<size_t>(max_channel + 1), -1);
  for (const Tap& t : s.taps) slot_of_[static_cast<size_t>(t.channel)] = 0;
  for (size_t c = 0; c < slot_of_.size(); ++c) {
    if (slot_of_[c] < 0) continue;
    slot_of_[c] = static_cast<int32_t>(slot_channel_.size());
    slot_channel_.push_back(static_cast<int32_t>(c));
  }
  if (s.has_in_affine) {
    for (int32_t c : slot_channel_) {
      slot_affine_.push_back(s.in_scale[static_cast<size_t>(c)]);
      slot_affine_.push_back(s.in_bias[static_cast<size_t>(c)]);
    }
  }
}

void FastEngine::DecodeOutputs() {
  const TernaryConvSpec& s = s_;
  out_channel_.assign(static_cast<size_t>(s.m_stored), 0);
  for (int64_t o = 0; o < s.m_out; ++o) {
    const int32_t r = s.out_row[static_cast<size_t>(o)];
    if (r < 0) {
      dead_.push_back(static_cast<int32_t>(o));
    } else {
      out_channel_[static_cast<size_t>(r)] = static_cast<int32_t>(o);
    }
  }
}

// Row r is c_pos * P + c_neg * N = lead * (A + ratio * B) with the list of the larger coefficient as
// A (|ratio| <= 1): A is the positive list, or the negative one when |c_neg| > |c_pos| (the same
// for every row, since the centroids are per layer).
void FastEngine::DecodeSparse() {
  const TernaryConvSpec& s = s_;
  negative_first_ = std::fabs(s.c_neg) > std::fabs(s.c_pos);
  const float k_a = negative_first_ ? s.c_neg : s.c_pos, k_b = negative_first_ ? s.c_pos : s.c_neg;
  coef_[0] = k_a;
  coef_[1] = k_a != 0.0f ? k_b / k_a : 0.0f;
}

// dense (group == 1): k = (kw, slot, kh), weights packed in blocks of isa_->dense_block rows
void FastEngine::DecodeDense() {
  const TernaryConvSpec& s = s_;
  const int64_t slots = static_cast<int64_t>(slot_channel_.size());
  const int64_t block = isa_->dense_block;
  k_total_ = slots * s.k_h * s.k_w;
  blocks_ = (s.m_stored + block - 1) / block;
  dense_weights_.assign(static_cast<size_t>(blocks_ * k_total_ * block), 0.0f);
  for (int64_t r = 0; r < s.m_stored; ++r) {
    const int64_t bl = r / block, j = r % block;
    for (int sign = 0; sign < 2; ++sign) {
      const float value = sign == 0 ? s.c_pos : s.c_neg;
      const int64_t b = s.row_start[static_cast<size_t>(2 * r + sign)];
      const int64_t e = s.row_start[static_cast<size_t>(2 * r + sign + 1)];
      for (int64_t i = b; i < e; ++i) {
        const Tap& t = s.taps[static_cast<size_t>(i)];
        const int64_t k = (t.kw * slots + slot_of_[static_cast<size_t>(t.channel)]) * s.k_h + t.kh;
        dense_weights_[static_cast<size_t>((bl * k_total_ + k) * block + j)] = value;
      }
    }
  }
}

}  // namespace fast
}  // namespace ternary_conv
}  // namespace micronet
