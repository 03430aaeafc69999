// SIMT-emulated runs of csrc/cuda/bce_kernel.cuh (the real CUDA kernels, compiled by the host
// compiler through simt_emu.h) against a long double reference written here from the definition
// (it shares no code with csrc/math, whose formula and ScalarOps are what the kernels run).
//   test_bce_emu [full|small|<fault mode>]
// small: fewer cases for the sanitizer builds. Fault modes run one case meant for a build of a
// deliberately broken kernel variant; CTest expects the failure there (see CMakeLists.txt).
#include "simt_emu.h"  // first: defines the CUDA keywords for the kernel header

#include <cuda/bce_launch.cuh>
#include <reduction.h>

#include <algorithm>
#include <cinttypes>
#include <vector>

#include "emu_check.h"

namespace {

using emu::as_double;
using emu::matches;
using emu::to_t;

using mlc::BceParams;
using mlc::cuda::acc_t;
using emu::BF16;
using emu::Half;

// Operand broadcast modes of weight / pos_weight: how BcePlan views them as (rows, cols).
enum WMode { kNoW = 0, kFull, kPerCol, kPerRow, kScalar, kWModes };
const char* wmode_name(int m) {
  static const char* n[] = {"none", "full", "per-col", "per-row", "scalar"};
  return n[m];
}

struct Case {
  int64_t rows = 1, cols = 1;
  int wmode = kNoW, pwmode = kNoW;
  int reduction = mlc::kMean;
  bool row_mean = false;      // soft margin
  int offset = 0;             // 0: aligned, 1: every pointer +1 element, 2: target only +1
  int64_t pad = 0;            // input/target row stride = cols + pad
  bool grad = true;
  int block = 64;
  int64_t tile_cols = 0;      // 0: the launcher's default
  int64_t max_grid = 4;
  bool repeat = false;        // also check bitwise determinism
};

struct Operand {
  std::vector<double> host;  // generated values
  int64_t row_stride = 0, col_stride = 0;
};

Operand make_weight(int mode, int64_t rows, int64_t cols, emu::Rng& rng, double lo, double hi) {
  Operand o;
  int64_t n = 0;
  switch (mode) {
    case kFull: n = rows * cols; o.row_stride = cols; o.col_stride = 1; break;
    case kPerCol: n = cols; o.row_stride = 0; o.col_stride = 1; break;
    case kPerRow: n = rows; o.row_stride = 1; o.col_stride = 0; break;
    case kScalar: n = 1; break;
    default: return o;
  }
  for (int64_t i = 0; i < n; ++i) o.host.push_back(rng.uniform(lo, hi));
  return o;
}

template <class T>
std::vector<T> to_buffer(const std::vector<double>& v, int offset) {
  std::vector<T> b(v.size() + offset, T(0.0f));
  for (size_t i = 0; i < v.size(); ++i) b[i + offset] = T(static_cast<float>(v[i]));
  if constexpr (std::is_same_v<T, double>) {
    for (size_t i = 0; i < v.size(); ++i) b[i + offset] = v[i];
  }
  return b;
}



// One element of BCE with logits (weight w, pos_weight p), in long double from the definition:
//   loss = w [(1 - y) x + (1 + (p - 1) y) log(1 + exp(-x))]
//   grad = d loss / dx = w [(1 + (p - 1) y) sigmoid(x) - p y]
// with log(1 + exp(-x)) written as log1p(exp(-|x|)) + max(-x, 0) so that it stays finite.
void bce_reference(double x, double y, double w, double p, double& loss, double& grad) {
  using L = long double;
  const L X = x, Y = y, W = w, Pw = p;
  const L log_weight = 1 + (Pw - 1) * Y;
  const L softplus_neg = std::log1p(std::exp(-std::fabs(X))) + (X < 0 ? -X : L(0));
  const L sigmoid = 1 / (1 + std::exp(-X));
  loss = static_cast<double>(W * ((1 - Y) * X + log_weight * softplus_neg));
  grad = static_cast<double>(W * (log_weight * sigmoid - Pw * Y));
}

auto emu_launch = [](auto kernel, int64_t grid, int block, auto... args) {
  simt::launch(dim3(static_cast<unsigned>(grid)), dim3(static_cast<unsigned>(block)), 0, kernel,
               args...);
};

template <class T>
void run_case(const Case& k, uint64_t seed) {
  using A = acc_t<T>;
  emu::Rng rng(seed);
  const int64_t R = k.rows, C = k.cols, S = C + k.pad;
  const int off = k.offset == 1 ? 1 : 0, toff = k.offset != 0 ? 1 : 0;
  // Inputs: mostly moderate logits, a few extremes with hard targets (exact cancellation cases).
  std::vector<double> x(R > 0 ? (R - 1) * S + C : 0, 0.0), y(x.size(), 0.0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double u = rng.uniform();
      const int64_t i = r * S + c;
      if (u < 0.03) {
        x[i] = rng.uniform() < 0.5 ? -1e4 : 1e4;
        y[i] = rng.uniform() < 0.5 ? 0.0 : 1.0;
      } else if (u < 0.06) {
        x[i] = rng.uniform() < 0.5 ? -30.0 : 30.0;
        y[i] = rng.uniform() < 0.5 ? 0.0 : 1.0;
      } else {
        x[i] = rng.uniform(-8, 8);
        y[i] = rng.uniform();
      }
    }
  const Operand w = make_weight(k.wmode, R, C, rng, 0.5, 2.0);
  const Operand pw = make_weight(k.row_mean ? kNoW : k.pwmode, R, C, rng, 0.5, 3.0);
  // Round the inputs to T first, so the reference sees exactly what the kernel sees.
  std::vector<T> xb = to_buffer<T>(x, off), yb = to_buffer<T>(y, toff);
  std::vector<T> wb = to_buffer<T>(w.host, off), pwb = to_buffer<T>(pw.host, off);

  BceParams<T> p;
  p.rows = R;
  p.cols = C;
  p.input = xb.data() + off;
  p.target = yb.data() + toff;
  p.input_row_stride = p.target_row_stride = S;
  if (!w.host.empty()) {
    p.weight = wb.data() + off;
    p.weight_row_stride = w.row_stride;
    p.weight_col_stride = w.col_stride;
  }
  if (!pw.host.empty()) {
    p.pos_weight = pwb.data() + off;
    p.pos_weight_row_stride = pw.row_stride;
    p.pos_weight_col_stride = pw.col_stride;
  }
  // Output buffers sized exactly (plus the offset), so AddressSanitizer sees any overrun.
  std::vector<T> grad(k.grad ? R * C + off : 0, T(-777.0f)), loss;
  const bool elementwise = k.reduction == mlc::kNone && !k.row_mean;
  if (elementwise) loss.assign(R * C + off, T(-777.0f));
  if (k.grad && R * C > 0) p.grad = grad.data() + off;
  if (elementwise && R * C > 0) p.loss = loss.data() + off;
  double grad_scale = k.row_mean ? 1.0 / C : 1.0;
  if (k.reduction == mlc::kMean && R * C > 0) grad_scale /= k.row_mean ? R : R * C;
  p.scales = mlc::loss_scales(k.reduction, R, C, k.row_mean);  // grad_scale is the oracle's own

  const mlc::cuda::BceLaunchShape s = mlc::cuda::bce_launch_shape(
      R, C, sizeof(T), k.reduction, k.row_mean, k.block, k.max_grid, k.tile_cols);
  EMU_CHECK(s.error == nullptr, "bce_launch_shape: %s", s.error);
  std::vector<A> partial(s.partials);
  std::vector<T> out(k.row_mean && k.reduction == mlc::kNone ? R : 1, T(-777.0f));
  mlc::cuda::bce_run(p, s, partial.data(), out.data(), emu_launch);

  // Reference, from the T-rounded operands.
  const double tol = emu::tolerance<T>();
  std::vector<double> row_sum(R, 0.0), row_mag(R, 0.0);
  char where[256];
  std::snprintf(where, sizeof where,
                "%s %s R=%" PRId64 " C=%" PRId64 " w=%s pw=%s red=%d off=%d pad=%" PRId64
                " block=%d tile=%" PRId64,
                emu::type_name<T>(), k.row_mean ? "soft_margin" : "bce", R, C, wmode_name(k.wmode),
                wmode_name(k.pwmode), k.reduction, k.offset, k.pad, k.block, s.tiles.cols);
  int bad = 0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double xv = as_double(xb[off + r * S + c]), yv = as_double(yb[toff + r * S + c]);
      const double wv = p.weight ? as_double(p.weight[r * w.row_stride + c * w.col_stride]) : 1.0;
      const double pv =
          p.pos_weight ? as_double(p.pos_weight[r * pw.row_stride + c * pw.col_stride]) : 1.0;
      double l, g;
      bce_reference(xv, yv, wv, pv, l, g);
      // Size of the terms the formula adds: the scale of the rounding error of an fp32 evaluation.
      const double lw = 1 + (pv - 1) * yv;
      const double lmag = std::fabs(wv) * (std::fabs((1 - yv) * xv) + std::fabs(lw) * (std::fabs(xv) + 1));
      const double gmag = std::fabs(wv) * (std::fabs(lw) + std::fabs(pv * yv));
      row_sum[r] += l;
      row_mag[r] += lmag;
      if (k.grad) {
        const double got = as_double(grad[off + r * C + c]), want = g * grad_scale;
        if (!matches<T>(got, want, tol, 8 * tol * gmag * grad_scale) && bad++ < 3)
          EMU_CHECK(false, "%s grad[%" PRId64 ",%" PRId64 "] = %.9g, want %.9g", where, r, c, got, want);
      }
      if (elementwise) {
        const double got = as_double(loss[off + r * C + c]);
        if (!matches<T>(got, l, tol, 8 * tol * lmag) && bad++ < 3)
          EMU_CHECK(false, "%s loss[%" PRId64 ",%" PRId64 "] = %.9g, want %.9g", where, r, c, got, l);
      }
    }
  EMU_CHECK(bad == 0, "%s: %d elementwise mismatches", where, bad);
  // Accumulation in fp32 over many terms: allow sqrt-ish growth through a generous factor.
  const double sum_tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
  if (k.reduction == mlc::kNone && k.row_mean) {
    for (int64_t r = 0; r < R; ++r) {
      const double got = as_double(out[r]), want = row_sum[r] / C;
      EMU_CHECK(matches<T>(got, want, tol, sum_tol * row_mag[r] / C), "%s row %" PRId64 ": %.9g, want %.9g",
                where, r, got, want);
    }
  } else if (k.reduction != mlc::kNone) {
    double total = 0, mag = 0;
    for (int64_t r = 0; r < R; ++r) total += row_sum[r], mag += row_mag[r];
    if (k.row_mean) total /= C, mag /= C;
    if (k.reduction == mlc::kMean) {
      const double n = k.row_mean ? R : R * C;
      total /= n;
      mag /= n;
    }
    const double got = as_double(out[0]);
    EMU_CHECK(matches<T>(got, total, tol, sum_tol * mag), "%s total %.12g, want %.12g", where, got,
              total);
  }
  if (k.repeat) {  // same inputs, same grid: bitwise the same outputs
    std::vector<T> out2(out.size(), T(-777.0f)), grad2(grad.size(), T(-777.0f));
    BceParams<T> p2 = p;
    if (p.grad) p2.grad = grad2.data() + off;
    std::vector<T> grad1 = grad;
    mlc::cuda::bce_run(p2, s, partial.data(), out2.data(), emu_launch);
    EMU_CHECK(std::memcmp(out.data(), out2.data(), out.size() * sizeof(T)) == 0 &&
                  (!p.grad || std::memcmp(grad1.data() + off, grad2.data() + off,
                                          (grad.size() - off) * sizeof(T)) == 0),
              "%s: second run differs", where);
  }
}

