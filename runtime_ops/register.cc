// Entry point of libmicronet_ops: onnxruntime calls RegisterCustomOps when a session's options load
// the library (SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary). The library
// is not linked against onnxruntime: it reaches the C API only through the OrtApiBase given here.
#include <onnxruntime_c_api.h>

#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "common/op_family.h"
#include "common/ort_util.h"
#include "ternary_conv/register_ternary_conv.h"
#include "ternary_conv/ternary_format.h"

namespace {

// Every op family of the library, each registering its own ops into the one "micronet" domain.
constexpr micronet::OpFamily kFamilies[] = {
    {"TernaryConv", micronet::ternary_conv::RegisterTernaryConvOps},
};

// One OrtCustomOpDomain per onnxruntime instance in the process, created on first use and kept for
// the life of the process (session options only hold a pointer to it).
struct DomainEntry {
  const OrtApiBase* api_base;
  OrtCustomOpDomain* domain;
};

OrtStatus* GetDomain(const OrtApiBase* api_base, const OrtApi* api, OrtCustomOpDomain** out) {
  static std::mutex mutex;
  static std::vector<DomainEntry>* domains = new std::vector<DomainEntry>();  // never destroyed
  std::lock_guard<std::mutex> lock(mutex);
  for (const DomainEntry& e : *domains) {
    if (e.api_base == api_base) {
      *out = e.domain;
      return nullptr;
    }
  }
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain(micronet::ternary_format::kDomain, &domain)) return st;
  for (const micronet::OpFamily& family : kFamilies) {
    if (OrtStatus* st = family.register_ops(domain, api)) {
      api->ReleaseCustomOpDomain(domain);
      return st;
    }
  }
  domains->push_back(DomainEntry{api_base, domain});
  *out = domain;
  return nullptr;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) noexcept {
  if (api_base == nullptr) return nullptr;  // nothing to report an error through
  const OrtApi* api = api_base->GetApi(MICRONET_ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi* api1 = api_base->GetApi(1);
    if (api1 == nullptr) return nullptr;
    try {
      const std::string message = std::string("libmicronet_ops needs onnxruntime >= ") + MICRONET_ORT_MIN_RELEASE +
                                  " (C API version " + std::to_string(MICRONET_ORT_API_VERSION) +
                                  "); this process runs onnxruntime " + api_base->GetVersionString();
      return api1->CreateStatus(ORT_FAIL, message.c_str());
    } catch (...) {
      return api1->CreateStatus(ORT_FAIL, "libmicronet_ops needs onnxruntime >= " MICRONET_ORT_MIN_RELEASE);
    }
  }
  try {
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* st = GetDomain(api_base, api, &domain)) return st;
    return api->AddCustomOpDomain(options, domain);
  } catch (const std::bad_alloc&) {
    return api->CreateStatus(ORT_FAIL, "libmicronet_ops: out of memory while registering the micronet domain");
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, "libmicronet_ops: error while registering the micronet domain");
  }
}
