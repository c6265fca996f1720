// Mamba-2 SSD (state-space duality) over token spans, each continuing from its slot's state.
// Per head h (group g = h / (H/G)), head channel p, state index n, token t:
//
//   dt_t = softplus(dt_raw[t, h] + dt_bias[h]), clamped to [dt_min, dt_max] if dt_limited
//   S[p, n] ← exp(dt_t · A[h]) · S[p, n] + dt_t · x[t, h, p] · B[t, g, n]
//   y[t, h, p] = Σ_n C[t, g, n] · S[p, n] + D[h] · x[t, h, p]
//
// Decode spans (len 1) run this recurrence directly. Prefill spans run the chunked algorithm
// (mamba_ssm's ssd_minimal, as transformers' torch_forward): the span is cut into chunks of Q
// tokens from its start (the last one partial). Within a chunk of L tokens, with
// a_i = dt_i · A[h] and cs_i = a_0 + … + a_i (the log-decay from the chunk start to token i):
//
//   y_i = e^{cs_i} · (C_i · S_in)                                  from the incoming state
//       + Σ_{j ≤ i} (C_i · B_j) · e^{cs_i − cs_j} · dt_j · x_j      within the chunk
//       + D · x_i
//   S_out = e^{cs_{L−1}} · S_in + Σ_j e^{cs_{L−1} − cs_j} · dt_j · x_j ⊗ B_j
//
// so a chunk is four matrix products: CB = C Bᵀ (L × L, lower triangle), (CB ∘ decay mask ∘ dt)
// · X, C · S_inᵀ, and Bᵀ · (decay ∘ dt ∘ X) for the state. The state is kept transposed,
// Sᵀ [N × P], for the whole span so that every product is a plain row-major c = a · b.
//
// Decays between two tokens, cs_i − cs_j = a_{j+1} + … + a_i, are summed as such (a running
// row of segment sums for the mask, suffix sums for the state), never subtracted: for a
// strongly decaying head cs reaches the thousands within a chunk, where a float's ulp (~1e-4)
// would swamp the decay between neighbouring tokens. transformers' segment_sum does the same.
//
// Work split, in two OpenMP loops:
//   1. (chunk, group) items: Bᵀ [N × L] and CB [L × L] of the chunk, computed once per group and
//      shared by its H/G heads (for G = 1 this removes the largest product from the per-head
//      work). Only the lower block triangle of CB is formed: rows in blocks of kTri, each block
//      up to its own last column.
//   2. (span, head) items: the chunks of the span in order, carrying Sᵀ; decode spans here too.
// The intra-chunk product skips the upper block triangle the same way. Products are
// cpu::small_gemm (one thread each; see cpu_small_gemm.h for why not OpenBLAS).
//
// The state is fp32 or bf16 (cpu_state_dtype.h), widened as a span starts and rounded as it
// ends: a decode step rounds S every token, a prefill span once after its last chunk.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_op_checks.h"
#include "backend/cpu/cpu_small_gemm.h"
#include "backend/cpu/cpu_state_dtype.h"
#include "backend/cpu/cpu_vec_math.h"

