// CPU kernel of multilabel_cuda::_scale_grad_ (backward's grad *= upstream, see ops.cpp): reading a
// scalar upstream costs nothing here, and loss.backward()'s upstream of exactly 1 skips the N x C pass.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace mlc::cpu {
namespace {

void scale_grad_cpu(at::Tensor& grad, const at::Tensor& upstream) {
  if (upstream.numel() == 1 && upstream.item<double>() == 1.0) return;
  grad.mul_(upstream);
}

}  // namespace
}  // namespace mlc::cpu

TORCH_LIBRARY_IMPL(multilabel_cuda, CPU, m) {
  m.impl("_scale_grad_", &mlc::cpu::scale_grad_cpu);
}
