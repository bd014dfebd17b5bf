// Validation and decoding of one TernaryConv node, independent of onnxruntime.
//
// The onnxruntime glue (ternary_conv_op.cc) reads the attributes and the constant inputs 1..7 into
// NodeAttributes / ConstTensor views; BuildSpec() checks everything the format requires and decodes
// the packed weight into a TernaryConvSpec, the immutable structure the compute engines read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace micronet {
namespace ternary_conv {

// A view of a constant tensor owned by the caller (only valid during BuildSpec).
struct ConstTensor {
  int32_t dtype = 0;            // ONNX TensorProto.DataType code
  std::vector<int64_t> shape;   // as reported by the runtime
  const void* data = nullptr;   // may be null when the tensor is empty
  size_t num_elements = 0;
};

// Attributes as read from the node. An absent optional attribute is std::nullopt.
struct NodeAttributes {
  std::optional<std::vector<int64_t>> weight_shape;  // required
  std::optional<std::vector<int64_t>> strides;
  std::optional<std::vector<int64_t>> pads;
  std::optional<std::vector<int64_t>> dilations;
  std::optional<int64_t> group;
  std::optional<int64_t> num_output_channels;
  std::optional<std::string> activation;
  std::optional<int64_t> encoding;  // format v3: index into kEncodings; absent = masks
};

enum class Activation { kNone, kRelu };

// One non-zero weight: the channel of X it reads (after in_channels / group mapping) and its tap.
struct Tap {
  int32_t channel;
  int32_t kh;
  int32_t kw;
};

// Everything a compute engine needs, validated and decoded once at session creation.
struct TernaryConvSpec {
  // weight_shape = [m_stored, cin_per_group, k_h, k_w]
  int64_t m_stored = 0, cin_per_group = 0, k_h = 0, k_w = 0;
  int64_t group = 1;
  int64_t n_stored = 0;  // cin_per_group * group: channels of the weight's input
  int64_t m_out = 0;     // output channels of Y
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  int64_t dil_h = 1, dil_w = 1;
  Activation activation = Activation::kNone;

  float c_neg = 0.f, c_pos = 0.f;  // centroids as float32
  std::vector<float> scale;        // [m_out], 1 when absent
  std::vector<float> bias;         // [m_out], 0 when absent

  // X channel requirement at run time: C == n_stored without in_channels, C > max_in_channel with.
  bool has_in_channels = false;
  int64_t max_in_channel = -1;
  // For each stored input channel (n_stored), the channel of X it reads (in_channels, or the identity).
  std::vector<int32_t> stored_channels;

  // Input affine (format v2 in_scale / in_bias), indexed by channel of X: X[:, c] is read as
  // in_scale[c] * X[:, c] + in_bias[c] inside the image (the zero padding stays 0). Empty when absent.
  bool has_in_affine = false;
  std::vector<float> in_scale, in_bias;

  // Decoded weight. For stored row r, the positive taps are taps[row_start[2r] .. row_start[2r+1])
  // and the negative taps taps[row_start[2r+1] .. row_start[2r+2]), in row-major (c, kh, kw) order.
  std::vector<Tap> taps;
  std::vector<int64_t> row_start;  // [2 * m_stored + 1]
  int64_t nnz = 0;

  // For each output channel o: the stored row writing it, or -1 for a dead channel (act(bias)).
  std::vector<int32_t> out_row;
};

// Validates the attributes alone and fills the geometry fields of `spec` (shape, group, m_out,
// strides, pads, dilations, activation); BuildSpec starts with it, and shape inference, which sees
// only the attributes, uses it too. Returns an empty string on success, else a one-line reason.
std::string CheckAttributes(const NodeAttributes& attrs, TernaryConvSpec* spec);

// Validates the attributes and constant inputs (index 1..9 of `inputs`; nullptr = absent optional
// input; index 0 and 10 are run-time values and ignored) and fills `spec`. With encoding rows or
// entropy (format v3) input 1 is the stream and input 2 must be absent; the stream is decoded into
// the masks of encoding masks (encoded_decode.cc), then read as those. Returns an empty string
// on success, else a one-line reason. Never reads outside the given tensors; may throw std::bad_alloc.
std::string BuildSpec(const NodeAttributes& attrs, const ConstTensor* const inputs[11], TernaryConvSpec* spec);

float HalfToFloat(uint16_t h);

// "float32", "uint8", ... for an ONNX TensorProto.DataType code.
std::string DTypeName(int32_t dtype);

}  // namespace ternary_conv
}  // namespace micronet