// Every shape bce_launch_shape gives the launcher (block kBlock, any grid cap a device gives) must
// be one a GPU accepts.
void check_launch_shapes() {
  for (int elem_size : {2, 4, 8})
    for (int64_t rows : {int64_t(0), int64_t(1), int64_t(1000), int64_t(1) << 31})
      for (int64_t cols : {int64_t(0), int64_t(1), int64_t(16), int64_t(129), int64_t(4097),
                           int64_t(1) << 31})
        for (int64_t max_grid : {int64_t(1), int64_t(1056), int64_t(8) << 10})
          for (int red : {mlc::kNone, mlc::kMean, mlc::kSum})
            for (bool row_mean : {false, true}) {
              const auto s = mlc::cuda::bce_launch_shape(rows, cols, elem_size, red, row_mean,
                                                         mlc::cuda::kBlock, max_grid);
              EMU_CHECK(s.error == nullptr, "elem %d rows=%" PRId64 " cols=%" PRId64 ": %s",
                        elem_size, rows, cols, s.error);
            }
}

// Short rows (cols below the tile width) share a block: 4096x128 and 65536x16 get tiles of as
// many elements, as many tiles, and as many threads at work a tile, with as many 128-bit accesses
// each, as 256x4096 and one row of 2^20 get, so they move memory as a long-row problem does.
void check_short_row_tiles() {
  using mlc::cuda::kBlock;
  for (int elem_size : {2, 4, 8})
    for (int red : {mlc::kNone, mlc::kMean, mlc::kSum})
      for (bool row_mean : {false, true}) {
        const int64_t vec = 16 / elem_size;
        const auto shape = [&](int64_t rows, int64_t cols) {
          return mlc::cuda::bce_launch_shape(rows, cols, elem_size, red, row_mean, kBlock, 1056);
        };
        const auto ref = shape(1, int64_t(1) << 20);
        EMU_CHECK(!ref.short_rows && ref.tiles.rows == 1 && ref.tiles.group == kBlock,
                  "elem %d: one long row is not one row segment a tile", elem_size);
        for (int64_t cols : {int64_t(4096), int64_t(128), int64_t(16)}) {
          const int64_t rows = (int64_t(1) << 20) / cols;
          const auto s = shape(rows, cols);
          const mlc::cuda::BceTiles& t = s.tiles;
          const int64_t groups = kBlock / t.group, seg = cols < t.cols ? cols : t.cols;
          char where[96];
          std::snprintf(where, sizeof where, "elem %d %" PRId64 "x%" PRId64 " (group %d, %" PRId64
                        " rows a tile)", elem_size, rows, cols, t.group, t.rows);
          EMU_CHECK(kBlock % t.group == 0 && t.rows % groups == 0 && (t.rows == 1 || t.per_row == 1),
                    "%s: not whole rows in whole groups", where);
          EMU_CHECK(t.rows * seg == ref.tiles.cols && t.count == ref.tiles.count && s.grid == ref.grid,
                    "%s: %" PRId64 " elements a tile, %" PRId64 " tiles; one long row: %" PRId64
                    ", %" PRId64, where, t.rows * seg, t.count, ref.tiles.cols, ref.tiles.count);
          // Every lane of a group has the same number of 128-bit accesses a row, at most 4, and
          // exactly one while a row fits in a warp (a warp's accesses are consecutive).
          const int64_t accesses = seg / vec;
          EMU_CHECK(accesses % t.group == 0 && accesses / t.group <= 4 &&
                        (t.group >= 32 || accesses == t.group),
                    "%s: lanes with unequal work", where);
        }
      }
}