namespace statelm {

namespace {

constexpr int64_t kTri = 64;  // row block of the causal products
// Decays below e^-60 (~1e-26) are set to exactly 0 rather than multiplied in: far below float
// resolution next to the undecayed terms of the same sum, and, times dt and C·B, they would
// land in the denormal range, which costs ~100 cycles per operand on x86 (see
// cpu::DenormalsAreZero, which catches the rest; this also keeps other CPUs fast).
constexpr float kNegligibleLogDecay = -60.0f;

inline cpu::VecF decay(cpu::VecF log_decay) {
  return log_decay < kNegligibleLogDecay ? cpu::VecF{} : cpu::exp(log_decay);
}
inline float decay(float log_decay) { return decay(cpu::splat(log_decay))[0]; }

struct ChunkPlan {
  int64_t t0 = 0;      // first token (flat batch index)
  int64_t len = 0;     // tokens in the chunk
  int64_t offset = 0;  // of group 0's [Bᵀ | CB] in the shared buffer; group g adds g · chunk_group_floats
};

struct SsdArgs {
  const float *x, *dt_raw, *dt_bias, *A, *B, *C, *D;
  float* out;
  void* state;  // [n_slots, H, P, N] of float or cpu::Bf16
  int64_t H, P, G, N, Q;
  int64_t longest_chunk;  // of this batch: sizes the per-thread scratch
  int64_t xs0, xs1, dts, Bs0, Bs1, Cs0, Cs1, os0, os1, ss0, ss1, ss2;
  float dt_min, dt_max;
  bool dt_limited;
};

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Leading dimension for a scratch matrix of `cols` floats per row: whole vectors, and an odd
// number of cache lines, so that the rows of a GEMM panel spread over all L1 sets. (x itself,
// with rows H·P floats apart, maps a panel onto 2 of the 64 sets and thrashes L1: that is
// why the chunk's x is copied before it is multiplied.)
inline int64_t padded_ld(int64_t cols) {
  int64_t lines = (cols + 15) / 16;
  if (lines % 2 == 0) ++lines;
  return lines * 16;
}

// Floats of group g's [Bᵀ | CB] for a chunk of len tokens in the shared buffer.
inline int64_t chunk_group_floats(int64_t len, int64_t N) { return (N + len) * padded_ld(len); }

// dt of `len` tokens of head h from flat token t0, into dst (vector-padded with zeros).
void chunk_dt(const SsdArgs& a, int64_t h, int64_t t0, int64_t len, float* dst) {
  const float bias = a.dt_bias ? a.dt_bias[h] : 0.0f;
  const int64_t padded = round_up(len, cpu::kLanes);
  for (int64_t i = 0; i < len; ++i) dst[i] = a.dt_raw[(t0 + i) * a.dts + h] + bias;
  for (int64_t i = len; i < padded; ++i) dst[i] = 0.0f;
  for (int64_t i = 0; i < padded; i += cpu::kLanes) {
    cpu::VecF v = cpu::softplus(cpu::load(dst + i));
    if (a.dt_limited) {
      v = v < a.dt_min ? cpu::splat(a.dt_min) : v;
      v = v > a.dt_max ? cpu::splat(a.dt_max) : v;
    }
    cpu::store(dst + i, v);
  }
  for (int64_t i = len; i < padded; ++i) dst[i] = 0.0f;
}

// Phase 1 for one chunk and group: bt = Bᵀ [N × L], cb = C Bᵀ [L × L] (lower block
// triangle), both with leading dimension padded_ld(L).
void chunk_products(const SsdArgs& a, const ChunkPlan& c, int64_t g, float* bt, float* cb) {
  const int64_t L = c.len, N = a.N, ld = padded_ld(L);
  const float* Bg = a.B + c.t0 * a.Bs0 + g * a.Bs1;
  const float* Cg = a.C + c.t0 * a.Cs0 + g * a.Cs1;
  for (int64_t j = 0; j < L; ++j)
    for (int64_t n = 0; n < N; ++n) bt[n * ld + j] = Bg[j * a.Bs0 + n];
  for (int64_t r0 = 0; r0 < L; r0 += kTri) {
    const int64_t r1 = std::min(L, r0 + kTri);
    cpu::small_gemm(r1 - r0, r1, N, Cg + r0 * a.Cs0, a.Cs0, bt, ld, cb + r0 * ld, ld, false);
  }
}

// One state row of the recurrence, S[n] ← dA · S[n] + xdt · B[n], returning Σ_n C[n] · S[n].
// Both state types run this same loop on fp32 values, so the sum is vectorised (and therefore
// ordered) the same way: a bf16 state is widened into a row of floats first.
inline float decode_row(float* Sp, float dA, float xdt, const float* Bg, const float* Cg, int64_t N) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t n = 0; n < N; ++n) {
    const float s = dA * Sp[n] + xdt * Bg[n];
    Sp[n] = s;
    acc += Cg[n] * s;
  }
  return acc;
}

