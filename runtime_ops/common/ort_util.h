// Small helpers over the onnxruntime C API (no C++ wrapper, no exceptions across the C boundary).
#pragma once

#include <onnxruntime_c_api.h>

#include <string>

#include "common/ort_api_version.h"

#if !defined(ORT_API_VERSION) || ORT_API_VERSION < MICRONET_ORT_API_VERSION
#error "onnxruntime C API headers are older than MICRONET_ORT_API_VERSION"
#endif

namespace micronet {

// Owns an OrtStatus* and releases it.
class StatusGuard {
 public:
  StatusGuard(const OrtApi* api, OrtStatus* status) : api_(api), status_(status) {}
  ~StatusGuard() {
    if (status_ != nullptr) api_->ReleaseStatus(status_);
  }
  StatusGuard(const StatusGuard&) = delete;
  StatusGuard& operator=(const StatusGuard&) = delete;
  bool ok() const { return status_ == nullptr; }
  std::string message() const { return status_ == nullptr ? std::string() : std::string(api_->GetErrorMessage(status_)); }

 private:
  const OrtApi* api_;
  OrtStatus* status_;
};

inline OrtStatus* MakeStatus(const OrtApi* api, OrtErrorCode code, const std::string& message) noexcept {
  return api->CreateStatus(code, message.c_str());
}

}  // namespace micronet
