#include "ternary_conv/ternary_conv_spec.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "ternary_conv/encoded_decode.h"
#include "ternary_conv/ternary_format.h"

namespace micronet {
namespace ternary_conv {

namespace tf = ::micronet::ternary_format;

namespace {
constexpr bool StrEq(const char* a, const char* b) { return *a == *b && (*a == '\0' || StrEq(a + 1, b + 1)); }
static_assert(StrEq(tf::kBitOrder, "little"), "the decoder reads bits least significant first");
static_assert(tf::kCentroidNeg == 0 && tf::kCentroidPos == 1, "centroids are [negative, positive]");
}  // namespace

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;  // +-0
    } else {        // subnormal: normalise
      uint32_t shift = 0;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3ffu;
      bits = sign | ((127u - 15u + 1u - shift) << 23) | (mantissa << 13);
    }
  } else if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf / nan (payload kept)
  } else {
    bits = sign | ((exponent + 127u - 15u) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::string DTypeName(int32_t dtype) {
  switch (dtype) {
    case 1: return "float32";
    case 2: return "uint8";
    case 3: return "int8";
    case 4: return "uint16";
    case 5: return "int16";
    case 6: return "int32";
    case 7: return "int64";
    case 8: return "string";
    case 9: return "bool";
    case 10: return "float16";
    case 11: return "float64";
    case 12: return "uint32";
    case 13: return "uint64";
    case 16: return "bfloat16";
    default: return "dtype " + std::to_string(dtype);
  }
}

namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

bool InRange(const std::vector<int64_t>& v, int64_t lo, int64_t hi) {
  return std::all_of(v.begin(), v.end(), [&](int64_t x) { return x >= lo && x <= hi; });
}

// Checks dtype and that the tensor is 1-D with `length` elements.
std::string CheckVector(const ConstTensor& t, const char* name, int32_t dtype, uint64_t length,
                        const std::string& length_why) {
  if (t.dtype != dtype) {
    return std::string(name) + " must be " + DTypeName(dtype) + ", got " + DTypeName(t.dtype);
  }
  if (t.shape.size() != 1 || t.shape[0] < 0 || static_cast<uint64_t>(t.shape[0]) != length ||
      t.num_elements != length) {
    return std::string(name) + " must have shape [" + std::to_string(length) + "] (" + length_why + "), got " +
           ShapeString(t.shape);
  }
  if (length > 0 && t.data == nullptr) return std::string(name) + " has no data";
  return {};
}

// Padding bits after `num_bits` in the last byte must be zero.
bool PaddingBitsZero(const uint8_t* bytes, uint64_t num_bits) {
  const unsigned used = static_cast<unsigned>(num_bits % 8);
  if (used == 0) return true;
  const uint8_t last = bytes[num_bits / 8];
  return (last >> used) == 0;  // LSB first: bits [used, 8) are padding
}

inline bool Bit(const uint8_t* bytes, uint64_t i) { return (bytes[i >> 3] >> (i & 7)) & 1u; }

std::string CheckChannelMap(const ConstTensor& t, const char* name, uint64_t length, int64_t bound,
                            const std::string& length_why, std::vector<int32_t>* out) {
  std::string err = CheckVector(t, name, tf::kChannelMapDtype, length, length_why);
  if (!err.empty()) return err;
  const int32_t* v = static_cast<const int32_t*>(t.data);
  out->assign(v, v + length);
  for (uint64_t i = 0; i < length; ++i) {
    if (v[i] < 0 || (bound >= 0 && v[i] >= bound)) {
      return std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(v[i]) + " is outside [0, " +
             (bound >= 0 ? std::to_string(bound) : std::string("C")) + ")";
    }
  }
  std::vector<int32_t> sorted(*out);
  std::sort(sorted.begin(), sorted.end());
  auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  if (dup != sorted.end()) return std::string(name) + " repeats the index " + std::to_string(*dup);
  return {};
}

// Reads the optional multiplier / shift pair inputs[first], inputs[first + 1]: each `length` values
// of `dtype` (float16 or float32), value i stored at (*out[k])[slot(i)]; absent inputs keep *out[k].
template <typename Slot>
std::string ReadAffinePair(const ConstTensor* const inputs[], int first, const char* const names[2], int32_t dtype,
                           uint64_t length, const std::string& length_why, std::vector<float>* const out[2],
                           Slot slot) {
  for (int k = 0; k < 2; ++k) {
    const ConstTensor* t = inputs[first + k];
    if (t == nullptr) continue;
    std::string err = CheckVector(*t, names[k], dtype, length, length_why);
    if (!err.empty()) return err;
    for (uint64_t i = 0; i < length; ++i) {
      const float v = dtype == tf::kFloatDtype ? static_cast<const float*>(t->data)[i]
                                               : HalfToFloat(static_cast<const uint16_t*>(t->data)[i]);
      (*out[k])[static_cast<size_t>(slot(i))] = v;
    }
  }
  return {};
}

}  // namespace

std::string CheckAttributes(const NodeAttributes& attrs, TernaryConvSpec* spec) {
  const int64_t kMax = tf::kMaxAttributeValue;
  const std::string range_note = " (each at most " + std::to_string(kMax) + ")";

  if (!attrs.weight_shape) return "missing required attribute weight_shape (ints [M_stored, N_stored/group, kH, kW])";
  const std::vector<int64_t>& ws = *attrs.weight_shape;
  if (ws.size() != 4 || !InRange(ws, 1, kMax)) {
    return "weight_shape must be 4 positive ints" + range_note + ", got " + ShapeString(ws);
  }
  const std::vector<int64_t> strides = attrs.strides.value_or(std::vector<int64_t>{1, 1});
  if (strides.size() != 2 || !InRange(strides, 1, kMax)) {
    return "strides must be 2 positive ints" + range_note + ", got " + ShapeString(strides);
  }
  const std::vector<int64_t> pads = attrs.pads.value_or(std::vector<int64_t>{0, 0, 0, 0});
  if (pads.size() != 4 || !InRange(pads, 0, kMax)) {
    return "pads must be 4 non-negative ints [top, left, bottom, right]" + range_note + ", got " + ShapeString(pads);
  }
  const std::vector<int64_t> dilations = attrs.dilations.value_or(std::vector<int64_t>{1, 1});
  if (dilations.size() != 2 || !InRange(dilations, 1, kMax)) {
    return "dilations must be 2 positive ints" + range_note + ", got " + ShapeString(dilations);
  }
  const int64_t group = attrs.group.value_or(1);
  if (group <= 0 || ws[0] % group != 0) {
    return "group " + std::to_string(group) + " must be positive and divide weight_shape[0] = " + std::to_string(ws[0]);
  }
  const int64_t m_stored = ws[0];
  const int64_t n_stored = ws[1] * group;  // <= 2^48, no overflow
  if (n_stored > INT32_MAX) return "weight_shape[1] * group = " + std::to_string(n_stored) + " is too large";
  int64_t m_out = m_stored;
  if (attrs.num_output_channels) {
    m_out = *attrs.num_output_channels;
    if (m_out < m_stored || m_out > kMax) {
      return "num_output_channels = " + std::to_string(m_out) + " must be in [weight_shape[0] = " +
             std::to_string(m_stored) + ", " + std::to_string(kMax) + "]";
    }
  }
  Activation activation = Activation::kNone;
  if (attrs.activation) {
    if (*attrs.activation == tf::kActivationRelu) {
      activation = Activation::kRelu;
    } else if (*attrs.activation != tf::kActivationNone) {
      return "activation must be \"\" or \"Relu\", got \"" + attrs.activation->substr(0, 64) + "\"";
    }
  }

  // numel = product of weight_shape; each factor <= 2^24, so check the product.
  unsigned __int128 numel128 = 1;
  for (int64_t d : ws) numel128 *= static_cast<uint64_t>(d);
  if (numel128 > (static_cast<unsigned __int128>(1) << 56)) {
    return "weight_shape " + ShapeString(ws) + " has too many elements";
  }

  spec->m_stored = m_stored;
  spec->cin_per_group = ws[1];
  spec->k_h = ws[2];
  spec->k_w = ws[3];
  spec->group = group;
  spec->n_stored = n_stored;
  spec->m_out = m_out;
  spec->stride_h = strides[0];
  spec->stride_w = strides[1];
  spec->pad_top = pads[0];
  spec->pad_left = pads[1];
  spec->pad_bottom = pads[2];
  spec->pad_right = pads[3];
  spec->dil_h = dilations[0];
  spec->dil_w = dilations[1];
  spec->activation = activation;
  return {};
}

namespace {

std::string ReadCentroids(const ConstTensor* const inputs[], TernaryConvSpec* spec) {
  if (inputs[tf::kInCentroids] == nullptr) return std::string("missing required input ") + tf::kInputNames[tf::kInCentroids];
  const ConstTensor& centroids = *inputs[tf::kInCentroids];
  std::string err = CheckVector(centroids, "centroids", tf::kCentroidDtype, tf::kNumCentroids, "[negative, positive]");
  if (!err.empty()) return err;
  const uint16_t* c16 = static_cast<const uint16_t*>(centroids.data);
  spec->c_neg = HalfToFloat(c16[tf::kCentroidNeg]);
  spec->c_pos = HalfToFloat(c16[tf::kCentroidPos]);
  return {};
}

// Format v3, encoding rows or entropy: input 1 is a 1-D uint8 stream, input 2 absent; decoded into
// `decoded` (the masks of encoding masks).
std::string DecodeStream(const ConstTensor* const inputs[], int64_t encoding, const std::vector<int64_t>& ws,
                         DecodedMasks* decoded) {
  const char* name = tf::kEncodings[encoding];
  if (inputs[tf::kInStream] == nullptr) return std::string("missing required input ") + tf::kStreamName;
  if (inputs[tf::kInSign] != nullptr) return std::string("input sign must be absent with encoding ") + name;
  const ConstTensor& stream = *inputs[tf::kInStream];
  if (stream.dtype != tf::kStreamDtype) return std::string(tf::kStreamName) + " must be uint8, got " + DTypeName(stream.dtype);
  if (stream.shape.size() != 1 || stream.shape[0] < 0 || static_cast<uint64_t>(stream.shape[0]) != stream.num_elements) {
    return std::string(tf::kStreamName) + " must be 1-D, got " + ShapeString(stream.shape);
  }
  const uint64_t row_len = static_cast<uint64_t>(ws[1] * ws[2] * ws[3]);
  const uint64_t numel = static_cast<uint64_t>(ws[0]) * row_len;  // <= 2^56 (CheckAttributes)
  if (numel > static_cast<uint64_t>(tf::kMaxEncodedWeights)) {
    return "weight_shape " + ShapeString(ws) + " has more than " + std::to_string(tf::kMaxEncodedWeights) +
           " weights, the most a node with encoding " + name + " may have";
  }
  const uint8_t* data = static_cast<const uint8_t*>(stream.data);
  if (encoding == tf::kEncodingRows) {
    return DecodeRowsStream(data, stream.num_elements, static_cast<uint64_t>(ws[0]), row_len, decoded);
  }
  return DecodeEntropyStream(data, stream.num_elements, numel, decoded);
}

// The packed weight (mask, sign, centroids): checked, centroids into `spec`, the bit arrays and the
// mask's popcount out. With encoding rows or entropy the bit arrays are decoded into `decoded`.
std::string ReadPackedWeight(const ConstTensor* const inputs[], const NodeAttributes& attrs, TernaryConvSpec* spec,
                             DecodedMasks* decoded, const uint8_t** mask_out, const uint8_t** sign_out,
                             uint64_t* nnz_out) {
  const std::vector<int64_t>& ws = *attrs.weight_shape;
  std::string err = ReadCentroids(inputs, spec);
  if (!err.empty()) return err;
  const int64_t encoding = attrs.encoding.value_or(tf::kEncodingMasks);
  if (encoding < 0 || encoding > tf::kEncodingEntropy) {
    return "attribute encoding = " + std::to_string(encoding) + " is not one of 0..2 (masks, rows, entropy)";
  }
  if (encoding != tf::kEncodingMasks) {
    err = DecodeStream(inputs, encoding, ws, decoded);
    if (!err.empty()) return err;
    *mask_out = decoded->mask.data();
    *sign_out = decoded->sign.data();
    *nnz_out = decoded->nnz;
    return {};
  }
  const uint64_t numel = static_cast<uint64_t>(ws[0] * ws[1] * ws[2] * ws[3]);  // <= 2^56 (CheckAttributes)
  const std::string ws_str = "weight_shape " + ShapeString(ws);
  for (int i = tf::kInMask; i < tf::kNumRequiredInputs; ++i) {
    if (inputs[i] == nullptr) return std::string("missing required input ") + tf::kInputNames[i];
  }
  const ConstTensor& mask = *inputs[tf::kInMask];
  err = CheckVector(mask, "mask", tf::kMaskDtype, tf::PackedLength(numel),
                                "ceil(numel / 8) for " + ws_str + ", numel " + std::to_string(numel));
  if (!err.empty()) return err;
  const uint8_t* mask_bytes = static_cast<const uint8_t*>(mask.data);
  if (!PaddingBitsZero(mask_bytes, numel)) return "mask has non-zero padding bits after bit " + std::to_string(numel);
  uint64_t nnz = 0;
  for (uint64_t i = 0; i < mask.num_elements; ++i) nnz += static_cast<uint64_t>(__builtin_popcount(mask_bytes[i]));

  const ConstTensor& sign = *inputs[tf::kInSign];
  err = CheckVector(sign, "sign", tf::kSignDtype, tf::PackedLength(nnz),
                    "ceil(nnz / 8) for the " + std::to_string(nnz) + " set bits of mask");
  if (!err.empty()) return err;
  const uint8_t* sign_bytes = static_cast<const uint8_t*>(sign.data);
  if (!PaddingBitsZero(sign_bytes, nnz)) return "sign has non-zero padding bits after bit " + std::to_string(nnz);

  *mask_out = mask_bytes;
  *sign_out = sign_bytes;
  *nnz_out = nnz;
  return {};
}

// The optional constant inputs 4..9 (scale, bias, in_channels, out_channels, in_scale, in_bias) into
// `spec`; in_map is in_channels (empty when absent).
std::string ReadOptionalInputs(const ConstTensor* const inputs[], TernaryConvSpec* spec, std::vector<int32_t>* in_map_out) {
  const int64_t group = spec->group, m_stored = spec->m_stored, n_stored = spec->n_stored, m_out = spec->m_out;
  std::string err;
  spec->scale.assign(static_cast<size_t>(m_out), 1.0f);
  spec->bias.assign(static_cast<size_t>(m_out), 0.0f);
  const char* const affine_names[2] = {"scale", "bias"};
  std::vector<float>* const affine_out[2] = {&spec->scale, &spec->bias};
  err = ReadAffinePair(inputs, tf::kInScale, affine_names, tf::kAffineDtype, static_cast<uint64_t>(m_out), "M_out",
                       affine_out, [](uint64_t o) { return o; });
  if (!err.empty()) return err;

  std::vector<int32_t>& in_map = *in_map_out;
  spec->has_in_channels = inputs[tf::kInInChannels] != nullptr;
  if (spec->has_in_channels) {
    if (group != 1) return "in_channels is only allowed with group == 1, got group " + std::to_string(group);
    err = CheckChannelMap(*inputs[tf::kInInChannels], "in_channels", static_cast<uint64_t>(n_stored), -1,
                          "N_stored = weight_shape[1] * group", &in_map);
    if (!err.empty()) return err;
    spec->max_in_channel = in_map.empty() ? -1 : *std::max_element(in_map.begin(), in_map.end());
  }

  spec->stored_channels.resize(static_cast<size_t>(n_stored));
  for (int64_t c = 0; c < n_stored; ++c) {
    spec->stored_channels[static_cast<size_t>(c)] =
        spec->has_in_channels ? in_map[static_cast<size_t>(c)] : static_cast<int32_t>(c);
  }

  // in_scale / in_bias: per stored input channel; kept per channel of X (the taps' channel index)
  spec->has_in_affine = inputs[tf::kInInScale] != nullptr || inputs[tf::kInInBias] != nullptr;
  if (spec->has_in_affine) {
    const int64_t x_len = spec->has_in_channels ? spec->max_in_channel + 1 : n_stored;
    spec->in_scale.assign(static_cast<size_t>(x_len), 1.0f);
    spec->in_bias.assign(static_cast<size_t>(x_len), 0.0f);
    const char* const in_names[2] = {"in_scale", "in_bias"};
    std::vector<float>* const in_out[2] = {&spec->in_scale, &spec->in_bias};
    err = ReadAffinePair(inputs, tf::kInInScale, in_names, tf::kInAffineDtype, static_cast<uint64_t>(n_stored),
                         "N_stored = weight_shape[1] * group", in_out,
                         [&](uint64_t c) { return spec->stored_channels[static_cast<size_t>(c)]; });
    if (!err.empty()) return err;
  }

  spec->out_row.assign(static_cast<size_t>(m_out), -1);
  if (inputs[tf::kInOutChannels] != nullptr) {
    std::vector<int32_t> out_map;
    err = CheckChannelMap(*inputs[tf::kInOutChannels], "out_channels", static_cast<uint64_t>(m_stored), m_out,
                          "M_stored = weight_shape[0]", &out_map);
    if (!err.empty()) return err;
    for (int64_t r = 0; r < m_stored; ++r) spec->out_row[static_cast<size_t>(out_map[r])] = static_cast<int32_t>(r);
  } else {
    if (m_out != m_stored) {
      return "num_output_channels = " + std::to_string(m_out) + " differs from weight_shape[0] = " +
             std::to_string(m_stored) + " without out_channels";
    }
    for (int64_t r = 0; r < m_stored; ++r) spec->out_row[static_cast<size_t>(r)] = static_cast<int32_t>(r);
  }

  return {};
}

// Decodes the validated mask and sign bits into spec->taps / row_start (positive, then negative taps
// of each stored row, in (c, kh, kw) order).
std::string DecodeTaps(const std::vector<int64_t>& ws, const uint8_t* mask_bytes, const uint8_t* sign_bytes,
                       uint64_t nnz, const std::vector<int32_t>& in_map, TernaryConvSpec* spec) {
  const int64_t group = spec->group, m_stored = spec->m_stored;
  spec->nnz = static_cast<int64_t>(nnz);

  const uint64_t row_len = static_cast<uint64_t>(ws[1] * ws[2] * ws[3]);
  const uint64_t k_area = static_cast<uint64_t>(ws[2] * ws[3]);
  const int64_t rows_per_group = m_stored / group;
  spec->taps.clear();
  spec->taps.reserve(static_cast<size_t>(nnz));
  spec->row_start.assign(static_cast<size_t>(2 * m_stored + 1), 0);
  uint64_t sign_index = 0;  // index into sign of the first set mask bit of the current row
  for (int64_t r = 0; r < m_stored; ++r) {
    const uint64_t begin = static_cast<uint64_t>(r) * row_len;
    const int64_t g = r / rows_per_group;
    uint64_t row_nnz = 0;
    for (int pass = 0; pass < 2; ++pass) {  // pass 0: positive taps, pass 1: negative taps
      spec->row_start[static_cast<size_t>(2 * r + pass)] = static_cast<int64_t>(spec->taps.size());
      uint64_t s = sign_index;
      for (uint64_t j = 0; j < row_len; ++j) {
        if (!Bit(mask_bytes, begin + j)) continue;
        const bool positive = Bit(sign_bytes, s++);
        if (positive != (pass == 0)) continue;
        const int64_t ci = static_cast<int64_t>(j / k_area);
        const uint64_t rem = j % k_area;
        const int64_t channel = spec->has_in_channels ? in_map[static_cast<size_t>(ci)] : g * ws[1] + ci;
        spec->taps.push_back(Tap{static_cast<int32_t>(channel), static_cast<int32_t>(rem / static_cast<uint64_t>(ws[3])),
                                 static_cast<int32_t>(rem % static_cast<uint64_t>(ws[3]))});
      }
      row_nnz = s - sign_index;
    }
    sign_index += row_nnz;
  }
  spec->row_start[static_cast<size_t>(2 * m_stored)] = static_cast<int64_t>(spec->taps.size());
  if (sign_index != nnz || spec->taps.size() != nnz) return "internal error: decoded tap count mismatch";
  return {};
}

}  // namespace

std::string BuildSpec(const NodeAttributes& attrs, const ConstTensor* const inputs[tf::kMaxInputs],
                      TernaryConvSpec* spec) {
  std::string err = CheckAttributes(attrs, spec);
  if (!err.empty()) return err;
  const std::vector<int64_t>& ws = *attrs.weight_shape;
  const uint8_t* mask_bytes = nullptr;
  const uint8_t* sign_bytes = nullptr;
  uint64_t nnz = 0;
  DecodedMasks decoded;  // owns the masks of an encoded stream until DecodeTaps has read them
  err = ReadPackedWeight(inputs, attrs, spec, &decoded, &mask_bytes, &sign_bytes, &nnz);
  if (!err.empty()) return err;
  std::vector<int32_t> in_map;
  err = ReadOptionalInputs(inputs, spec, &in_map);
  if (!err.empty()) return err;
  return DecodeTaps(ws, mask_bytes, sign_bytes, nnz, in_map, spec);
}

}  // namespace ternary_conv
}  // namespace micronet
