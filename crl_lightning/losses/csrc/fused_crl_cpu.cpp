// Fused Competing Ratio Loss for CPU tensors (hard targets, alpha > 0).
//
// Built on first use by crl_lightning/losses/cpu_kernel.py (torch.utils.cpp_extension.load).
// The maths, options and error messages are those of crl_lightning/losses/functional.py:
//
//   CRL_i = sw_i * (u_i + beta * log(alpha - expm1(-u_i))),   u_i = -log p_{i,c_i}
//   dCRL/dz_i = (p_i - onehot(c_i)) * k_i,                     k_i = sw_i * (1 + beta * p_c / (alpha + 1 - p_c))
//
// with sw_i the per-sample weight (weight[c_i], 0 for ignored rows). The softmax is computed once by
// ATen's vectorised log-softmax kernel and saved with the target, as cross-entropy saves them (k_i is
// recomputed from them); the per-row terms are plain loops (no per-op dispatch), and the backward is
// ATen's log-softmax backward applied to a gradient that is -k_i at the target, i.e. the same kernels
// as F.cross_entropy's backward.
//
// The log-softmax is also an output of the autograd node, so when a backward runs with
// create_graph=True the gradient is rebuilt from differentiable ATen ops on that saved output and
// higher-order gradients stay exact.
#include <ATen/OpMathType.h>
#include <torch/extension.h>

#include <cmath>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kNone = 0;  // reduction codes, as in F.cross_entropy's enum
constexpr int64_t kMean = 1;

