// onnxruntime glue of TernaryConv: reads the node's attributes and constant inputs once when the
// session creates the kernel (validation and decoding live in ternary_conv_spec.cc), checks X at
// each run and hands the work to a ConvEngine on onnxruntime's intra-op thread pool.
#include "ternary_conv/ternary_conv_op.h"

#include <algorithm>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "common/ort_util.h"
#include "ternary_conv/conv_engine.h"
#include "ternary_conv/conv_math.h"
#include "ternary_conv/node_attributes.h"
#include "ternary_conv/ternary_conv_spec.h"
#include "ternary_conv/ternary_format.h"

namespace micronet {
namespace ternary_conv {
namespace {

namespace tf = ::micronet::ternary_format;

// Below this many multiply-adds a run stays on the calling thread.
constexpr double kMinParallelCost = 65536.0;

struct Kernel {
  const OrtApi* api = nullptr;
  NodeIdentity node;  // node.label ("TernaryConv node 'name'") prefixes every error message
  TernaryConvSpec spec;
  std::unique_ptr<ConvEngine> engine;
  bool has_residual = false;  // input 10 (format v2) is given: checked and read at each run
};

// ---------------------------------------------------------------------------------------------
// Reading the node at kernel creation


// Fills `out` with a view of a tensor OrtValue.
std::string ViewTensor(const OrtApi* api, const OrtValue* value, const char* name, ConstTensor* out) {
  int is_tensor = 0;
  if (!StatusGuard(api, api->IsTensor(value, &is_tensor)).ok() || !is_tensor) {
    return std::string(name) + " must be a tensor";
  }
  OrtTensorTypeAndShapeInfo* info = nullptr;
  {
    StatusGuard st(api, api->GetTensorTypeAndShape(value, &info));
    if (!st.ok() || info == nullptr) return std::string("cannot read the type of ") + name + ": " + st.message();
  }
  struct Releaser {
    const OrtApi* api;
    OrtTensorTypeAndShapeInfo* info;
    ~Releaser() { api->ReleaseTensorTypeAndShapeInfo(info); }
  } releaser{api, info};
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t rank = 0, count = 0;
  if (!StatusGuard(api, api->GetTensorElementType(info, &type)).ok() ||
      !StatusGuard(api, api->GetDimensionsCount(info, &rank)).ok()) {
    return std::string("cannot read the type of ") + name;
  }
  out->dtype = static_cast<int32_t>(type);
  out->shape.assign(rank, 0);
  if (rank > 0 && !StatusGuard(api, api->GetDimensions(info, out->shape.data(), rank)).ok()) {
    return std::string("cannot read the shape of ") + name;
  }
  if (!StatusGuard(api, api->GetTensorShapeElementCount(info, &count)).ok()) {
    return std::string("cannot read the size of ") + name;
  }
  for (int64_t d : out->shape) {
    if (d < 0) return std::string(name) + " has a negative dimension";
  }
  out->num_elements = count;
  out->data = nullptr;
  if (count > 0 && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) {
    void* data = nullptr;
    StatusGuard st(api, api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
    if (!st.ok()) return std::string("cannot read the data of ") + name + ": " + st.message();
    out->data = data;
  }
  return {};
}

// X must be float32 when its type is known now (checked again at run time); its spatial size, when
// the graph states it, goes to `hint`.
std::string ReadXType(const OrtApi* api, const OrtKernelInfo* info, ShapeHint* hint) {
  std::string x_name;
  ReadString(api, [&](char* out, size_t* size) { return api->KernelInfo_GetInputName(info, 0, out, size); }, &x_name);
  if (x_name.empty()) return "input X is missing";
  OrtTypeInfo* type_info = nullptr;
  if (StatusGuard(api, api->KernelInfo_GetInputTypeInfo(info, 0, &type_info)).ok() && type_info != nullptr) {
    const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    if (StatusGuard(api, api->CastTypeInfoToTensorInfo(type_info, &tensor_info)).ok() && tensor_info != nullptr) {
      StatusGuard(api, api->GetTensorElementType(tensor_info, &type));
      // X's spatial size when the graph states it (a hint for the kernel choice only; runs check X)
      size_t rank = 0;
      if (StatusGuard(api, api->GetDimensionsCount(tensor_info, &rank)).ok() && rank == 4) {
        int64_t dims[4] = {0, 0, 0, 0};
        if (StatusGuard(api, api->GetDimensions(tensor_info, dims, 4)).ok() && dims[2] > 0 && dims[3] > 0) {
          hint->in_h = dims[2];
          hint->in_w = dims[3];
        }
      }
    }
    api->ReleaseTypeInfo(type_info);
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      return "X must be float32, got " + DTypeName(static_cast<int32_t>(type));
    }
  }
  return {};
}

std::string ReadNode(const OrtApi* api, const OrtKernelInfo* info, Kernel* kernel) {
  size_t num_inputs = 0, num_outputs = 0;
  if (!StatusGuard(api, api->KernelInfo_GetInputCount(info, &num_inputs)).ok() ||
      !StatusGuard(api, api->KernelInfo_GetOutputCount(info, &num_outputs)).ok()) {
    return "cannot read the node's inputs";
  }
  if (num_inputs < static_cast<size_t>(tf::kNumRequiredInputs) || num_inputs > static_cast<size_t>(tf::kMaxInputs)) {
    return "has " + std::to_string(num_inputs) + " inputs, expected " + std::to_string(tf::kNumRequiredInputs) +
           " to " + std::to_string(tf::kMaxInputs);
  }
  if (num_outputs != 1) return "has " + std::to_string(num_outputs) + " outputs, expected 1";

  ShapeHint hint;
  std::string err = ReadXType(api, info, &hint);
  if (!err.empty()) return err;

  NodeAttributes attrs;
  err = ReadAttributes(api, info, &attrs);
  if (!err.empty()) return err;

  ConstTensor tensors[tf::kMaxInputs];
  const ConstTensor* present[tf::kMaxInputs] = {};
  if (num_inputs > static_cast<size_t>(tf::kInResidual)) {
    std::string residual_name;
    ReadString(api, [&](char* out, size_t* size) { return api->KernelInfo_GetInputName(info, tf::kInResidual, out, size); },
               &residual_name);
    kernel->has_residual = !residual_name.empty();
  }
  for (int i = tf::kInMask; i < tf::kMaxInputs; ++i) {
    if (i == tf::kInResidual) continue;  // a run-time value, not a constant
    const char* what = tf::kInputNames[i];
    std::string value_name;
    if (static_cast<size_t>(i) < num_inputs) {
      ReadString(api, [&](char* out, size_t* size) { return api->KernelInfo_GetInputName(info, i, out, size); },
                 &value_name);
    }
    if (value_name.empty()) {
      // sign is absent with encoding rows / entropy: BuildSpec checks it against the encoding
      if (i < tf::kNumRequiredInputs && i != tf::kInSign) return std::string("required input ") + what + " is missing";
      continue;  // absent optional input
    }
    int is_constant = 0;
    const OrtValue* value = nullptr;
    StatusGuard st(api, api->KernelInfoGetConstantInput_tensor(info, static_cast<size_t>(i), &is_constant, &value));
    if (!st.ok() || !is_constant || value == nullptr) {
      return std::string("input ") + what + " ('" + value_name +
             "') must be a constant initializer (not a graph input or a computed value): it is read once when the "
             "session is created";
    }
    err = ViewTensor(api, value, what, &tensors[i]);
    if (!err.empty()) return err;
    present[i] = &tensors[i];
  }

  err = BuildSpec(attrs, present, &kernel->spec);
  if (!err.empty()) return err;
  kernel->engine = CreateEngine(kernel->spec, kernel->node, hint);
  return {};
}

// ---------------------------------------------------------------------------------------------
// OrtCustomOp callbacks

OrtStatusPtr ORT_API_CALL CreateKernelV2(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                                         void** op_kernel) noexcept {
  if (op_kernel != nullptr) *op_kernel = nullptr;
  if (api == nullptr) return nullptr;  // cannot happen: onnxruntime passes the API of our version
  std::string label = tf::kOpType;
  try {
    if (op_kernel == nullptr || info == nullptr) return MakeStatus(api, ORT_INVALID_ARGUMENT, label + ": null argument");
    NodeIdentity node = ReadNodeIdentity(api, info);
    label = node.label;
    auto kernel = std::make_unique<Kernel>();
    kernel->api = api;
    kernel->node = std::move(node);
    const std::string err = ReadNode(api, info, kernel.get());
    if (!err.empty()) return MakeStatus(api, ORT_INVALID_GRAPH, label + ": " + err);
    *op_kernel = kernel.release();
    return nullptr;
  } catch (const std::bad_alloc&) {
    return MakeStatus(api, ORT_FAIL, label + ": out of memory while decoding the weight");
  } catch (const std::exception& e) {
    return MakeStatus(api, ORT_FAIL, label + ": " + e.what());
  } catch (...) {
    return MakeStatus(api, ORT_FAIL, label + ": unknown error");
  }
}

struct ParallelJob {
  const ConvRun* run;
  RunIO io;
};

void ORT_API_CALL RunJobItem(void* data, size_t item) {
  const ParallelJob* job = static_cast<const ParallelJob*>(data);
  job->run->RunWorkItem(job->io, item);
}

// Checked a * b for non-negative values.
bool MulOk(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// The residual input (format v2) of a run whose Y is y_dims (`total` elements): float32 of exactly Y's shape.
std::string ReadResidual(const Kernel& k, OrtKernelContext* context, size_t num_inputs, const int64_t y_dims[4],
                         int64_t total, const float** out) {
  const OrtApi* api = k.api;
  const OrtValue* r_value = nullptr;
  if (num_inputs <= static_cast<size_t>(tf::kInResidual) ||
      !StatusGuard(api, api->KernelContext_GetInput(context, tf::kInResidual, &r_value)).ok() || r_value == nullptr) {
    return "input residual is missing";
  }
  ConstTensor r;
  std::string err = ViewTensor(api, r_value, "residual", &r);
  if (!err.empty()) return err;
  if (r.dtype != tf::kFloatDtype) return "residual must be float32, got " + DTypeName(r.dtype);
  if (r.shape.size() != 4 || r.shape[0] != y_dims[0] || r.shape[1] != y_dims[1] || r.shape[2] != y_dims[2] ||
      r.shape[3] != y_dims[3]) {
    std::string shape;
    for (size_t i = 0; i < r.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(r.shape[i]);
    return "residual must have Y's shape [" + std::to_string(y_dims[0]) + ", " + std::to_string(y_dims[1]) + ", " +
           std::to_string(y_dims[2]) + ", " + std::to_string(y_dims[3]) + "], got [" + shape + "]";
  }
  if (total > 0 && r.data == nullptr) return "residual has no data";
  *out = static_cast<const float*>(r.data);
  return {};
}

constexpr const char* kScratchFailure = "out of memory for a band scratch buffer";

std::string Compute(const Kernel& k, OrtKernelContext* context) {
  const OrtApi* api = k.api;
  const TernaryConvSpec& s = k.spec;
  size_t num_inputs = 0;
  if (!StatusGuard(api, api->KernelContext_GetInputCount(context, &num_inputs)).ok() || num_inputs < 1) {
    return "cannot read input X";
  }
  const OrtValue* x_value = nullptr;
  if (!StatusGuard(api, api->KernelContext_GetInput(context, 0, &x_value)).ok() || x_value == nullptr) {
    return "input X is missing";
  }
  ConstTensor x;
  std::string err = ViewTensor(api, x_value, "X", &x);
  if (!err.empty()) return err;
  if (x.dtype != tf::kFloatDtype) return "X must be float32, got " + DTypeName(x.dtype);
  if (x.shape.size() != 4) return "X must have rank 4 [B, C, H, W], got rank " + std::to_string(x.shape.size());
  RunGeometry g;
  g.batch = x.shape[0];
  g.channels = x.shape[1];
  g.in_h = x.shape[2];
  g.in_w = x.shape[3];
  if (s.has_in_channels) {
    if (g.channels <= s.max_in_channel) {
      return "X has " + std::to_string(g.channels) + " channels but in_channels reads channel " +
             std::to_string(s.max_in_channel);
    }
  } else if (g.channels != s.n_stored) {
    return "X has " + std::to_string(g.channels) + " channels, expected " + std::to_string(s.n_stored) +
           " (weight_shape[1] * group)";
  }
  const OutputAxis rows = OutputRows(s, g.in_h), cols = OutputCols(s, g.in_w);
  if (rows.status == OutputAxis::kOverflow || cols.status == OutputAxis::kOverflow) return "X is too large";
  if (rows.status == OutputAxis::kEmpty || cols.status == OutputAxis::kEmpty) {
    return "output would be empty: the kernel (extent " + std::to_string(rows.span) + "x" + std::to_string(cols.span) +
           ") is larger than the padded input (" + std::to_string(rows.padded) + "x" + std::to_string(cols.padded) +
           ")";
  }
  g.out_h = rows.out;
  g.out_w = cols.out;
  int64_t plane = 0, per_batch = 0, total = 0;
  if (!MulOk(g.out_h, g.out_w, &plane) || !MulOk(plane, s.m_out, &per_batch) || !MulOk(per_batch, g.batch, &total) ||
      total > INT64_MAX / static_cast<int64_t>(sizeof(float))) {
    return "output size overflows";
  }
  const int64_t y_dims[4] = {g.batch, s.m_out, g.out_h, g.out_w};
  OrtValue* y_value = nullptr;
  {
    StatusGuard st(api, api->KernelContext_GetOutput(context, 0, y_dims, 4, &y_value));
    if (!st.ok() || y_value == nullptr) return "cannot allocate the output: " + st.message();
  }
  const float* residual = nullptr;
  if (k.has_residual) {
    err = ReadResidual(k, context, num_inputs, y_dims, total, &residual);
    if (!err.empty()) return err;
  }
  if (total == 0) return {};
  void* y_data = nullptr;
  {
    StatusGuard st(api, api->GetTensorMutableData(y_value, &y_data));
    if (!st.ok() || y_data == nullptr) return "cannot write the output: " + st.message();
  }
  if (x.data == nullptr) return "X has no data";

  const std::unique_ptr<ConvRun> run = k.engine->Prepare(g);
  ParallelJob job{run.get(), RunIO{static_cast<const float*>(x.data), residual, static_cast<float*>(y_data)}};
  const size_t items = run->NumWorkItems();
  if (items > 1 && run->Cost() >= kMinParallelCost && api->KernelContext_ParallelFor != nullptr) {
    OrtStatus* st = api->KernelContext_ParallelFor(context, RunJobItem, items, 0, &job);
    if (st == nullptr) return run->Failed() ? kScratchFailure : std::string();
    api->ReleaseStatus(st);  // fall back to the calling thread (items are idempotent)
  }
  for (size_t i = 0; i < items; ++i) RunJobItem(&job, i);
  return run->Failed() ? kScratchFailure : std::string();
}

OrtStatusPtr ORT_API_CALL KernelComputeV2(void* op_kernel, OrtKernelContext* context) noexcept {
  const Kernel* k = static_cast<const Kernel*>(op_kernel);
  if (k == nullptr) return nullptr;  // cannot happen: creation failed sessions do not run
  try {
    const std::string err = Compute(*k, context);
    if (!err.empty()) return MakeStatus(k->api, ORT_INVALID_ARGUMENT, k->node.label + ": " + err);
    return nullptr;
  } catch (const std::bad_alloc&) {
    return MakeStatus(k->api, ORT_FAIL, k->node.label + ": out of memory");
  } catch (const std::exception& e) {
    return MakeStatus(k->api, ORT_FAIL, k->node.label + ": " + e.what());
  } catch (...) {
    return MakeStatus(k->api, ORT_FAIL, k->node.label + ": unknown error");
  }
}

void ORT_API_CALL KernelDestroy(void* op_kernel) noexcept { delete static_cast<Kernel*>(op_kernel); }

// Version-1 entry points, only used by a runtime that ignores the V2 ones (none that accepts our
// API version does); they cannot report errors, so creation yields no kernel and compute does nothing.
void* ORT_API_CALL CreateKernelV1(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info) noexcept {
  void* kernel = nullptr;
  OrtStatus* st = CreateKernelV2(op, api, info, &kernel);
  if (st != nullptr) api->ReleaseStatus(st);
  return kernel;
}

void ORT_API_CALL KernelComputeV1(void* op_kernel, OrtKernelContext* context) noexcept {
  const Kernel* k = static_cast<const Kernel*>(op_kernel);
  if (k == nullptr) return;
  OrtStatus* st = KernelComputeV2(op_kernel, context);
  if (st != nullptr) k->api->ReleaseStatus(st);
}

const char* ORT_API_CALL GetName(const OrtCustomOp*) noexcept { return tf::kOpType; }
const char* ORT_API_CALL GetExecutionProviderType(const OrtCustomOp*) noexcept { return "CPUExecutionProvider"; }

// Inputs are declared with any element type so that the kernel, not the type matcher, reports a
// wrong dtype with a message that names the node and the input.
ONNXTensorElementDataType ORT_API_CALL GetInputType(const OrtCustomOp*, size_t) noexcept {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}
size_t ORT_API_CALL GetInputTypeCount(const OrtCustomOp*) noexcept { return tf::kMaxInputs; }
ONNXTensorElementDataType ORT_API_CALL GetOutputType(const OrtCustomOp*, size_t) noexcept {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t ORT_API_CALL GetOutputTypeCount(const OrtCustomOp*) noexcept { return 1; }
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetInputCharacteristic(const OrtCustomOp*, size_t index) noexcept {
  // sign (input 2) is optional since format v3: absent with encoding rows / entropy
  return index < static_cast<size_t>(tf::kNumRequiredInputs) && index != static_cast<size_t>(tf::kInSign)
             ? INPUT_OUTPUT_REQUIRED
             : INPUT_OUTPUT_OPTIONAL;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetOutputCharacteristic(const OrtCustomOp*, size_t) noexcept {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL GetInputMemoryType(const OrtCustomOp*, size_t) noexcept { return OrtMemTypeDefault; }
int ORT_API_CALL GetVariadicMinArity(const OrtCustomOp*) noexcept { return 1; }
int ORT_API_CALL GetVariadicHomogeneity(const OrtCustomOp*) noexcept { return 0; }
// The kernel implements domain opset versions 1..kOpsetVersion (the format versions); a model
// importing another version finds no kernel and fails at session creation. Version 1 is the subset
// without inputs 8..10; the kernel cannot see a node's opset version, so the "no inputs past 7 in a
// version-1 model" rule (and "no encoding attribute before version 3") is checked by
// micronet_onnx.runtime.check_format_version.
int ORT_API_CALL GetStartVersion(const OrtCustomOp*) noexcept { return tf::kSupportedOpsetVersions[0]; }
int ORT_API_CALL GetEndVersion(const OrtCustomOp*) noexcept { return tf::kOpsetVersion; }

}  // namespace

OrtCustomOp MakeTernaryConvOp() {
  OrtCustomOp op{};  // zero every field, including those newer than our version
  op.version = MICRONET_ORT_API_VERSION;
  op.CreateKernel = CreateKernelV1;
  op.GetName = GetName;
  op.GetExecutionProviderType = GetExecutionProviderType;
  op.GetInputType = GetInputType;
  op.GetInputTypeCount = GetInputTypeCount;
  op.GetOutputType = GetOutputType;
  op.GetOutputTypeCount = GetOutputTypeCount;
  op.KernelCompute = KernelComputeV1;
  op.KernelDestroy = KernelDestroy;
  op.GetInputCharacteristic = GetInputCharacteristic;
  op.GetOutputCharacteristic = GetOutputCharacteristic;
  op.GetInputMemoryType = GetInputMemoryType;
  op.GetVariadicInputMinArity = GetVariadicMinArity;
  op.GetVariadicInputHomogeneity = GetVariadicHomogeneity;
  op.GetVariadicOutputMinArity = GetVariadicMinArity;
  op.GetVariadicOutputHomogeneity = GetVariadicHomogeneity;
  op.CreateKernelV2 = CreateKernelV2;
  op.KernelComputeV2 = KernelComputeV2;
  op.InferOutputShapeFn = InferOutputShape;  // ternary_conv_shape.cc (the element type comes from GetOutputType)
  op.GetStartVersion = GetStartVersion;
  op.GetEndVersion = GetEndVersion;
  return op;
}

}  // namespace ternary_conv
}  // namespace micronet
