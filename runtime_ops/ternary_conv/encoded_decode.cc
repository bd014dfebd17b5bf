// Decoders of encoding rows and entropy (see encoded_decode.h).
#include "ternary_conv/encoded_decode.h"

#include "ternary_conv/ternary_format.h"

namespace micronet {
namespace ternary_conv {
namespace {

namespace tf = ::micronet::ternary_format;

// A cursor over `num_bits` bits, least significant bit first; every read checks the end.
class BitCursor {
 public:
  BitCursor(const uint8_t* data, uint64_t num_bits) : data_(data), num_bits_(num_bits) {}
  bool Read(unsigned width, uint64_t* value) {
    if (width > num_bits_ - pos_) return false;
    uint64_t v = 0;
    for (unsigned i = 0; i < width; ++i, ++pos_) v |= static_cast<uint64_t>(Bit(pos_)) << i;
    *value = v;
    return true;
  }
  // One-bits before the next zero-bit (consumed). Returns 0 on success, 1 for the end of the
  // stream, 2 for more than `limit` one-bits.
  int Unary(uint64_t limit, uint64_t* q) {
    uint64_t n = 0;
    for (;;) {
      if (pos_ >= num_bits_) return 1;
      if (!Bit(pos_++)) break;
      if (++n > limit) return 2;
    }
    *q = n;
    return 0;
  }
  uint64_t pos() const { return pos_; }

 private:
  unsigned Bit(uint64_t i) const { return (data_[i >> 3] >> (i & 7)) & 1u; }
  const uint8_t* data_;
  uint64_t num_bits_;
  uint64_t pos_ = 0;
};

void SetBit(std::vector<uint8_t>* bytes, uint64_t i) { (*bytes)[i >> 3] |= static_cast<uint8_t>(1u << (i & 7)); }

void PushSign(DecodedMasks* out, bool positive) {
  if (out->nnz % 8 == 0) out->sign.push_back(0);
  if (positive) SetBit(&out->sign, out->nnz);
  ++out->nnz;
}

}  // namespace

std::string DecodeRowsStream(const uint8_t* data, size_t size, uint64_t rows, uint64_t row_len, DecodedMasks* out) {
  if (size < static_cast<size_t>(tf::kRowsHeaderBytes) || data == nullptr) return "rows stream is truncated (no header)";
  const unsigned k = data[0], count_bits = data[1];
  if (k > static_cast<unsigned>(tf::kRowsMaxRiceK) || count_bits > static_cast<unsigned>(tf::kRowsMaxCountBits)) {
    return "rows stream header out of range (rice k " + std::to_string(k) + ", count bits " +
           std::to_string(count_bits) + ")";
  }
  const uint8_t* body = data + tf::kRowsHeaderBytes;
  const uint64_t body_bytes = size - static_cast<size_t>(tf::kRowsHeaderBytes);
  BitCursor bits(body, body_bytes * 8);
  out->mask.assign(static_cast<size_t>(tf::PackedLength(rows * row_len)), 0);
  out->sign.clear();
  out->nnz = 0;
  const uint64_t q_limit = (row_len - 1) >> k;
  for (uint64_t r = 0; r < rows; ++r) {
    uint64_t n = 0;
    if (!bits.Read(count_bits, &n)) return "rows stream is truncated";
    if (n > row_len) {
      return "rows stream: row " + std::to_string(r) + " counts " + std::to_string(n) + " non-zeros in a row of " +
             std::to_string(row_len);
    }
    uint64_t next = 0;  // the first column the next non-zero may take
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t q = 0, rem = 0, sign = 0;
      const int u = bits.Unary(q_limit, &q);
      if (u == 1) return "rows stream is truncated";
      if (u == 2) return "rows stream has a gap longer than the row";
      if (!bits.Read(k, &rem) || !bits.Read(1, &sign)) return "rows stream is truncated";
      const uint64_t col = next + ((q << k) | rem);  // q << k < row_len, rem < 2^k: no overflow
      if (col >= row_len) return "rows stream: row " + std::to_string(r) + " has a column past its end";
      SetBit(&out->mask, r * row_len + col);
      PushSign(out, sign != 0);
      next = col + 1;
    }
  }
  const uint64_t used = bits.pos();
  if (tf::PackedLength(used) != body_bytes) {
    return "rows stream has " + std::to_string(body_bytes - tf::PackedLength(used)) + " bytes after its last field";
  }
  if (used % 8 != 0 && (body[used / 8] >> (used % 8)) != 0) return "rows stream has non-zero padding bits";
  return {};
}

std::string DecodeEntropyStream(const uint8_t* data, size_t size, uint64_t numel, DecodedMasks* out) {
  const size_t head = static_cast<size_t>(tf::kEntropyHeaderBytes + tf::kEntropyStateBytes);
  if (size < head || data == nullptr) return "entropy stream is truncated (no header)";
  const uint32_t total = 1u << tf::kEntropyProbBits;
  const uint32_t f_neg = data[0] | static_cast<uint32_t>(data[1]) << 8;
  const uint32_t f_pos = data[2] | static_cast<uint32_t>(data[3]) << 8;
  if (f_neg + f_pos > total) {
    return "entropy stream model frequencies " + std::to_string(f_neg) + " + " + std::to_string(f_pos) + " exceed " +
           std::to_string(total);
  }
  const uint32_t freq[3] = {total - f_neg - f_pos, f_neg, f_pos};
  const uint32_t cum[3] = {0, freq[0], freq[0] + freq[1]};
  const uint64_t low = static_cast<uint64_t>(tf::kEntropyStateLow);
  uint64_t x = 0;
  for (int i = 0; i < tf::kEntropyStateBytes; ++i) x = (x << 8) | data[tf::kEntropyHeaderBytes + i];
  if (x < low || x >= (low << 8)) return "entropy stream has an initial state out of range";
  out->mask.assign(static_cast<size_t>(tf::PackedLength(numel)), 0);
  out->sign.clear();
  out->nnz = 0;
  size_t pos = head;
  for (uint64_t i = 0; i < numel; ++i) {
    const uint32_t slot = static_cast<uint32_t>(x) & (total - 1);
    const int s = slot < cum[1] ? 0 : (slot < cum[2] ? 1 : 2);  // never a symbol of frequency 0
    x = static_cast<uint64_t>(freq[s]) * (x >> tf::kEntropyProbBits) + slot - cum[s];
    while (x < low) {  // at most 3 bytes: x >= 1 after a step
      if (pos >= size) return "entropy stream is truncated";
      x = (x << 8) | data[pos++];
    }
    if (s != 0) {
      SetBit(&out->mask, i);
      PushSign(out, s == 2);
    }
  }
  if (pos != size || x != low) return "entropy stream is corrupt (it does not end where the weights do)";
  return {};
}

}  // namespace ternary_conv
}  // namespace micronet
