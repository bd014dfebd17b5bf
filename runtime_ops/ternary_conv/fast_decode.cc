// Geometry-independent decode of the fast engines (see fast_engine.h): which channels of X the taps
// read (slots), the output channel of every stored row, and the weight in the form its kernel reads:
// per-row tap lists with their coefficients (sparse, complement forms included) or float32 weight
// blocks (dense). Runs once per kernel, at session creation.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ternary_conv/fast_engine.h"

namespace micronet {
namespace ternary_conv {
namespace fast {

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

namespace {

struct T3 {
  int32_t channel, kh, kw;
};

void Take(const TernaryConvSpec& s, std::vector<T3>* list, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    const Tap& t = s.taps[static_cast<size_t>(i)];
    list->push_back(T3{t.channel, t.kh, t.kw});
  }
}

// The two tap lists of stored row r in `mode` (see RowPlan) and its coefficients
// coef = {lead, ratio, S coefficient}: the row is lead * (A + ratio * B) + coef[2] * S. ci_of maps a
// channel of X to its stored input channel (only read by the complement forms); `nonzero` is
// scratch of row_len bytes.
void RowLists(const TernaryConvSpec& s, int64_t r, int mode, const std::vector<int32_t>& ci_of,
              std::vector<uint8_t>* nonzero, std::vector<T3>* list_a, std::vector<T3>* list_b, float coef[3]) {
  const int64_t k_area = s.k_h * s.k_w, row_len = s.cin_per_group * k_area;
  const int64_t p0 = s.row_start[static_cast<size_t>(2 * r)], n0 = s.row_start[static_cast<size_t>(2 * r + 1)];
  const int64_t n1 = s.row_start[static_cast<size_t>(2 * r + 2)];
  list_a->clear();
  list_b->clear();
  float k_a = s.c_pos, k_b = s.c_neg, k_s = 0.0f;
  if (mode == 0) {  // (P, N)
    Take(s, list_a, p0, n0);
    Take(s, list_b, n0, n1);
  } else {  // (P, Z) or (N, Z): list B is the zero taps
    if (mode == 1) {
      Take(s, list_a, p0, n0);
      k_a = s.c_pos - s.c_neg, k_b = -s.c_neg, k_s = s.c_neg;
    } else {
      Take(s, list_a, n0, n1);
      k_a = s.c_neg - s.c_pos, k_b = -s.c_pos, k_s = s.c_pos;
    }
    std::fill(nonzero->begin(), nonzero->end(), 0);
    for (int64_t i = p0; i < n1; ++i) {
      const Tap& t = s.taps[static_cast<size_t>(i)];
      (*nonzero)[static_cast<size_t>(ci_of[static_cast<size_t>(t.channel)] * k_area + t.kh * s.k_w + t.kw)] = 1;
    }
    for (int64_t j = 0; j < row_len; ++j) {
      if ((*nonzero)[static_cast<size_t>(j)]) continue;
      list_b->push_back(T3{s.stored_channels[static_cast<size_t>(j / k_area)],
                           static_cast<int32_t>((j % k_area) / s.k_w), static_cast<int32_t>(j % s.k_w)});
    }
  }
  // k_a * A + k_b * B = lead * (A' + ratio * B') with the larger coefficient as lead (|ratio| <= 1)
  if (std::fabs(k_b) > std::fabs(k_a)) {
    std::swap(*list_a, *list_b);
    std::swap(k_a, k_b);
  }
  coef[0] = k_a;
  coef[1] = k_a != 0.0f ? k_b / k_a : 0.0f;
  coef[2] = k_s;
}

}  // namespace

FastEngine::FastEngine(const TernaryConvSpec& spec, const kernels::KernelTable* isa, bool dense, const RowPlan& rows)
    : s_(spec), isa_(isa), dense_(dense) {
  Decode(rows);
}

void FastEngine::Decode(const RowPlan& rp) {
  has_sum_ = !dense_ && rp.use_sum;
  int64_t max_channel = -1;
  const std::vector<int32_t> slot_of = DecodeSlots(&max_channel);
  DecodeOutputs();
  if (dense_) {
    DecodeDense(slot_of);
  } else {
    DecodeSparse(rp, slot_of, max_channel);
  }
}

// Slots: the channels of X that some tap reads, in increasing order (a channel that no non-zero
// weight reads is neither copied nor visited), or every stored channel when S is summed. Returns the
// map X channel -> slot (-1: not read) over [0, *max_channel].
std::vector<int32_t> FastEngine::DecodeSlots(int64_t* max_channel_out) {
  const TernaryConvSpec& s = s_;
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
  if (s.has_in_affine) {
    for (int32_t c : slot_channel_) {
      slot_affine_.push_back(s.in_scale[static_cast<size_t>(c)]);
      slot_affine_.push_back(s.in_bias[static_cast<size_t>(c)]);
    }
  }
  *max_channel_out = max_channel;
  return slot_of;
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

void FastEngine::DecodeSparse(const RowPlan& rp, const std::vector<int32_t>& slot_of, int64_t max_channel) {
  const TernaryConvSpec& s = s_;
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
  std::vector<T3> list_a, list_b;
  for (int64_t r = 0; r < s.m_stored; ++r) {
    RowLists(s, r, rp.mode[static_cast<size_t>(r)], ci_of, &nonzero, &list_a, &list_b,
             &coef_[static_cast<size_t>(3 * r)]);
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
}

// dense (group == 1): k = (kw, slot, kh), weights packed in blocks of isa_->dense_block rows
void FastEngine::DecodeDense(const std::vector<int32_t>& slot_of) {
  const TernaryConvSpec& s = s_;
  const int64_t slots = static_cast<int64_t>(slot_channel_.size());
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

}  // namespace fast
}  // namespace ternary_conv
}  // namespace micronet
