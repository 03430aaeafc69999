#include "checks.h"

#include <ATen/ExpandUtils.h>

namespace mlc {

void check_kernel_input(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.layout() == at::kStrided, op, ": input must be a dense (strided) tensor, got ",
              input.layout());
  const auto st = input.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": input must be float32, float64, float16 or bfloat16, got ", st);
}

void check_reduction(const char* op, int64_t reduction) {
  TORCH_CHECK(reduction >= 0 && reduction <= 2, op,
              ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

void check_operand(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                   bool same_dtype) {
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name,
              " must be a dense (strided) tensor, got ", t.layout());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(!same_dtype || t.scalar_type() == input.scalar_type(), op, ": ", name,
              " has dtype ", t.scalar_type(), " but input has dtype ", input.scalar_type());
}

void check_shape(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                 bool same_shape) {
  if (same_shape) {
    TORCH_CHECK(t.sizes() == input.sizes(), op, ": ", name, " size ", t.sizes(),
                " must be the same as input size ", input.sizes());
  } else {
    TORCH_CHECK(at::is_expandable_to(t.sizes(), input.sizes()), op, ": ", name, " of shape ",
                t.sizes(), " is not broadcastable to input of shape ", input.sizes());
  }
}

}  // namespace mlc
