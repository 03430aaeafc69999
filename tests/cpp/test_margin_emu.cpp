// SIMT-emulated runs of csrc/cuda/margin_kernel.cuh (the real CUDA kernels, compiled by the host
// compiler through simt_emu.h) against a straightforward O(P*C) reference in double that uses the
// same threshold rule (csrc/math/margin.h): hinge counts, hence gradients, must match exactly.
//   test_margin_emu [full|small]
#include "simt_emu.h"  // first: defines the CUDA keywords for the kernel header

#include <cuda/margin_launch.cuh>
#include <reduction.h>

#include <cinttypes>
#include <limits>
#include <vector>

#include "emu_check.h"

namespace {

using emu::as_double;
using emu::matches;
using emu::to_t;

using mlc::MarginParams;
using mlc::cuda::acc_t;
using emu::BF16;
using emu::Half;

enum TargetMode {
  kRandom = 0,   // distinct positives, -1 terminated (junk in range after it)
  kDuplicates,   // positives with repeats
  kAll,          // every class positive (P = C)
  kNone,         // first entry -1 (P = 0)
  kCompact,      // (N, K < C) without any -1: P = K
  kNoTarget,     // tcols = 0
  kModes
};
const char* mode_name(int m) {
  static const char* n[] = {"random", "duplicates", "all", "none", "compact", "no-target"};
  return n[m];
}

struct Case {
  int64_t rows = 1, cols = 1, tcols = 1;
  int tmode = kRandom;
  int reduction = mlc::kMean;
  bool per_row = true;       // 'none' on an (N, C) input -> (N,); else scalar
  bool integer_scores = false;  // ties: scores exactly 1 apart
  bool nan_score = false;
  int64_t pad = 0;           // input / target row stride = cols + pad / tcols + pad
  bool grad = true;
  int block = 64;
  int64_t chunk = 0;
  int64_t max_grid = 4;
  bool repeat = false;
};




auto emu_launch = [](auto kernel, int64_t grid, int block, int64_t smem, auto... args) {
  simt::launch(dim3(static_cast<unsigned>(grid)), dim3(static_cast<unsigned>(block)),
               static_cast<std::size_t>(smem), kernel, args...);
};

template <class T>
void run_case(const Case& k, uint64_t seed) {
  using A = acc_t<T>;
  emu::Rng rng(seed);
  const int64_t R = k.rows, C = k.cols;
  const int64_t KT = k.tmode == kNoTarget ? 0 : (k.tmode == kAll ? C : k.tcols);
  const int64_t S = C + k.pad, TS = KT + k.pad;
  std::vector<T> xb(R > 0 ? (R - 1) * S + C : 0, to_t<T>(0));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double v = k.integer_scores ? std::floor(rng.uniform(-3, 4)) : rng.uniform(-2, 2);
      xb[r * S + c] = to_t<T>(v);
    }
  std::vector<int64_t> yb(R > 0 && KT > 0 ? (R - 1) * TS + KT : 0, -7);  // -7 in the padding
  for (int64_t r = 0; r < R; ++r) {
    int64_t* y = yb.data() + r * TS;
    switch (k.tmode) {
      case kRandom: case kCompact: {
        std::vector<int64_t> perm(C);
        for (int64_t c = 0; c < C; ++c) perm[c] = c;
        for (int64_t c = C - 1; c > 0; --c) std::swap(perm[c], perm[static_cast<int64_t>(rng.uniform() * (c + 1))]);
        const int64_t P = k.tmode == kCompact ? KT : static_cast<int64_t>(rng.uniform() * KT);
        for (int64_t j = 0; j < KT; ++j)
          y[j] = j < P ? perm[j] : (j == P ? -1 : static_cast<int64_t>(rng.uniform() * C) - (j % 3 == 0));
        break;
      }
      case kDuplicates: {
        const int64_t P = KT - (r % 2);  // odd rows end with a -1
        for (int64_t j = 0; j < KT; ++j)
          y[j] = j < P ? static_cast<int64_t>(rng.uniform() * (C < 3 ? C : 3)) : -1;
        break;
      }
      case kAll:
        for (int64_t j = 0; j < KT; ++j) y[j] = j;  // every class once, shuffled
        for (int64_t j = KT - 1; j > 0; --j) std::swap(y[j], y[static_cast<int64_t>(rng.uniform() * (j + 1))]);
        break;
      case kNone:
        for (int64_t j = 0; j < KT; ++j) y[j] = j == 0 ? -1 : static_cast<int64_t>(rng.uniform() * C);
        break;
      default: break;
    }
  }
  if (k.nan_score && R > 0) {
    xb[(R - 1) * S + C / 2] = to_t<T>(std::numeric_limits<double>::quiet_NaN());  // maybe a target
    if (KT > 0 && yb[0] >= 0) xb[yb[0]] = to_t<T>(std::numeric_limits<double>::quiet_NaN());
  }

