// The compute interface of TernaryConv. A ConvEngine is built once per kernel from the validated,
// decoded TernaryConvSpec; for each run it prepares a ConvRun (per-shape tables, scratch sizes) that
// splits the output into independent work items. Faster kernels implement these two classes and
// are picked in CreateEngine(); the onnxruntime glue (ternary_conv_op.cc) does not change.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ternary_conv/ternary_conv_spec.h"

namespace micronet {
namespace ternary_conv {

// Shapes of one run: X is [batch, channels, in_h, in_w], Y is [batch, spec.m_out, out_h, out_w],
// both dense row-major float32. Validated by the caller: channels match the spec, out_h and out_w
// are positive and batch * m_out * out_h * out_w does not overflow.
struct RunGeometry {
  int64_t batch = 0, channels = 0, in_h = 0, in_w = 0;
  int64_t out_h = 0, out_w = 0;
};

// The tensors of one run: X, the optional residual (format v2; Y's shape, nullptr when absent) and Y.
struct RunIO {
  const float* x = nullptr;
  const float* residual = nullptr;
  float* y = nullptr;
};

// One run of an engine on one geometry. Immutable once built, so work items may run concurrently.
class ConvRun {
 public:
  virtual ~ConvRun() = default;

  // Independent work items that write disjoint parts of Y and together write all of it.
  virtual size_t NumWorkItems() const = 0;

  // Rough cost of the whole run in additions, used to decide whether to parallelise.
  virtual double Cost() const = 0;

  // Computes one work item. Thread-safe, never throws; allocation-free except that the fast engines
  // take their band scratch from a process-wide pool (fast_run.cc), which allocates a buffer only when
  // more items run at once than ever before.
  virtual void RunWorkItem(const RunIO& io, size_t item) const noexcept = 0;

  // True when some work item could not run (its scratch buffer could not be allocated): the output
  // is then incomplete and the run must fail. Read after every item has returned.
  virtual bool Failed() const noexcept { return false; }
};

// Output rows [oh0, oh1) of output channel o of image b, computed by the direct engine's scalar
// code (zero weights skipped). The fast dense engine uses it for bands whose input holds a NaN or an
// infinity, so that every kernel follows one rule for non-finite inputs (docs/runtime.md).
class DirectRows {
 public:
  virtual ~DirectRows() = default;
  virtual void ComputeRows(const RunIO& io, int64_t b, int64_t o, int64_t oh0, int64_t oh1) const noexcept = 0;
};
std::unique_ptr<DirectRows> PrepareDirectRows(const TernaryConvSpec& spec, const RunGeometry& geometry);

class ConvEngine {
 public:
  virtual ~ConvEngine() = default;
  virtual const char* Name() const = 0;

  // Prepares a run for this geometry (may allocate and throw std::bad_alloc).
  virtual std::unique_ptr<ConvRun> Prepare(const RunGeometry& geometry) const = 0;
};

// X's spatial size as the graph states it at session creation (0: unknown). Only a hint for the
// kernel choice: every run checks X itself.
struct ShapeHint {
  int64_t in_h = 0, in_w = 0;
};

// Who a node is, for messages, the log and the report.
struct NodeIdentity {
  std::string label;   // "TernaryConv node 'name'" (or "(unnamed, output 'y')"): every message's prefix
  std::string name;    // the node's name ("" when unnamed)
  std::string output;  // the name of its output Y
};

// Picks the engine for this spec (engine_dispatch.cc): the sparse or the dense fast engine on the
// best instruction set of this CPU, or what MICRONET_TERNARY_KERNEL / MICRONET_TERNARY_ISA force,
// and writes the MICRONET_TERNARY_LOG line / MICRONET_TERNARY_REPORT record of `node`. Throws
// std::invalid_argument for a bad environment value and std::runtime_error when the report cannot be
// written. The engine keeps a reference to `spec`, which must outlive it and every ConvRun it
// prepares.
std::unique_ptr<ConvEngine> CreateEngine(const TernaryConvSpec& spec, const NodeIdentity& node,
                                         const ShapeHint& hint = ShapeHint{});

// The simple direct engine (conv_engine_direct.cc): any geometry, scalar code. Used for
// MICRONET_TERNARY_KERNEL=direct and when a fast engine's band scratch would not fit.
std::unique_ptr<ConvEngine> CreateDirectEngine(const TernaryConvSpec& spec);

}  // namespace ternary_conv
}  // namespace micronet
