#include "bce_plan.h"

#include <ATen/ATen.h>

#include "checks.h"
#include "reduction.h"

namespace mlc {
namespace {

// View `t` (broadcastable to `shape`) as (rows, cols) with unit or zero column stride. reshape() keeps
// it a view whenever the strides allow (e.g. a (C,) weight becomes row stride 0); only irregular
// broadcasts such as a (T, C) weight over an (N, T, C) input are materialized.
at::Tensor as_rows(const at::Tensor& t, at::IntArrayRef shape, int64_t rows, int64_t cols,
                   bool allow_broadcast_cols) {
  at::Tensor v = t.expand(shape).reshape({rows, cols});
  const int64_t cs = v.stride(1);
  if (cols > 1 && cs != 1 && !(allow_broadcast_cols && cs == 0)) v = v.contiguous();
  return v;
}

// A weight or pos_weight (broadcastable to input), checked, then as_rows with broadcast columns
// allowed; undefined when absent.
at::Tensor weight_rows(const char* op, const char* name, const std::optional<at::Tensor>& t,
                       const at::Tensor& input, int64_t rows, int64_t cols) {
  if (!t) return at::Tensor();
  check_operand(op, name, *t, input);
  check_shape(op, name, *t, input, false);
  return as_rows(*t, input.sizes(), rows, cols, true);
}

// The loss output: a scalar when reduced, else per row (row_mean: input's leading shape) or per
// element (input's shape).
at::Tensor loss_output(const at::Tensor& input, int64_t reduction, bool row_mean) {
  const auto opts = input.options();
  if (reduction != kNone) return at::empty({}, opts);
  if (row_mean) return at::empty(input.sizes().slice(0, input.dim() - 1), opts);
  return empty_output(input.sizes(), opts);
}

// Column stride of `v` (rows, cols) read as one long row, or -1 when its rows are not evenly spaced.
int64_t flat_col_stride(const at::Tensor& v) {
  const int64_t cols = v.size(1), rs = v.stride(0), cs = cols == 1 ? rs : v.stride(1);
  return (cs == 0 || cs == 1) && rs == cs * cols ? cs : -1;
}

// Elementwise BCE and a sum over all elements (soft margin's 'mean' / 'sum') do not care where rows
// end: when every operand allows it, treat (rows, cols) as one row of rows*cols, so (N, 1) binary
// logits or short class dims split into long chunks instead of paying per-row setup (and a
// partial sum) for every few elements.
// Input and target must come out with unit column stride (the kernels read them contiguously): an
// expanded (N, 1) input has evenly spaced rows too, but at stride 0.
void flatten_rows(BcePlan& plan) {
  at::Tensor* operands[] = {&plan.input, &plan.target, &plan.weight, &plan.pos_weight};
  if (flat_col_stride(plan.input) != 1 || flat_col_stride(plan.target) != 1) return;
  for (at::Tensor* t : operands) {
    if (t->defined() && flat_col_stride(*t) < 0) return;
  }
  const int64_t n = plan.rows * plan.cols;
  for (at::Tensor* t : operands) {
    if (t->defined()) *t = t->as_strided({1, n}, {0, flat_col_stride(*t)});
  }
  plan.rows = 1;
  plan.cols = n;
}

}  // namespace

BcePlan make_bce_plan(const char* op, const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& pos_weight, int64_t reduction,
                      bool compute_grad, bool row_mean, const BceVariant& variant) {
  check_kernel_input(op, input);
  check_reduction(op, reduction);
  TORCH_CHECK(!row_mean || input.dim() >= 1, op, ": input must have at least one dimension");
  // Soft margin broadcasts its target like the native composite; BCE requires equal sizes.
  check_operand(op, "target", target, input);
  check_shape(op, "target", target, input, /*same_shape=*/!row_mean);

  BcePlan plan;
  plan.variant = variant;
  plan.row_mean = row_mean;
  plan.reduction = reduction;
  plan.cols = input.dim() == 0 ? 1 : input.size(-1);
  plan.rows = 1;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) plan.rows *= input.size(d);
  const auto shape = input.sizes();
  plan.input = as_rows(input, shape, plan.rows, plan.cols, false);
  plan.target = as_rows(target, shape, plan.rows, plan.cols, false);
  plan.weight = weight_rows(op, "weight", weight, input, plan.rows, plan.cols);
  plan.pos_weight = weight_rows(op, "pos_weight", pos_weight, input, plan.rows, plan.cols);

