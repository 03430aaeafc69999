// CUDA binding of the fused multilabel margin kernel (margin_kernel.cuh): tensors -> MarginParams
// (through make_margin_plan, shared with the CPU kernel: checks, views, outputs, gradient scale),
// device guard, current stream, dtype dispatch, launch checks, and the out-of-range target record.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "../margin_plan.h"
#include "margin_launch.cuh"
#include "launch.h"

namespace mlc::cuda {
namespace {

// Out-of-range targets without a host sync (docs/design.md §2): the kernel records the first bad
// entry in the device's MarginTargetError; every call copies it, after its kernel and on its
// stream, into a pinned host mirror (the host does not wait). A call first looks at the mirror: a
// record there is raised (after waiting for the device, on this error path only, so that the mirror
// is complete) and cleared; take_margin_target_error (multilabel_cuda.check_errors()) waits for it.
struct ErrorRecord {
  std::once_flag once;
  std::atomic<bool> ready{false};
  MarginTargetError* device = nullptr;  // written by the kernels
  MarginTargetError* host = nullptr;    // pinned mirror, written by the copies
};

std::mutex g_error_mutex;  // the error path: read, clear, raise

ErrorRecord& record_slot(c10::DeviceIndex d) {
  static const int devices = c10::cuda::device_count();
  static const std::unique_ptr<ErrorRecord[]> records(new ErrorRecord[devices]);
  return records[d];
}

ErrorRecord& error_record(c10::DeviceIndex d) {
  ErrorRecord& rec = record_slot(d);
  std::call_once(rec.once, [&] {  // once per device and process, never freed
    const c10::cuda::CUDAGuard guard(d);
    C10_CUDA_CHECK(cudaMalloc(&rec.device, sizeof(MarginTargetError)));
    C10_CUDA_CHECK(cudaMemset(rec.device, 0, sizeof(MarginTargetError)));
    C10_CUDA_CHECK(cudaHostAlloc(&rec.host, sizeof(MarginTargetError), cudaHostAllocDefault));
    *rec.host = MarginTargetError{};
    // The memset ran on the legacy stream, which torch's non-blocking streams do not wait for.
    C10_CUDA_CHECK(cudaDeviceSynchronize());
    rec.ready = true;
  });
  return rec;
}

bool error_recorded(const ErrorRecord& rec) {
  return rec.host != nullptr && *static_cast<volatile const unsigned*>(&rec.host->claimed) != 0u;
}

// The message of device d's record, then cleared; "" when there is none. Waits for the device.
std::string take_error(c10::DeviceIndex d) {
  ErrorRecord& rec = error_record(d);
  const std::lock_guard<std::mutex> lock(g_error_mutex);
  const c10::cuda::CUDAGuard guard(d);
  // Every kernel's copy has reached the mirror. (Not c10's device_synchronize: under
  // torch.cuda.set_sync_debug_mode("error") that would replace the target error with its own.)
  C10_CUDA_CHECK(cudaDeviceSynchronize());
  if (!error_recorded(rec)) return "";
  const MarginTargetError e = *rec.host;
  *rec.host = MarginTargetError{};
  C10_CUDA_CHECK(cudaMemset(rec.device, 0, sizeof(MarginTargetError)));
  C10_CUDA_CHECK(cudaDeviceSynchronize());
  return margin_target_error_message(e) + " (recorded on cuda:" + std::to_string(d) +
         " by the kernel of an earlier call, whose loss and gradient are NaN in that row)";
}

// `take_margin_target_error() -> str`: every device's pending record (multilabel_cuda.check_errors).
std::string take_margin_target_error() {
  for (c10::DeviceIndex d = 0; d < c10::cuda::device_count(); ++d) {
    if (!record_slot(d).ready) continue;  // no margin call on that device yet
    std::string msg = take_error(d);
    if (!msg.empty()) return msg;
  }
  return "";
}

template <class T>
void margin_cuda_impl(MarginPlan& plan, MarginTargetError* error) {
  using A = acc_t<T>;
  MarginParams<T> p = plan.params<T>();
  p.error = error;
  const c10::DeviceIndex device = plan.input.device().index();
  const MarginLaunchShape s =
      margin_launch_shape<A>(p.rows, p.tcols, plan.per_row_loss, p.grad != nullptr, p.algo, kBlock,
                             max_grid(device));
  TORCH_CHECK(s.error == nullptr, "margin_cuda: invalid launch shape: ", s.error);
  const auto opts = plan.input.options();
  at::Tensor scratch = at::empty({s.scratch}, opts.dtype(at::kByte));
  at::Tensor partial = at::empty({s.partials}, opts.dtype(c10::CppTypeToScalarType<A>::value));
  T* out = plan.loss.mutable_data_ptr<T>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  margin_run(p, s, s.scratch > 0 ? scratch.mutable_data_ptr<uint8_t>() : nullptr,
             partial.mutable_data_ptr<A>(), out,
             [&](auto kernel, int64_t grid, int block, int64_t smem, auto... args) {
               kernel<<<static_cast<unsigned>(grid), block, static_cast<size_t>(smem), stream>>>(
                   args...);
               C10_CUDA_KERNEL_LAUNCH_CHECK();
             });
}

std::tuple<at::Tensor, at::Tensor> multilabel_margin_cuda(const at::Tensor& input,
                                                          const at::Tensor& target,
                                                          int64_t reduction, bool compute_grad,
                                                          int64_t algo) {
  const c10::cuda::CUDAGuard guard(input.device());
  const c10::DeviceIndex device = input.device().index();
  ErrorRecord& rec = error_record(device);
  if (error_recorded(rec)) {  // an earlier call's kernel found an out-of-range target
    const std::string msg = take_error(device);
    TORCH_CHECK(msg.empty(), msg);
  }
  MarginPlan plan = make_margin_plan(input, target, reduction, compute_grad, algo);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "margin_cuda",
                                  [&] { margin_cuda_impl<scalar_t>(plan, rec.device); });
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  C10_CUDA_CHECK(cudaMemcpyAsync(rec.host, rec.device, sizeof(MarginTargetError),
                                 cudaMemcpyDeviceToHost, stream));
  return op_outputs(plan.loss, plan.grad, input);
}

}  // namespace
}  // namespace mlc::cuda

TORCH_LIBRARY_FRAGMENT(multilabel_cuda, m) {
  m.def("take_margin_target_error() -> str", &mlc::cuda::take_margin_target_error);
}

TORCH_LIBRARY_IMPL(multilabel_cuda, CUDA, m) {
  m.impl("multilabel_margin", &mlc::cuda::multilabel_margin_cuda);
}
