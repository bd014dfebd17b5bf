// CPU feature detection and the MICRONET_TERNARY_* environment (see dispatch_env.h).
#include "ternary_conv/dispatch_env.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace micronet {
namespace ternary_conv {

namespace {

bool CpuHasAvx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool CpuHasAvx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const kernels::KernelTable* BestIsa() {
  // cpuid first: nothing compiled for an instruction set runs before the CPU is known to have it
  if (CpuHasAvx512() && kernels::Avx512Kernels() != nullptr) return kernels::Avx512Kernels();
  if (CpuHasAvx2() && kernels::Avx2Kernels() != nullptr) return kernels::Avx2Kernels();
  return kernels::PortableKernels();
}

std::string EnvString(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

void ReadKernel(const std::string& kernel, Choice* c) {
  if (kernel.empty() || kernel == "auto") {
    c->algo = Algo::kAuto;
  } else if (kernel == "sparse") {
    c->algo = Algo::kSparse;
  } else if (kernel == "dense") {
    c->algo = Algo::kDense;
  } else if (kernel == "direct") {
    c->algo = Algo::kDirect;
  } else if (kernel == "portable") {  // the sparse kernel in portable C++
    c->algo = Algo::kSparse;
    c->isa = kernels::PortableKernels();
  } else {
    throw std::invalid_argument("MICRONET_TERNARY_KERNEL='" + kernel.substr(0, 32) +
                                "' is not one of auto, sparse, dense, portable, direct");
  }
}

void ReadIsa(const std::string& isa, Choice* c) {
  if (isa.empty() || isa == "auto") {
    // keep
  } else if (isa == "portable") {
    c->isa = kernels::PortableKernels();
  } else if (isa == "avx2") {
    if (!CpuHasAvx2() || kernels::Avx2Kernels() == nullptr) {
      throw std::invalid_argument("MICRONET_TERNARY_ISA=avx2 but this CPU (or build) has no AVX2 + FMA");
    }
    c->isa = kernels::Avx2Kernels();
  } else if (isa == "avx512") {
    if (!CpuHasAvx512() || kernels::Avx512Kernels() == nullptr) {
      throw std::invalid_argument("MICRONET_TERNARY_ISA=avx512 but this CPU (or build) has no AVX-512 F/VL/BW/DQ");
    }
    c->isa = kernels::Avx512Kernels();
  } else {
    throw std::invalid_argument("MICRONET_TERNARY_ISA='" + isa.substr(0, 32) +
                                "' is not one of auto, avx512, avx2, portable");
  }
}

}  // namespace

const char* AlgoName(Algo a) {
  switch (a) {
    case Algo::kAuto: return "auto";
    case Algo::kSparse: return "sparse";
    case Algo::kDense: return "dense";
    case Algo::kDirect: return "direct";
  }
  return "?";
}

Choice ReadChoice() {
  Choice c;
  const std::string kernel = EnvString("MICRONET_TERNARY_KERNEL");
  const std::string isa = EnvString("MICRONET_TERNARY_ISA");
  const std::string log = EnvString("MICRONET_TERNARY_LOG");
  c.log = !log.empty() && log != "0";
  c.report_path = EnvString("MICRONET_TERNARY_REPORT");
  c.isa = BestIsa();
  ReadKernel(kernel, &c);
  ReadIsa(isa, &c);
  c.requested_kernel = kernel.empty() ? "auto" : kernel;
  c.requested_isa = isa.empty() ? "auto" : isa;
  return c;
}

}  // namespace ternary_conv
}  // namespace micronet
