// The SIMT emulation itself (simt_emu.h), on small kernels written for it: shuffles, barriers,
// dynamic shared memory, atomicAdd and the block order (full/small), and the kinds of bug it must
// stop (fault modes, each run by a CTest test that passes only when the failure appears):
//   fault-mask        a warp shuffle whose mask leaves out lanes that are converged at the call
//   fault-divergent   a __syncthreads that only some threads of the block reach
//   fault-interblock  a block that reads what another block of the same launch writes
//   fault-smem        a launch with more shared memory than a GPU gives a block
//   test_harness_emu [full|small|fault-*]
#include "simt_emu.h"  // first: defines the CUDA keywords

#include <cinttypes>
#include <string>
#include <vector>

#include "emu_check.h"

namespace {

__global__ void selftest_kernel(const float* in, float* out, float* total, unsigned* block_runs) {
  float* dyn = mlc_dynamic_smem<float>();
  const unsigned t = threadIdx.x;
  dyn[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  float v = dyn[(t + 1) % blockDim.x];
  for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  const float lane0 = __shfl_sync(0xffffffffu, v + static_cast<float>(t % 32), 0);
  __syncwarp();
  out[blockIdx.x * blockDim.x + t] = v + lane0;
  if (t % 32 == 0) atomicAdd(total, v);
  atomicAdd(&block_runs[blockIdx.x], 1u);
}

// Block order: records which block ran when (blocks run one at a time).
inline std::vector<unsigned> g_order;
__global__ void order_kernel() {
  __syncthreads();
  if (threadIdx.x == 0) g_order.push_back(blockIdx.x);
}

void selftest() {
  const unsigned blocks = 3, threads = 64;
  std::vector<float> in(blocks * threads), out(in.size());
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 13);
  float total = 0;
  std::vector<unsigned> runs(blocks, 0);
  simt::launch(dim3(blocks), dim3(threads), threads * sizeof(float), selftest_kernel,
               static_cast<const float*>(in.data()), out.data(), &total, runs.data());
  double want_total = 0;
  for (unsigned b = 0; b < blocks; ++b) {
    EMU_CHECK(runs[b] == threads, "selftest: block %u ran %u threads", b, runs[b]);
    for (unsigned t = 0; t < threads; ++t) {
      float v = 0;
      for (unsigned l = 0; l < 32; ++l) v += in[b * threads + ((t / 32 * 32 + l + 1) % threads)];
      const float want = v + v;  // every lane's v is the same sum; lane 0 adds 0
      EMU_CHECK(out[b * threads + t] == want, "selftest out[%u,%u] = %g, want %g", b, t,
                out[b * threads + t], want);
      if (t % 32 == 0) want_total += v;
    }
  }
  EMU_CHECK(total == static_cast<float>(want_total), "selftest total %g, want %g", total, want_total);

  // Every block exactly once per launch, and never only in index order.
  for (int launch = 0; launch < 4; ++launch) {
    g_order.clear();
    simt::launch(dim3(5), dim3(32), 0, order_kernel);
    std::vector<unsigned> sorted = g_order;
    std::sort(sorted.begin(), sorted.end());
    EMU_CHECK(sorted == (std::vector<unsigned>{0, 1, 2, 3, 4}), "block order: not each block once");
    EMU_CHECK(!std::is_sorted(g_order.begin(), g_order.end()), "block order: index order in launch %d",
              launch);
  }
}

// ---- Planted faults.

__global__ void partial_mask_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0x0000ffffu, v, offset);
  out[threadIdx.x] = v;
}

__global__ void divergent_sync_kernel(float* out) {
  if (threadIdx.x < 32) {
    out[threadIdx.x] = 1.0f;
    __syncthreads();
  }
}

// Each block writes its partial sum; the last block by index then adds all partials, i.e. it
// assumes the other blocks have finished, which CUDA does not promise (blocks run in any order,
// or at the same time).
__global__ void last_block_sums_kernel(const float* in, int64_t n, float* partial, float* out) {
  if (threadIdx.x != 0) return;
  float s = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * 32; i < n && i < (blockIdx.x + 1) * 32; ++i) s += in[i];
  partial[blockIdx.x] = s;
  if (blockIdx.x == gridDim.x - 1) {
    float t = 0;
    for (unsigned b = 0; b < gridDim.x; ++b) t += partial[b];
    out[0] = t;
  }
}

int fault_interblock() {
  const unsigned blocks = 6;
  std::vector<float> in(blocks * 32);
  float want = 0;
  for (size_t i = 0; i < in.size(); ++i) want += in[i] = static_cast<float>(i % 7);
  auto run = [&] {
    std::vector<float> partial(blocks, 0.0f);
    float out = -1;
    simt::launch(dim3(blocks), dim3(32), 0, last_block_sums_kernel,
                 static_cast<const float*>(in.data()), static_cast<int64_t>(in.size()),
                 partial.data(), &out);
    return out;
  };
  simt::g_block_order = simt::BlockOrder::kForward;
  const float forward = run();
  std::printf("index order: total %g (want %g): the dependence does not show\n", forward, want);
  simt::g_block_order = simt::BlockOrder::kAlternate;  // the default
  for (int i = 0; i < 2; ++i) {
    const float got = run();
    EMU_CHECK(got == want, "inter-block dependence: total %g, want %g", got, want);
  }
  return emu::finish("test_harness_emu fault-interblock");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "full";
  std::vector<float> buf(64, 0.0f);
  if (mode == "fault-mask") {
    simt::launch(dim3(1), dim3(32), 0, partial_mask_kernel, buf.data());
  } else if (mode == "fault-divergent") {
    simt::launch(dim3(1), dim3(64), 0, divergent_sync_kernel, buf.data());
  } else if (mode == "fault-interblock") {
    return fault_interblock();
  } else if (mode == "fault-smem") {
    simt::launch(dim3(1), dim3(32), 48 * 1024 + 16, divergent_sync_kernel, buf.data());
  } else {
    selftest();
    return emu::finish(mode == "small" ? "test_harness_emu small" : "test_harness_emu full");
  }
  std::printf("%s: the emulation did not stop the kernel\n", mode.c_str());
  return 1;
}