// Short rows (several rows a tile): odd row counts (the last tile partly past the end), cols 1,
// odd and padded rows (per-row alignment: 128-bit or scalar), every weight / pos_weight
// broadcast, the launcher's block and a small one, several tiles a block.
template <class T>
void run_short_rows(bool small, uint64_t& seed) {
  struct Shape { int64_t rows, cols, pad; int block; int64_t max_grid; };
  // Groups of 1 to 32 lanes (a warp segment) and of 2 or 4 warps (600 and 1000 columns, block 256).
  std::vector<Shape> shapes = {{300, 16, 0, 256, 3}, {70, 128, 0, 256, 2}, {45, 1, 0, 64, 3},
                               {33, 5, 3, 64, 2},    {19, 100, 1, 64, 4},  {130, 24, 8, 64, 3},
                               {37, 600, 2, 256, 3}, {21, 1000, 0, 256, 2}};
  if (small) shapes = {{300, 16, 0, 256, 2}, {33, 5, 3, 64, 2}, {37, 600, 2, 256, 2}};
  int i = 0;
  for (const Shape& sh : shapes)
    for (int red : {mlc::kNone, mlc::kMean, mlc::kSum})
      for (bool row_mean : {false, true}) {
        Case k;
        k.rows = sh.rows;
        k.cols = sh.cols;
        k.pad = sh.pad;
        k.block = sh.block;
        k.max_grid = sh.max_grid;
        k.reduction = red;
        k.row_mean = row_mean;
        // (C,) weight / pos_weight first: the broadcasts the plan cannot flatten.
        k.wmode = (kPerCol + i) % kWModes;
        k.pwmode = i % 3 == 2 ? kFull : kPerCol;
        k.offset = i % 3;
        k.grad = i % 4 != 3;
        k.repeat = i % 3 == 0;
        ++i;
        const auto s = mlc::cuda::bce_launch_shape(k.rows, k.cols, sizeof(T), red, row_mean,
                                                   k.block, k.max_grid);
        EMU_CHECK(s.short_rows && s.tiles.rows > 1 && s.tiles.count < k.rows,
                  "%" PRId64 "x%" PRId64 ": not several rows a tile", k.rows, k.cols);
        run_case<T>(k, seed++);
      }
}

