// SIMT-emulated runs of csrc/cuda/margin_kernel.cuh (the real CUDA kernels, compiled by the host
// compiler through simt_emu.h), both per-row methods (direct, counting, and the auto rule), against
// the O(P*C) definition written here (no csrc/math code): a hinge is active when native's
// z = 1 - x[t] + x[i], evaluated in the compute type, is > 0, so hinge counts, hence gradients,
// must match exactly; the loss sums those z in long double. Out-of-range target entries must be
// recorded in the error record, with NaN for their rows and no access out of bounds.
//   test_margin_emu [full|small|stale|shapes]
#include "simt_emu.h"  // first: defines the CUDA keywords for the kernel header

#include <cuda/margin_launch.cuh>
#include <reduction.h>

#include <cinttypes>
#include <limits>
#include <span>
#include <string>
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
  kStale,        // positives, -1, then stale valid-looking entries (every other class, repeats of
                 // the positives, another -1, ...): all of them must be ignored
  kDuplicates,   // positives with repeats
  kAll,          // every class positive (P = C)
  kNone,         // first entry -1 (P = 0)
  kCompact,      // (N, K < C) without any -1: P = K
  kNoTarget,     // tcols = 0
  kMany,         // many distinct positives (C/2 <= P <= C), then -1 and stale entries
  kBad,          // as kStale, with an out-of-range entry (>= C or < -1) in every third row
  kModes
};
const char* mode_name(int m) {
  static const char* n[] = {"random", "stale", "duplicates", "all", "none", "compact", "no-target",
                            "many", "bad"};
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
  int algo = mlc::kMarginAuto;
  int64_t smem_targets = -1;  // counting rows with more positives use the global scratch
};
const char* algo_name(int a) { return a == 0 ? "auto" : a == 1 ? "direct" : "counting"; }




