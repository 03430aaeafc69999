// Allocation of the fused ops' outputs (the gradient, and an elementwise loss), and their return.
#pragma once
#include <ATen/ATen.h>

namespace mlc {

// at::empty, and on the CPU, for buffers of at least 32 MiB, a request for transparent huge pages on
// the buffer's 2 MiB-aligned interior (madvise MADV_HUGEPAGE, before anything touches it; why:
// output_alloc.cpp). torch's own THP_MEM_ALLOC_ENABLE=1 does the same for every allocation; this
// only touches our outputs. Advisory: where THP is off ('never') or madvise fails, nothing
// changes. Opt out with MULTILABEL_CUDA_HUGE_PAGES=0.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// What an op returns: (loss, grad viewed as the input when it was requested, else the empty one).
std::tuple<at::Tensor, at::Tensor> op_outputs(const at::Tensor& loss, const at::Tensor& grad,
                                              const at::Tensor& input);

}  // namespace mlc