// small (sanitizer builds): every shape for float, a few for the 2-byte types, and the weight x
// pos_weight pairs on the diagonal only; one OS thread per CUDA thread is slow under TSan.
template <class T>
void run_all(bool small, uint64_t& seed) {
  struct Shape { int64_t rows, cols, tile_cols, pad; };
  std::vector<Shape> shapes = {
      {1, 1, 0, 0},  {1, 31, 0, 0},   {3, 33, 0, 0},  {2, 64, 0, 0},
      {5, 200, 0, 3}, {1, 1000, 64, 0}, {17, 8, 0, 0}, {0, 5, 0, 0}, {3, 0, 0, 0}};
  if (!small) {
    shapes.push_back({4, 1500, 0, 0});  // > one default tile per row (block 64)
    shapes.push_back({2, 333, 40, 1});
  } else if (!std::is_same_v<T, float>) {
    shapes = {{1, 31, 0, 0}, {3, 33, 0, 0}, {5, 200, 0, 3}, {1, 1000, 64, 0}};
  }
  int i = 0;
  for (const Shape& sh : shapes)
    for (int red : {mlc::kNone, mlc::kMean, mlc::kSum})
      for (bool row_mean : {false, true}) {
        Case k;
        k.rows = sh.rows;
        k.cols = sh.cols;
        k.tile_cols = sh.tile_cols;
        k.pad = sh.pad;
        k.reduction = red;
        k.row_mean = row_mean;
        k.wmode = i % kWModes;
        k.pwmode = (i / kWModes + i) % kWModes;
        k.offset = (i / 2) % 3;
        k.grad = i % 7 != 3;
        k.max_grid = (i % 3 == 0) ? 1 : (small ? 2 : 3);
        k.repeat = i % 5 == 0;
        ++i;
        run_case<T>(k, seed++);
      }
  if (std::is_same_v<T, float>) {  // every weight x pos_weight broadcast pair, aligned and not
    for (int wm = 0; wm < kWModes; ++wm)
      for (int pm = 0; pm < kWModes; ++pm) {
        if (small && pm != wm && pm != (wm + 1) % kWModes) continue;
        Case k;
        k.rows = 3;
        k.cols = small ? 36 : 70;
        k.wmode = wm;
        k.pwmode = pm;
        k.reduction = mlc::kSum;
        k.offset = (wm + pm) % 2;
        run_case<T>(k, seed++);
      }
    if (!small) {  // block sizes: one warp, and the launcher's 256
      for (int block : {32, 256}) {
        Case k;
        k.rows = 3;
        k.cols = 2100;
        k.block = block;
        k.reduction = mlc::kMean;
        k.wmode = kPerCol;
        run_case<T>(k, seed++);
        k.row_mean = true;
        k.reduction = mlc::kNone;
        run_case<T>(k, seed++);
      }
    }
  }
}

