// What the process asks of the TernaryConv kernel choice: the CPU's instruction sets (cpuid) and the
// MICRONET_TERNARY_KERNEL / MICRONET_TERNARY_ISA / MICRONET_TERNARY_LOG / MICRONET_TERNARY_REPORT
// environment variables, read at each kernel creation (docs/runtime.md, "Environment").
#pragma once

#include <string>

#include "ternary_conv/conv_kernels.h"

namespace micronet {
namespace ternary_conv {

enum class Algo { kAuto, kSparse, kDense, kDirect };

const char* AlgoName(Algo a);  // "auto", "sparse", "dense", "direct"

struct Choice {
  Algo algo = Algo::kAuto;
  const kernels::KernelTable* isa = nullptr;  // never null: the best this CPU runs, or the forced one
  std::string requested_kernel = "auto";      // MICRONET_TERNARY_KERNEL as given ("auto" when unset)
  std::string requested_isa = "auto";         // MICRONET_TERNARY_ISA as given ("auto" when unset)
  bool log = false;                           // MICRONET_TERNARY_LOG set and not "0"
  std::string report_path;                    // MICRONET_TERNARY_REPORT ("" when unset)
};

// Reads the environment; throws std::invalid_argument for a value it does not know, or an
// instruction set this CPU (or build) lacks.
Choice ReadChoice();

}  // namespace ternary_conv
}  // namespace micronet
