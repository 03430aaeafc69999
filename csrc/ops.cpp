// Every schema of the library, in one place. Each op returns (loss, grad): grad is the input gradient
// for an upstream gradient of 1, computed in the same pass when compute_grad is set (else empty);
// autograd (csrc/autograd.cpp) saves it and backward only scales it.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An importable module, so `import multilabel_cuda._C` loads the library and registers the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
}

TORCH_LIBRARY(multilabel_cuda, m) {
  m.def("bce_with_logits(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
        "int reduction, bool compute_grad) -> (Tensor, Tensor)");
  m.def("multilabel_soft_margin(Tensor input, Tensor target, Tensor? weight, int reduction, "
        "bool compute_grad) -> (Tensor, Tensor)");
  // algo: 0 auto, 1 direct O(P*C), 2 counting O(C log P) (see csrc/cpu/margin_cpu.cpp); the
  // Python API always passes 0, tests force each method.
  m.def("multilabel_margin(Tensor input, Tensor target, int reduction, bool compute_grad, "
        "int algo=0) -> (Tensor, Tensor)");
  // Backward's grad *= upstream, in place on the op's own gradient buffer (csrc/autograd.cpp), for
  // an upstream broadcastable to grad with grad's dtype and device. Its own op so that each device
  // skips loss.backward()'s upstream of exactly 1 its own way: the CPU reads it, a CUDA kernel
  // reads it on the device (reading it on the host would synchronize).
  m.def("_scale_grad_(Tensor(a!) grad, Tensor upstream) -> ()");
  // Backward of bce_with_logits (row_mean false) / multilabel_soft_margin (true) where differentiable
  // formulas are needed (create_graph, target gradients): (d/d input, d/d target) times upstream
  // (the loss's gradient, already broadcastable to the input), each an empty tensor unless asked
  // for. Its kernel is Python (multilabel_cuda/_ops.py: the reference formulas,
  // CompositeImplicitAutograd); csrc/autograd.cpp calls it.
  m.def("bce_backward_reference(Tensor upstream, Tensor input, Tensor target, Tensor? weight, "
        "Tensor? pos_weight, int reduction, bool row_mean, bool input_grad, bool target_grad) "
        "-> (Tensor, Tensor)");
  // Which CPU vector ISA the library was compiled for ("avx512", "avx2" or "default"): Python
  // refuses to use a build whose instructions this CPU lacks instead of crashing on an illegal
  // instruction. The flags are setup.py's ISA_CPU_FLAGS.
  m.def("cpu_isa() -> str", []() -> std::string {
#if defined(CPU_CAPABILITY_AVX512)
    const char* isa = "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
    const char* isa = "avx2";
#else
    const char* isa = "default";
#endif
#if (defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)) && \
    (defined(__x86_64__) || defined(__i386__))
    bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
#if defined(CPU_CAPABILITY_AVX512)
    ok = ok && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    if (!ok) return std::string("unsupported:") + isa;
#endif
    return isa;
  });
}
