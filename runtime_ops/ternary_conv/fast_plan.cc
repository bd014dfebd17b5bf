// Per-input-size plans of the fast engines (see fast_engine.h): the band layout of the scratch
// buffer, the sparse tile size, the tap groups and their lane masks, and every tap's scratch offset
// in group order. Built on the first run of an input size (FastEngine::Prepare caches it).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>  // for (int period : {1, 2, 4})
#include <memory>
#include <vector>

#include "ternary_conv/conv_math.h"
#include "ternary_conv/fast_engine.h"

namespace micronet {
namespace ternary_conv {
namespace fast {

namespace {

// Offset of tap (kh, kw) within a slot's plane(s).
int64_t RelOffset(const PlanAxes& ax, const Plan& p, int64_t sh, int64_t out_w, int64_t kh, int64_t kw) {
  const int64_t plane = p.same ? 0 : kw * sh + ax.ph[static_cast<size_t>(kh)];
  return plane * p.plane_stride + (ax.dr[static_cast<size_t>(kh)] - ax.min_dr) * out_w + ax.dc[static_cast<size_t>(kw)];
}

}  // namespace

std::shared_ptr<Plan> FastEngine::BuildPlan(const RunGeometry& g) const {
  auto p = std::make_shared<Plan>();
  p->in_h = g.in_h;
  p->in_w = g.in_w;
  p->out_h = g.out_h;
  p->out_w = g.out_w;
  const PlanAxes ax = PlanKernelAxes(g, p.get());
  if (!PlanBands(g, ax, p.get())) return nullptr;  // every offset then fits an Offset
  PlanTile(g, ax, p.get());
  std::vector<int32_t> group_of;  // (kh, kw) -> group
  std::vector<int64_t> group_kw;  // group -> kw
  PlanGroups(ax, g.out_w, p.get(), &group_of, &group_kw);
  PlanMasks(ax, g.out_w, group_kw, p.get());
  PlanTaps(ax, g.out_w, group_of, p.get());
  const double plane = static_cast<double>(g.out_h) * static_cast<double>(g.out_w);
  p->cost_per_image = dense_ ? plane * (static_cast<double>(k_total_) * static_cast<double>(s_.m_stored) +
                                        2.0 * static_cast<double>(s_.m_out))
                             : plane * (static_cast<double>(s_.nnz) + 2.0 * static_cast<double>(s_.m_out));
  return p;
}

// Sets p->same and p->col_shift; returns the rows and columns each kernel tap reads.
PlanAxes FastEngine::PlanKernelAxes(const RunGeometry& g, Plan* p) const {
  const TernaryConvSpec& s = s_;
  const int64_t sh = s.stride_h, sw = s.stride_w;
  p->same = sh == 1 && sw == 1 && g.out_w == g.in_w;
  PlanAxes ax;
  ax.dr.resize(static_cast<size_t>(s.k_h));
  ax.ph.resize(static_cast<size_t>(s.k_h));
  ax.dc.resize(static_cast<size_t>(s.k_w));
  ax.min_dr = INT64_MAX, ax.max_dr = INT64_MIN, ax.min_dc = 0, ax.max_dc = 0;
  for (int64_t kh = 0; kh < s.k_h; ++kh) {
    const int64_t e = kh * s.dil_h - s.pad_top;
    ax.dr[static_cast<size_t>(kh)] = FloorDiv(e, sh);
    ax.ph[static_cast<size_t>(kh)] = FloorMod(e, sh);
    ax.min_dr = std::min(ax.min_dr, ax.dr[static_cast<size_t>(kh)]);
    ax.max_dr = std::max(ax.max_dr, ax.dr[static_cast<size_t>(kh)]);
  }
  p->col_shift.resize(static_cast<size_t>(s.k_w));
  for (int64_t kw = 0; kw < s.k_w; ++kw) {
    p->col_shift[static_cast<size_t>(kw)] = kw * s.dil_w - s.pad_left;
    ax.dc[static_cast<size_t>(kw)] = p->same ? p->col_shift[static_cast<size_t>(kw)] : 0;
    ax.min_dc = std::min(ax.min_dc, ax.dc[static_cast<size_t>(kw)]);
    ax.max_dc = std::max(ax.max_dc, ax.dc[static_cast<size_t>(kw)]);
  }
  p->min_dr = ax.min_dr;
  ax.planes = p->same ? 1 : s.k_w * sh;
  ax.tile_max = std::max<int64_t>(isa_->sparse_tile, isa_->dense_tile);
  return ax;
}

// Band height and scratch layout: about kBandTarget outputs (whole tiles when possible), within the
// scratch limit. False when even one output row's scratch does not fit.
bool FastEngine::PlanBands(const RunGeometry& g, const PlanAxes& ax, Plan* p) const {
  const int64_t OW = g.out_w;
  const int64_t halo = ax.max_dr - ax.min_dr;
  const int64_t slots = static_cast<int64_t>(slot_channel_.size());
  p->lead = RoundUp(-ax.min_dc + 16, 16);
  // the last tile of a band may read up to a tile (plus a column shift) past the band's rows
  const int64_t tail = RoundUp(ax.tile_max + ax.max_dc + 16, 16);
  auto layout = [&](int64_t rows) {
    p->band_rows = rows;
    p->scratch_rows = rows + halo;
    p->plane_stride = RoundUp(p->scratch_rows * OW, 16);
    if (p->plane_stride % 1024 == 0) p->plane_stride += 16;  // planes 4 KiB apart would share L1 sets
    p->chan_stride = p->plane_stride * ax.planes;
    p->scratch_floats = p->lead + std::max<int64_t>(slots, 1) * p->chan_stride + tail;
  };
  const int64_t tile = isa_->sparse_tile;
  int64_t rows = std::max<int64_t>(1, std::min<int64_t>(g.out_h, (kBandTarget + OW - 1) / OW));
  // two bands rather than one when each still holds a full tile of outputs: a second item for a
  // second thread without a second copy of the whole input (parts of one band copy it each)
  if (rows >= g.out_h && g.out_h >= 2 && (g.out_h + 1) / 2 * OW >= kBandTarget / 2) rows = (g.out_h + 1) / 2;
  layout(rows);
  while (p->scratch_floats > kMaxScratchFloats && rows > 1) layout(--rows);
  if (p->scratch_floats > kMaxScratchFloats) return false;
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
  return true;
}

// Sparse tile: the largest (up to the kernel's, at least 4 vectors) whose input rows over all
// channels fit in L1 (48 KiB): a tile's inputs are reused by every output row before the next tile.
void FastEngine::PlanTile(const RunGeometry& g, const PlanAxes& ax, Plan* p) const {
  const int64_t OW = g.out_w;
  const int64_t halo = ax.max_dr - ax.min_dr;
  const int64_t slots = static_cast<int64_t>(slot_channel_.size());
  int64_t tv = isa_->sparse_tile / isa_->lanes;
  while (tv > 4) {
    const double tile_rows = std::ceil(static_cast<double>(tv * isa_->lanes) / static_cast<double>(OW));
    const double bytes = static_cast<double>(slots * ax.planes) * (tile_rows + static_cast<double>(halo)) *
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
void FastEngine::PlanGroups(const PlanAxes& ax, int64_t out_w, Plan* p, std::vector<int32_t>* group_of,
                            std::vector<int64_t>* group_kw) const {
  const TernaryConvSpec& s = s_;
  const double taps_per_group = dense_ ? 0.0
                                      : static_cast<double>(s.nnz) / static_cast<double>(2 * s.m_stored * s.k_w);
  const bool lane_shift = !dense_ && p->same && isa_->lane_shift && taps_per_group >= kLaneShiftMinTaps;
  group_of->assign(static_cast<size_t>(s.k_h * s.k_w), 0);
  if (p->same) {
    for (int64_t kw = 0; kw < s.k_w; ++kw) {
      const size_t first = group_kw->size();
      std::vector<int64_t> shifts;
      for (int64_t kh = 0; kh < s.k_h; ++kh) {
        const int64_t sft = lane_shift ? FloorMod(RelOffset(ax, *p, s.stride_h, out_w, kh, kw), 16) : 0;
        auto it = std::find(shifts.begin(), shifts.end(), sft);
        if (it == shifts.end()) {
          shifts.push_back(sft);
          group_kw->push_back(kw);
          p->group_shift.push_back(static_cast<int32_t>(sft));
          it = shifts.end() - 1;
        }
        (*group_of)[static_cast<size_t>(kh * s.k_w + kw)] =
            static_cast<int32_t>(first + static_cast<size_t>(it - shifts.begin()));
      }
    }
  } else {
    group_kw->push_back(0);
    p->group_shift.push_back(0);
  }
  p->groups = static_cast<int64_t>(group_kw->size());
  if (lane_shift) p->tile_vectors = std::min(p->tile_vectors, 8);  // N + 1 shifted vectors + N sums in registers
}

// Lane masks per group over one band (+ a tile of overhang): output lane f reads column
// f % OW + dc of its row, which must lie inside [0, OW); and their smallest period in vectors.
void FastEngine::PlanMasks(const PlanAxes& ax, int64_t out_w, const std::vector<int64_t>& group_kw, Plan* p) const {
  const int64_t OW = out_w, rows = p->band_rows;
  p->mask_stride = (rows * OW + ax.tile_max + 15) / 16;
  p->masks.assign(static_cast<size_t>(p->groups * p->mask_stride), 0xffff);
  p->group_masked.assign(static_cast<size_t>(p->groups), 0);
  if (p->same) {
    for (int64_t grp = 0; grp < p->groups; ++grp) {
      const int64_t d = ax.dc[static_cast<size_t>(group_kw[static_cast<size_t>(grp)])];
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

// Taps in group order with their scratch offsets (lane-shifted groups: aligned down to 16). Sparse:
// the spec's taps of every (row, list) bucketed by group and sorted by offset; dense: k = (kw, slot, kh).
void FastEngine::PlanTaps(const PlanAxes& ax, int64_t out_w, const std::vector<int32_t>& group_of, Plan* p) const {
  const TernaryConvSpec& s = s_;
  auto offset = [&](int64_t slot, int64_t kh, int64_t kw) {
    const int32_t grp = group_of[static_cast<size_t>(kh * s.k_w + kw)];
    return p->lead + slot * p->chan_stride + RelOffset(ax, *p, s.stride_h, out_w, kh, kw) -
           p->group_shift[static_cast<size_t>(grp)];
  };
  const int64_t G = p->groups;
  if (dense_) {
    // dense taps are ordered by kw, and (same layout) the groups are the kw values
    const int64_t slots = static_cast<int64_t>(slot_channel_.size());
    p->group_start.assign(static_cast<size_t>(G + 1), 0);
    for (int64_t grp = 0; grp <= G; ++grp) {
      p->group_start[static_cast<size_t>(grp)] = G == 1 ? (grp == 0 ? 0 : k_total_) : grp * (k_total_ / s.k_w);
    }
    p->offsets.resize(static_cast<size_t>(k_total_));
    size_t i = 0;
    for (int64_t kw = 0; kw < s.k_w; ++kw) {
      for (int64_t sl = 0; sl < slots; ++sl) {
        for (int64_t kh = 0; kh < s.k_h; ++kh) p->offsets[i++] = static_cast<kernels::Offset>(offset(sl, kh, kw));
      }
    }
    return;
  }
  auto tap_offset = [&](size_t t) {
    const Tap& tap = s.taps[t];
    return offset(slot_of_[static_cast<size_t>(tap.channel)], tap.kh, tap.kw);
  };
  p->group_start.assign(static_cast<size_t>(2 * s.m_stored * G + 1), 0);
  p->offsets.clear();
  p->offsets.reserve(s.taps.size());
  std::vector<std::vector<size_t>> buckets(static_cast<size_t>(G));
  for (int64_t rs = 0; rs < 2 * s.m_stored; ++rs) {  // (row, list)
    const size_t li = static_cast<size_t>(ListIndex(rs / 2, static_cast<int>(rs % 2), negative_first_));
    const size_t b = static_cast<size_t>(s.row_start[li]), e = static_cast<size_t>(s.row_start[li + 1]);
    for (auto& bucket : buckets) bucket.clear();
    for (size_t i = b; i < e; ++i) {
      const Tap& tap = s.taps[i];
      buckets[static_cast<size_t>(group_of[static_cast<size_t>(tap.kh * s.k_w + tap.kw)])].push_back(i);
    }
    for (int64_t grp = 0; grp < G; ++grp) {
      p->group_start[static_cast<size_t>(rs * G + grp)] = static_cast<int64_t>(p->offsets.size());
      auto& bucket = buckets[static_cast<size_t>(grp)];
      // increasing offsets: the loads walk the input forwards
      std::sort(bucket.begin(), bucket.end(), [&](size_t u, size_t v) { return tap_offset(u) < tap_offset(v); });
      for (size_t t : bucket) p->offsets.push_back(static_cast<kernels::Offset>(tap_offset(t)));
    }
  }
  p->group_start[static_cast<size_t>(2 * s.m_stored * G)] = static_cast<int64_t>(p->offsets.size());
}

}  // namespace fast
}  // namespace ternary_conv
}  // namespace micronet
