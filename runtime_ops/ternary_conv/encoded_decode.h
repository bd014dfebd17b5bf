// Decoders of the encoded assignments of TernaryConv format version 3 (encoding rows and entropy;
// docs/ternary-conv.md, "Encodings"), mirrored from micronet_onnx/format/encodings/. Each turns one
// uint8 stream into the location and sign bit masks of encoding masks, so the rest of the library
// (DecodeTaps in ternary_conv_spec.cc) reads one representation. Runs once, at kernel creation.
//
// Every loop is bounded by the declared sizes (rows, row length, stream bytes); a stream that is
// truncated, too long, has a count above its row, a column past its row, bad model frequencies or a
// state out of range is an error message, never a read outside `data`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace micronet {
namespace ternary_conv {

struct DecodedMasks {
  std::vector<uint8_t> mask;  // ceil(numel / 8) bytes, LSB first
  std::vector<uint8_t> sign;  // ceil(nnz / 8) bytes, LSB first
  uint64_t nnz = 0;
};

// `rows` rows of `row_len` weights each (numel = rows * row_len <= kMaxEncodedWeights, checked by the
// caller). Return "" on success, else a one-line reason.
std::string DecodeRowsStream(const uint8_t* data, size_t size, uint64_t rows, uint64_t row_len, DecodedMasks* out);
std::string DecodeEntropyStream(const uint8_t* data, size_t size, uint64_t numel, DecodedMasks* out);

}  // namespace ternary_conv
}  // namespace micronet
