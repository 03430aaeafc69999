// CUDA binding of the fused BCE-with-logits / multilabel-soft-margin kernels (bce_kernel.cuh):
// tensors -> BceParams, device guard, current stream, dtype dispatch, launch checks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../bce_plan.h"
#include "bce_launch.cuh"
#include "launch.h"

namespace mlc::cuda {
namespace {

template <class T>
void bce_cuda_impl(BcePlan& plan) {
  using A = acc_t<T>;
  const BceParams<T> p = plan.params<T>();
  const c10::DeviceIndex device = plan.input.device().index();
  const BceLaunchShape s = bce_launch_shape(p.rows, p.cols, sizeof(T), plan.reduction,
                                            plan.row_mean, kBlock, max_grid(device));
  TORCH_CHECK(s.error == nullptr, "bce_cuda: invalid launch shape: ", s.error);
  at::Tensor partial = at::empty({s.partials}, plan.input.options().dtype(
                                                   c10::CppTypeToScalarType<A>::value));
  T* out = plan.loss.mutable_data_ptr<T>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  bce_run(p, s, partial.mutable_data_ptr<A>(), out,
          [&](auto kernel, int64_t grid, int block, auto... args) {
            kernel<<<static_cast<unsigned>(grid), block, 0, stream>>>(args...);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
}

void bce_cuda(BcePlan& plan) {
  const c10::cuda::CUDAGuard guard(plan.input.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, plan.input.scalar_type(), "bce_cuda",
                                  [&] { bce_cuda_impl<scalar_t>(plan); });
}

using Ops = BceOps<&bce_cuda>;

}  // namespace
}  // namespace mlc::cuda

TORCH_LIBRARY_IMPL(multilabel_cuda, CUDA, m) {
  m.impl("bce_with_logits", &mlc::cuda::Ops::bce_with_logits);
  m.impl("multilabel_soft_margin", &mlc::cuda::Ops::multilabel_soft_margin);
  m.impl("bce_family", &mlc::cuda::Ops::bce_family);
  m.impl("bce_chunk_", &mlc::cuda::Ops::bce_chunk_);
}
