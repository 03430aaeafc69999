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

void check_csr(const char* op, const at::Tensor& indices, const at::Tensor& offsets,
               const std::optional<at::Tensor>& values, int64_t rows, const at::Tensor& input) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"indices", indices},
                                {"offsets", offsets}}) {
    check_operand(op, name, t, input, false);
    TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1, op, ": ", name,
                " must be a 1-D int64 tensor, got ", t.scalar_type(), " of shape ", t.sizes());
  }
  TORCH_CHECK(offsets.numel() == rows + 1, op, ": offsets must have rows + 1 = ", rows + 1,
              " entries, got ", offsets.numel());
  if (values) {
    check_operand(op, "values", *values, input);
    TORCH_CHECK(values->sizes() == indices.sizes(), op, ": values of shape ", values->sizes(),
                " does not match indices of shape ", indices.sizes());
  }
}

}  // namespace mlc