// The plain recurrence for a span of one token, head h; S is the state's element type.
template <typename S>
void decode_step(const SsdArgs& a, const SeqSpan& sp, int64_t h) {
  const int64_t g = h / (a.H / a.G), t = sp.start;
  alignas(64) float dtv[cpu::kLanes];
  chunk_dt(a, h, t, 1, dtv);
  const float dt = dtv[0];
  const float dA = cpu::exp(dt * a.A[h]);
  const float d = a.D ? a.D[h] : 0.0f;
  const float* xh = a.x + t * a.xs0 + h * a.xs1;
  const float* Bg = a.B + t * a.Bs0 + g * a.Bs1;
  const float* Cg = a.C + t * a.Cs0 + g * a.Cs1;
  float* yh = a.out + t * a.os0 + h * a.os1;
  S* state = static_cast<S*>(a.state) + sp.slot * a.ss0 + h * a.ss1;
  static thread_local std::vector<float> row;  // a bf16 state row, widened
  if constexpr (!std::is_same_v<S, float>) row.resize(size_t(a.N));
  for (int64_t p = 0; p < a.P; ++p) {
    S* Sp = state + p * a.ss2;
    float* Sf;
    if constexpr (std::is_same_v<S, float>) {
      Sf = Sp;
    } else {
      Sf = row.data();
      for (int64_t n = 0; n < a.N; ++n) Sf[n] = cpu::widen(Sp[n]);
    }
    const float acc = decode_row(Sf, dA, dt * xh[p], Bg, Cg, a.N);
    if constexpr (!std::is_same_v<S, float>)
      for (int64_t n = 0; n < a.N; ++n) Sp[n] = cpu::narrow<S>(Sf[n]);
    yh[p] = acc + d * xh[p];
  }
}

// Per-thread buffers of phase 2, sized for chunks of up to Q tokens; reused across items and calls.
struct ChunkScratch {
  std::vector<float> buf;
  float *st, *xc, *yc, *xdec, *mask, *dt, *a, *seg, *ecs;
  int64_t ldp, ld_mask;  // leading dimensions of the [· × P] matrices and of the mask
  void size_for(int64_t Q, int64_t P, int64_t N) {
    const int64_t Qp = round_up(Q, cpu::kLanes);
    ldp = padded_ld(P);
    ld_mask = padded_ld(Qp);
    const int64_t need = N * ldp + 3 * Q * ldp + kTri * ld_mask + 4 * Qp;
    if (int64_t(buf.size()) < need) buf.resize(size_t(need));
    st = buf.data();        // Sᵀ [N × P]
    xc = st + N * ldp;      // the chunk's x [L × P]
    yc = xc + Q * ldp;      // the chunk's y [L × P], before it goes to the strided out
    xdec = yc + Q * ldp;    // e^{cs_last − cs_j} dt_j x_j [L × P]
    mask = xdec + Q * ldp;  // one row block of the masked CB [kTri × L]
    dt = mask + kTri * ld_mask;  // dt_i
    a = dt + Qp;            // dt_i · A
    seg = a + Qp;           // mask: a_{j+1} + … + a_i of the current row i; state: a_{j+1} + … + a_{L−1}
    ecs = seg + Qp;         // e^{cs_i}
  }
};

