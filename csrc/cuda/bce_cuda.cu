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

std::tuple<at::Tensor, at::Tensor> run(const char* op, const at::Tensor& input,
                                       const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& pos_weight,
                                       int64_t reduction, bool compute_grad, bool row_mean,
                                       const BceVariant& variant = BceVariant()) {
  const c10::cuda::CUDAGuard guard(input.device());
  BcePlan plan = make_bce_plan(op, input, target, weight, pos_weight, reduction, compute_grad,
                               row_mean, variant);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bce_cuda",
                                  [&] { bce_cuda_impl<scalar_t>(plan); });
  return bce_outputs(plan, input);
}

std::tuple<at::Tensor, at::Tensor> bce_with_logits_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& pos_weight, int64_t reduction, bool compute_grad) {
  return run("binary_cross_entropy_with_logits", input, target, weight, pos_weight, reduction,
             compute_grad, false);
}

std::tuple<at::Tensor, at::Tensor> multilabel_soft_margin_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t reduction, bool compute_grad) {
  return run("multilabel_soft_margin_loss", input, target, weight, std::nullopt, reduction,
             compute_grad, true);
}

// Any member of the BCE family (csrc/math/bce_variants.h) by kind; no pos_weight.
std::tuple<at::Tensor, at::Tensor> bce_family_cuda(const at::Tensor& input, const at::Tensor& target,
                                                const std::optional<at::Tensor>& weight,
                                                int64_t kind, at::ArrayRef<double> params,
                                                int64_t reduction, bool compute_grad) {
  return run("bce_family", input, target, weight, std::nullopt, reduction, compute_grad, false,
             bce_variant(kind, params));
}

}  // namespace
}  // namespace mlc::cuda

TORCH_LIBRARY_IMPL(multilabel_cuda, CUDA, m) {
  m.impl("bce_with_logits", &mlc::cuda::bce_with_logits_cuda);
  m.impl("multilabel_soft_margin", &mlc::cuda::multilabel_soft_margin_cuda);
  m.impl("bce_family", &mlc::cuda::bce_family_cuda);
}