  // The scales are those of the rows and classes the caller sees, also when rows are flattened.
  plan.scales = loss_scales(reduction, plan.rows, plan.cols, row_mean);
  if ((!row_mean || reduction != kNone) && plan.rows > 1 && plan.rows * plan.cols > 0) {
    flatten_rows(plan);
  }

  plan.loss = loss_output(input, reduction, row_mean);
  const auto opts = input.options();
  plan.grad = compute_grad ? empty_output({plan.rows, plan.cols}, opts) : at::empty({0}, opts);
  return plan;
}

BcePlan make_bce_chunk_plan(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                            const std::optional<at::Tensor>& indices,
                            const std::optional<at::Tensor>& offsets,
                            const std::optional<at::Tensor>& values, int64_t first,
                            const std::optional<at::Tensor>& pos_weight, int64_t reduction,
                            bool row_mean) {
  const char* op = "bce_chunk_";
  check_kernel_input(op, logits);
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble, op,
              ": logits must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous(), op,
              ": logits must be a contiguous (rows, cols) tensor, got shape ", logits.sizes());
  TORCH_CHECK(reduction == kNone || reduction == kSum, op,
              ": reduction must be 0 (none) or 2 (sum), got ", reduction);
  TORCH_CHECK(target.has_value() != (indices.has_value() || offsets.has_value()), op,
              ": give either target or indices and offsets");
  BcePlan plan;
  plan.rows = logits.size(0);
  plan.cols = logits.size(1);
  plan.row_mean = row_mean;
  plan.reduction = reduction;
  plan.input = logits;
  plan.grad = logits;
  if (target) {
    check_operand(op, "target", *target, logits);
    check_shape(op, "target", *target, logits, true);
    plan.target = as_rows(*target, logits.sizes(), plan.rows, plan.cols, false);
  } else {
    TORCH_CHECK(indices && offsets, op, ": a CSR target needs indices and offsets");
    check_csr(op, *indices, *offsets, values, plan.rows, logits);
    plan.indices = indices->contiguous();
    plan.offsets = offsets->contiguous();
    if (values) plan.values = values->contiguous();
    plan.first = first;
  }
  plan.pos_weight = weight_rows(op, "pos_weight", pos_weight, logits, plan.rows, plan.cols);
  // The terms' sums as they are (BCE 'sum' with no mean; per row: no 1 / cols).
  plan.scales = loss_scales(kSum, plan.rows, plan.cols, false);
  if (target && (!row_mean || reduction != kNone) && plan.rows > 1 && plan.cols > 0) {
    flatten_rows(plan);
  }
  plan.loss = loss_output(logits, reduction, row_mean);  // reduction: kNone or kSum
  return plan;
}

BceVariant bce_variant(int64_t kind, at::ArrayRef<double> params) {
  bool known = false;
#define MLC_KNOWN(K, E) known = known || kind == K;
  MLC_BCE_FAMILY(MLC_KNOWN)
#undef MLC_KNOWN
  TORCH_CHECK(known, "bce_family: unknown kind ", kind);
  TORCH_CHECK(params.size() <= static_cast<size_t>(kBceParams), "bce_family: at most ", kBceParams,
              " params, got ", params.size());
  BceVariant v;
  v.kind = static_cast<int>(kind);
  for (size_t k = 0; k < params.size(); ++k) v.param[k] = params[k];
  return v;
}

}  // namespace mlc
