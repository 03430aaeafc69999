// The argument checks of the ops, each written once: the plans (bce_plan.cpp, margin_plan.cpp) run
// them before anything reads memory, so a direct torch.ops.multilabel_cuda call is as safe as the
// public functions. Messages name the function, the argument and the offending value.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace mlc {

// float32, float64, float16 or bfloat16, dense (strided).
void check_kernel_input(const char* op, const at::Tensor& input);
// 0 (none), 1 (mean) or 2 (sum).
void check_reduction(const char* op, int64_t reduction);
// Dense, on input's device; with `same_dtype`, of input's dtype.
void check_operand(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                   bool same_dtype = true);
// Broadcastable to input's shape (same_shape: equal to it).
void check_shape(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                 bool same_shape);

// A CSR target of `rows` rows for input: indices (nnz,) and offsets (rows + 1,) int64, values
// (nnz,) of input's dtype or absent, all on input's device. Their contents are the caller's
// (SparseTargets validates them); kernels clamp offsets so that nothing is read out of bounds.
void check_csr(const char* op, const at::Tensor& indices, const at::Tensor& offsets,
               const std::optional<at::Tensor>& values, int64_t rows, const at::Tensor& input);

}  // namespace mlc
