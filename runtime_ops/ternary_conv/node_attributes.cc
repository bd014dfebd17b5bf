// Attribute readers of TernaryConv (see node_attributes.h).
#include "ternary_conv/node_attributes.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ternary_conv/ternary_format.h"

namespace micronet {
namespace ternary_conv {
namespace {

namespace tf = ::micronet::ternary_format;


// True when the node has an int, float or string attribute `name`.
bool ScalarAttributePresent(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  int64_t i = 0;
  float f = 0;
  size_t size = 0;
  if (StatusGuard(api, api->KernelInfoGetAttribute_int64(info, name, &i)).ok()) return true;
  if (StatusGuard(api, api->KernelInfoGetAttribute_float(info, name, &f)).ok()) return true;
  return StatusGuard(api, api->KernelInfoGetAttribute_string(info, name, nullptr, &size)).ok();
}

// Size of the floats attribute `name`, or -1 when there is none.
int64_t FloatsAttributeSize(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  size_t size = 0;
  if (!StatusGuard(api, api->KernelInfoGetAttributeArray_float(info, name, nullptr, &size)).ok()) return -1;
  return static_cast<int64_t>(size);
}

// True when the node has an attribute `name` of any scalar/list type we can query.
bool AttributePresent(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  if (ScalarAttributePresent(api, info, name)) return true;
  size_t size = 0;
  if (StatusGuard(api, api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)).ok()) return true;
  return FloatsAttributeSize(api, info, name) >= 0;
}

// True when `name` is an int, float, string or non-empty floats attribute (the list getters of some
// onnxruntime versions report any other attribute type as an empty list).
bool AttributeIsNotInts(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  return ScalarAttributePresent(api, info, name) || FloatsAttributeSize(api, info, name) > 0;
}

std::string ReadInts(const OrtApi* api, const OrtKernelInfo* info, const char* name,
                     std::optional<std::vector<int64_t>>* out) {
  size_t size = 0;
  {
    StatusGuard st(api, api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size));
    if (!st.ok()) {
      if (AttributePresent(api, info, name)) return std::string("attribute ") + name + " must be a list of ints";
      return {};  // absent
    }
  }
  if (size == 0 && AttributeIsNotInts(api, info, name)) {
    return std::string("attribute ") + name + " must be a list of ints";
  }
  std::vector<int64_t> values(size);
  if (size > 0) {
    size_t size2 = size;
    StatusGuard st(api, api->KernelInfoGetAttributeArray_int64(info, name, values.data(), &size2));
    if (!st.ok()) return std::string("cannot read attribute ") + name + ": " + st.message();
    values.resize(std::min(size, size2));
  }
  *out = std::move(values);
  return {};
}

std::string ReadInt(const OrtApi* api, const OrtKernelInfo* info, const char* name, std::optional<int64_t>* out) {
  int64_t value = 0;
  StatusGuard st(api, api->KernelInfoGetAttribute_int64(info, name, &value));
  if (st.ok()) {
    *out = value;
    return {};
  }
  if (AttributePresent(api, info, name)) return std::string("attribute ") + name + " must be an int";
  return {};
}

std::string ReadStringAttr(const OrtApi* api, const OrtKernelInfo* info, const char* name,
                           std::optional<std::string>* out) {
  std::string value;
  if (ReadString(api, [&](char* buf, size_t* size) { return api->KernelInfoGetAttribute_string(info, name, buf, size); },
                 &value)) {
    *out = value;
    return {};
  }
  if (AttributePresent(api, info, name)) return std::string("attribute ") + name + " must be a string";
  return {};
}

}  // namespace

NodeIdentity ReadNodeIdentity(const OrtApi* api, const OrtKernelInfo* info) {
  NodeIdentity id;
  ReadString(api, [&](char* out, size_t* size) { return api->KernelInfo_GetNodeName(info, out, size); }, &id.name);
  ReadString(api, [&](char* out, size_t* size) { return api->KernelInfo_GetOutputName(info, 0, out, size); },
             &id.output);
  id.label = !id.name.empty() ? std::string(tf::kOpType) + " node '" + id.name + "'"
                              : std::string(tf::kOpType) + " node (unnamed, output '" + id.output + "')";
  return id;
}

std::string ReadAttributes(const OrtApi* api, const OrtKernelInfo* info, NodeAttributes* attrs) {
  std::string err;
  if (!(err = ReadInts(api, info, tf::kAttrWeightShape, &attrs->weight_shape)).empty()) return err;
  if (!(err = ReadInts(api, info, tf::kAttrStrides, &attrs->strides)).empty()) return err;
  if (!(err = ReadInts(api, info, tf::kAttrPads, &attrs->pads)).empty()) return err;
  if (!(err = ReadInts(api, info, tf::kAttrDilations, &attrs->dilations)).empty()) return err;
  if (!(err = ReadInt(api, info, tf::kAttrGroup, &attrs->group)).empty()) return err;
  if (!(err = ReadInt(api, info, tf::kAttrOutChannels, &attrs->num_output_channels)).empty()) return err;
  if (!(err = ReadStringAttr(api, info, tf::kAttrActivation, &attrs->activation)).empty()) return err;
  if (!(err = ReadInt(api, info, tf::kAttrEncoding, &attrs->encoding)).empty()) return err;
  return {};
}

}  // namespace ternary_conv
}  // namespace micronet
