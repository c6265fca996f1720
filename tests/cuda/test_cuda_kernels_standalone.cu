// Kernel-level check of the CUDA launchers of cuda_kernels.h (conv1d, selective_scan, ssd,
// rope, attention) against plain double-precision loops on the host, on random inputs: odd
// sizes, row-strided views, mixed span lengths (decode, short, chunk ± 1, long), spans whose
// tokens sit in shuffled order in the flat batch, shuffled slots, continuing states and KV
// caches; every activation dtype (fp32, bf16) × state dtype (fp32, bf16, fp16). Prints the worst error of each case relative to
// the largest reference value and exits 1 if any is over its tolerance.
//
// Depends only on src/core and the kernel .cu files (not on CudaBackend), so it builds with one
// nvcc command on the GPU machine:
//   nvcc -std=c++20 -O2 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Isrc -Itests \
//     src/backend/cuda/{conv1d,selective_scan,ssd*,rope,attention*}.cu src/core/{error,dtype,tensor}.cpp \
//     tests/cuda/test_cuda_kernels_standalone.cu -o build-gpu/test_cuda_kernels && build-gpu/test_cuda_kernels
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numbers>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_common.h"
#include "cuda_check_exit.h"
#include "backend/cuda/cuda_kernels.h"
#include "unit/reference_ssm.h"

namespace statelm::cuda {
// Defined by the backend in the full build; this program links only the kernel files.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line, const std::string& op) {
  fail(ErrorKind::Internal, file, ":", line, ": ", call, ": ", cudaGetErrorString(err), " ", op);
}
}  // namespace statelm::cuda