  MarginParams<T> p;
  p.rows = R;
  p.cols = C;
  p.tcols = KT;
  p.input = xb.data();
  p.input_row_stride = S;
  if (KT > 0) {
    p.target = yb.data();
    p.target_row_stride = TS;
  }
  std::vector<T> grad(k.grad ? R * C : 0, to_t<T>(-777));
  if (k.grad && R * C > 0) p.grad = grad.data();
  double scale = 1.0 / C;  // the oracle's own (p.scales comes from the plan's rule)
  if (k.reduction == mlc::kMean && R > 0) scale /= R;
  p.scales = mlc::loss_scales(k.reduction, R, C, /*row_mean=*/true);
  const bool per_row = k.per_row && k.reduction == mlc::kNone;

  const auto s = mlc::cuda::margin_launch_shape<A>(R, KT, per_row, p.grad != nullptr, k.block,
                                                   k.max_grid, k.chunk);
  std::vector<int64_t> kscratch(s.kscratch, -5);
  std::vector<A> partial(s.partials, A(-5));
  std::vector<T> out(per_row ? R : 1, to_t<T>(-777));
  mlc::cuda::margin_run(p, s, kscratch.data(), partial.data(), out.data(), emu_launch);

  char where[256];
  std::snprintf(where, sizeof where,
                "%s R=%" PRId64 " C=%" PRId64 " K=%" PRId64 " %s red=%d per_row=%d int=%d nan=%d "
                "pad=%" PRId64 " block=%d chunk=%" PRId64 " grid=%" PRId64,
                emu::type_name<T>(), R, C, KT, mode_name(k.tmode), k.reduction, per_row,
                k.integer_scores, k.nan_score, k.pad, k.block, s.chunk, s.grid);
  // Reference: O(P*C) per row in double from the same A values and thresholds.
  const double tol = emu::tolerance<T>();
  std::vector<double> row_loss(R, 0.0);
  const double sum_tol = std::is_same_v<T, double> ? 1e-13 : 1e-6;
  double total_mag = 0;
  int bad = 0;
  for (int64_t r = 0; r < R; ++r) {
    const T* x = xb.data() + r * S;
    const int64_t* y = KT > 0 ? yb.data() + r * TS : nullptr;
    int64_t P = 0;
    while (P < KT && y[P] >= 0) ++P;
    std::vector<char> is_t(C, 0);
    for (int64_t j = 0; j < P; ++j) is_t[y[j]] = 1;
    std::vector<int64_t> count(C, 0), tgrad(C, 0);
    double loss = 0, mag = 0;
    for (int64_t j = 0; j < P; ++j) {
      const A th = mlc::math::margin_threshold<A>(static_cast<A>(x[y[j]]));
      for (int64_t i = 0; i < C; ++i) {
        const A xi = static_cast<A>(x[i]);
        if (is_t[i] || !(xi > th)) continue;
        ++count[i];
        ++tgrad[y[j]];
        loss += static_cast<double>(xi) - static_cast<double>(th);
        mag += std::fabs(static_cast<double>(xi)) + std::fabs(static_cast<double>(th));
      }
    }
    row_loss[r] = loss;
    total_mag += mag;
    if (per_row) {
      const double got = as_double(out[r]), want = loss / C;
      EMU_CHECK(matches<T>(got, want, tol, sum_tol * mag / C), "%s row %" PRId64 ": %.9g, want %.9g",
                where, r, got, want);
    }
    if (p.grad) {
      for (int64_t i = 0; i < C; ++i) {
        const double want = static_cast<double>(count[i] - tgrad[i]) * scale;
        const double got = as_double(grad[r * C + i]);
        if (!matches<T>(got, want, tol, 0) && bad++ < 3)
          EMU_CHECK(false, "%s grad[%" PRId64 ",%" PRId64 "] = %.9g, want %.9g", where, r, i, got, want);
      }
    }
  }
  EMU_CHECK(bad == 0, "%s: %d gradient mismatches", where, bad);
  if (!per_row) {
    double total = 0;
    for (double v : row_loss) total += v;
    total /= C;
    total_mag /= C;
    if (k.reduction == mlc::kMean) {
      total = R > 0 ? total / R : std::numeric_limits<double>::quiet_NaN();
      total_mag /= R > 0 ? R : 1;
    }
    const double got = as_double(out[0]);
    EMU_CHECK(matches<T>(got, total, tol, sum_tol * total_mag), "%s total %.12g, want %.12g",
              where, got, total);
  }
  if (k.repeat) {  // same inputs, same grid: bitwise the same outputs
    std::vector<T> out2(out.size(), to_t<T>(-777)), grad2(grad.size(), to_t<T>(-777));
    MarginParams<T> p2 = p;
    if (p.grad) p2.grad = grad2.data();
    mlc::cuda::margin_run(p2, s, kscratch.data(), partial.data(), out2.data(), emu_launch);
    EMU_CHECK(std::memcmp(out.data(), out2.data(), out.size() * sizeof(T)) == 0 &&
                  std::memcmp(grad.data(), grad2.data(), grad.size() * sizeof(T)) == 0,
              "%s: second run differs", where);
  }
}

