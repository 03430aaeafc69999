// CUDA binding of the fused multilabel margin kernel (margin_kernel.cuh): tensors -> MarginParams
// (through make_margin_plan, shared with the CPU kernel: checks, target range, views, outputs,
// gradient scale), device guard, current stream, dtype dispatch, launch checks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../margin_plan.h"
#include "margin_launch.cuh"
#include "launch.h"

namespace mlc::cuda {
namespace {

template <class T>
void margin_cuda_impl(MarginPlan& plan) {
  using A = acc_t<T>;
  const MarginParams<T> p = plan.params<T>();
  const c10::DeviceIndex device = plan.input.device().index();
  const MarginLaunchShape s =
      margin_launch_shape<A>(p.rows, p.tcols, plan.per_row_loss, p.grad != nullptr, kBlock,
                             max_grid(device));
  const auto opts = plan.input.options();
  at::Tensor kscratch = at::empty({s.kscratch}, opts.dtype(at::kLong));
  at::Tensor partial = at::empty({s.partials}, opts.dtype(c10::CppTypeToScalarType<A>::value));
  T* out = plan.loss.mutable_data_ptr<T>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  margin_run(p, s, s.kscratch > 0 ? kscratch.mutable_data_ptr<int64_t>() : nullptr,
             partial.mutable_data_ptr<A>(), out,
             [&](auto kernel, int64_t grid, int block, int64_t smem, auto... args) {
               kernel<<<static_cast<unsigned>(grid), block, static_cast<size_t>(smem), stream>>>(
                   args...);
               C10_CUDA_KERNEL_LAUNCH_CHECK();
             });
}

std::tuple<at::Tensor, at::Tensor> multilabel_margin_cuda(const at::Tensor& input,
                                                          const at::Tensor& target,
                                                          int64_t reduction, bool compute_grad,
                                                          int64_t algo) {
  const c10::cuda::CUDAGuard guard(input.device());
  // make_margin_plan checks the target range with aminmax + item(): one host sync per call.
  MarginPlan plan = make_margin_plan(input, target, reduction, compute_grad, algo);
  TORCH_CHECK(plan.algo != kMarginCounting,
              "multilabel_margin_loss: algo 2 (counting) has no CUDA kernel yet; use 0 or 1");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "margin_cuda",
                                  [&] { margin_cuda_impl<scalar_t>(plan); });
  return margin_outputs(plan, input);
}

}  // namespace
}  // namespace mlc::cuda

TORCH_LIBRARY_IMPL(multilabel_cuda, CUDA, m) {
  m.impl("multilabel_margin", &mlc::cuda::multilabel_margin_cuda);
}