namespace {

using namespace statelm;

#define CK(call) CUDA_CHECK_EXIT(call)

std::mt19937 rng(1234);
int failures = 0;

std::vector<float> rnd(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

float round_to(DType t, float v) {
  if (t == DType::BF16) return bf16_to_f32(f32_to_bf16(v));
  if (t == DType::F16) return f16_to_f32(f32_to_f16(v));
  return v;
}
void round_all(DType t, std::vector<float>& v) {
  for (auto& x : v) x = round_to(t, x);
}

// A device tensor of `rows` rows of `shape[1..]`, the rows `pad` elements apart beyond their
// size (a row-strided view, as the forward's column slices are).
struct Dev {
  Tensor t;
  void* mem = nullptr;
  std::vector<int64_t> shape;
  int64_t row_stride = 0, row_elems = 0;
  Dev(DType dt, std::vector<int64_t> shp, int64_t pad = 0) : shape(shp) {
    row_elems = 1;
    for (size_t i = 1; i < shp.size(); ++i) row_elems *= shp[i];
    row_stride = row_elems + pad;
    const size_t bytes = size_t(shp[0] * row_stride) * dtype_size(dt) + 64;
    CK(cudaMalloc(&mem, bytes));
    CK(cudaMemset(mem, 0xff, bytes));  // NaN-ish garbage in the padding
    t.data = mem;
    t.dtype = dt;
    t.device = Device::Cuda;
    t.ndim = int(shp.size());
    int64_t s = 1;
    for (int i = t.ndim - 1; i >= 1; --i) {
      t.shape[i] = shp[size_t(i)];
      t.stride[i] = s;
      s *= shp[size_t(i)];
    }
    t.shape[0] = shp[0];
    t.stride[0] = row_stride;
  }
  ~Dev() { cudaFree(mem); }
  Dev(const Dev&) = delete;
  void upload(const std::vector<float>& v) {  // v: dense rows
    const size_t es = dtype_size(t.dtype);
    std::vector<unsigned char> host(size_t(shape[0] * row_stride) * es, 0);
    for (int64_t r = 0; r < shape[0]; ++r)
      for (int64_t i = 0; i < row_elems; ++i) {
        const float x = v[size_t(r * row_elems + i)];
        unsigned char* dst = host.data() + size_t(r * row_stride + i) * es;
        if (es == 2) {
          const uint16_t b = t.dtype == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x);
          std::memcpy(dst, &b, 2);
        } else {
          std::memcpy(dst, &x, 4);
        }
      }
    CK(cudaMemcpy(mem, host.data(), host.size(), cudaMemcpyHostToDevice));
  }
  std::vector<float> download() const {
    const size_t es = dtype_size(t.dtype);
    std::vector<unsigned char> host(size_t(shape[0] * row_stride) * es);
    CK(cudaMemcpy(host.data(), mem, host.size(), cudaMemcpyDeviceToHost));
    std::vector<float> v(static_cast<size_t>(shape[0] * row_elems));
    for (int64_t r = 0; r < shape[0]; ++r)
      for (int64_t i = 0; i < row_elems; ++i) {
        const unsigned char* src = host.data() + size_t(r * row_stride + i) * es;
        if (es == 2) {
          uint16_t b;
          std::memcpy(&b, src, 2);
          v[size_t(r * row_elems + i)] = t.dtype == DType::BF16 ? bf16_to_f32(b) : f16_to_f32(b);
        } else {
          std::memcpy(&v[size_t(r * row_elems + i)], src, 4);
        }
      }
    return v;
  }
};

class TestScratch : public cuda::Scratch {
 public:
  ~TestScratch() override { cudaFree(p_); }
  void* get(size_t bytes) override {
    if (bytes > size_) {
      cudaFree(p_);
      CK(cudaMalloc(&p_, bytes));
      size_ = bytes;
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t size_ = 0;
};

// Spans of the given lengths, their tokens in shuffled order in the flat batch, shuffled slots.
struct Batch {
  std::vector<SeqSpan> spans;
  int64_t T = 0;
  SeqSpan* dev = nullptr;
  int n_slots = 0;
  Batch(const std::vector<int>& lens, int extra_slots, int max_pos) {
    std::vector<int> order(lens.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<int> starts(lens.size());
    int64_t t = 0;
    for (int i : order) {
      starts[size_t(i)] = int(t);
      t += lens[size_t(i)];
    }
    T = t;
    n_slots = int(lens.size()) + extra_slots;
    std::vector<int> slots(static_cast<size_t>(n_slots));
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    std::uniform_int_distribution<int> pos(0, max_pos);
    for (size_t i = 0; i < lens.size(); ++i) spans.push_back({starts[i], lens[i], slots[i], pos(rng)});
    CK(cudaMalloc(&dev, spans.size() * sizeof(SeqSpan)));
    CK(cudaMemcpy(dev, spans.data(), spans.size() * sizeof(SeqSpan), cudaMemcpyHostToDevice));
  }
  ~Batch() { cudaFree(dev); }
  BatchView view() const {
    BatchView b;
    b.n_tokens = T;
    b.spans = spans;
    b.device_spans = dev;
    return b;
  }
};

void report(const std::string& name, const std::vector<float>& got, const std::vector<float>& ref, double tol) {
  double max_ref = 1e-30, max_err = 0.0;
  size_t at = 0;
  bool nan = false;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, double(std::fabs(ref[i])));
    if (!std::isfinite(got[i])) nan = true;
    const double e = std::fabs(double(got[i]) - double(ref[i]));
    if (e > max_err) max_err = e, at = i;
  }
  const double rel = max_err / max_ref;
  const bool ok = !nan && rel <= tol;
  if (!ok) ++failures;
  std::printf("%-4s %-62s rel err %.2e (tol %.0e)%s", ok ? "ok" : "FAIL", name.c_str(), rel, tol, nan ? " NaN!" : "");
  if (!ok && !ref.empty()) std::printf("  [at %zu: got %g want %g]", at, got[at], ref[at]);
  std::printf("\n");
}

const char* dn(DType t) { return t == DType::BF16 ? "bf16" : t == DType::F16 ? "f16" : "f32"; }

// Rows [start, start + len) of a dense [T, inner] array.
std::vector<float> rows_of(const std::vector<float>& v, int64_t inner, int64_t start, int64_t len) {
  return std::vector<float>(v.begin() + start * inner, v.begin() + (start + len) * inner);
}
void put_rows(std::vector<float>& v, int64_t inner, int64_t start, const std::vector<float>& r) {
  std::copy(r.begin(), r.end(), v.begin() + start * inner);
}

// bf16 anywhere: 2e-2. An fp16 state is rounded once per span (≤ 2⁻¹¹ of its value) where the
// reference keeps it exact: 2e-3.
double tol_for(DType act, DType st, double f32_tol) {
  if (act == DType::BF16 || st == DType::BF16) return 2e-2;
  return st == DType::F16 ? std::max(f32_tol, 2e-3) : f32_tol;
}

// ---------------------------------------------------------------------------------------------
void test_conv1d(DType act, DType st, int C, int K, const std::vector<int>& lens) {
  Batch b(lens, 2, 0);
  const int hist = K - 1;
  auto x = rnd(size_t(b.T * C), -1, 1), w = rnd(size_t(C * K), -0.7f, 0.7f), bias = rnd(size_t(C), -0.5f, 0.5f);
  auto state = rnd(size_t(b.n_slots * C * hist), -1, 1);
  round_all(act, x);
  round_all(st, state);
  Dev dx(act, {b.T, C}, 7), dout(act, {b.T, C}, 3), dw(DType::F32, {C, K}), db(DType::F32, {C}),
      ds(st, {b.n_slots, C, hist});
  dx.upload(x);
  dw.upload(w);
  db.upload(bias);
  ds.upload(state);
  Conv1dParams p;
  p.x = dx.t;
  p.out = dout.t;
  p.weight = dw.t;
  p.bias = db.t;
  p.state = ds.t;
  p.silu = true;
  cuda::conv1d(p, b.view(), 0);
  CK(cudaDeviceSynchronize());
  std::vector<float> ref_out(size_t(b.T * C)), ref_state = state;
  for (const SeqSpan& s : b.spans) {
    std::vector<float> srow = rows_of(state, C * hist, s.slot, 1), o;
    ref::conv1d(rows_of(x, C, s.start, s.len), s.len, C, w, K, bias, true, srow, o);
    put_rows(ref_out, C, s.start, o);
    for (auto& v : srow) v = round_to(st, v);
    put_rows(ref_state, C * hist, s.slot, srow);
  }
  const std::string name = std::string("conv1d ") + dn(act) + " state " + dn(st) + " C=" + std::to_string(C) +
                           " K=" + std::to_string(K);
  report(name + " out", dout.download(), ref_out, tol_for(act, DType::F32, 1e-5));
  report(name + " state", ds.download(), ref_state, tol_for(act, st, 1e-6));
}

void test_selective_scan(DType act, DType st, int Di, int N, const std::vector<int>& lens) {
  Batch b(lens, 1, 0);
  auto u = rnd(size_t(b.T * Di), -1, 1), delta = rnd(size_t(b.T * Di), -3, 1), z = rnd(size_t(b.T * Di), -2, 2);
  auto B = rnd(size_t(b.T * N), -1, 1), C = rnd(size_t(b.T * N), -1, 1);
  auto dbias = rnd(size_t(Di), -1, 0.5f), A = rnd(size_t(Di * N), -2, -0.05f), D = rnd(size_t(Di), -1, 1);
  auto state = rnd(size_t(b.n_slots * Di * N), -1, 1);
  for (auto* v : {&u, &delta, &z, &B, &C}) round_all(act, *v);
  round_all(st, state);
  Dev du(act, {b.T, Di}, 5), ddelta(act, {b.T, Di}, 1), dz(act, {b.T, Di}, 9), dB(act, {b.T, N}, 2 * N),
      dC(act, {b.T, N}, N + 3), dout(act, {b.T, Di}), ddb(DType::F32, {Di}), dA(DType::F32, {Di, N}),
      dD(DType::F32, {Di}), ds(st, {b.n_slots, Di, N});
  du.upload(u), ddelta.upload(delta), dz.upload(z), dB.upload(B), dC.upload(C), ddb.upload(dbias), dA.upload(A),
      dD.upload(D), ds.upload(state);
  SelectiveScanParams p;
  p.u = du.t, p.delta = ddelta.t, p.z = dz.t, p.B = dB.t, p.C = dC.t, p.out = dout.t, p.delta_bias = ddb.t,
  p.A = dA.t, p.D = dD.t, p.state = ds.t;
  TestScratch scratch;
  cuda::selective_scan(p, b.view(), scratch, 0);
  CK(cudaDeviceSynchronize());
  std::vector<float> ref_out(size_t(b.T * Di)), ref_state = state;
  for (const SeqSpan& s : b.spans) {
    std::vector<float> srow = rows_of(state, Di * N, s.slot, 1), o;
    ref::selective_scan(rows_of(u, Di, s.start, s.len), rows_of(delta, Di, s.start, s.len), dbias, A,
                        rows_of(B, N, s.start, s.len), rows_of(C, N, s.start, s.len), D, rows_of(z, Di, s.start, s.len),
                        s.len, Di, N, srow, o);
    put_rows(ref_out, Di, s.start, o);
    put_rows(ref_state, Di * N, s.slot, srow);
  }
  std::string name = std::string("selective_scan ") + dn(act) + " state " + dn(st) + " Di=" + std::to_string(Di) +
                     " N=" + std::to_string(N) + " longest=" + std::to_string(*std::max_element(lens.begin(), lens.end()));
  report(name + " out", dout.download(), ref_out, tol_for(act, st, 1e-4));
  report(name + " state", ds.download(), ref_state, tol_for(act, st, 1e-4));
}

// aligned16: rows of x, B and C padded to multiples of 8 elements (the bf16 tensor-core path then
// stages them with 16-byte loads; otherwise it takes its element-wise staging).
void test_ssd(DType act, DType st, int H, int P, int G, int N, int chunk, bool limited, const std::vector<int>& lens,
              bool aligned16 = false) {
  Batch b(lens, 1, 0);
  auto x = rnd(size_t(b.T * H * P), -1, 1), dt = rnd(size_t(b.T * H), -4, 1);
  auto B = rnd(size_t(b.T * G * N), -1, 1), C = rnd(size_t(b.T * G * N), -1, 1);
  auto dtb = rnd(size_t(H), -1, 0.5f), A = rnd(size_t(H), -3, -0.2f), D = rnd(size_t(H), -1, 1);
  auto state = rnd(size_t(b.n_slots * H * P * N), -1, 1);
  for (auto* v : {&x, &dt, &B, &C}) round_all(act, *v);
  round_all(st, state);
  Dev dx(act, {b.T, H, P}, aligned16 ? 8 : 4), ddt(act, {b.T, H}, 3), dB(act, {b.T, G, N}, aligned16 ? 8 : 2 * G * N),
      dC(act, {b.T, G, N}, aligned16 ? 16 : 5),
      dout(act, {b.T, H, P}), ddtb(DType::F32, {H}), dA(DType::F32, {H}), dD(DType::F32, {H}),
      ds(st, {b.n_slots, H, P, N});
  dx.upload(x), ddt.upload(dt), dB.upload(B), dC.upload(C), ddtb.upload(dtb), dA.upload(A), dD.upload(D),
      ds.upload(state);
  SsdParams p;
  p.x = dx.t, p.dt = ddt.t, p.B = dB.t, p.C = dC.t, p.out = dout.t, p.dt_bias = ddtb.t, p.A = dA.t, p.D = dD.t,
  p.state = ds.t;
  p.chunk_size = chunk;
  p.dt_limited = limited;
  p.dt_min = 0.01f;
  p.dt_max = 0.5f;
  TestScratch scratch;
  cuda::ssd(p, b.view(), scratch, 0);
  CK(cudaDeviceSynchronize());
  std::vector<float> ref_out(size_t(b.T * H * P)), ref_state = state;
  for (const SeqSpan& s : b.spans) {
    std::vector<float> srow = rows_of(state, H * P * N, s.slot, 1), o;
    ref::SsdShape shape{s.len, H, P, G, N, limited, 0.01f, 0.5f};
    ref::ssd(shape, rows_of(x, H * P, s.start, s.len), rows_of(dt, H, s.start, s.len), dtb, A,
             rows_of(B, G * N, s.start, s.len), rows_of(C, G * N, s.start, s.len), D, srow, o);
    put_rows(ref_out, H * P, s.start, o);
    put_rows(ref_state, H * P * N, s.slot, srow);
  }
  std::string name = std::string("ssd ") + dn(act) + " state " + dn(st) + " H=" + std::to_string(H) +
                     " P=" + std::to_string(P) + " G=" + std::to_string(G) + " N=" + std::to_string(N) +
                     " Q=" + std::to_string(chunk) + (limited ? " dt-limited" : "") + (aligned16 ? " aligned" : "");
  report(name + " out", dout.download(), ref_out, tol_for(act, st, 1e-4));
  report(name + " state", ds.download(), ref_state, tol_for(act, st, 1e-4));
}

// inv_freq as the CPU computes it (cpu_attention.cpp).
std::vector<double> inv_freq(const RopeSpec& r) {
  std::vector<double> inv(static_cast<size_t>(r.rotary_dim / 2));
  for (int64_t i = 0; i < r.rotary_dim / 2; ++i) {
    float f = 1.0f / std::pow(float(r.theta), float(2 * i) / float(r.rotary_dim));
    if (r.kind == RopeKind::Linear) f = f / float(r.factor);
    if (r.kind == RopeKind::Llama3) {
      const double lw = double(r.original_max_position) / r.low_freq_factor;
      const double hw = double(r.original_max_position) / r.high_freq_factor;
      const double wl = 2.0 * std::numbers::pi / f;
      if (wl > lw)
        f = float(f / r.factor);
      else if (wl >= hw) {
        double sm = (double(r.original_max_position) / wl - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = float((1.0 - sm) * f / r.factor + sm * f);
      }
    }
    inv[size_t(i)] = f;
  }
  return inv;
}

void test_rope(DType act, RopeKind kind, int hq, int hkv, int dh, int rot, const std::vector<int>& lens) {
  Batch b(lens, 0, 3000);
  auto q = rnd(size_t(b.T * hq * dh), -1, 1), k = rnd(size_t(b.T * hkv * dh), -1, 1);
  round_all(act, q);
  round_all(act, k);
  Dev dq(act, {b.T, hq, dh}, 8), dk(act, {b.T, hkv, dh}, 2);
  dq.upload(q), dk.upload(k);
  RopeParams p;
  p.q = dq.t, p.k = dk.t;
  p.rope.kind = kind;
  p.rope.theta = 500000.0;
  p.rope.factor = 8.0;
  p.rope.rotary_dim = rot;
  cuda::rope(p, b.view(), 0);
  CK(cudaDeviceSynchronize());
  const auto inv = inv_freq(p.rope);
  auto rq = q, rk = k;
  for (const SeqSpan& s : b.spans)
    for (int t = 0; t < s.len; ++t) {
      const int64_t tok = s.start + t;
      for (int which = 0; which < 2; ++which) {
        auto& v = which ? rk : rq;
        const int heads = which ? hkv : hq;
        for (int h = 0; h < heads; ++h) {
          float* row = &v[size_t((tok * heads + h) * dh)];
          for (int i = 0; i < rot / 2; ++i) {
            const float f = float(inv[size_t(i)]) * float(s.pos + t);
            const double a = row[i], bb = row[i + rot / 2];
            row[i] = float(a * std::cos(double(f)) - bb * std::sin(double(f)));
            row[i + rot / 2] = float(bb * std::cos(double(f)) + a * std::sin(double(f)));
          }
        }
      }
    }
  std::string name = std::string("rope ") + dn(act) + (kind == RopeKind::Llama3 ? " llama3" : " default") +
                     " Hq=" + std::to_string(hq) + " Hkv=" + std::to_string(hkv) + " Dh=" + std::to_string(dh) +
                     " rot=" + std::to_string(rot);
  report(name + " q", dq.download(), rq, tol_for(act, DType::F32, 1e-5));
  report(name + " k", dk.download(), rk, tol_for(act, DType::F32, 1e-5));
}

void test_attention(DType act, int hq, int hkv, int dh, int block_size, const std::vector<int>& lens, int max_pos) {
  Batch b(lens, 0, max_pos);
  const int n_spans = int(b.spans.size());
  int max_blocks = 0;
  for (const SeqSpan& s : b.spans) max_blocks = std::max(max_blocks, (s.pos + s.len + block_size - 1) / block_size);
  const int n_blocks = n_spans * max_blocks + 3;
  // Block tables: a shuffled permutation of the cache blocks.
  std::vector<int32_t> perm(static_cast<size_t>(n_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(n_spans * max_blocks));
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = perm[i];
  int32_t* dtables;
  CK(cudaMalloc(&dtables, tables.size() * sizeof(int32_t)));
  CK(cudaMemcpy(dtables, tables.data(), tables.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  const size_t cache_elems = size_t(n_blocks) * block_size * hkv * dh;
  auto kc = rnd(cache_elems, -1, 1), vc = rnd(cache_elems, -1, 1);  // the earlier tokens' k, v
  auto q = rnd(size_t(b.T * hq * dh), -1, 1), k = rnd(size_t(b.T * hkv * dh), -1, 1), v = rnd(size_t(b.T * hkv * dh), -1, 1);
  for (auto* x : {&kc, &vc, &q, &k, &v}) round_all(act, *x);
  Dev dq(act, {b.T, hq, dh}, 3 * hkv * dh), dk(act, {b.T, hkv, dh}, 2), dv(act, {b.T, hkv, dh}, 5),
      dout(act, {b.T, hq, dh}), dkc(act, {n_blocks, block_size, hkv, dh}), dvc(act, {n_blocks, block_size, hkv, dh});
  dq.upload(q), dk.upload(k), dv.upload(v), dkc.upload(kc), dvc.upload(vc);
  AttentionParams p;
  p.q = dq.t, p.k = dk.t, p.v = dv.t, p.out = dout.t, p.k_cache = dkc.t, p.v_cache = dvc.t;
  p.scale = 1.0f / std::sqrt(float(dh));
  BatchView view = b.view();
  view.block_tables = tables.data();
  view.device_block_tables = dtables;
  view.max_blocks_per_seq = max_blocks;
  view.block_size = block_size;
  TestScratch scratch;
  cuda::attention(p, view, scratch, 0);
  CK(cudaDeviceSynchronize());
  // Reference: append, then attend.
  auto at = [&](int span, int pos, int g) {
    return size_t(((int64_t(tables[size_t(span * max_blocks + pos / block_size)]) * block_size + pos % block_size) * hkv + g) * dh);
  };
  for (int s = 0; s < n_spans; ++s)
    for (int t = 0; t < b.spans[size_t(s)].len; ++t)
      for (int g = 0; g < hkv; ++g)
        for (int d = 0; d < dh; ++d) {
          const int64_t tok = b.spans[size_t(s)].start + t;
          kc[at(s, b.spans[size_t(s)].pos + t, g) + size_t(d)] = k[size_t((tok * hkv + g) * dh + d)];
          vc[at(s, b.spans[size_t(s)].pos + t, g) + size_t(d)] = v[size_t((tok * hkv + g) * dh + d)];
        }
  std::vector<float> ref(static_cast<size_t>(b.T * hq * dh));
  const int group = hq / hkv;
  for (int s = 0; s < n_spans; ++s) {
    const SeqSpan& sp = b.spans[size_t(s)];
    for (int t = 0; t < sp.len; ++t)
      for (int h = 0; h < hq; ++h) {
        const int g = h / group, last = sp.pos + t;
        const int64_t tok = sp.start + t;
        std::vector<double> sc(static_cast<size_t>(last + 1));
        double mx = -1e300;
        for (int j = 0; j <= last; ++j) {
          double acc = 0;
          for (int d = 0; d < dh; ++d) acc += double(q[size_t((tok * hq + h) * dh + d)]) * kc[at(s, j, g) + size_t(d)];
          sc[size_t(j)] = acc * p.scale;
          mx = std::max(mx, sc[size_t(j)]);
        }
        double den = 0;
        for (auto& x : sc) den += x = std::exp(x - mx);
        for (int d = 0; d < dh; ++d) {
          double acc = 0;
          for (int j = 0; j <= last; ++j) acc += sc[size_t(j)] * vc[at(s, j, g) + size_t(d)];
          ref[size_t((tok * hq + h) * dh + d)] = float(acc / den);
        }
      }
  }
  std::string name = std::string("attention ") + dn(act) + " Hq=" + std::to_string(hq) + " Hkv=" + std::to_string(hkv) +
                     " Dh=" + std::to_string(dh) + " bs=" + std::to_string(block_size) + " max_pos=" + std::to_string(max_pos);
  report(name + " out", dout.download(), ref, tol_for(act, DType::F32, 1e-4));
  report(name + " k cache", dkc.download(), kc, 0.0);
  report(name + " v cache", dvc.download(), vc, 0.0);
  cudaFree(dtables);
}

}  // namespace

int main() {
  const std::vector<int> mixed = {1, 7, 33, 64, 65, 1, 130, 1, 2, 300};
  const DType dts[] = {DType::F32, DType::BF16};
  const DType state_dts[] = {DType::F32, DType::BF16, DType::F16};
  try {
    for (DType act : dts)
      for (DType st : state_dts) {
        test_conv1d(act, st, 67, 4, mixed);
        test_conv1d(act, st, 130, 3, {1, 1, 2, 1, 70});
        test_selective_scan(act, st, 70, 16, mixed);
        test_selective_scan(act, st, 37, 24, {1, 1000});  // one long span: the chunked scan
        test_selective_scan(act, st, 40, 64, {5, 1, 513});
        // Decode steps: the decode kernel (N / 4 a power of two up to 32) and the fallback (N = 12).
        test_selective_scan(act, st, 70, 16, {1, 1, 1, 1});
        test_selective_scan(act, st, 37, 128, {1, 1, 1});
        test_selective_scan(act, st, 33, 12, {1, 1});
        test_ssd(act, st, 6, 20, 2, 24, 32, false, mixed);
        test_ssd(act, st, 4, 64, 1, 128, 256, true, {1, 300, 1, 17});
        test_ssd(act, st, 3, 16, 3, 16, 64, false, {1, 1, 1});  // decode only
        // The 2.7B model's head shape, several full and partial chunks, 16-byte staging.
        test_ssd(act, st, 8, 64, 2, 128, 256, false, {700, 1, 257, 64, 2}, true);
        test_ssd(act, st, 4, 48, 1, 72, 128, true, {513, 90}, true);  // tiles cut at 48 / 72 columns
        // Q = 100 (a partial 32-token cumsum round) with P·N = 42 (state passing one element per
        // thread); Q = 300 (past the cumsum's 256-token segment, odd chunks of 77 and 41) with
        // P·N = 28 (4 elements per thread, straddling rows of N = 7).
        test_ssd(act, st, 5, 6, 1, 7, 100, true, {250, 1, 37, 3});
        test_ssd(act, st, 3, 4, 1, 7, 1000, false, {77, 1, 41, 300});
      }
    for (DType act : dts) {
      test_rope(act, RopeKind::Default, 4, 2, 64, 64, mixed);
      test_rope(act, RopeKind::Llama3, 8, 2, 128, 128, {1, 1, 40});
      test_rope(act, RopeKind::Default, 3, 1, 80, 40, {5, 1});  // partial rotary
      test_attention(act, 8, 2, 64, 16, mixed, 100);
      test_attention(act, 8, 1, 128, 16, {1, 1, 3}, 3000);  // decode, long contexts: split-K
      test_attention(act, 4, 4, 16, 32, {1, 90, 7}, 40);
      test_attention(act, 32, 4, 96, 16, {1, 20}, 700);
    }
  } catch (const std::exception& e) {
    std::printf("FAIL: exception %s\n", e.what());
    return 1;
  }
  std::printf(failures ? "FAILED: %d checks\n" : "PASSED\n", failures);
  return failures ? 1 : 0;
}
