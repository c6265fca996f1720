// Mixture of SwiGLU experts on the CPU, as transformers' Jamba computes it:
//   p = softmax(x Rᵀ) over all E experts (fp32); the top_k largest p pick the experts;
//   out = sum over picked e of p_e * down_e(silu(gate_e x) * up_e x)
// (p renormalised over the picked experts only when `renormalize`, as Mixtral does).
// Tokens are grouped by expert so each expert runs one GEMM over all of its tokens.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace statelm {

void CpuBackend::moe(const MoeParams& p) {
  const int64_t n = p.x.shape[0], d = p.x.shape[1], e_count = p.router.shape[0];
  const int64_t f = p.gate_up.shape[1] / 2;
  cpu::check_2d(p.x, n, d, "moe x");
  cpu::check_2d(p.out, n, d, "moe out");
  STATELM_CHECK(p.gate_up.ndim == 3 && p.gate_up.shape[0] == e_count && p.gate_up.shape[2] == d && p.down.ndim == 3 &&
                    p.down.shape[0] == e_count && p.down.shape[1] == d && p.down.shape[2] == f,
                "moe expert shapes ", p.gate_up.describe(), " ", p.down.describe());
  STATELM_CHECK(p.top_k >= 1 && p.top_k <= e_count, "moe top_k ", p.top_k);

  // Routing: [n, E] logits -> softmax -> top_k (ties to the lower expert index, as torch.topk).
  Buffer logits_buf = host_buffer(size_t(n * e_count) * sizeof(float));
  Tensor logits = Tensor::contiguous(logits_buf.data(), DType::F32, {n, e_count});
  matmul(p.x, p.router, Tensor{}, logits);
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(static_cast<size_t>(e_count));  // (token, weight)
  std::vector<int64_t> order(static_cast<size_t>(e_count));
  for (int64_t t = 0; t < n; ++t) {
    float* l = cpu::row(logits, t);
    const float mx = *std::max_element(l, l + e_count);
    float sum = 0.0f;
    for (int64_t e = 0; e < e_count; ++e) sum += l[e] = std::exp(l[e] - mx);
    for (int64_t e = 0; e < e_count; ++e) l[e] /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + p.top_k, order.end(),
                      [&](int64_t a, int64_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    float picked = 0.0f;
    for (int64_t k = 0; k < p.top_k; ++k) picked += l[order[size_t(k)]];
    for (int64_t k = 0; k < p.top_k; ++k) {
      const int64_t e = order[size_t(k)];
      by_expert[size_t(e)].push_back({t, p.renormalize ? l[e] / picked : l[e]});
    }
  }

  // Experts: gather their tokens, one gate_up GEMM, SwiGLU, one down GEMM, scatter-add.
  for (int64_t t = 0; t < n; ++t) std::fill_n(cpu::row(p.out, t), d, 0.0f);
  for (int64_t e = 0; e < e_count; ++e) {
    const auto& tokens = by_expert[size_t(e)];
    const int64_t m = int64_t(tokens.size());
    if (m == 0) continue;
    Buffer xb = host_buffer(size_t(m * d) * 4), hb = host_buffer(size_t(m * 2 * f) * 4), ab = host_buffer(size_t(m * f) * 4),
           yb = host_buffer(size_t(m * d) * 4);
    Tensor xe = Tensor::contiguous(xb.data(), DType::F32, {m, d});
    Tensor he = Tensor::contiguous(hb.data(), DType::F32, {m, 2 * f});
    Tensor ae = Tensor::contiguous(ab.data(), DType::F32, {m, f});
    Tensor ye = Tensor::contiguous(yb.data(), DType::F32, {m, d});
    for (int64_t i = 0; i < m; ++i) std::copy_n(cpu::row(p.x, tokens[size_t(i)].first), d, cpu::row(xe, i));
    Tensor gu = Tensor::contiguous(p.gate_up.f32() + e * p.gate_up.stride[0], DType::F32, {2 * f, d});
    Tensor dn = Tensor::contiguous(p.down.f32() + e * p.down.stride[0], DType::F32, {d, f});
    matmul(xe, gu, Tensor{}, he);
    swiglu(he, ae);
    matmul(ae, dn, Tensor{}, ye);
    for (int64_t i = 0; i < m; ++i) {
      const auto [t, weight] = tokens[size_t(i)];
      float* o = cpu::row(p.out, t);
      const float* y = cpu::row(ye, i);
      for (int64_t j = 0; j < d; ++j) o[j] += weight * y[j];
    }
  }
}

}  // namespace statelm