// Phase 2 for one prefill span and head: the chunks in order, carrying Sᵀ (in fp32 whatever S).
template <typename S>
void prefill_span(const SsdArgs& a, const SeqSpan& sp, int64_t h, const ChunkPlan* chunks, int64_t n_chunks,
                  const float* shared) {
  const int64_t g = h / (a.H / a.G), P = a.P, N = a.N;
  static thread_local ChunkScratch s;
  s.size_for(a.longest_chunk, P, N);
  const float A = a.A[h], d = a.D ? a.D[h] : 0.0f;
  S* state = static_cast<S*>(a.state) + sp.slot * a.ss0 + h * a.ss1;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t n = 0; n < N; ++n) s.st[n * s.ldp + p] = cpu::widen(state[p * a.ss2 + n]);

  for (int64_t ci = 0; ci < n_chunks; ++ci) {
    const ChunkPlan& c = chunks[ci];
    const int64_t L = c.len, Lp = round_up(L, cpu::kLanes);
    const int64_t ld = padded_ld(L);
    const float* bt = shared + c.offset + g * chunk_group_floats(L, N);
    const float* cb = bt + N * ld;
    const float* xh = a.x + c.t0 * a.xs0 + h * a.xs1;
    const float* Cg = a.C + c.t0 * a.Cs0 + g * a.Cs1;
    float* yh = a.out + c.t0 * a.os0 + h * a.os1;

    chunk_dt(a, h, c.t0, L, s.dt);  // zero-padded to Lp
    for (int64_t i = 0; i < Lp; ++i) s.a[i] = s.dt[i] * A;
    float cs = 0.0f;
    for (int64_t i = 0; i < Lp; ++i) s.ecs[i] = cs += s.a[i];
    for (int64_t i = 0; i < Lp; i += cpu::kLanes) cpu::store(s.ecs + i, decay(cpu::load(s.ecs + i)));

    // x and y of the chunk live in contiguous scratch while the products run: rows of x and
    // out are H·P floats apart, which maps a GEMM panel onto a few L1 sets (see padded_ld).
    for (int64_t i = 0; i < L; ++i) std::copy_n(xh + i * a.xs0, P, s.xc + i * s.ldp);

    // y = e^{cs_i} (C Sᵀ)_i
    cpu::small_gemm(L, P, N, Cg, a.Cs0, s.st, s.ldp, s.yc, s.ldp, false);
    for (int64_t i = 0; i < L; ++i) {
      float* yi = s.yc + i * s.ldp;
      const float e = s.ecs[i];
      for (int64_t p = 0; p < P; ++p) yi[p] *= e;
    }

    // y += (CB ∘ e^{cs_i − cs_j} ∘ dt_j, j ≤ i) · X, by row blocks up to the diagonal. Row i of
    // the segment sums is row i − 1 plus a_i, with seg[i] = 0 (set as −a_i before the add);
    // lanes past the diagonal hold leftovers and are masked out.
    for (int64_t r0 = 0; r0 < L; r0 += kTri) {
      const int64_t r1 = std::min(L, r0 + kTri), r1p = round_up(r1, cpu::kLanes);
      for (int64_t i = r0; i < r1; ++i) {
        float* mi = s.mask + (i - r0) * s.ld_mask;
        const float* cbi = cb + i * ld;
        s.seg[i] = -s.a[i];
        const cpu::VecF ai = cpu::splat(s.a[i]);
        const int64_t end = round_up(i + 1, cpu::kLanes);
        cpu::VecI lane;
        for (int k = 0; k < cpu::kLanes; ++k) lane[k] = k;
        for (int64_t j = 0; j < end; j += cpu::kLanes) {
          const cpu::VecF seg = cpu::load(s.seg + j) + ai;
          cpu::store(s.seg + j, seg);
          const cpu::VecF m = cpu::load(cbi + j) * decay(seg) * cpu::load(s.dt + j);
          cpu::store(mi + j, lane + int32_t(j) <= int32_t(i) ? m : cpu::VecF{});
        }
        for (int64_t j = end; j < r1p; ++j) mi[j] = 0.0f;
      }
      cpu::small_gemm(r1 - r0, P, r1, s.mask, s.ld_mask, s.xc, s.ldp, s.yc + r0 * s.ldp, s.ldp, true);
    }

    // out = y + D x
    for (int64_t i = 0; i < L; ++i) {
      const float* yi = s.yc + i * s.ldp;
      const float* xi = s.xc + i * s.ldp;
      float* oi = yh + i * a.os0;
      for (int64_t p = 0; p < P; ++p) oi[p] = yi[p] + d * xi[p];
    }

    // Sᵀ ← e^{cs_last} Sᵀ + Bᵀ · (e^{cs_last − cs_j} dt_j x_j)
    s.seg[L - 1] = 0.0f;
    for (int64_t j = L - 2; j >= 0; --j) s.seg[j] = s.seg[j + 1] + s.a[j + 1];
    for (int64_t j = 0; j < L; ++j) {
      const float w = decay(s.seg[j]) * s.dt[j];
      const float* xj = s.xc + j * s.ldp;
      float* dj = s.xdec + j * s.ldp;
      for (int64_t p = 0; p < P; ++p) dj[p] = w * xj[p];
    }
    const float chunk_decay = s.ecs[L - 1];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p) s.st[n * s.ldp + p] *= chunk_decay;
    cpu::small_gemm(N, P, L, bt, ld, s.xdec, s.ldp, s.st, s.ldp, true);
  }

  for (int64_t p = 0; p < P; ++p)
    for (int64_t n = 0; n < N; ++n) state[p * a.ss2 + n] = cpu::narrow<S>(s.st[n * s.ldp + p]);
}

