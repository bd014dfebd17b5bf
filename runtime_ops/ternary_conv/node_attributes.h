// Reading a TernaryConv node's identity and attributes from an OrtKernelInfo at kernel creation: the
// exact attribute types the format requires, into NodeAttributes (checked by ternary_conv_spec.cc).
#ifndef MICRONET_TERNARY_CONV_NODE_ATTRIBUTES_H_
#define MICRONET_TERNARY_CONV_NODE_ATTRIBUTES_H_

#include <string>

#include "common/ort_util.h"
#include "ternary_conv/conv_engine.h"
#include "ternary_conv/ternary_conv_spec.h"

namespace micronet {
namespace ternary_conv {

// Reads a string through a (buffer, size) query API; returns false when the call fails.
template <typename Fn>
bool ReadString(const OrtApi* api, Fn&& fn, std::string* out) {
  size_t size = 0;
  StatusGuard probe(api, fn(nullptr, &size));
  if (!probe.ok()) return false;
  std::string buffer(size + 1, '\0');
  size_t size2 = buffer.size();
  StatusGuard read(api, fn(&buffer[0], &size2));
  if (!read.ok()) return false;
  buffer.resize(std::min(size2, buffer.size()));
  while (!buffer.empty() && buffer.back() == '\0') buffer.pop_back();
  *out = buffer;
  return true;
}

// The node's name and its "TernaryConv node 'name'" label.
NodeIdentity ReadNodeIdentity(const OrtApi* api, const OrtKernelInfo* info);

// Reads every attribute the format defines into `attrs`; returns an error message ("" when fine).
std::string ReadAttributes(const OrtApi* api, const OrtKernelInfo* info, NodeAttributes* attrs);

}  // namespace ternary_conv
}  // namespace micronet

#endif  // MICRONET_TERNARY_CONV_NODE_ATTRIBUTES_H_
