// The TernaryConv file format, mirrored from micronet_onnx/ternary_format.py (the source of truth;
// normative description: docs/ternary-conv.md). tests/test_runtime_validation.py parses this header:
// every UPPER_CASE constant of the Python module must appear here as its kCamelCase twin with the
// same value (dtypes as ONNX codes). Keep one `constexpr` definition per line.
//
// This header does not depend on onnxruntime. Element types are ONNX TensorProto codes, which the
// onnxruntime C API uses unchanged in ONNXTensorElementDataType.
#pragma once

#include <cstdint>

namespace micronet {
namespace ternary_format {

constexpr const char* kDomain = "micronet";
constexpr int kOpsetVersion = 3;  // the domain's opset version is the format version (writers emit this one)
constexpr const char* kOpType = "TernaryConv";

// Input positions: 0..3 are required, the rest optional (absent or empty names); 8..10 since opset 2.
constexpr int kInX = 0;
constexpr int kInMask = 1;
constexpr int kInStream = 1;  // since opset 3: the encoded stream with encoding rows / entropy
constexpr int kInSign = 2;
constexpr int kInCentroids = 3;
constexpr int kInScale = 4;
constexpr int kInBias = 5;
constexpr int kInInChannels = 6;
constexpr int kInOutChannels = 7;
constexpr int kInInScale = 8;
constexpr int kInInBias = 9;
constexpr int kInResidual = 10;  // the only optional input that is not a constant
constexpr int kNumRequiredInputs = 4;
constexpr int kMaxInputs = 11;
constexpr int kMaxInputsV1 = 8;  // inputs a version-1 node may have
constexpr const char* kInputNames[kMaxInputs] = {"X", "mask", "sign", "centroids", "scale", "bias", "in_channels", "out_channels", "in_scale", "in_bias", "residual"};

// Attribute names.
constexpr const char* kAttrWeightShape = "weight_shape";
constexpr const char* kAttrStrides = "strides";
constexpr const char* kAttrPads = "pads";
constexpr const char* kAttrDilations = "dilations";
constexpr const char* kAttrGroup = "group";
constexpr const char* kAttrOutChannels = "num_output_channels";
constexpr const char* kAttrActivation = "activation";
constexpr const char* kAttrEncoding = "encoding";  // int, since opset 3; default 0 (masks)

// Allowed values of `activation`.
constexpr const char* kActivations[2] = {"", "Relu"};
constexpr const char* kActivationNone = "";
constexpr const char* kActivationRelu = "Relu";

// Opset versions of the domain this library reads.
constexpr int kSupportedOpsetVersions[3] = {1, 2, 3};
constexpr int kEncodingVersion = 3;  // the first format version with the encoding attribute

// Assignment encodings (the value of `encoding` indexes kEncodings); decoded by encoded_decode.cc.
constexpr const char* kEncodings[3] = {"masks", "rows", "entropy"};
constexpr int kEncodingMasks = 0;
constexpr int kEncodingRows = 1;
constexpr int kEncodingEntropy = 2;
constexpr const char* kStreamName = "stream";
constexpr int kRowsHeaderBytes = 2;  // [rice_k, count_bits]
constexpr int kRowsMaxRiceK = 56;
constexpr int kRowsMaxCountBits = 57;
constexpr int kEntropyHeaderBytes = 4;  // uint16 LE f(-1), f(+1); f(0) = 2^15 - both
constexpr int kEntropyProbBits = 15;
constexpr int kEntropyStateBytes = 4;
constexpr int kEntropyStateLow = 8388608;  // 2^23: the rANS state lies in [2^23, 2^31)
constexpr int64_t kMaxEncodedWeights = 2147483648;  // weights of one node with encoding rows / entropy

// Element types (ONNX TensorProto.DataType codes).
constexpr int kFloatDtype = 1;  // X and Y: float32
constexpr int kMaskDtype = 2;  // uint8
constexpr int kStreamDtype = 2;  // uint8
constexpr int kSignDtype = 2;  // uint8
constexpr int kCentroidDtype = 10;  // float16
constexpr int kAffineDtype = 10;  // float16: scale and bias
constexpr int kInAffineDtype = 1;  // float32: in_scale and in_bias
constexpr int kChannelMapDtype = 6;  // int32: in_channels and out_channels

// Bit layout: least significant bit first within each byte (numpy bitorder="little").
constexpr const char* kBitOrder = "little";

// C++-only constants (checked by the tests against the behaviour of the Python module).
constexpr int kNumCentroids = 2;  // [negative value, positive value]
constexpr int kCentroidNeg = 0;
constexpr int kCentroidPos = 1;

// Upper bound of every weight_shape, strides, pads, dilations and num_output_channels value
// (the `limit` in ConvAttrs.validate).
constexpr int64_t kMaxAttributeValue = int64_t{1} << 24;

inline constexpr uint64_t PackedLength(uint64_t num_bits) { return num_bits / 8 + (num_bits % 8 != 0); }

}  // namespace ternary_format
}  // namespace micronet