struct FusedCRL : public torch::autograd::Function<FusedCRL> {
  static tensor_list forward(AutogradContext* ctx, const Tensor& logits, const Tensor& target,
                             const std::optional<Tensor>& weight, double alpha, double beta, int64_t ignore_index,
                             int64_t reduction) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // this node records the history; skip autograd dispatch
    const Tensor logp = at::_log_softmax(logits.contiguous(), 1, false);
    const Tensor tgt = target.contiguous();
    const int64_t n = logp.size(0);
    const int64_t c = logp.size(1);
    Tensor rows = reduction == kNone ? at::empty({n}, logp.options()) : Tensor();
    double total = 0.0;
    double weight_sum = 0.0;
    AT_DISPATCH_FLOATING_TYPES(logp.scalar_type(), "fused_crl_forward", [&] {
      const scalar_t* lp = logp.const_data_ptr<scalar_t>();
      const int64_t* t = tgt.const_data_ptr<int64_t>();
      const scalar_t* w = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* r = rows.defined() ? rows.mutable_data_ptr<scalar_t>() : nullptr;
      using opmath_t = at::opmath_type<scalar_t>;  // float for float32, double for float64
      const auto a = static_cast<opmath_t>(alpha);
      const auto b = static_cast<opmath_t>(beta);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t ti = t[i];
        opmath_t row = 0;
        if (ti != ignore_index) {  // ignored rows are never gathered and contribute nothing
          TORCH_CHECK_VALUE(ti >= 0 && ti < c, "target: expected class indices in [0, ", c, ") or ignore_index=",
                            ignore_index, ", got ", ti);
          const opmath_t logp_c = lp[i * c + ti];
          const opmath_t sw = w ? static_cast<opmath_t>(w[ti]) : opmath_t(1);
          row = sw * (b * std::log(a - std::expm1(logp_c)) - logp_c);  // a - expm1(log p_c) = alpha + 1 - p_c
          weight_sum += sw;
        }
        total += row;
        if (r) {
          r[i] = static_cast<scalar_t>(row);
        }
      }
    });
    // "mean" divides by the summed sample weights, or by 1 when every row is ignored (the loss is then 0).
    const double scale = (reduction == kMean && weight_sum > 0.0) ? 1.0 / weight_sum : 1.0;
    ctx->save_for_backward({logp, tgt});
    ctx->saved_data["alpha_beta_scale"] = std::vector<double>{alpha, beta, scale};
    ctx->saved_data["ignore_index_reduction"] = std::vector<int64_t>{ignore_index, reduction};
    if (weight.has_value()) {
      ctx->saved_data["weight"] = *weight;  // a constant (no gradient)
    }
    const Tensor loss = reduction == kNone ? rows : at::scalar_tensor(total * scale, logp.options());
    return {loss, logp};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& logp = saved[0];
    const Tensor& tgt = saved[1];
    const auto alpha_beta_scale = ctx->saved_data["alpha_beta_scale"].toDoubleVector();
    const double alpha = alpha_beta_scale[0];
    const double beta = alpha_beta_scale[1];
    const double scale = alpha_beta_scale[2];
    const auto ignore_index_reduction = ctx->saved_data["ignore_index_reduction"].toIntVector();
    const int64_t ignore_index = ignore_index_reduction[0];
    const int64_t reduction = ignore_index_reduction[1];
    const bool weighted = ctx->saved_data.count("weight") != 0;
    const Tensor weight = weighted ? ctx->saved_data["weight"].toTensor() : Tensor();
    const Tensor& grad_loss = grads[0];
    const Tensor& grad_logp_out = grads[1];
    Tensor grad_logp;
    if (!at::GradMode::is_enabled()) {  // first-order backward: one loop, then ATen's kernel
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      grad_logp = grad_logp_out.defined() ? grad_logp_out.contiguous().clone() : at::zeros_like(logp);
      if (grad_loss.defined()) {
        const Tensor g = grad_loss.contiguous();
        const int64_t n = logp.size(0);
        const int64_t c = logp.size(1);
        AT_DISPATCH_FLOATING_TYPES(logp.scalar_type(), "fused_crl_backward", [&] {
          const scalar_t* lp = logp.const_data_ptr<scalar_t>();
          const int64_t* t = tgt.const_data_ptr<int64_t>();
          const scalar_t* w = weighted ? weight.const_data_ptr<scalar_t>() : nullptr;
          const scalar_t* gp = g.const_data_ptr<scalar_t>();
          scalar_t* out = grad_logp.mutable_data_ptr<scalar_t>();
          using opmath_t = at::opmath_type<scalar_t>;
          const auto a = static_cast<opmath_t>(alpha);
          const auto b = static_cast<opmath_t>(beta);
          for (int64_t i = 0; i < n; ++i) {
            const int64_t ti = t[i];
            if (ti == ignore_index) {
              continue;
            }
            const opmath_t em = std::expm1(static_cast<opmath_t>(lp[i * c + ti]));  // p_c - 1
            const opmath_t sw = w ? static_cast<opmath_t>(w[ti]) : opmath_t(1);
            const opmath_t k = sw * static_cast<opmath_t>(scale) * (1 + b * (1 + em) / (a - em));
            out[i * c + ti] -= static_cast<scalar_t>(k * gp[reduction == kNone ? i : 0]);
          }
        });
      }
    } else {  // create_graph=True: the same gradient from differentiable ops on the saved log-softmax
      grad_logp = grad_logp_out.defined() ? grad_logp_out : at::zeros_like(logp);
      if (grad_loss.defined()) {
        const Tensor valid = tgt.ne(ignore_index);
        const Tensor index = at::where(valid, tgt, at::zeros_like(tgt)).unsqueeze(1);
        const Tensor logp_c = logp.gather(1, index).squeeze(1);
        Tensor coef = valid.to(logp.scalar_type()) * scale;
        if (weighted) {
          coef = coef * weight.index_select(0, index.squeeze(1));
        }
        coef = coef * (1.0 + beta * logp_c.exp() / (alpha - logp_c.expm1()));
        grad_logp = grad_logp - at::zeros_like(logp).scatter(1, index, (coef * grad_loss).unsqueeze(1));
      }
    }
    Tensor grad_logits = at::_log_softmax_backward_data(grad_logp, logp, 1, logp.scalar_type());
    return {grad_logits, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// Entry point; the caller (competing_ratio_loss) has validated shapes, alpha > 0, beta >= 0 and the options.
// Logits other than float64 are computed in float32 (the cast is recorded by autograd, so float16/bfloat16
// logits get float16/bfloat16 gradients); any integer target dtype is accepted.
Tensor fused_crl(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, double alpha,
                 double beta, int64_t ignore_index, int64_t reduction) {
  TORCH_CHECK(logits.device().is_cpu() && logits.dim() == 2, "fused_crl: expected (N, C) CPU logits");
  const auto dtype = logits.scalar_type();
  const Tensor x = (dtype == at::kFloat || dtype == at::kDouble) ? logits : logits.to(at::kFloat);
  const Tensor t = target.scalar_type() == at::kLong ? target : target.to(at::kLong);
  std::optional<Tensor> w;
  if (weight.has_value()) {
    w = weight->to(x.scalar_type()).contiguous();
  }
  return FusedCRL::apply(x, t, w, alpha, beta, ignore_index, reduction)[0];
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_crl", &fused_crl, "Fused Competing Ratio Loss for CPU tensors (see crl_lightning.losses)");
}