template <class T>
void run_all(bool small, uint64_t& seed) {
  struct Shape { int64_t rows, cols, tcols, chunk; int block; };
  std::vector<Shape> shapes = {
      {1, 1, 1, 0, 32},   {3, 31, 5, 0, 64},  {4, 33, 33, 0, 64}, {2, 100, 40, 7, 64},
      {5, 150, 12, 5, 32}, {1, 70, 70, 0, 64}, {6, 9, 4, 0, 32},  {0, 5, 3, 0, 32}};
  if (!small) {
    shapes.push_back({3, 300, 64, 0, 128});  // C > block size
    shapes.push_back({2, 257, 257, 16, 64});
  } else if (!std::is_same_v<T, float>) {
    shapes = {{3, 31, 5, 0, 64}, {2, 100, 40, 7, 64}, {1, 70, 70, 0, 64}};
  }
  int i = 0;
  for (const Shape& sh : shapes)
    for (int tmode = 0; tmode < kModes; ++tmode)
      for (int red : {mlc::kNone, mlc::kMean, mlc::kSum}) {
        // Fewer cases for the sanitizer builds and for the non-float types (one OS thread per
        // CUDA thread is slow): every other case.
        if ((small || !std::is_same_v<T, float>) && (i % 2) == 1) { ++i; continue; }
        Case k;
        k.rows = sh.rows;
        k.cols = sh.cols;
        k.tcols = tmode == kCompact ? (sh.tcols < sh.cols ? sh.tcols : sh.cols) : sh.tcols;
        k.chunk = sh.chunk;
        k.block = sh.block;
        k.tmode = tmode;
        k.reduction = red;
        k.per_row = i % 4 != 1;
        k.integer_scores = i % 3 == 0;
        k.nan_score = i % 11 == 5;
        k.pad = i % 5 == 2 ? 3 : 0;
        k.grad = i % 7 != 3;
        k.max_grid = (i % 3 == 0) ? 1 : 3;
        k.repeat = i % 5 == 0;
        ++i;
        run_case<T>(k, seed++);
      }
}

}  // namespace

int main(int argc, char** argv) {
  const bool small = emu::small_mode(argc, argv);
  uint64_t seed = 1;
  run_all<float>(small, seed);
  if (!small) run_all<double>(small, seed);
  if (!small) run_all<Half>(small, seed);
  run_all<BF16>(small, seed);
  return emu::finish(small ? "test_margin_emu small" : "test_margin_emu full");
}
