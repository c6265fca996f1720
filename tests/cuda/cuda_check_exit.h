// CUDA_CHECK_EXIT(call) for the standalone GPU checks (no gtest, no statelm error types): a CUDA
// error prints where it happened and ends the program with status 2, which the checks' own
// failures (status 1) never use.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CUDA_CHECK_EXIT(call)                                                               \
  do {                                                                                      \
    cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) {                                                                \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                         \
    }                                                                                       \
  } while (0)
