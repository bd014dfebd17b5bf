// The two channels through which a TernaryConv kernel choice leaves the library, one line per node
// at kernel creation (docs/runtime.md, "Which kernel runs"):
// - MICRONET_TERNARY_LOG=1: a human-readable line on stderr;
// - MICRONET_TERNARY_REPORT=<path>: one JSON object per line appended to <path>, the documented
//   machine-readable channel (micronet_onnx/runtime/kernel_report.py reads it).
#pragma once

#include <cstdint>
#include <string>

namespace micronet {
namespace ternary_conv {

// Version of the JSON line's schema ("report_version"): raised when a field changes meaning or goes.
constexpr int kKernelReportVersion = 1;

// One node's kernel choice, as CreateEngine made it.
struct KernelDecision {
  std::string label;        // "TernaryConv node 'name'" (the log line's prefix)
  std::string node;         // the node's name ("" when unnamed)
  std::string output;       // the name of its output Y
  std::string kernel;       // the engine: "sparse", "dense" or "direct"
  std::string isa;          // "avx512", "avx2", "portable", or "scalar" (direct)
  std::string requested;    // MICRONET_TERNARY_KERNEL ("auto" when unset)
  std::string requested_isa;  // MICRONET_TERNARY_ISA ("auto" when unset)
  std::string requested_algo;  // the requested engine after parsing (the log's "requested"; portable = sparse)
  double density = 0;       // non-zero weights / all weights
  double effective = 0;     // taps the sparse kernel adds / all weights (= density since the complement forms went)
  int64_t nnz = 0;
  int64_t weight_shape[4] = {0, 0, 0, 0};
  int64_t group = 1;
  int64_t complement_rows = 0;  // stored rows summed in a complement form: always 0 (report version 1 keeps it)
  int64_t plane = 0;            // output plane (OH * OW) from the graph's X size; 0 when unknown
  double dense_threshold = 0;   // the effective density from which `auto` picks the dense kernel
};

// Writes the MICRONET_TERNARY_LOG line to stderr.
void LogDecision(const KernelDecision& d);

// The JSON line (with its '\n') that ReportDecision appends.
std::string DecisionJson(const KernelDecision& d);

// Appends DecisionJson(d) to `path` in one write(2) on an O_APPEND descriptor, so lines of
// concurrent sessions and processes do not interleave. Throws std::runtime_error when the file
// cannot be opened or written (the session then fails: a report that was asked for is not dropped).
void ReportDecision(const KernelDecision& d, const std::string& path);

}  // namespace ternary_conv
}  // namespace micronet