// bce_chunk_'s CSR target (BceParams::csr): columns [0, C) of the logits are classes
// [first, first + C) of rows whose positives are given as sorted class indices over more classes
// than the chunk has. The gradient overwrites the logits (as the op does) and nothing is scaled.
// The oracle densifies the target itself (a position is its positive's value, 1 without values,
// else 0) and applies bce_reference.
struct CsrCase {
  int64_t rows = 3, cols = 40, first = 0;
  bool values = false;
  int pwmode = kNoW;  // kNoW, kPerCol (the chunk's slice of a (C,) pos_weight), kPerRow, kScalar
  int reduction = mlc::kSum;
  bool row_mean = false;  // with kNone: the rows' sums
  int offset = 0;         // 1: logits start one element past 16-byte alignment (scalar path)
  int block = 64;
  int64_t tile_cols = 0;
  int64_t max_grid = 3;
};

template <class T>
void run_csr_case(const CsrCase& k, uint64_t seed) {
  using A = acc_t<T>;
  emu::Rng rng(seed);
  const int64_t R = k.rows, C = k.cols, first = k.first, classes = first + C + 9;
  // Positives: random ones (some rows none, some dense), plus the chunk's borders (first - 1,
  // first, first + C - 1, first + C) and the 4- and 2-lane vector borders inside it.
  std::vector<int64_t> indices, offsets = {0};
  std::vector<double> values;
  std::vector<double> y(R * C, 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const double density = r % 4 == 1 ? 0.0 : (r % 4 == 3 ? 0.6 : 0.08);
    for (int64_t cls = 0; cls < classes; ++cls) {
      const int64_t c = cls - first;
      const bool border = r % 4 == 2 && (cls == first - 1 || c == 0 || c == C - 1 || c == C ||
                                         (c > 0 && c < C && (c % 4 == 0 || c % 4 == 3)));
      if (!border && rng.uniform() >= density) continue;
      const double v = k.values ? std::round(rng.uniform() * 8) / 8 : 1.0;  // exact in any T
      indices.push_back(cls);
      values.push_back(v);
      if (c >= 0 && c < C) y[r * C + c] = v;
    }
    offsets.push_back(static_cast<int64_t>(indices.size()));
  }
  std::vector<double> x(R * C);
  for (double& v : x) {
    const double u = rng.uniform();
    v = u < 0.03 ? (rng.uniform() < 0.5 ? -1e4 : 1e4) : rng.uniform(-8, 8);
  }
  const Operand pw = make_weight(k.pwmode, R, C, rng, 0.5, 3.0);
  std::vector<T> xb = to_buffer<T>(x, k.offset), vb = to_buffer<T>(values, 0);
  std::vector<T> pwb = to_buffer<T>(pw.host, 0);
  const std::vector<T> x0 = xb;

  BceParams<T> p;
  p.rows = R;
  p.cols = C;
  p.input = xb.data() + k.offset;
  p.input_row_stride = C;
  if (R * C > 0) p.grad = xb.data() + k.offset;  // in place, as bce_chunk_
  p.csr.indices = indices.data();
  p.csr.offsets = offsets.data();
  p.csr.values = k.values ? vb.data() : nullptr;
  p.csr.nnz = static_cast<int64_t>(indices.size());
  p.csr.first = first;
  if (!pw.host.empty()) {
    p.pos_weight = pwb.data();
    p.pos_weight_row_stride = pw.row_stride;
    p.pos_weight_col_stride = pw.col_stride;
  }
  const bool elementwise = k.reduction == mlc::kNone && !k.row_mean;
  std::vector<T> loss(elementwise ? R * C : 0, T(-777.0f));
  if (elementwise && R * C > 0) p.loss = loss.data();
  p.scales = mlc::loss_scales(mlc::kSum, R, C, false);  // the plan's: unscaled

  const auto s = mlc::cuda::bce_launch_shape(R, C, sizeof(T), k.reduction, k.row_mean, k.block,
                                             k.max_grid, k.tile_cols);
  EMU_CHECK(s.error == nullptr, "bce_launch_shape: %s", s.error);
  std::vector<A> partial(s.partials);
  std::vector<T> out(k.row_mean && k.reduction == mlc::kNone ? R : 1, T(-777.0f));
  mlc::cuda::bce_run(p, s, partial.data(), out.data(), emu_launch);

  char where[200];
  std::snprintf(where, sizeof where,
                "csr %s R=%" PRId64 " C=%" PRId64 " first=%" PRId64 " values=%d pw=%s red=%d "
                "row_mean=%d off=%d block=%d tile=%" PRId64 " short=%d",
                emu::type_name<T>(), R, C, first, k.values, wmode_name(k.pwmode), k.reduction,
                k.row_mean, k.offset, k.block, s.tiles.cols, s.short_rows);
  const double tol = emu::tolerance<T>();
  double total = 0, mag = 0;
  int bad = 0;
  for (int64_t r = 0; r < R; ++r) {
    double row = 0, row_mag = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double xv = as_double(x0[k.offset + r * C + c]), yv = y[r * C + c];
      const double pv = pw.host.empty() ? 1.0 : as_double(pwb[r * pw.row_stride + c * pw.col_stride]);
      double l, g;
      bce_reference(xv, yv, 1.0, pv, l, g);
      const double lw = 1 + (pv - 1) * yv;
      const double lmag = std::fabs((1 - yv) * xv) + std::fabs(lw) * (std::fabs(xv) + 1);
      row += l;
      row_mag += lmag;
      const double got = as_double(xb[k.offset + r * C + c]);
      if (!matches<T>(got, g, tol, 8 * tol * (std::fabs(lw) + std::fabs(pv * yv))) && bad++ < 3)
        EMU_CHECK(false, "%s grad[%" PRId64 ",%" PRId64 "] = %.9g, want %.9g", where, r, c, got, g);
      if (elementwise) {
        const double gl = as_double(loss[r * C + c]);
        if (!matches<T>(gl, l, tol, 8 * tol * lmag) && bad++ < 3)
          EMU_CHECK(false, "%s loss[%" PRId64 ",%" PRId64 "] = %.9g, want %.9g", where, r, c, gl, l);
      }
    }
    const double sum_tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
    if (k.row_mean && k.reduction == mlc::kNone) {
      EMU_CHECK(matches<T>(as_double(out[r]), row, tol, sum_tol * row_mag),
                "%s row %" PRId64 ": %.9g, want %.9g", where, r, as_double(out[r]), row);
    }
    total += row;
    mag += row_mag;
  }
  EMU_CHECK(bad == 0, "%s: %d elementwise mismatches", where, bad);
  if (k.reduction == mlc::kSum) {
    const double sum_tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
    EMU_CHECK(matches<T>(as_double(out[0]), total, tol, sum_tol * mag), "%s total %.12g, want %.12g",
              where, as_double(out[0]), total);
  }
}

