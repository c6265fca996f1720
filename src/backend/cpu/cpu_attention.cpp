// Rotary embeddings and causal GQA attention over the paged KV cache, on the CPU.
//
// RoPE (transformers' Llama, non-interleaved "rotate_half" layout): for the first rotary_dim
// dims split in halves a|b, with f_i = inv_freq_i * position,
//   a' = a cos f - b sin f,   b' = b cos f + a sin f.
// Attention: each query at absolute position p attends to cache positions 0..p of its own
// sequence; query head h reads KV head h / (Hq / Hkv). softmax in fp32 with the max subtracted.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "model/rope_frequencies.h"

namespace statelm {

namespace {

void rotate(float* v, const float* cos_f, const float* sin_f, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = v[i], b = v[i + half];
    v[i] = a * cos_f[i] - b * sin_f[i];
    v[i + half] = b * cos_f[i] + a * sin_f[i];
  }
}

// Pointer to the cache row of (sequence of span s, position p, kv head g).
inline float* cache_at(const Tensor& cache, const BatchView& b, size_t s, int64_t p, int64_t g) {
  const int32_t block = b.block_tables[s * size_t(b.max_blocks_per_seq) + size_t(p / b.block_size)];
  return cache.f32() + block * cache.stride[0] + (p % b.block_size) * cache.stride[1] + g * cache.stride[2];
}

}  // namespace

void CpuBackend::rope(const RopeParams& p, const BatchView& batch) {
  if (p.rope.kind == RopeKind::None) return;
  const int64_t half = p.rope.rotary_dim / 2;
  const std::vector<float> inv = rope_inv_freq(p.rope);
  STATELM_CHECK(p.q.ndim == 3 && p.k.ndim == 3 && p.q.stride[2] == 1 && p.k.stride[2] == 1, "rope q/k layout");
  STATELM_CHECK(rope_fits_head(p.rope, p.q.shape[2]) && p.q.shape[2] == p.k.shape[2],
                "rope: rotary_dim ", p.rope.rotary_dim, " of head_dim q ", p.q.shape[2], ", k ", p.k.shape[2]);
  for (size_t s = 0; s < batch.spans.size(); ++s) {
    const SeqSpan& sp = batch.spans[s];
#pragma omp parallel for schedule(static) if (sp.len > 8)
    for (int32_t i = 0; i < sp.len; ++i) {
      std::vector<float> cos_f(static_cast<size_t>(half)), sin_f(static_cast<size_t>(half));
      const float pos = float(sp.pos + i);
      for (int64_t j = 0; j < half; ++j) {
        const float f = inv[size_t(j)] * pos;
        cos_f[size_t(j)] = std::cos(f);
        sin_f[size_t(j)] = std::sin(f);
      }
      const int64_t t = sp.start + i;
      for (int64_t h = 0; h < p.q.shape[1]; ++h)
        rotate(p.q.f32() + t * p.q.stride[0] + h * p.q.stride[1], cos_f.data(), sin_f.data(), half);
      for (int64_t h = 0; h < p.k.shape[1]; ++h)
        rotate(p.k.f32() + t * p.k.stride[0] + h * p.k.stride[1], cos_f.data(), sin_f.data(), half);
    }
  }
}

void CpuBackend::attention(const AttentionParams& p, const BatchView& batch) {
  const int64_t hq = p.q.shape[1], hkv = p.k.shape[1], dh = p.q.shape[2];
  STATELM_CHECK(batch.block_tables && batch.block_size > 0, "attention needs a KV block table");
  STATELM_CHECK(hq % hkv == 0 && p.k_cache.shape[1] == batch.block_size && p.k_cache.shape[2] == hkv &&
                    p.k_cache.shape[3] == dh && p.k_cache.is_contiguous() && p.v_cache.is_contiguous(),
                "attention shapes: q ", p.q.describe(), " k ", p.k.describe(), " cache ", p.k_cache.describe());
  const int64_t group = hq / hkv;
  rope({p.q, p.k, p.rope}, batch);  // in place; nothing when the kind is None

  // 1. Append the new keys and values: tokens of a span attend to earlier tokens of the same span.
  for (size_t s = 0; s < batch.spans.size(); ++s) {
    const SeqSpan& sp = batch.spans[s];
    STATELM_CHECK((sp.pos + sp.len + batch.block_size - 1) / batch.block_size <= batch.max_blocks_per_seq,
                  "span beyond its block table");
    for (int32_t i = 0; i < sp.len; ++i)
      for (int64_t g = 0; g < hkv; ++g) {
        const int64_t t = sp.start + i;
        std::copy_n(p.k.f32() + t * p.k.stride[0] + g * p.k.stride[1], dh, cache_at(p.k_cache, batch, s, sp.pos + i, g));
        std::copy_n(p.v.f32() + t * p.v.stride[0] + g * p.v.stride[1], dh, cache_at(p.v_cache, batch, s, sp.pos + i, g));
      }
  }

  // 2. One (token, head) pair per iteration: scores over the cache, softmax, weighted sum of V.
  struct Work { size_t span; int32_t i; };
  std::vector<Work> work;
  work.reserve(size_t(batch.n_tokens));
  for (size_t s = 0; s < batch.spans.size(); ++s)
    for (int32_t i = 0; i < batch.spans[s].len; ++i) work.push_back({s, i});
  const int64_t n_items = int64_t(work.size()) * hq;
  int64_t flops = 0;  // ~ query-key pairs x head dim: below this, threads cost more than they save
  for (const SeqSpan& sp : batch.spans) flops += int64_t(sp.len) * (sp.pos + sp.len) * hq * dh;
#pragma omp parallel if (flops > 65536)
  {
    std::vector<float> scores;
#pragma omp for schedule(dynamic, 4)
    for (int64_t item = 0; item < n_items; ++item) {
      const Work w = work[size_t(item / hq)];
      const int64_t h = item % hq, g = h / group;
      const SeqSpan& sp = batch.spans[w.span];
      const int64_t t = sp.start + w.i, last = sp.pos + w.i;
      const float* q = p.q.f32() + t * p.q.stride[0] + h * p.q.stride[1];
      scores.resize(size_t(last + 1));
      float max_score = -INFINITY;
      for (int64_t j = 0; j <= last; ++j) {
        const float* k = cache_at(p.k_cache, batch, w.span, j, g);
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < dh; ++d) s += q[d] * k[d];
        scores[size_t(j)] = s * p.scale;
        max_score = std::max(max_score, scores[size_t(j)]);
      }
      float denom = 0.0f;
      for (int64_t j = 0; j <= last; ++j) denom += scores[size_t(j)] = std::exp(scores[size_t(j)] - max_score);
      float* o = p.out.f32() + t * p.out.stride[0] + h * p.out.stride[1];
      std::fill_n(o, dh, 0.0f);
      for (int64_t j = 0; j <= last; ++j) {
        const float* v = cache_at(p.v_cache, batch, w.span, j, g);
        const float a = scores[size_t(j)] / denom;
#pragma omp simd
        for (int64_t d = 0; d < dh; ++d) o[d] += a * v[d];
      }
    }
  }
}

}  // namespace statelm
