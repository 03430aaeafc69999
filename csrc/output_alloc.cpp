#include "output_alloc.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mlc {
namespace {

constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
// glibc serves requests of 32 MiB and more (its largest dynamic mmap threshold) with a fresh mmap
// every time, so every page of such a buffer faults once on first write, which costs more than the
// whole fused pass: huge pages make that 512x fewer faults. Smaller buffers usually come back from
// the heap already mapped, and there MADV_HUGEPAGE hurts (docs/performance.md, "huge pages").
constexpr size_t kMinBytes = size_t(32) << 20;

bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("MULTILABEL_CUDA_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (out.is_cpu() && out.nbytes() >= kMinBytes && huge_pages_enabled()) {
    const auto start = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t end = (start + out.nbytes()) & ~(kHugePage - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  return out;
}

std::tuple<at::Tensor, at::Tensor> op_outputs(const at::Tensor& loss, const at::Tensor& grad,
                                              const at::Tensor& input) {
  return {loss, grad.dim() == 2 ? grad.view(input.sizes()) : grad};  // (rows, cols) when requested
}

}  // namespace mlc
