// onnxruntime registration of micronet::TernaryConv (plain C API OrtCustomOp).
#pragma once

#include <onnxruntime_c_api.h>

namespace micronet {
namespace ternary_conv {

// A static OrtCustomOp describing TernaryConv (domain opsets 1 and 2), valid for the process lifetime.
const OrtCustomOp* TernaryConvCustomOp();

}  // namespace ternary_conv
}  // namespace micronet
