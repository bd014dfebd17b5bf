// CreateEngine(): the kernel-choice policy of TernaryConv. Per node, at kernel creation: the sparse
// or the dense fast engine (fast_engine.h) on the instruction set dispatch_env.cc found, or the
// direct engine, from the weight's effective density and the layer's geometry; then the choice goes
// out through the log and the report (kernel_report.h).
#include <memory>
#include <string>

#include "ternary_conv/conv_engine.h"
#include "ternary_conv/conv_math.h"
#include "ternary_conv/dispatch_env.h"
#include "ternary_conv/fast_engine.h"
#include "ternary_conv/kernel_report.h"
#include "ternary_conv/ternary_format.h"

namespace micronet {
namespace ternary_conv {

namespace {

namespace tf = ::micronet::ternary_format;

// Effective density (taps the sparse kernel adds over all taps of the stored weight: the non-zero
// weights, see PlanRows) from which `auto` uses the dense kernel. The sparse kernel's cost is
// proportional to its taps, the dense kernel's to all taps. Measured on MicroNet's shapes (mnx bench
// --layers, batch 1, one thread; docs/runtime.md): at unit stride on 16x16 and 32x32 planes the sparse
// kernel ran 1.15x the dense one at 33 % zeros (two thirds of the taps), so the bound there is 0.75;
// on planes of at most 64 outputs (8x8) its tiles are short and the dense kernel wins from about
// 0.55; strided layers read a pre-shifted copy per (kw, row phase) whose taps run slower, and there
// the dense kernel wins from about 0.4. (The thresholds were measured when low-sparsity rows still
// used the complement forms; rows of more than 75 % non-zeros now go to the dense kernel.)
constexpr double kDenseDensityUnitStride = 0.75;
constexpr double kDenseDensitySmallPlane = 0.55;
constexpr int64_t kSmallPlane = 64;
constexpr double kDenseDensityStrided = 0.4;

// The output plane from the graph's X size when known and non-empty (0 otherwise).
int64_t HintedPlane(const TernaryConvSpec& spec, const ShapeHint& hint) {
  if (hint.in_h <= 0 || hint.in_w <= 0) return 0;
  const OutputAxis oh = OutputRows(spec, hint.in_h), ow = OutputCols(spec, hint.in_w);
  if (oh.status != OutputAxis::kOk || ow.status != OutputAxis::kOk) return 0;
  if (oh.out > tf::kMaxAttributeValue || ow.out > tf::kMaxAttributeValue) return 0;
  return oh.out * ow.out;
}

double DenseThreshold(const TernaryConvSpec& spec, int64_t plane) {
  const bool unit_stride = spec.stride_h == 1 && spec.stride_w == 1;
  return !unit_stride                            ? kDenseDensityStrided
         : (plane > 0 && plane <= kSmallPlane) ? kDenseDensitySmallPlane
                                               : kDenseDensityUnitStride;
}

}  // namespace

std::unique_ptr<ConvEngine> CreateEngine(const TernaryConvSpec& spec, const NodeIdentity& node,
                                         const ShapeHint& hint) {
  const Choice c = ReadChoice();
  const double numel = static_cast<double>(spec.m_stored) * static_cast<double>(spec.cin_per_group) *
                       static_cast<double>(spec.k_h) * static_cast<double>(spec.k_w);
  const fast::RowPlan rows = fast::PlanRows(spec);
  KernelDecision d;
  d.density = numel > 0 ? static_cast<double>(spec.nnz) / numel : 0.0;
  d.effective = numel > 0 ? static_cast<double>(rows.taps) / numel : 0.0;
  d.plane = HintedPlane(spec, hint);
  d.dense_threshold = DenseThreshold(spec, d.plane);
  // dense kernels need group == 1 (one weight matrix over all stored input channels)
  const bool dense_ok = spec.group == 1;
  Algo algo = c.algo;
  if (algo == Algo::kAuto) algo = (dense_ok && d.effective >= d.dense_threshold) ? Algo::kDense : Algo::kSparse;
  if (algo == Algo::kDense && !dense_ok) algo = Algo::kSparse;
  std::unique_ptr<ConvEngine> engine;
  if (algo == Algo::kDirect) {
    engine = CreateDirectEngine(spec);
  } else {
    engine = std::make_unique<fast::FastEngine>(spec, c.isa, algo == Algo::kDense, rows);
  }
  if (!c.log && c.report_path.empty()) return engine;

  d.label = node.label;
  d.node = node.name;
  d.output = node.output;
  d.kernel = engine->Name();
  d.isa = algo == Algo::kDirect ? "scalar" : c.isa->isa;
  d.requested = c.requested_kernel;
  d.requested_isa = c.requested_isa;
  d.requested_algo = AlgoName(c.algo);
  d.nnz = spec.nnz;
  d.weight_shape[0] = spec.m_stored;
  d.weight_shape[1] = spec.cin_per_group;
  d.weight_shape[2] = spec.k_h;
  d.weight_shape[3] = spec.k_w;
  d.group = spec.group;
  d.complement_rows = 0;  // complement forms were dropped (fast_decode.cc, PlanRows); the field stays
  if (c.log) LogDecision(d);
  if (!c.report_path.empty()) ReportDecision(d, c.report_path);
  return engine;
}

}  // namespace ternary_conv
}  // namespace micronet
