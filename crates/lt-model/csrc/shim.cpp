// C++ shim of lt-model. (1) A thin C ABI over two oneDNN operators that libtorch registers but does not export through its
// C API (and therefore not through tch): weight prepacking and the prepacked linear.
//
//   mkldnn::_reorder_linear_weight(Tensor self, int? batch_size=None) -> Tensor
//   mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[] scalars,
//                             str? algorithm) -> Tensor
//
// Both are called boxed through the dispatcher, so no C++ signature has to match libtorch's
// exactly. Errors never cross the boundary as exceptions: they are written to `err` and the
// function returns nullptr. Tensors are passed as `at::Tensor*` (tch's `C_tensor`).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstdio>
#include <exception>
#include <optional>

namespace {

void set_err(char* err, size_t n, const char* msg) {
  if (err != nullptr && n > 0) {
    std::snprintf(err, n, "%s", msg);
  }
}

std::optional<c10::OperatorHandle> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchema(c10::OperatorName(name, ""));
}

// Call `op` boxed with the arguments `push` puts on the stack; its one tensor result on the heap,
// or nullptr with the error (op missing or an exception) in `err`.
template <typename Push>
at::Tensor* call_tensor_op(const std::optional<c10::OperatorHandle>& op, const char* name, char* err,
                           size_t n, Push push) {
  try {
    if (!op) {
      set_err(err, n, (std::string(name) + " is not registered in this libtorch").c_str());
      return nullptr;
    }
    torch::jit::Stack s;
    push(s);
    op->callBoxed(&s);
    return new at::Tensor(s.at(0).toTensor());
  } catch (const std::exception& e) {
    set_err(err, n, e.what());
    return nullptr;
  }
}

}  // namespace

extern "C" {

// 1 when both operators are registered in the loaded libtorch, else 0.
int lt_onednn_available() {
  try {
    return find_op("mkldnn::_reorder_linear_weight").has_value() &&
                   find_op("mkldnn::_linear_pointwise").has_value()
               ? 1
               : 0;
  } catch (...) {
    return 0;
  }
}

// Prepack a dense [out, in] weight into oneDNN's blocked layout (a new mkldnn tensor).
at::Tensor* lt_onednn_pack(const at::Tensor* w, char* err, size_t n) {
  static const std::optional<c10::OperatorHandle> op = find_op("mkldnn::_reorder_linear_weight");
  return call_tensor_op(op, "mkldnn::_reorder_linear_weight", err, n, [&](torch::jit::Stack& s) {
    s.emplace_back(*w);
    s.emplace_back(c10::IValue());
  });
}

// y = x Wᵀ + b for a 2-D dense x and a weight from lt_onednn_pack; b may be null.
at::Tensor* lt_onednn_linear(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b, char* err,
                             size_t n) {
  static const std::optional<c10::OperatorHandle> op = find_op("mkldnn::_linear_pointwise");
  return call_tensor_op(op, "mkldnn::_linear_pointwise", err, n, [&](torch::jit::Stack& s) {
    s.emplace_back(*x);
    s.emplace_back(*w);
    s.emplace_back(b != nullptr ? c10::IValue(*b) : c10::IValue());
    s.emplace_back(std::string("none"));
    s.emplace_back(c10::impl::GenericList(c10::OptionalType::create(c10::NumberType::get())));
    s.emplace_back(c10::IValue());
  });
}

}  // extern "C"

// c10::InferenceMode as an explicit enter/exit pair (one RAII guard on the heap; exit on the same
// thread, in reverse order of enter).
extern "C" void* lt_inference_mode_enter(int enabled) {
  try {
    return new c10::InferenceMode(enabled != 0);
  } catch (...) {
    return nullptr;
  }
}

extern "C" void lt_inference_mode_exit(void* guard) { delete static_cast<c10::InferenceMode*>(guard); }
