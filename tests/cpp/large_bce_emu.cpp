// Opt-in (CTest label `large`, `make cpp-test-large`): the BCE kernel on one problem of more than
// 2^31 elements, to prove 64-bit element offsets. BCE 'none' in bfloat16 over R x C = 2^31 + 65512
// elements, without 2^31 elements of input in memory:
//  - input and target are (R, C) views of a small periodic buffer: one 2 MiB memfd mapped again and
//    again, read-only, so element i holds base[i mod 2^20] and its offset really is i;
//  - the loss output is 4 GiB of anonymous memory reserved without backing, touched as written;
//  - every buffer sits between 8 GiB PROT_NONE guards: an offset that wraps at 2^31 (a 32-bit
//    element index) lands in a guard and stops the test with "out-of-bounds access".
// Every output element must be written, and sampled rows (all of the last 64) must match a long
// double reference (the definition, no csrc/math) times a per-row weight.
//   large_bce_emu [rows]   (rows defaults to 32765; fewer rows make a quick run below 2^31)
#include "simt_emu.h"  // first: defines the CUDA keywords for the kernel header

#include <cuda/bce_launch.cuh>

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <string>
#include <vector>

#include "emu_check.h"

namespace {

using emu::BF16;

constexpr int64_t kPeriod = int64_t(1) << 20;             // elements of the periodic input
constexpr size_t kGuard = size_t(8) << 30;                // bytes of PROT_NONE on each side

void on_segv(int, siginfo_t* info, void*) {
  char msg[160];
  const int n = std::snprintf(msg, sizeof msg, "out-of-bounds access at %p (a guard region: an "
                              "element offset wrapped or overran)\n", info->si_addr);
  (void)!write(2, msg, static_cast<size_t>(n));
  _exit(4);
}

// `bytes` of address space between two guards; the middle is left PROT_NONE for the caller.
char* reserve(size_t bytes) {
  void* p = mmap(nullptr, bytes + 2 * kGuard, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap reserve");
    std::exit(2);
  }
  return static_cast<char*>(p) + kGuard;
}

// A read-only view of `bytes` whose content repeats `period` (a page multiple) from memfd `fd`.
const char* periodic_view(int fd, size_t period, size_t bytes) {
  char* base = reserve(bytes);
  for (size_t off = 0; off < bytes; off += period) {
    if (mmap(base + off, period, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
      std::perror("mmap periodic");
      std::exit(2);
    }
  }
  return base;
}

int periodic_fd(const std::vector<BF16>& values) {
  const int fd = memfd_create("mlc_large", 0);
  const size_t bytes = values.size() * sizeof(BF16);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      write(fd, values.data(), bytes) != static_cast<ssize_t>(bytes)) {
    std::perror("memfd");
    std::exit(2);
  }
  return fd;
}

// BCE with logits of one element, from the definition (as in test_bce_emu.cpp).
long double bce_loss(long double x, long double y) {
  return (1 - y) * x + std::log1p(std::exp(-std::fabs(x))) + (x < 0 ? -x : 0.0L);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t R = argc > 1 ? std::stoll(argv[1]) : 32765, C = 65544;  // C: a multiple of 8
  const int64_t N = R * C;
  std::printf("large_bce_emu: %" PRId64 " x %" PRId64 " = %" PRId64 " elements (2^31 %s %" PRId64 ")\n",
              R, C, N, N >= (int64_t(1) << 31) ? "+" : "-",
              N >= (int64_t(1) << 31) ? N - (int64_t(1) << 31) : (int64_t(1) << 31) - N);
  std::fflush(stdout);  // the fault run ends in _exit
  struct sigaction sa = {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, nullptr);

  emu::Rng rng(11);
  std::vector<BF16> xs(kPeriod), ys(kPeriod);
  for (int64_t i = 0; i < kPeriod; ++i) {
    xs[i] = BF16(static_cast<float>(rng.uniform(-6, 6)));
    ys[i] = BF16(static_cast<float>(rng.uniform() < 0.5 ? 0.0 : rng.uniform()));
  }
  const size_t bytes = static_cast<size_t>(N) * sizeof(BF16);
  const size_t period = kPeriod * sizeof(BF16), mapped = (bytes + period - 1) / period * period;
  const BF16* x = reinterpret_cast<const BF16*>(periodic_view(periodic_fd(xs), period, mapped));
  const BF16* y = reinterpret_cast<const BF16*>(periodic_view(periodic_fd(ys), period, mapped));
  // Output: exactly N elements, then the guard (rounded up to a page, the rest stays PROT_NONE).
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  char* out_base = reserve((bytes + page - 1) / page * page);
  const size_t out_bytes = (bytes + page - 1) / page * page;
  if (mmap(out_base, out_bytes, PROT_READ | PROT_WRITE,
           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED) {
    std::perror("mmap out");
    return 2;
  }
  BF16* loss = reinterpret_cast<BF16*>(out_base);
  std::vector<BF16> w(R);  // per-row weight: 1 + (r mod 64) / 64, exact in bfloat16
  for (int64_t r = 0; r < R; ++r) w[r] = BF16(1.0f + static_cast<float>(r % 64) / 64.0f);

  mlc::BceParams<BF16> p;
  p.rows = R;
  p.cols = C;
  p.input = x;
  p.target = y;
  p.input_row_stride = p.target_row_stride = C;
  p.weight = w.data();
  p.weight_row_stride = 1;
  p.weight_col_stride = 0;
  p.loss = loss;
  const auto s = mlc::cuda::bce_launch_shape(R, C, sizeof(BF16), mlc::kNone, false, 256, 2);
  const auto t0 = std::chrono::steady_clock::now();
  mlc::cuda::bce_run(p, s, static_cast<float*>(nullptr), static_cast<BF16*>(nullptr),
                     [](auto kernel, int64_t grid, int block, auto... args) {
                       simt::launch(dim3(static_cast<unsigned>(grid)), dim3(static_cast<unsigned>(block)),
                                    0, kernel, args...);
                     });
  const auto t1 = std::chrono::steady_clock::now();

  // Every element written: the loss is > 0 everywhere here (|x| <= 6), and untouched memory reads
  // as 0. Then the values of every 97th row and of the last 64 rows (the elements past 2^31 are in
  // the last one): |got - w * ref| within bfloat16's rounding plus the fp32 evaluation, with ref
  // in long double from the definition (no csrc/math), so a write to the wrong row also shows.
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(loss);
  int64_t unwritten = 0;
  for (int64_t i = 0; i < N; ++i) unwritten += bits[i] == 0;
  EMU_CHECK(unwritten == 0, "%" PRId64 " elements not written", unwritten);
  std::vector<double> ref(kPeriod);
  for (int64_t i = 0; i < kPeriod; ++i)
    ref[i] = static_cast<double>(bce_loss(static_cast<float>(xs[i]), static_cast<float>(ys[i])));
  int64_t bad = 0, checked = 0;
  for (int64_t r = 0; r < R; ++r) {
    if (r % 97 != 0 && r < R - 64) continue;
    const double wr = static_cast<float>(w[r]);
    for (int64_t c = 0, i = r * C; c < C; ++c, ++i) {
      const double want = wr * ref[i & (kPeriod - 1)], got = static_cast<float>(loss[i]);
      ++checked;
      if (!(std::fabs(got - want) <= 8e-3 * std::fabs(want) + 1e-5) && bad++ < 5)
        EMU_CHECK(false, "loss[%" PRId64 "] (row %" PRId64 ") = %.6g, want %.6g", i, r, got, want);
    }
  }
  EMU_CHECK(bad == 0, "%" PRId64 " wrong elements of %" PRId64 " checked", bad, checked);
  const auto t2 = std::chrono::steady_clock::now();
  std::printf("kernel %.1f s, check %.1f s\n", std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double>(t2 - t1).count());
  return emu::finish("large_bce_emu");
}
