// The reduction rule of every op, in one place: how the sum of a problem's loss terms becomes the
// op's output, and the factor the same pass folds into the input gradient.
#pragma once
#include <cstdint>

#include "math/portable.h"
#include "params.h"

namespace mlc {

// rows x cols loss terms. row_mean: a row's loss is the mean of its terms (soft margin, margin);
// otherwise each term is a loss value of its own (BCE). 'mean' averages the loss values.
// Every reduced output is (sum of its terms) * scale, with no special case in any kernel for an
// empty input: the scales make it come out as torch's composites do. A row of no classes averages
// 0 terms to 0 * inf = NaN, 'mean' over no values is 0 * inf = NaN (torch.mean of an empty tensor),
// and 'sum' over no rows is 0 (scale 0, also when the rows would have been NaN).
inline LossScales loss_scales(int64_t reduction, int64_t rows, int64_t cols, bool row_mean) {
  LossScales s;
  s.row = row_mean ? 1.0 / static_cast<double>(cols) : 1.0;
  const int64_t values = row_mean ? rows : rows * cols;
  s.loss = reduction == kMean ? s.row / static_cast<double>(values) : s.row;
  if (reduction == kSum && rows == 0) s.loss = 0.0;
  // Where gradient elements exist (rows, cols > 0) this is finite and equals the output's scale.
  s.grad = reduction == kNone ? s.row : s.loss;
  return s;
}

}  // namespace mlc
