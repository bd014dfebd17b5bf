// An op family: one folder of runtime_ops/ (today ternary_conv/) with one registration function that
// adds its ops to the library's custom-op domain. register.cc lists the families in one table and
// knows nothing else about them.
#pragma once

#include <onnxruntime_c_api.h>

namespace micronet {

struct OpFamily {
  const char* name;  // for messages: "TernaryConv"
  // Adds the family's ops to `domain`; returns nullptr or the error (owned by the caller).
  OrtStatus* (*register_ops)(OrtCustomOpDomain* domain, const OrtApi* api);
};

}  // namespace micronet
