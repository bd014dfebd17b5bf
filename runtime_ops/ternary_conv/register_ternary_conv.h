// The TernaryConv op family's entry for register.cc (see common/op_family.h).
#pragma once

#include <onnxruntime_c_api.h>

namespace micronet {
namespace ternary_conv {

// Adds the ops of this family (TernaryConv, domain opsets 1..2) to `domain`. The ops live as long
// as the process (a domain is created once per onnxruntime instance and never released).
OrtStatus* RegisterTernaryConvOps(OrtCustomOpDomain* domain, const OrtApi* api);

}  // namespace ternary_conv
}  // namespace micronet
