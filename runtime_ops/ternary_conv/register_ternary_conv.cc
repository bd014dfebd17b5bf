// Registration of the TernaryConv op family (see register_ternary_conv.h).
#include "ternary_conv/register_ternary_conv.h"

#include "ternary_conv/ternary_conv_op.h"

namespace micronet {
namespace ternary_conv {

OrtStatus* RegisterTernaryConvOps(OrtCustomOpDomain* domain, const OrtApi* api) {
  // never deleted once added: the domain, which points at it, is kept for the life of the process
  TernaryConvOp* op = new TernaryConvOp{MakeTernaryConvOp(), api};
  OrtStatus* st = api->CustomOpDomain_Add(domain, &op->op);
  if (st != nullptr) delete op;
  return st;
}

}  // namespace ternary_conv
}  // namespace micronet
