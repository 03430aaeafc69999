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
  // Any member of the BCE family (csrc/math/bce_variants.h) by kind, with its parameters in the
  // member's order. Each member's public schema (csrc/bce_variants.cpp) checks and packs them.
  m.def("bce_family(Tensor input, Tensor target, Tensor? weight, int kind, float[] params, "
        "int reduction, bool compute_grad) -> (Tensor, Tensor)");
  // One chunk of the fused linear losses (multilabel_cuda/linear.py): plain BCE on contiguous
  // (rows, cols) float32/float64 logits, overwritten with d(loss terms' sum)/d(logits). The target
  // is dense (a (rows, cols) tensor of logits' dtype, e.g. a strided column slice) or CSR (indices,
  // offsets, values of a SparseTargets; column j is class first + j), pos_weight broadcastable
  // to the logits. Returns the loss unscaled (the caller owns the scale): reduction 2 the terms'
  // sum, 0 per element, or 0 with row_mean the (rows,) row sums. No autograd.
  m.def("bce_chunk_(Tensor(a!) logits, Tensor? target, Tensor? indices, Tensor? offsets, "
        "Tensor? values, int first, Tensor? pos_weight, int reduction, bool row_mean) -> Tensor");
  // algo: 0 auto (per row: the switch rules of csrc/cpu/margin_cpu.cpp and csrc/cuda/
  // margin_kernel.cuh), 1 direct O(P*C), 2 counting O(C log P + P log P). The Python API passes 0.
  m.def("multilabel_margin(Tensor input, Tensor target, int reduction, bool compute_grad, "
        "int algo=0) -> (Tensor, Tensor)");
  // Backward's grad *= upstream, in place on the op's own gradient buffer (csrc/autograd.cpp), for
  // an upstream broadcastable to grad with grad's dtype and device. Its own op so that each device
  // skips loss.backward()'s upstream of exactly 1 its own way: the CPU reads it, a CUDA kernel
  // reads it on the device (reading it on the host would synchronize).
  m.def("_scale_grad_(Tensor(a!) grad, Tensor upstream) -> ()");
  // Differentiable backward of bce_with_logits (row_mean false) / multilabel_soft_margin (true),
  // for what the fused gradient does not cover (create_graph, target gradients): (d/d input,
  // d/d target) times upstream (the loss's gradient, already broadcastable to the input), each
  // undefined unless asked for. Its kernel is ATen ops (csrc/bce_backward.cpp).
  m.def("bce_backward(Tensor upstream, Tensor input, Tensor target, Tensor? weight, "
        "Tensor? pos_weight, int reduction, bool row_mean, bool input_grad, bool target_grad) "
        "-> (Tensor, Tensor)");
  // Which CPU vector ISA the library was compiled for ("avx512", "avx2" or "default"): Python
  // refuses to use a build whose instructions this CPU lacks (multilabel_cuda/_build_config.py)
  // instead of crashing on an illegal instruction.
  m.def("cpu_isa() -> str", []() -> std::string {
#if defined(CPU_CAPABILITY_AVX512)
    return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
    return "avx2";
#else
    return "default";
#endif
  });
}