template <class T>
void run_csr(bool small, uint64_t& seed) {
  struct Shape { int64_t rows, cols, first, tile_cols; };
  std::vector<Shape> shapes = {{4, 40, 0, 0},  {5, 37, 13, 0}, {1, 8, 3, 0}, {8, 130, 100, 32},
                               {0, 5, 2, 0},   {3, 0, 4, 0},   {4, 1, 6, 0}};
  if (!small) shapes.push_back({4, 1500, 7, 0});  // > one default tile per row (block 64)
  int i = 0;
  for (const Shape& sh : shapes)
    for (int red : {mlc::kNone, mlc::kSum})
      for (bool row_mean : {false, true}) {
        if (small && i % 2) {
          ++i;
          continue;
        }
        CsrCase k;
        k.rows = sh.rows;
        k.cols = sh.cols;
        k.first = sh.first;
        k.tile_cols = sh.tile_cols;
        k.reduction = red;
        k.row_mean = row_mean;
        k.values = i % 3 != 0;
        const int pwmodes[] = {kNoW, kPerCol, kPerRow, kScalar};
        k.pwmode = pwmodes[i % 4];
        k.offset = (i / 4) % 2;
        k.max_grid = i % 3 == 0 ? 1 : 3;
        ++i;
        run_csr_case<T>(k, seed++);
      }
}

// The modulated member (focal / asymmetric, csrc/math/bce_variants.h) through the same kernels,
// against an oracle written here in long double (which holds exp(1e4), so no stable rewriting).
struct ModArgs {
  double gp, gn, ap, an, clip, eps, ls;
  bool detach;
};

// Loss and d loss / dx of one element, and the size of the terms summed (for the tolerance).
void modulated_oracle(long double x, long double y, long double w, const ModArgs& a,
                      long double& loss, long double& grad, double& lmag, double& gmag) {
  using L = long double;
  y = y * (1 - L(a.ls)) + L(a.ls) / 2;
  const L p = 1 / (1 + std::exp(-x)), q = 1 / (1 + std::exp(x));
  const L clip = a.clip, eps = a.eps;
  L lpos, dlpos, lneg, dlneg;
  if (a.eps == 0) {
    lpos = -std::log1p(std::exp(-x));
    dlpos = q;
    if (a.clip == 0) {
      lneg = -std::log1p(std::exp(x));
      dlneg = -p;
    } else {
      const L u = std::min(q + clip, L(1));
      lneg = std::log(u);
      dlneg = p > clip ? -p * q / u : 0;
    }
  } else {
    lpos = std::log(std::max(p, eps));
    dlpos = p >= eps ? q : 0;
    const L u = a.clip == 0 ? q : std::min(q + clip, L(1));
    lneg = std::log(std::max(u, eps));
    dlneg = (u >= eps && p >= clip) ? -p * q / u : 0;
  }
  const L ce = -(y * lpos + (1 - y) * lneg), dce = -(y * dlpos + (1 - y) * dlneg);
  const L b = y * q + (1 - y) * std::max(p - clip, L(0));  // 1 - p_t
  const L db = -y * p * q + (1 - y) * (p > clip ? p * q : 0);
  const L gt = a.gp * y + a.gn * (1 - y);
  const L fw = std::pow(b, gt);
  const L dfw = (b > 0 && gt > 0) ? gt * std::pow(b, gt - 1) * db : 0;
  const L at = a.ap * y + a.an * (1 - y);
  loss = w * at * ce * fw;
  grad = w * at * (dce * fw + (a.detach ? 0 : ce * dfw));
  // b = p - clip for a negative near the clip cancels: b's relative error is ulp(p) / b, and b^gt
  // multiplies it by gt.
  const L cond = b > 0 ? (y * q + (1 - y) * p) / b : 1;
  const double k = static_cast<double>(std::fabs(w * at) * (1 + gt * cond));
  lmag = k * static_cast<double>(fw * (std::fabs(y * lpos) + std::fabs((1 - y) * lneg) + 1));
  gmag = k * static_cast<double>(fw * (std::fabs(y * dlpos) + std::fabs((1 - y) * dlneg) + 1) +
                                 std::fabs(ce * dfw));
}

