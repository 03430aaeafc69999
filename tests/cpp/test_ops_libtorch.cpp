// The library as a C++ user links it (CMake, find_package(Torch)): each op called through the
// dispatcher on the CPU, forward, backward and double backward, against ATen's native losses. No
// Python anywhere in the path: backward and its differentiable formulas are C++.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdio>
#include <optional>
#include <string>

namespace {

int failures = 0;

void expect_close(const char* what, const at::Tensor& got, const at::Tensor& want) {
  const bool ok = got.sizes() == want.sizes() &&
                  at::allclose(got, want, /*rtol=*/1e-10, /*atol=*/1e-12, /*equal_nan=*/true);
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) {
    ++failures;
    std::printf("  got  %s\n  want %s\n", got.toString().c_str(), want.toString().c_str());
  }
}

using Pair = std::tuple<at::Tensor, at::Tensor>;
using Opt = std::optional<at::Tensor>;

template <class Fn>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

at::Tensor grad_of(const at::Tensor& out, const at::Tensor& wrt, bool create_graph = false) {
  return torch::autograd::grad({out}, {wrt}, {}, /*retain_graph=*/true, create_graph)[0];
}

// loss(x, y) of ours and of ATen: values, d/dx, d/dy and d/dx of sum(d/dx * v) (double backward).
template <class Ours, class Native>
void compare(const std::string& name, Ours ours, Native native, int64_t reduction) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  auto x = (torch::randn({5, 7}, opts) * 3).requires_grad_();
  auto y = torch::rand({5, 7}, opts).requires_grad_();
  auto v = torch::randn({5, 7}, opts);
  const std::string tag = name + " reduction=" + std::to_string(reduction);
  at::Tensor a = ours(x, y, reduction), b = native(x, y, reduction);
  expect_close((tag + " loss").c_str(), a, b);
  expect_close((tag + " d/dinput").c_str(), grad_of(a.sum(), x), grad_of(b.sum(), x));
  expect_close((tag + " d/dtarget").c_str(), grad_of(a.sum(), y), grad_of(b.sum(), y));
  const at::Tensor ga = grad_of(a.sum(), x, true), gb = grad_of(b.sum(), x, true);
  expect_close((tag + " double backward").c_str(), grad_of((ga * v).sum(), x),
               grad_of((gb * v).sum(), x));
}

}  // namespace

int main() {
  torch::manual_seed(0);
  using BceOp = Pair(const at::Tensor&, const at::Tensor&, const Opt&, const Opt&, int64_t, bool);
  using SoftMarginOp = Pair(const at::Tensor&, const at::Tensor&, const Opt&, int64_t, bool);
  using MarginOp = Pair(const at::Tensor&, const at::Tensor&, int64_t, bool, int64_t);
  static auto bce = op<BceOp>("multilabel_cuda::bce_with_logits");
  static auto soft_margin = op<SoftMarginOp>("multilabel_cuda::multilabel_soft_margin");
  static auto margin = op<MarginOp>("multilabel_cuda::multilabel_margin");
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor w = torch::rand({7}, opts) + 0.5, pw = torch::rand({7}, opts) * 3;

  for (int64_t reduction : {0, 1, 2}) {
    compare(
        "bce_with_logits",
        [&](auto& x, auto& y, int64_t r) { return std::get<0>(bce.call(x, y, w, pw, r, true)); },
        [&](auto& x, auto& y, int64_t r) {
          return at::binary_cross_entropy_with_logits(x, y, w, pw, r);
        },
        reduction);
    compare(
        "multilabel_soft_margin",
        [&](auto& x, auto& y, int64_t r) { return std::get<0>(soft_margin.call(x, y, w, r, true)); },
        [&](auto& x, auto& y, int64_t r) {  // torch.nn's composite, written out
          const at::Tensor rows = -((y * at::log_sigmoid(x) + (1 - y) * at::log_sigmoid(-x)) * w)
                                       .mean(-1);
          return r == 0 ? rows : (r == 1 ? rows.mean() : rows.sum());
        },
        reduction);

    // Margin: int64 targets (no target gradient); its input gradient is piecewise constant, so
    // double backward is zero.
    auto x = (torch::randn({5, 9}, opts) * 2).requires_grad_();
    const at::Tensor t = torch::tensor({3, 0, -1, 4}, at::kLong).repeat({5, 1});
    const std::string tag = "multilabel_margin reduction=" + std::to_string(reduction);
    const at::Tensor a = std::get<0>(margin.call(x, t, reduction, true, 0));
    const at::Tensor b = at::multilabel_margin_loss(
        x, at::cat({t, torch::full({5, 5}, -1, at::kLong)}, 1), reduction);
    expect_close((tag + " loss").c_str(), a, b);
    expect_close((tag + " d/dinput").c_str(), grad_of(a.sum(), x), grad_of(b.sum(), x));
    const at::Tensor g = grad_of(a.sum(), x, true);
    expect_close((tag + " double backward").c_str(), grad_of((g * x).sum(), x), g);
  }
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