struct alignas(16) Pack16 { unsigned char b[16]; };

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
  // Scores and gradient start one element into their storage: a kernel that takes a -1 for a
  // target index (the fault tests) touches that element instead of the heap's bookkeeping.
  std::vector<T> xstore(R > 0 ? (R - 1) * S + C + 1 : 1, to_t<T>(0));
  T* const xb = xstore.data() + 1;
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
      case kStale: case kBad: case kMany: {  // the first P of a permutation, -1, then the rest of it (and junk)
        std::vector<int64_t> perm(C);
        for (int64_t c = 0; c < C; ++c) perm[c] = c;
        for (int64_t c = C - 1; c > 0; --c) std::swap(perm[c], perm[static_cast<int64_t>(rng.uniform() * (c + 1))]);
        int64_t P = KT > 1 ? static_cast<int64_t>(rng.uniform() * (KT - 1)) : 0;
        if (k.tmode == kMany) P = KT - 1 - static_cast<int64_t>(rng.uniform() * (KT / 2));
        for (int64_t j = 0; j < KT; ++j) {
          if (j < P) y[j] = perm[j];
          else if (j == P) y[j] = -1;
          else if (j % 7 == 3) y[j] = -1;                        // a later -1 changes nothing
          else if (j % 5 == 4 && P > 0) y[j] = perm[j % P];     // repeats a positive
          else y[j] = C > P ? perm[P + (j - P) % (C - P)] : -1;  // a class that is not a target
        }
        if (k.tmode == kBad && r % 3 == 1) {  // before, at or after the -1
          const int64_t j = static_cast<int64_t>(rng.uniform() * KT);
          y[j] = j % 2 ? C + static_cast<int64_t>(rng.uniform() * 3) : -2 - j % 5;
        }
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
  p.input = xb;
  p.input_row_stride = S;
  if (KT > 0) {
    p.target = yb.data();
    p.target_row_stride = TS;
  }
  std::vector<T> gstore(k.grad ? R * C + 1 : 1, to_t<T>(-777));
  const std::span<T> grad(gstore.data() + 1, gstore.size() - 1);
  if (k.grad && R * C > 0) p.grad = grad.data();
  double scale = 1.0 / C;  // the oracle's own (p.scales comes from the plan's rule)
  if (k.reduction == mlc::kMean && R > 0) scale /= R;
  p.scales = mlc::loss_scales(k.reduction, R, C, /*row_mean=*/true);
  const bool per_row = k.per_row && k.reduction == mlc::kNone;

  p.algo = k.algo;
  mlc::MarginTargetError error;
  p.error = &error;

  const auto s = mlc::cuda::margin_launch_shape<A>(R, KT, per_row, p.grad != nullptr, k.algo,
                                                   k.block, k.max_grid, k.chunk, k.smem_targets);
  EMU_CHECK(s.error == nullptr, "margin_launch_shape: %s", s.error);
  // 0xCD garbage in the scratch, as a fresh allocation may hold; 16-byte aligned as on a GPU.
  std::vector<Pack16> scratch_store((s.scratch + 15) / 16);
  std::memset(scratch_store.data(), 0xCD, scratch_store.size() * sizeof(Pack16));
  auto* scratch = reinterpret_cast<unsigned char*>(scratch_store.data());
  std::vector<A> partial(s.partials, A(-5));
  std::vector<T> out(per_row ? R : 1, to_t<T>(-777));
  mlc::cuda::margin_run(p, s, scratch, partial.data(), out.data(), emu_launch);

  char where[320];
  std::snprintf(where, sizeof where,
                "%s R=%" PRId64 " C=%" PRId64 " K=%" PRId64 " %s %s red=%d per_row=%d int=%d "
                "nan=%d pad=%" PRId64 " block=%d chunk=%" PRId64 " smem_targets=%" PRId64
                " grid=%" PRId64, emu::type_name<T>(), R, C, KT, mode_name(k.tmode),
                algo_name(k.algo), k.reduction, per_row, k.integer_scores, k.nan_score, k.pad,
                k.block, s.chunk, s.args.smem_targets, s.grid);
  // Reference: the definition, O(P*C) per row, native's hinge test in the compute type A.
  const double tol = emu::tolerance<T>();
  std::vector<double> row_loss(R, 0.0);
  const double sum_tol = std::is_same_v<T, double> ? 1e-13 : 1e-6;
  double total_mag = 0;
  int bad = 0;
  bool any_bad = false;
  for (int64_t r = 0; r < R; ++r) {
    const T* x = xb + r * S;
    const int64_t* y = KT > 0 ? yb.data() + r * TS : nullptr;
    bool out_of_range = false;  // an entry outside [-1, C) anywhere in the row: NaN row, recorded
    for (int64_t j = 0; j < KT; ++j) out_of_range |= y[j] < -1 || y[j] >= C;
    if (out_of_range) {
      any_bad = true;
      if (per_row) EMU_CHECK(std::isnan(as_double(out[r])), "%s row %" PRId64 " (bad): %.9g", where, r, as_double(out[r]));
      for (int64_t i = 0; p.grad && i < C; ++i)
        if (!std::isnan(as_double(grad[r * C + i])) && bad++ < 3)
          EMU_CHECK(false, "%s grad[%" PRId64 ",%" PRId64 "] = %.9g in a bad row", where, r, i, as_double(grad[r * C + i]));
      continue;
    }
    int64_t P = 0;  // the targets: the entries before the first -1 (or all of them)
    while (P < KT && y[P] >= 0) ++P;
    std::vector<char> is_t(C, 0);
    for (int64_t j = 0; j < P; ++j) is_t[y[j]] = 1;
    std::vector<int64_t> count(C, 0), tgrad(C, 0);
    long double loss = 0;
    double mag = 0;
    for (int64_t j = 0; j < P; ++j) {
      const A xt = static_cast<A>(x[y[j]]);
      for (int64_t i = 0; i < C; ++i) {
        if (is_t[i]) continue;
        const A xi = static_cast<A>(x[i]);
        const A z = A(1) - xt + xi;  // as native: in A, left to right
        if (!(z > A(0))) continue;   // NaN: no hinge
        ++count[i];
        ++tgrad[y[j]];
        loss += static_cast<long double>(z);
        mag += 1 + std::fabs(static_cast<double>(xi)) + std::fabs(static_cast<double>(xt));
      }
    }
    row_loss[r] = static_cast<double>(loss);
    total_mag += mag;
    if (per_row) {
      const double got = as_double(out[r]), want = row_loss[r] / C;
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
  if (any_bad) {  // the record names one bad entry: its row, its value, C
    const int64_t* y = error.row >= 0 && error.row < R ? yb.data() + error.row * TS : nullptr;
    bool found = false;
    for (int64_t j = 0; y && j < KT; ++j) found |= y[j] == error.value;
    EMU_CHECK(error.claimed >= 1u && found && error.cols == C && (error.value < -1 || error.value >= C),
              "%s: error record claimed=%u row=%" PRId64 " value=%" PRId64 " cols=%" PRId64, where,
              error.claimed, error.row, error.value, error.cols);
  } else {
    EMU_CHECK(error.claimed == 0u, "%s: error recorded without a bad target", where);
  }
  if (!per_row && any_bad) {
    EMU_CHECK(std::isnan(as_double(out[0])), "%s total %.9g with a bad row", where, as_double(out[0]));
  } else if (!per_row) {
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
    mlc::cuda::margin_run(p2, s, scratch, partial.data(), out2.data(), emu_launch);
    EMU_CHECK(std::memcmp(out.data(), out2.data(), out.size() * sizeof(T)) == 0 &&
                  std::memcmp(grad.data(), grad2.data(), grad.size() * sizeof(T)) == 0,
              "%s: second run differs", where);
  }
}

// Every shape margin_launch_shape gives the launcher (block kBlock, any grid cap a device gives,
// any target width, hence every chunk size) must be one a GPU accepts.
template <class T>
void check_launch_shapes() {
  using A = acc_t<T>;
  for (int64_t tcols : {int64_t(0), int64_t(1), int64_t(2), int64_t(31), int64_t(100), int64_t(1023),
                        int64_t(1024), int64_t(1025), int64_t(5000), int64_t(1) << 20, (int64_t(1) << 24) + 1})
    for (int64_t rows : {int64_t(1), int64_t(7), int64_t(1) << 20, int64_t(1) << 31})
      for (int64_t max_grid : {int64_t(1), int64_t(1056), int64_t(8) << 10})
        for (int flags = 0; flags < 12; ++flags) {
          const int algo = flags >> 2;
          const auto s = mlc::cuda::margin_launch_shape<A>(rows, tcols, flags & 1, flags & 2, algo,
                                                           mlc::cuda::kBlock, max_grid);
          EMU_CHECK(s.error == nullptr, "%s rows=%" PRId64 " tcols=%" PRId64 " max_grid=%" PRId64
                    " algo=%d chunk=%" PRId64 " smem=%" PRId64 ": %s", emu::type_name<T>(), rows,
                    tcols, max_grid, algo, s.chunk, s.smem, s.error);
          EMU_CHECK(s.scratch <= mlc::cuda::kMarginMaxScratchBytes || s.grid == 1,
                    "%s rows=%" PRId64 " tcols=%" PRId64 " algo=%d: scratch %" PRId64 " bytes",
                    emu::type_name<T>(), rows, tcols, algo, s.scratch);
        }
}

template <class T>
void run_all(bool small, uint64_t& seed) {
  check_launch_shapes<T>();
  struct Shape { int64_t rows, cols, tcols, chunk; int block; };
  std::vector<Shape> shapes = {
      {1, 1, 1, 0, 32},   {3, 31, 5, 0, 64},  {4, 33, 33, 0, 64}, {2, 100, 40, 7, 64},
      {5, 150, 12, 5, 32}, {1, 70, 70, 0, 64}, {6, 9, 4, 0, 32},  {0, 5, 3, 0, 32},
      {2, 200, 24, 0, 64},   // rows longer than two blocks: C > 2 * block
      {2, 140, 140, 0, 64}};  // many positives (kMany, kAll: P up to C), rows over two blocks
  if (!small) {
    shapes.push_back({3, 300, 64, 0, 128});  // C > block size
    shapes.push_back({2, 257, 257, 16, 64});
  } else if (!std::is_same_v<T, float>) {
    shapes = {{3, 31, 5, 0, 64}, {2, 100, 40, 7, 64}, {1, 70, 70, 0, 64}, {2, 200, 24, 0, 64},
              {2, 140, 140, 0, 64}};
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
        k.algo = (i + i / 3) % 3;  // each (shape, target mode) runs every method
        k.smem_targets = i % 4 == 3 ? 3 : -1;  // counting rows with P > 3: global scratch
        ++i;
        run_case<T>(k, seed++);
      }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "full";
  uint64_t seed = 1;
  if (mode == "shapes") {
    check_launch_shapes<float>();
    check_launch_shapes<double>();
    check_launch_shapes<Half>();
    check_launch_shapes<BF16>();
    return emu::finish("test_margin_emu shapes");
  }
  if (mode == "stale") {  // targets with stale entries after the -1, rows over two blocks long
    for (int64_t chunk : {0, 5}) {  // direct (whole or chunked staging), then counting
      Case k;
      k.algo = chunk == 0 ? mlc::kMarginCounting : mlc::kMarginDirect;
      k.rows = 4;
      k.cols = 150;
      k.tcols = 40;
      k.tmode = kStale;
      k.reduction = mlc::kNone;
      k.block = 32;
      k.chunk = chunk;
      run_case<float>(k, seed++);
    }
    return emu::finish("test_margin_emu stale");
  }
  const bool small = mode == "small";
  run_all<float>(small, seed);
  if (!small) run_all<double>(small, seed);
  if (!small) run_all<Half>(small, seed);
  run_all<BF16>(small, seed);
  return emu::finish(small ? "test_margin_emu small" : "test_margin_emu full");
}
