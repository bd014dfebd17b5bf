// The convolution arithmetic every part of TernaryConv shares, defined once: the output-size formula
// (run-time check, kernel-choice hint and shape inference all use it), the activation, and the
// floor/ceil divisions the engines use to map output positions to input positions. Header-only and
// independent of onnxruntime.
#pragma once

#include <cstdint>

#include "ternary_conv/ternary_conv_spec.h"

namespace micronet {
namespace ternary_conv {

inline int64_t FloorDiv(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
inline int64_t FloorMod(int64_t a, int64_t b) { return a - FloorDiv(a, b) * b; }  // b > 0
inline int64_t CeilDiv(int64_t a, int64_t b) { return -FloorDiv(-a, b); }         // b > 0
inline int64_t RoundUp(int64_t a, int64_t m) { return (a + m - 1) / m * m; }      // a >= 0, m > 0

// The node's activation. NaN stays NaN, like numpy.maximum in the reference.
inline float Activate(float v, Activation act) { return (act == Activation::kRelu && v < 0.0f) ? 0.0f : v; }

// One spatial axis of the output: out = floor((in + pad_begin + pad_end - span) / stride) + 1 with
// span = dilation * (kernel - 1) + 1, the ONNX Conv formula.
struct OutputAxis {
  enum Status { kOk, kOverflow, kEmpty };
  Status status = kOk;
  int64_t padded = 0;  // in + pad_begin + pad_end
  int64_t span = 0;    // the kernel's extent
  int64_t out = 0;     // valid when status == kOk (then >= 1)
};

// `in` >= 0; the other values as validated by BuildSpec (kernel, stride, dilation in [1, 2^24], pads in
// [0, 2^24]), so span fits; the padding sum is checked for overflow.
inline OutputAxis ComputeOutputAxis(int64_t in, int64_t pad_begin, int64_t pad_end, int64_t dilation, int64_t kernel,
                                    int64_t stride) {
  OutputAxis a;
  a.span = dilation * (kernel - 1) + 1;  // <= 2^48
  if (__builtin_add_overflow(in, pad_begin + pad_end, &a.padded)) {
    a.status = OutputAxis::kOverflow;
  } else if (a.padded < a.span) {
    a.status = OutputAxis::kEmpty;
  } else {
    a.out = (a.padded - a.span) / stride + 1;
  }
  return a;
}

inline OutputAxis OutputRows(const TernaryConvSpec& s, int64_t in_h) {
  return ComputeOutputAxis(in_h, s.pad_top, s.pad_bottom, s.dil_h, s.k_h, s.stride_h);
}
inline OutputAxis OutputCols(const TernaryConvSpec& s, int64_t in_w) {
  return ComputeOutputAxis(in_w, s.pad_left, s.pad_right, s.dil_w, s.k_w, s.stride_w);
}

}  // namespace ternary_conv
}  // namespace micronet