// SsdGate: out = y * silu(z) * weight; the sum of (y * silu(z))^2, in order and in double, goes
// to column 0 of sumsq and zeros to the others (the CPU has one partial sum; the layout admits
// several so that a backend may split the sum).
void apply_gate(const SsdGate& g, const Tensor& out, int64_t T, int64_t channels) {
  const float* w = g.weight.f32();
  for (int64_t t = 0; t < T; ++t) {
    float* y = out.f32() + t * out.stride[0];  // [H, P] rows are contiguous (checked)
    const float* z = cpu::row(g.z, t);
    double sum = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      const float u = y[c] * (z[c] / (1.0f + std::exp(-z[c])));
      sum += double(u) * u;
      y[c] = u * w[c];
    }
    float* ss = cpu::row(g.sumsq, t);
    ss[0] = float(sum);
    std::fill(ss + 1, ss + g.sumsq.shape[1], 0.0f);
  }
}

}  // namespace

void CpuBackend::ssd(const SsdParams& p, const BatchView& batch) {
  const char* op = "ssd";
  const int64_t T = p.x.shape[0], H = p.x.shape[1], P = p.x.shape[2], G = p.B.shape[1], N = p.B.shape[2];
  cpu::check_tensor(p.x, {T, H, P}, op, "x");
  cpu::check_tensor(p.dt, {T, H}, op, "dt");
  cpu::check_tensor(p.A, {H}, op, "A");
  cpu::check_tensor(p.B, {T, G, N}, op, "B");
  cpu::check_tensor(p.C, {T, G, N}, op, "C");
  cpu::check_tensor(p.out, {T, H, P}, op, "out");
  const int64_t n_slots = p.state.shape[0];
  cpu::check_state(p.state, {n_slots, H, P, N}, op);
  STATELM_CHECK(G >= 1 && H % G == 0, "ssd: ", H, " heads do not split into ", G, " groups (B ", p.B.describe(), ")");
  STATELM_CHECK(p.chunk_size >= 1, "ssd: chunk_size ", p.chunk_size);
  STATELM_CHECK(!p.dt_limited || p.dt_min <= p.dt_max, "ssd: dt limits [", p.dt_min, ", ", p.dt_max, "]");
  const float* dt_bias = cpu::optional_vector(p.dt_bias, H, op, "dt_bias");
  const float* Dskip = cpu::optional_vector(p.D, H, op, "D");
  // The chunked path writes a chunk's outputs before it reads the chunk's x, B and C.
  for (const Tensor* in : {&p.x, &p.dt, &p.B, &p.C, &p.state})
    STATELM_CHECK(!cpu::overlaps(p.out, *in), "ssd: out ", p.out.describe(), " overlaps an input ", in->describe());
  if (p.gate.z.defined()) {
    cpu::check_2d(p.gate.z, T, H * P, "ssd gate z");
    cpu::check_tensor(p.gate.weight, {H * P}, op, "gate weight");
    cpu::check_2d(p.gate.sumsq, T, p.gate.sumsq.shape[1], "ssd gate sumsq");
    STATELM_CHECK(p.gate.sumsq.shape[1] >= 1, "ssd: gate sumsq has no column: ", p.gate.sumsq.describe());
    STATELM_CHECK(p.out.stride[1] == P && p.out.stride[2] == 1, "ssd: a gated out must have contiguous [H, P] rows, not ",
                  p.out.describe());
  }
  cpu::check_spans(batch, T, n_slots, op);
  if (batch.spans.empty()) return;

  SsdArgs a{p.x.f32(), p.dt.f32(), dt_bias, p.A.f32(), p.B.f32(), p.C.f32(), Dskip, p.out.f32(), p.state.data,
            H, P, G, N, p.chunk_size, 0,
            p.x.stride[0], p.x.stride[1], p.dt.stride[0], p.B.stride[0], p.B.stride[1], p.C.stride[0], p.C.stride[1],
            p.out.stride[0], p.out.stride[1], p.state.stride[0], p.state.stride[1], p.state.stride[2],
            p.dt_min, p.dt_max, p.dt_limited};

  // Plan the chunks of every prefill span; first_chunk[s] indexes span s's first chunk.
  static thread_local std::vector<ChunkPlan> chunks;
  static thread_local std::vector<int64_t> first_chunk;
  static thread_local std::vector<float> shared;
  const int64_t n_spans = int64_t(batch.spans.size());
  chunks.clear();
  first_chunk.assign(size_t(n_spans + 1), 0);
  int64_t total = 0;
  for (int64_t si = 0; si < n_spans; ++si) {
    const SeqSpan& sp = batch.spans[size_t(si)];
    first_chunk[size_t(si)] = int64_t(chunks.size());
    if (sp.len == 1) continue;
    for (int64_t t = 0; t < sp.len; t += a.Q) {
      const int64_t len = std::min(a.Q, int64_t(sp.len) - t);
      chunks.push_back({sp.start + t, len, total});
      a.longest_chunk = std::max(a.longest_chunk, len);
      total += G * chunk_group_floats(len, N);
    }
  }
  first_chunk[size_t(n_spans)] = int64_t(chunks.size());
  total += cpu::kLanes;  // a mask row reads CB up to one vector past its end
  if (int64_t(shared.size()) < total) shared.resize(size_t(total));
  const ChunkPlan* plan = chunks.data();
  const int64_t* first = first_chunk.data();
  float* sh = shared.data();
  const int64_t n_chunk_items = int64_t(chunks.size()) * G;
  const int64_t n_head_items = n_spans * H;

  cpu::with_state_type(p.state, op, [&](auto state_type) {
    using S = typename decltype(state_type)::type;
#pragma omp parallel if (T * H * P * N > 32768)
    {
      cpu::DenormalsAreZero daz;
#pragma omp for schedule(dynamic)
      for (int64_t item = 0; item < n_chunk_items; ++item) {
        const ChunkPlan& c = plan[item / G];
        const int64_t g = item % G;
        float* bt = sh + c.offset + g * chunk_group_floats(c.len, N);
        chunk_products(a, c, g, bt, bt + N * padded_ld(c.len));
      }
#pragma omp for schedule(dynamic)
      for (int64_t item = 0; item < n_head_items; ++item) {
        const int64_t si = item / H, h = item % H;
        const SeqSpan& sp = batch.spans[size_t(si)];
        if (sp.len == 1)
          decode_step<S>(a, sp, h);
        else
          prefill_span<S>(a, sp, h, plan + first[si], first[si + 1] - first[si], sh);
      }
    }
  });
  if (p.gate.z.defined()) apply_gate(p.gate, p.out, T, H * P);
}

}  // namespace statelm
