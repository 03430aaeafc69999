// Host-side preparation shared by the CPU and CUDA BCE/soft-margin kernels: checks, broadcasting of
// weight/pos_weight into (rows, cols) views, output allocation, and the loss scales.
#pragma once
#include <ATen/core/Tensor.h>
#include <optional>

#include "math/portable.h"
#include "output_alloc.h"
#include "params.h"

namespace mlc {

struct BcePlan {
  at::Tensor input, target, weight, pos_weight;  // (rows, cols) views; weight/pos_weight may be undefined
  at::Tensor indices, offsets, values;  // a CSR target instead of `target` (bce_chunk_), contiguous
  int64_t first = 0;                    // the CSR target's class of column 0
  int64_t rows = 0, cols = 0;
  bool row_mean = false;  // multilabel soft margin: loss averaged over the class (last) dimension
  int64_t reduction = kMean;
  at::Tensor loss;  // final output: input's shape, its leading shape (row_mean), or a scalar
  at::Tensor grad;  // (rows, cols) contiguous when requested, else empty
  LossScales scales;
  BceVariant variant;  // the member of the BCE family (plain unless a modulated op runs)

  template <class T>
  BceParams<T> params() const;
};

BcePlan make_bce_plan(const char* op, const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& pos_weight, int64_t reduction,
                      bool compute_grad, bool row_mean,
                      const BceVariant& variant = BceVariant());

// Plan of op bce_chunk_ (what it computes: its schema in csrc/ops.cpp): plan.grad is the logits,
// and the scales leave the terms' sums as they are (the caller owns the scale).
BcePlan make_bce_chunk_plan(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                            const std::optional<at::Tensor>& indices,
                            const std::optional<at::Tensor>& offsets,
                            const std::optional<at::Tensor>& values, int64_t first,
                            const std::optional<at::Tensor>& pos_weight, int64_t reduction,
                            bool row_mean);

// The BceVariant of op bce_family's (kind, params): a member of MLC_BCE_FAMILY and at most
// kBceParams numbers (the rest 0). The values are the member's schema's to check.
BceVariant bce_variant(int64_t kind, at::ArrayRef<double> params);

// The BCE-family ops for one device, whose kernel is Run(plan) (dtype dispatch and launch): the
// argument mapping is written once for the CPU and CUDA bindings.
template <void (*Run)(BcePlan&)>
struct BceOps {
  using Out = std::tuple<at::Tensor, at::Tensor>;
  using Opt = std::optional<at::Tensor>;

  static Out bce_with_logits(const at::Tensor& input, const at::Tensor& target, const Opt& weight,
                             const Opt& pos_weight, int64_t reduction, bool compute_grad) {
    return run("binary_cross_entropy_with_logits", input, target, weight, pos_weight, reduction,
               compute_grad, false, BceVariant());
  }
  static Out multilabel_soft_margin(const at::Tensor& input, const at::Tensor& target,
                                    const Opt& weight, int64_t reduction, bool compute_grad) {
    return run("multilabel_soft_margin_loss", input, target, weight, std::nullopt, reduction,
               compute_grad, true, BceVariant());
  }
  // Any member of the BCE family (csrc/math/bce_variants.h) by kind; no pos_weight.
  static Out bce_family(const at::Tensor& input, const at::Tensor& target, const Opt& weight,
                        int64_t kind, at::ArrayRef<double> params, int64_t reduction,
                        bool compute_grad) {
    return run("bce_family", input, target, weight, std::nullopt, reduction, compute_grad, false,
               bce_variant(kind, params));
  }
  // bce_chunk_: the gradient into logits, the loss returned (make_bce_chunk_plan).
  static at::Tensor bce_chunk_(const at::Tensor& logits, const Opt& target, const Opt& indices,
                               const Opt& offsets, const Opt& values, int64_t first,
                               const Opt& pos_weight, int64_t reduction, bool row_mean) {
    BcePlan plan = make_bce_chunk_plan(logits, target, indices, offsets, values, first,
                                       pos_weight, reduction, row_mean);
    Run(plan);
    return plan.loss;
  }

 private:
  static Out run(const char* op, const at::Tensor& input, const at::Tensor& target,
                 const Opt& weight, const Opt& pos_weight, int64_t reduction, bool compute_grad,
                 bool row_mean, const BceVariant& variant) {
    BcePlan plan = make_bce_plan(op, input, target, weight, pos_weight, reduction, compute_grad,
                                 row_mean, variant);
    Run(plan);
    return op_outputs(plan.loss, plan.grad, input);
  }
};

template <class T>
BceParams<T> BcePlan::params() const {
  BceParams<T> p;
  p.input = input.const_data_ptr<T>();
  p.rows = rows;
  p.cols = cols;
  p.input_row_stride = input.stride(0);
  if (indices.defined()) {
    p.csr.indices = indices.const_data_ptr<int64_t>();
    p.csr.offsets = offsets.const_data_ptr<int64_t>();
    if (values.defined()) p.csr.values = values.const_data_ptr<T>();
    p.csr.nnz = indices.numel();
    p.csr.first = first;
  } else {
    p.target = target.const_data_ptr<T>();
    p.target_row_stride = target.stride(0);
  }
  if (weight.defined()) {
    p.weight = weight.const_data_ptr<T>();
    p.weight_row_stride = weight.stride(0);
    p.weight_col_stride = weight.stride(1);
  }
  if (pos_weight.defined()) {
    p.pos_weight = pos_weight.const_data_ptr<T>();
    p.pos_weight_row_stride = pos_weight.stride(0);
    p.pos_weight_col_stride = pos_weight.stride(1);
  }
  if (!row_mean && reduction == kNone) p.loss = loss.mutable_data_ptr<T>();
  if (grad.defined() && grad.numel() > 0) p.grad = grad.mutable_data_ptr<T>();
  p.scales = scales;
  p.variant = variant;
  return p;
}

}  // namespace mlc