template <class T>
void run_modulated_case(int64_t R, int64_t C, int reduction, int wmode, int offset,
                        const ModArgs& a, int64_t max_grid, uint64_t seed) {
  using A = acc_t<T>;
  emu::Rng rng(seed);
  const int off = offset;
  std::vector<double> x(R * C), y(R * C);
  for (int64_t i = 0; i < R * C; ++i) {
    const double u = rng.uniform();
    x[i] = u < 0.04 ? (rng.uniform() < 0.5 ? -1e4 : 1e4)
                    : (u < 0.08 ? (rng.uniform() < 0.5 ? -30.0 : 30.0) : rng.uniform(-8, 8));
    y[i] = u < 0.5 ? (rng.uniform() < 0.3 ? 1.0 : 0.0) : rng.uniform();
  }
  const Operand w = make_weight(wmode, R, C, rng, 0.5, 2.0);
  std::vector<T> xb = to_buffer<T>(x, off), yb = to_buffer<T>(y, off), wb = to_buffer<T>(w.host, off);
  BceParams<T> p;
  p.rows = R;
  p.cols = C;
  p.input = xb.data() + off;
  p.target = yb.data() + off;
  p.input_row_stride = p.target_row_stride = C;
  if (!w.host.empty()) {
    p.weight = wb.data() + off;
    p.weight_row_stride = w.row_stride;
    p.weight_col_stride = w.col_stride;
  }
  using M = mlc::math::BceModulated;
  p.variant.kind = mlc::kBceModulated;
  p.variant.param[M::kGammaPos] = a.gp;
  p.variant.param[M::kGammaNeg] = a.gn;
  p.variant.param[M::kAlphaPos] = a.ap;
  p.variant.param[M::kAlphaNeg] = a.an;
  p.variant.param[M::kClip] = a.clip;
  p.variant.param[M::kEps] = a.eps;
  p.variant.param[M::kSmoothing] = a.ls;
  p.variant.param[M::kDetach] = a.detach ? 1.0 : 0.0;
  std::vector<T> grad(R * C + off, T(-777.0f)), loss;
  if (reduction == mlc::kNone) loss.assign(R * C + off, T(-777.0f));
  if (R * C > 0) p.grad = grad.data() + off;
  if (reduction == mlc::kNone && R * C > 0) p.loss = loss.data() + off;
  const double grad_scale = reduction == mlc::kMean ? 1.0 / static_cast<double>(R * C) : 1.0;
  p.scales = mlc::loss_scales(reduction, R, C, false);
  const mlc::cuda::BceLaunchShape s =
      mlc::cuda::bce_launch_shape(R, C, sizeof(T), reduction, false, 64, max_grid, 0);
  std::vector<A> partial(s.partials);
  std::vector<T> out(1, T(-777.0f));
  mlc::cuda::bce_run(p, s, partial.data(), out.data(), emu_launch);

  const double tol = emu::tolerance<T>();
  // Focusing weights make values far below 1; half stores them to 2^-24 absolute (subnormals).
  const double tiny = std::is_same_v<T, Half> ? 0x1p-24 : 0.0;
  char where[256];
  std::snprintf(where, sizeof where,
                "%s modulated R=%" PRId64 " C=%" PRId64 " w=%s red=%d off=%d gp=%g gn=%g a=%g/%g "
                "clip=%g eps=%g ls=%g detach=%d",
                emu::type_name<T>(), R, C, wmode_name(wmode), reduction, off, a.gp, a.gn, a.ap,
                a.an, a.clip, a.eps, a.ls, a.detach);
  int bad = 0;
  long double total = 0;
  double total_mag = 0;
  for (int64_t i = 0; i < R * C; ++i) {
    const int64_t r = i / C, c = i % C;
    const double wv = p.weight ? as_double(p.weight[r * w.row_stride + c * w.col_stride]) : 1.0;
    long double l, g;
    double lmag, gmag;
    modulated_oracle(as_double(xb[off + i]), as_double(yb[off + i]), wv, a, l, g, lmag, gmag);
    total += l;
    total_mag += lmag;
    const double got_g = as_double(grad[off + i]), want_g = static_cast<double>(g) * grad_scale;
    if (!matches<T>(got_g, want_g, tol, 8 * tol * gmag * grad_scale + tiny) && bad++ < 3)
      EMU_CHECK(false, "%s grad[%" PRId64 "] = %.9g, want %.9g (x=%g y=%g)", where, i, got_g,
                want_g, as_double(xb[off + i]), as_double(yb[off + i]));
    if (reduction == mlc::kNone) {
      const double got = as_double(loss[off + i]);
      if (!matches<T>(got, static_cast<double>(l), tol, 8 * tol * lmag + tiny) && bad++ < 3)
        EMU_CHECK(false, "%s loss[%" PRId64 "] = %.9g, want %.9g", where, i, got,
                  static_cast<double>(l));
    }
  }
  EMU_CHECK(bad == 0, "%s: %d elementwise mismatches", where, bad);
  if (reduction != mlc::kNone) {
    const double n = reduction == mlc::kMean ? static_cast<double>(R * C) : 1.0;
    const double got = as_double(out[0]), want = static_cast<double>(total) / n;
    const double sum_tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
    EMU_CHECK(matches<T>(got, want, tol, sum_tol * total_mag / n), "%s total %.12g, want %.12g",
              where, got, want);
  }
}

