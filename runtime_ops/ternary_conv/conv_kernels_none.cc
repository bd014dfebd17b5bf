// Non-x86 builds: no AVX kernels; the portable kernels run everywhere.
#include "ternary_conv/conv_kernels.h"

namespace micronet {
namespace ternary_conv {
namespace kernels {

const KernelTable* Avx2Kernels() { return nullptr; }
const KernelTable* Avx512Kernels() { return nullptr; }

}  // namespace kernels
}  // namespace ternary_conv
}  // namespace micronet
