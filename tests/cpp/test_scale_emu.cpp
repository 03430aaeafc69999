// SIMT-emulated runs of csrc/cuda/scale_kernel.cuh (backward's in-place grad *= upstream, the
// upstream read on the device): every element must be T(float(grad) * u) exactly (double: the
// product), an upstream of exactly 1 must leave the buffer bit for bit as it was, and the 128-bit
// body / scalar tail split must cover every element of aligned and misaligned buffers once.
//   test_scale_emu [full|small]
#include "simt_emu.h"  // first: defines the CUDA keywords for the kernel header

#include <cuda/scale_kernel.cuh>

#include <cinttypes>
#include <cstring>
#include <limits>
#include <vector>

#include "emu_check.h"

namespace {

using emu::BF16;
using emu::Half;
using emu::to_t;
using mlc::cuda::acc_t;

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <class T>
void run_case(int64_t n, int offset, double u, int block, int64_t max_grid, emu::Rng& rng) {
  using A = acc_t<T>;
  // Room for a misaligned start; a guard element after the end must stay untouched.
  std::vector<T> storage(n + 16 + 1);
  T* grad = storage.data() + offset;
  for (int64_t i = 0; i < n; ++i) grad[i] = to_t<T>(rng.uniform(-3.0, 3.0));
  if (n > 3) grad[n / 2] = to_t<T>(std::numeric_limits<double>::infinity());
  if (n > 5) grad[n / 3] = to_t<T>(std::numeric_limits<double>::quiet_NaN());
  const T guard = to_t<T>(42.0);
  grad[n] = guard;
  const std::vector<T> before(grad, grad + n);
  const T upstream = to_t<T>(u);
  const int64_t grid = mlc::cuda::scale_grid(n, sizeof(T), block, max_grid);
  if (grid > 0) {
    simt::launch(dim3(static_cast<unsigned>(grid)), dim3(static_cast<unsigned>(block)), 0,
                 mlc::cuda::scale_by_device_scalar_kernel<T>, grad, &upstream, n);
  }
  const A ua = static_cast<A>(upstream);
  for (int64_t i = 0; i < n; ++i) {
    const T want = ua == A(1) ? before[i] : mlc::cuda::from_acc<T>(static_cast<A>(before[i]) * ua);
    const bool ok = same_bits(grad[i], want) ||
                    (std::isnan(static_cast<double>(static_cast<A>(grad[i]))) &&
                     std::isnan(static_cast<double>(static_cast<A>(want))));
    EMU_CHECK(ok, "%s n=%" PRId64 " offset=%d u=%g block=%d grid=%" PRId64 ": element %" PRId64,
              emu::type_name<T>(), n, offset, u, block, grid, i);
  }
  EMU_CHECK(same_bits(grad[n], guard), "%s n=%" PRId64 ": wrote past the end", emu::type_name<T>(),
            n);
}

template <class T>
void run_all(bool small, emu::Rng& rng) {
  const std::vector<int64_t> sizes =
      small ? std::vector<int64_t>{1, 9, 70} : std::vector<int64_t>{1, 2, 7, 8, 9, 31, 33, 257, 1000, 4099};
  const double ups[] = {1.0, 2.5, -0.5, 0.0, std::numeric_limits<double>::quiet_NaN(),
                        std::numeric_limits<double>::infinity()};
  for (int64_t n : sizes) {
    for (int offset : {0, 1}) {
      for (double u : ups) {
        run_case<T>(n, offset, u, 32, 3, rng);  // capped grid: blocks stride over the rest
        if (!small) run_case<T>(n, offset, u, 64, 1000, rng);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool small = emu::small_mode(argc, argv);
  emu::Rng rng(7);
  run_all<float>(small, rng);
  run_all<double>(small, rng);
  run_all<Half>(small, rng);
  run_all<BF16>(small, rng);
  return emu::finish(small ? "test_scale_emu small" : "test_scale_emu full");
}
