// onnxruntime glue of micronet::TernaryConv (plain C API OrtCustomOp): kernel callbacks in
// ternary_conv_op.cc, shape inference in ternary_conv_shape.cc, registration in
// register_ternary_conv.cc.
#pragma once

#include <onnxruntime_c_api.h>

namespace micronet {
namespace ternary_conv {

// The OrtCustomOp of TernaryConv with the API it was registered with. `op` comes first: onnxruntime
// hands &op back to the callbacks, which cast it to the TernaryConvOp around it.
struct TernaryConvOp {
  OrtCustomOp op;
  const OrtApi* api;
};

// The callbacks of TernaryConv (domain opsets 1 and 2), InferOutputShapeFn included.
OrtCustomOp MakeTernaryConvOp();

// OrtCustomOp::InferOutputShapeFn; `op` must be the `op` of a TernaryConvOp.
OrtStatusPtr ORT_API_CALL InferOutputShape(const OrtCustomOp* op, OrtShapeInferContext* ctx) noexcept;

}  // namespace ternary_conv
}  // namespace micronet
