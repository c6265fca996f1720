// Check of the wgmma primitives (src/backend/cuda/wgmma.cuh) on the GPU against host loops:
// for each operand form (A and B each K-major or MN-major) a 64 × 64 × 64 product of random
// bf16 tiles staged in the swizzled layout, with the descriptor strides of wgmma.cuh and the
// alternatives around them (printed, so a wrong convention shows which one the hardware wants).
// Also: accumulate = false ignores the old accumulators, chained products add up, and the form
// with A in registers (plain, and fed by a previous product's accumulators).
// Standalone (no gtest, no statelm library): scripts/gpu-check builds and runs it with
//   nvcc -std=c++20 -O2 -gencode=arch=compute_90a,code=sm_90a -Isrc tests/cuda/wgmma_check.cu
// Exit status 0 when wgmma.cuh's own strides give the right product for every form.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "backend/cuda/wgmma.cuh"
#include "cuda_check_exit.h"

namespace {

using statelm::cuda::wgmma::Major;
using statelm::cuda::wgmma::Strides;
namespace wg = statelm::cuda::wgmma;
using bf16 = __nv_bfloat16;

// d = passes · A · B, the first product with accumulate = false over accumulators of 1.
template <Major kA, Major kB>
__global__ void product_kernel(const bf16* a, const bf16* b, float* d, Strides sa, Strides sb, int passes) {
  __shared__ __align__(1024) bf16 ta[wg::kTileElems];
  __shared__ __align__(1024) bf16 tb[wg::kTileElems];
  for (int e = int(threadIdx.x); e < wg::kTileElems; e += wg::kThreads) {
    const int r = e / wg::kEdge, c = e % wg::kEdge;
    ta[wg::swizzled(r, c)] = a[e];
    tb[wg::swizzled(r, c)] = b[e];
  }
  wg::fence_stores();
  __syncthreads();
  wg::Acc acc;
  for (float& v : acc.d) v = 1.0f;
  wg::fence();
  for (int p = 0; p < passes; ++p)
    wg::tile_mma_async<kA, kB>(wg::descriptor(ta, sa), wg::descriptor(tb, sb), acc, p > 0);
  wg::commit();
  wg::wait<0>();
  wg::fence_operands(acc);
  const wg::Coord c;
  for (int i = 0; i < 32; ++i) d[c.row(i) * wg::kEdge + c.col(i)] = acc.d[i];
}


// A from registers: d = A · B with this thread's A fragments read straight from the row-major
// 64 × 64 A in global memory; chained: d = bf16(A · B) · B2, the first product (shared-memory A,
// K-major) handed to the second as register fragments (a_fragment), as attention does with P.
template <Major kB>
__global__ void register_a_kernel(const bf16* a, const bf16* b, const bf16* b2, float* d, bool chained) {
  __shared__ __align__(1024) bf16 ta[wg::kTileElems];
  __shared__ __align__(1024) bf16 tb[wg::kTileElems];
  __shared__ __align__(1024) bf16 tb2[wg::kTileElems];
  for (int e = int(threadIdx.x); e < wg::kTileElems; e += wg::kThreads) {
    const int r = e / wg::kEdge, c = e % wg::kEdge;
    ta[wg::swizzled(r, c)] = a[e];
    tb[wg::swizzled(r, c)] = b[e];
    tb2[wg::swizzled(r, c)] = b2[e];
  }
  wg::fence_stores();
  __syncthreads();
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  wg::Acc acc;
  wg::zero(acc);
  if (!chained) {
    uint32_t frag[4][4];
    for (int step = 0; step < 4; ++step)
      for (int r = 0; r < 4; ++r) {
        const int row = 16 * warp + lane / 4 + 8 * (r % 2), k = 16 * step + 2 * (lane % 4) + 8 * (r / 2);
        const __nv_bfloat162 h = __halves2bfloat162(a[row * wg::kEdge + k], a[row * wg::kEdge + k + 1]);
        frag[step][r] = *reinterpret_cast<const uint32_t*>(&h);
      }
    wg::fence();
    for (int step = 0; step < 4; ++step)
      wg::mma_async<kB>(frag[step], wg::descriptor(tb) + (step * wg::kStepBytes<kB> >> 4), acc, step > 0);
    wg::commit();
    wg::wait_all(acc);
  } else {
    wg::Acc first;
    wg::zero(first);
    wg::tile_mma_issue<Major::K, Major::K>(ta, tb, first);
    wg::wait_all(first);
    uint32_t frag[4][4];
    for (int step = 0; step < 4; ++step) wg::a_fragment(first, step, frag[step]);
    wg::fence();
    for (int step = 0; step < 4; ++step)
      wg::mma_async<kB>(frag[step], wg::descriptor(tb2) + (step * wg::kStepBytes<kB> >> 4), acc, step > 0);
    wg::commit();
    wg::wait_all(acc);
  }
  const wg::Coord c;
  for (int i = 0; i < 32; ++i) d[c.row(i) * wg::kEdge + c.col(i)] = acc.d[i];
}

const char* name(Major m) { return m == Major::K ? "K-major" : "MN-major"; }

// Max |error| of the GPU product against a double-precision host product.
template <Major kA, Major kB>
double run_case(const std::vector<bf16>& ha, const std::vector<bf16>& hb, Strides sa, Strides sb, int passes) {
  const int n = wg::kTileElems;
  bf16 *da, *db;
  float* dd;
  CUDA_CHECK_EXIT(cudaMalloc(&da, n * sizeof(bf16)));
  CUDA_CHECK_EXIT(cudaMalloc(&db, n * sizeof(bf16)));
  CUDA_CHECK_EXIT(cudaMalloc(&dd, n * sizeof(float)));
  CUDA_CHECK_EXIT(cudaMemcpy(da, ha.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
  CUDA_CHECK_EXIT(cudaMemcpy(db, hb.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
  CUDA_CHECK_EXIT(cudaMemset(dd, 0xff, n * sizeof(float)));  // NaN: an element never written fails
  product_kernel<kA, kB><<<1, wg::kThreads>>>(da, db, dd, sa, sb, passes);
  CUDA_CHECK_EXIT(cudaGetLastError());
  CUDA_CHECK_EXIT(cudaDeviceSynchronize());
  std::vector<float> got(n);
  CUDA_CHECK_EXIT(cudaMemcpy(got.data(), dd, n * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK_EXIT(cudaFree(da));
  CUDA_CHECK_EXIT(cudaFree(db));
  CUDA_CHECK_EXIT(cudaFree(dd));
  const int E = wg::kEdge;
  double worst = 0;
  for (int m = 0; m < E; ++m)
    for (int j = 0; j < E; ++j) {
      double want = 0;
      for (int k = 0; k < E; ++k) {
        const double x = __bfloat162float(kA == Major::K ? ha[m * E + k] : ha[k * E + m]);
        const double y = __bfloat162float(kB == Major::K ? hb[j * E + k] : hb[k * E + j]);
        want += x * y;
      }
      const double err = std::fabs(got[m * E + j] - passes * want);
      worst = std::isnan(err) ? INFINITY : std::max(worst, err);
    }
  return worst;
}

template <Major kA, Major kB>
bool check_form(std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<bf16> ha(wg::kTileElems), hb(wg::kTileElems);
  for (auto& v : ha) v = __float2bfloat16(u(rng));
  for (auto& v : hb) v = __float2bfloat16(u(rng));
  const double tol = 1e-3;
  // The strides in wgmma.cuh, one and two chained products.
  bool ok = true;
  for (int passes : {1, 2}) {
    const double err = run_case<kA, kB>(ha, hb, wg::kStrides, wg::kStrides, passes);
    const bool pass = err < tol * passes;
    std::printf("%s A %s, B %s, %d product(s), strides lbo %u sbo %u: max error %.3g\n", pass ? "ok  " : "FAIL",
                name(kA), name(kB), passes, wg::kStrides.lbo, wg::kStrides.sbo, err);
    ok = ok && pass;
  }
  if (!ok) {  // which convention would have worked
    const Strides candidates[] = {{16, 1024},   {1024, 16},   {8192, 1024}, {1024, 8192},
                                  {2048, 1024}, {1024, 2048}, {128, 1024}};
    for (Strides sa : candidates)
      for (Strides sb : candidates)
        if (run_case<kA, kB>(ha, hb, sa, sb, 1) < tol)
          std::printf("     works with A lbo %u sbo %u, B lbo %u sbo %u\n", sa.lbo, sa.sbo, sb.lbo, sb.sbo);
  }
  return ok;
}


// The register-A form against host loops, plain and chained (B K-major or MN-major).
template <Major kB>
bool check_register_a(std::mt19937& rng) {
  const int E = wg::kEdge, n = wg::kTileElems;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<bf16> ha(n), hb(n), hb2(n);
  for (auto* v : {&ha, &hb, &hb2})
    for (auto& x : *v) x = __float2bfloat16(u(rng));
  const auto at = [&](const std::vector<bf16>& m, int row, int col) { return double(__bfloat162float(m[row * E + col])); };
  // B's element (k, j) as the kernel's descriptor reads it.
  const auto bk = [&](const std::vector<bf16>& m, int k, int j) { return kB == Major::K ? at(m, j, k) : at(m, k, j); };
  bf16 *da, *db, *db2;
  float* dd;
  CUDA_CHECK_EXIT(cudaMalloc(&da, n * sizeof(bf16)));
  CUDA_CHECK_EXIT(cudaMalloc(&db, n * sizeof(bf16)));
  CUDA_CHECK_EXIT(cudaMalloc(&db2, n * sizeof(bf16)));
  CUDA_CHECK_EXIT(cudaMalloc(&dd, n * sizeof(float)));
  CUDA_CHECK_EXIT(cudaMemcpy(da, ha.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
  CUDA_CHECK_EXIT(cudaMemcpy(db, hb.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
  CUDA_CHECK_EXIT(cudaMemcpy(db2, hb2.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
  bool ok = true;
  for (bool chained : {false, true}) {
    CUDA_CHECK_EXIT(cudaMemset(dd, 0xff, n * sizeof(float)));
    register_a_kernel<kB><<<1, wg::kThreads>>>(da, db, db2, dd, chained);
    CUDA_CHECK_EXIT(cudaGetLastError());
    CUDA_CHECK_EXIT(cudaDeviceSynchronize());
    std::vector<float> got(n);
    CUDA_CHECK_EXIT(cudaMemcpy(got.data(), dd, n * sizeof(float), cudaMemcpyDeviceToHost));
    std::vector<double> lhs(n);  // the A the second (or only) product multiplies
    for (int m = 0; m < E; ++m)
      for (int k = 0; k < E; ++k) {
        if (!chained) {
          lhs[m * E + k] = at(ha, m, k);
        } else {  // first = A · Bᵀ (both K-major), rounded to bf16 as a_fragment does
          double f = 0;
          for (int q = 0; q < E; ++q) f += at(ha, m, q) * at(hb, k, q);
          lhs[m * E + k] = double(__bfloat162float(__float2bfloat16(float(f))));
        }
      }
    const std::vector<bf16>& rhs = chained ? hb2 : hb;
    double worst = 0, scale = 0;
    for (int m = 0; m < E; ++m)
      for (int j = 0; j < E; ++j) {
        double want = 0;
        for (int k = 0; k < E; ++k) want += lhs[m * E + k] * bk(rhs, k, j);
        const double err = std::fabs(got[m * E + j] - want);
        worst = std::isnan(err) ? INFINITY : std::max(worst, err);
        scale = std::max(scale, std::fabs(want));
      }
    // Chained: the first product's rounding to bf16 may differ by one ulp (fp32 sums in another order).
    const double tol = chained ? 1e-2 * std::max(1.0, scale) : 1e-3;
    const bool pass = worst < tol;
    std::printf("%s A from registers, B %s%s: max error %.3g\n", pass ? "ok  " : "FAIL", name(kB),
                chained ? ", chained after a K-major product" : "", worst);
    ok = ok && pass;
  }
  CUDA_CHECK_EXIT(cudaFree(da));
  CUDA_CHECK_EXIT(cudaFree(db));
  CUDA_CHECK_EXIT(cudaFree(db2));
  CUDA_CHECK_EXIT(cudaFree(dd));
  return ok;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  bool ok = check_form<Major::K, Major::K>(rng);
  ok = check_form<Major::K, Major::MN>(rng) && ok;
  ok = check_form<Major::MN, Major::K>(rng) && ok;
  ok = check_form<Major::MN, Major::MN>(rng) && ok;
  ok = check_register_a<Major::K>(rng) && ok;
  ok = check_register_a<Major::MN>(rng) && ok;
  std::printf("wgmma_check: %s\n", ok ? "all passed" : "FAILED");
  return ok ? 0 : 1;
}
