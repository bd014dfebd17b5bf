// Output shape inference of TernaryConv (OrtCustomOp::InferOutputShapeFn, C API 17 = onnxruntime
// 1.17, the version this library requests, so no runtime check is needed). onnxruntime calls it
// while it resolves the graph, before any kernel exists: Y = [B, M_out, OH, OW] from X's shape and
// the attributes, with the output-size formula of conv_math.h.
//
// It never fails: onnxruntime ignores the returned status (and would leak it), and every error is
// the kernel's to report, with its message naming the node, when the session creates it. So when
// anything is unknown or invalid (X not rank 4, H or W not a number, a batch dimension that is
// neither a number nor named, an attribute the kernel would reject, an empty output) Y's shape is
// left as it was.
#include <onnxruntime_c_api.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/ort_util.h"
#include "ternary_conv/conv_math.h"
#include "ternary_conv/ternary_conv_op.h"
#include "ternary_conv/ternary_conv_spec.h"
#include "ternary_conv/ternary_format.h"

namespace micronet {
namespace ternary_conv {

namespace {

namespace tf = ::micronet::ternary_format;

const OrtOpAttr* FindAttribute(const OrtApi* api, const OrtShapeInferContext* ctx, const char* name) {
  const OrtOpAttr* attr = nullptr;
  StatusGuard st(api, api->ShapeInferContext_GetAttribute(ctx, name, &attr));  // an error: absent
  return st.ok() ? attr : nullptr;
}

// An ints attribute of at most 8 values; false when it cannot be read (then no shape is inferred).
bool ReadInts(const OrtApi* api, const OrtShapeInferContext* ctx, const char* name,
              std::optional<std::vector<int64_t>>* out) {
  const OrtOpAttr* attr = FindAttribute(api, ctx, name);
  if (attr == nullptr) return true;  // absent
  int64_t values[8] = {};
  size_t bytes = 0;
  if (!StatusGuard(api, api->ReadOpAttr(attr, ORT_OP_ATTR_INTS, values, sizeof values, &bytes)).ok()) return false;
  if (bytes > sizeof values || bytes % sizeof(int64_t) != 0) return false;
  *out = std::vector<int64_t>(values, values + bytes / sizeof(int64_t));
  return true;
}

bool ReadInt(const OrtApi* api, const OrtShapeInferContext* ctx, const char* name, std::optional<int64_t>* out) {
  const OrtOpAttr* attr = FindAttribute(api, ctx, name);
  if (attr == nullptr) return true;  // absent
  int64_t value = 0;
  size_t bytes = 0;
  if (!StatusGuard(api, api->ReadOpAttr(attr, ORT_OP_ATTR_INT, &value, sizeof value, &bytes)).ok()) return false;
  *out = value;
  return true;
}

// The geometry attributes (activation does not shape Y and is left to the kernel).
bool ReadGeometry(const OrtApi* api, const OrtShapeInferContext* ctx, TernaryConvSpec* spec) {
  NodeAttributes attrs;
  if (!ReadInts(api, ctx, tf::kAttrWeightShape, &attrs.weight_shape) ||
      !ReadInts(api, ctx, tf::kAttrStrides, &attrs.strides) || !ReadInts(api, ctx, tf::kAttrPads, &attrs.pads) ||
      !ReadInts(api, ctx, tf::kAttrDilations, &attrs.dilations) || !ReadInt(api, ctx, tf::kAttrGroup, &attrs.group) ||
      !ReadInt(api, ctx, tf::kAttrOutChannels, &attrs.num_output_channels)) {
    return false;
  }
  return CheckAttributes(attrs, spec).empty();
}

// X's dims and dimension names; false unless X is a rank-4 tensor.
bool ReadX(const OrtApi* api, const OrtShapeInferContext* ctx, int64_t dims[4], std::string names[4]) {
  size_t count = 0;
  if (!StatusGuard(api, api->ShapeInferContext_GetInputCount(ctx, &count)).ok() || count < 1) return false;
  OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
  if (!StatusGuard(api, api->ShapeInferContext_GetInputTypeShape(ctx, 0, &info)).ok() || info == nullptr) {
    return false;
  }
  size_t rank = 0;
  if (!StatusGuard(api, api->GetDimensionsCount(info, &rank)).ok() || rank != 4) return false;
  const char* params[4] = {nullptr, nullptr, nullptr, nullptr};
  if (!StatusGuard(api, api->GetDimensions(info, dims, 4)).ok() ||
      !StatusGuard(api, api->GetSymbolicDimensions(info, params, 4)).ok()) {
    return false;
  }
  for (int i = 0; i < 4; ++i) names[i] = params[i] != nullptr ? params[i] : "";
  return true;
}

// Sets Y = dims (with dimension names `names`, "" for a number).
void SetY(const OrtApi* api, OrtShapeInferContext* ctx, const int64_t dims[4], const char* const names[4]) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (!StatusGuard(api, api->CreateTensorTypeAndShapeInfo(&info)).ok() || info == nullptr) return;
  const char* params[4] = {names[0], names[1], names[2], names[3]};
  if (StatusGuard(api, api->SetTensorElementType(info, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)).ok() &&
      StatusGuard(api, api->SetDimensions(info, dims, 4)).ok() &&
      StatusGuard(api, api->SetSymbolicDimensions(info, params, 4)).ok()) {
    StatusGuard(api, api->ShapeInferContext_SetOutputTypeShape(ctx, 0, info));
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
}

}  // namespace

OrtStatusPtr ORT_API_CALL InferOutputShape(const OrtCustomOp* op, OrtShapeInferContext* ctx) noexcept {
  if (op == nullptr || ctx == nullptr) return nullptr;
  const OrtApi* api = reinterpret_cast<const TernaryConvOp*>(op)->api;
  try {
    int64_t x[4] = {0, 0, 0, 0};
    std::string x_names[4];
    TernaryConvSpec spec;
    if (!ReadX(api, ctx, x, x_names) || !ReadGeometry(api, ctx, &spec)) return nullptr;
    const bool batch_known = x[0] >= 0 || !x_names[0].empty();
    if (!batch_known || x[2] < 0 || x[3] < 0 || !x_names[2].empty() || !x_names[3].empty()) return nullptr;
    const OutputAxis rows = OutputRows(spec, x[2]), cols = OutputCols(spec, x[3]);
    if (rows.status != OutputAxis::kOk || cols.status != OutputAxis::kOk) return nullptr;
    const int64_t y[4] = {x[0], spec.m_out, rows.out, cols.out};
    const char* const names[4] = {x_names[0].c_str(), "", "", ""};
    SetY(api, ctx, y, names);
  } catch (...) {  // std::bad_alloc: leave the shape unknown
  }
  return nullptr;
}

}  // namespace ternary_conv
}  // namespace micronet
