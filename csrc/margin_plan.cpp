#include "margin_plan.h"

#include <ATen/ATen.h>

#include "checks.h"
#include "reduction.h"

namespace mlc {
namespace {

constexpr const char* kOp = "multilabel_margin_loss";

at::Tensor unit_col_stride(at::Tensor v) {
  if (v.size(1) > 1 && v.stride(1) != 1) v = v.contiguous();
  return v;
}

}  // namespace

MarginPlan make_margin_plan(const at::Tensor& input, const at::Tensor& target, int64_t reduction,
                            bool compute_grad, int64_t algo) {
  check_kernel_input(kOp, input);
  check_operand(kOp, "target", target, input, /*same_dtype=*/false);
  TORCH_CHECK(target.scalar_type() == at::kLong, kOp, ": target must be int64, got ",
              target.scalar_type());
  check_reduction(kOp, reduction);
  TORCH_CHECK(algo >= kMarginAuto && algo <= kMarginCounting, kOp,
              ": algo must be 0 (auto), 1 (direct) or 2 (counting), got ", algo);
  const int64_t nd = input.dim();
  TORCH_CHECK((nd == 2 && input.size(1) != 0) || (nd == 1 && input.size(0) != 0) || nd == 0, kOp,
              ": Expected non-empty vector or matrix with optional 0-dim batch size, but got: ",
              input.sizes());

  MarginPlan plan;
  plan.reduction = reduction;
  plan.algo = static_cast<int>(algo);
  plan.rows = nd == 2 ? input.size(0) : 1;
  plan.cols = nd == 0 ? 1 : input.size(nd - 1);
  const bool fits = nd == 2 ? target.dim() == 2 && target.size(0) == plan.rows &&
                                  target.size(1) <= plan.cols
                            : target.dim() <= 1 && target.numel() <= plan.cols;
  TORCH_CHECK(fits, kOp, ": target of shape ", target.sizes(), " does not fit input of shape ",
              input.sizes(), nd == 2 ? " (expected (N, K)" : " (expected (K,)",
              " with K <= C = ", plan.cols, ")");
  plan.tcols = nd == 2 ? target.size(1) : target.numel();
  // The target range (every entry in [-1, C), also past the first -1, as native) is checked by the
  // kernels in the pass that reads the targets: no extra pass here, and no host sync on CUDA.
  plan.input = unit_col_stride(input.reshape({plan.rows, plan.cols}));
  plan.target = unit_col_stride(target.reshape({plan.rows, plan.tcols}));

  const auto opts = input.options();
  plan.per_row_loss = reduction == kNone && nd == 2;
  plan.loss = plan.per_row_loss ? at::empty({plan.rows}, opts) : at::empty({}, opts);
  plan.grad = compute_grad ? empty_output({plan.rows, plan.cols}, opts) : at::empty({0}, opts);
  plan.scales = loss_scales(reduction, plan.rows, plan.cols, /*row_mean=*/true);
  return plan;
}

std::string margin_target_error_message(const MarginTargetError& e) {
  return c10::str(kOp, ": target index ", e.value, " out of range [-1, ", e.cols, ") in row ", e.row);
}

}  // namespace mlc