template <class T>
void run_modulated(bool small, uint64_t& seed) {
  const ModArgs args[] = {
      {2, 2, 0.25, 0.75, 0, 0, 0, false},        // focal (torchvision defaults)
      {0.5, 0.5, 1, 1, 0, 0, 0.1, false},        // focal, gamma < 1, no alpha, label smoothing
      {1, 4, 1, 1, 0.05, 0, 0, false},           // ASL defaults, stable form
      {1, 4, 1, 1, 0.05, 1e-8, 0, false},        // ASL, the reference's clamped logs
      {0, 2, 1, 1, 0.2, 0, 0.2, true},           // ASL, focusing weight detached, smoothing
  };
  int i = 0;
  for (const ModArgs& a : args)
    for (int red : {mlc::kNone, mlc::kMean, mlc::kSum}) {
      if (small && (i % 3) != 0) {
        ++i;
        continue;
      }
      const int64_t R = (i % 2) ? 3 : 1, C = (i % 4) ? 77 : 300;
      run_modulated_case<T>(R, C, red, i % kWModes, (i / 2) % 2, a, i % 3 == 0 ? 1 : 3, seed++);
      // Short rows, several a tile, with a (C,) weight.
      run_modulated_case<T>(i % 2 ? 150 : 41, i % 2 ? 16 : 3, red, kPerCol, i % 2, a, 3, seed++);
      ++i;
    }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "full";
  uint64_t seed = 1;
  if (mode == "fault-sync") {  // block sums over several warps, both reduction kernels
    Case k;
    k.rows = 6;
    k.cols = 300;
    k.block = 128;
    k.reduction = mlc::kSum;
    run_case<float>(k, seed++);
    k.row_mean = true;
    k.reduction = mlc::kNone;
    run_case<float>(k, seed++);
    return emu::finish("test_bce_emu fault-sync");
  }
  if (mode == "fault-reuse") {  // many block sums per block: tiles of 64 columns, 2 blocks
    Case k;
    k.rows = 8;
    k.cols = 300;
    k.block = 128;
    k.tile_cols = 64;
    k.max_grid = 2;
    k.row_mean = true;
    k.reduction = mlc::kNone;
    run_case<float>(k, seed++);
    return emu::finish("test_bce_emu fault-reuse");
  }
  if (mode == "fault-group") {  // soft margin 'none' on rows of two warps each (group 64)
    Case k;
    k.rows = 12;
    k.cols = 600;
    k.block = 256;
    k.max_grid = 2;
    k.row_mean = true;
    k.reduction = mlc::kNone;
    run_case<float>(k, seed++);
    return emu::finish("test_bce_emu fault-group");
  }
  if (mode == "fault-tail") {  // a single aligned row whose length is not a multiple of 4
    Case k;
    k.rows = 1;
    k.cols = 37;
    k.reduction = mlc::kNone;
    run_case<float>(k, seed++);
    return emu::finish("test_bce_emu fault-tail");
  }
  if (mode == "csr") {  // the CSR-target cases alone
    run_csr<float>(false, seed);
    run_csr<double>(false, seed);
    return emu::finish("test_bce_emu csr");
  }
  const bool small = mode == "small";
  check_launch_shapes();
  check_short_row_tiles();
  run_all<float>(small, seed);
  if (!small) run_all<double>(small, seed);
  if (!small) run_all<Half>(small, seed);
  run_all<BF16>(small, seed);
  run_short_rows<float>(small, seed);
  if (!small) run_short_rows<double>(small, seed);
  if (!small) run_short_rows<Half>(small, seed);
  run_short_rows<BF16>(small, seed);
  run_modulated<float>(small, seed);
  run_modulated<double>(small, seed);
  if (!small) run_modulated<Half>(small, seed);
  run_modulated<BF16>(small, seed);
  run_csr<float>(small, seed);
  run_csr<double>(small, seed);
  return emu::finish(small ? "test_bce_emu small" : "test_bce_emu full");
}
