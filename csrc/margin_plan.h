// Host-side preparation shared by the CPU and CUDA multilabel margin kernels: checks (shapes, dtypes;
// the target range is the kernels'), (rows, cols) / (rows, tcols) views, outputs, loss scales.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "math/portable.h"
#include "output_alloc.h"
#include "params.h"

namespace mlc {

struct MarginPlan {
  at::Tensor input, target;  // (rows, cols) and (rows, tcols) views with unit column stride
  int64_t rows = 0, cols = 0, tcols = 0;
  int64_t reduction = kMean;
  int algo = kMarginAuto;
  bool per_row_loss = false;  // 'none' on an (N, C) input: loss is (N,); else a scalar
  at::Tensor loss;
  at::Tensor grad;  // (rows, cols) contiguous when requested, else empty
  LossScales scales;

  template <class T>
  MarginParams<T> params() const;
};

MarginPlan make_margin_plan(const at::Tensor& input, const at::Tensor& target, int64_t reduction,
                            bool compute_grad, int64_t algo);

// The words of the out-of-range target error, written once for the CPU kernel (raised at once) and
// the CUDA launcher (raised for a record a kernel left on the device).
std::string margin_target_error_message(const MarginTargetError& e);

template <class T>
MarginParams<T> MarginPlan::params() const {
  MarginParams<T> p;
  p.rows = rows;
  p.cols = cols;
  p.tcols = tcols;
  if (rows > 0) {
    p.input = input.const_data_ptr<T>();
    p.input_row_stride = input.stride(0);
    if (tcols > 0) {
      p.target = target.const_data_ptr<int64_t>();
      p.target_row_stride = target.stride(0);
    }
  }
  if (per_row_loss) p.row_loss = loss.mutable_data_ptr<T>();
  if (grad.defined() && grad.numel() > 0) p.grad = grad.mutable_data_ptr<T>();
  p.scales = scales;
  p.algo = algo;
  return p;
}

}  // namespace mlc
