// The onnxruntime C API version this library requests (OrtApiBase::GetApi) and declares in its
// OrtCustomOp structs. It is the lowest version that has every function the library calls:
//   KernelContext_ParallelFor                              17 (onnxruntime 1.17)
//   KernelInfoGetConstantInput_tensor, KernelInfo_GetNodeName  15
//   KernelInfo_GetInputCount/-Name/-TypeInfo, _GetOutputCount/-Name  14
//   OrtCustomOp::CreateKernelV2 / KernelComputeV2          16
//   everything else                                         1..2
// so one build loads into onnxruntime 1.17 and every newer release. The headers used to compile
// must be at least this version (build.sh checks ORT_API_VERSION).
#pragma once

#define MICRONET_ORT_API_VERSION 17
#define MICRONET_ORT_MIN_RELEASE "1.17"
