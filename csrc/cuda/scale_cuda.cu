// CUDA binding of multilabel_cuda::_scale_grad_ (see ops.cpp): a scalar upstream on the device goes
// to scale_kernel.cuh, which reads it there; any other upstream is an ATen mul_.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch.h"
#include "scale_kernel.cuh"

namespace mlc::cuda {
namespace {

void scale_grad_cuda(at::Tensor& grad, const at::Tensor& upstream) {
  if (upstream.numel() != 1 || !upstream.is_cuda() || upstream.device() != grad.device() ||
      upstream.scalar_type() != grad.scalar_type() || !grad.is_contiguous()) {
    grad.mul_(upstream);
    return;
  }
  const int64_t n = grad.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(grad.device());
  const c10::DeviceIndex device = grad.device().index();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "scale_cuda", [&] {
    const int64_t grid = scale_grid(n, sizeof(scalar_t), kBlock, max_grid(device));
    const char* error = launch_shape_error(grid, kBlock, 0, 0);
    TORCH_CHECK(error == nullptr, "scale_cuda: invalid launch shape: ", error);
    scale_by_device_scalar_kernel<scalar_t><<<static_cast<unsigned>(grid), kBlock, 0, stream>>>(
        grad.mutable_data_ptr<scalar_t>(), upstream.const_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace mlc::cuda

TORCH_LIBRARY_IMPL(multilabel_cuda, CUDA, m) {
  m.impl("_scale_grad_", &mlc::cuda::scale_grad_cuda);
}
