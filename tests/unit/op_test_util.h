// Helpers shared by the op tests (test_ops_core.cpp, test_ops_ssm.cpp): random inputs, strided
// views of wide matrices, gathering views into flat arrays, and a relative-error assertion.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace statelm::test {

inline std::vector<float> random_vector(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Rows [start, start + len) of a view whose dimensions after the first are contiguous,
// as a contiguous array.
inline std::vector<float> gather(const Tensor& t, int64_t start, int64_t len) {
  const int64_t inner = t.numel() / t.shape[0];
  if (t.ndim == 3) {
    EXPECT_EQ(t.stride[1], t.shape[2]);
  }
  std::vector<float> v(size_t(len * inner));
  for (int64_t r = 0; r < len; ++r) std::copy_n(t.f32() + (start + r) * t.stride[0], inner, v.begin() + r * inner);
  return v;
}
inline std::vector<float> gather(const Tensor& t) { return gather(t, 0, t.shape[0]); }

// max |got − want| ≤ tol · max |want| (with a floor, for all-zero references).
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1e-6, err = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, double(std::fabs(want[i])));
    const double e = std::fabs(double(got[i]) - double(want[i]));
    if (!(e <= err)) {  // also catches NaN
      err = e;
      worst = i;
    }
  }
  EXPECT_LE(err, tol * scale) << what << ": worst at " << worst << " got " << got[worst] << " want " << want[worst]
                              << " (max |ref| " << scale << ")";
}

// A [rows, cols] matrix with slack columns on both sides, so views of it are row-strided.
struct Wide {
  std::vector<float> buf;
  Tensor full;
  Wide(std::mt19937& rng, int64_t rows, int64_t cols, float lo = -1.0f, float hi = 1.0f) {
    buf = random_vector(rng, size_t(rows * (cols + 5)), lo, hi);
    full = Tensor::contiguous(buf.data(), DType::F32, {rows, cols + 5}).cols(2, cols);
  }
  Tensor cols(int64_t begin, int64_t count) const { return full.cols(begin, count); }
};

}  // namespace statelm::test
