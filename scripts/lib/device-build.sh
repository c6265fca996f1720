# shellcheck shell=bash disable=SC2154  # root, OUT and build come from the caller
# Building statelm on the GPU machine, shared by scripts/gpu-check and scripts/gpu-bench (sourced,
# not run). That machine has nvcc, CMake, ninja and a host compiler but none of Debian's -dev
# packages: scripts/pack-device-deps packs them here into .devhdr, carried with the device call.
#
# The caller sets root (the checkout), OUT (logs; build output goes to $OUT/build.log) and build
# (the CMake build folder), optionally jobs. Then:
#   device_machine_info                 GPU, driver, nvcc, CMake and host compiler versions
#   device_have_deps                    .devhdr is there (else says so and returns 1)
#   device_deps [--no-gtest]            the BLAS stand-in and GoogleTest under $build/deps; sets
#                                       omp_flags (OpenMP from .devhdr when the compiler lacks it)
#   device_configure_build "TARGETS" [CMAKE ARGS...]
#                                       configures against .devhdr (CUDA on, Release) and builds
#                                       TARGETS; prints the errors and returns 1 on failure
#   device_runtime_env                  LD_LIBRARY_PATH for the binaries just built

deps=${deps:-$root/.devhdr}
prefix=$build/deps
jobs=${jobs:-$(nproc)}
omp_flags=()

device_machine_info() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  nvcc --version | tail -n 2
  cmake --version | head -n 1
  ${CXX:-g++} --version | head -n 1
}

device_have_deps() {
  [ -d "$deps/include" ] && return 0
  echo "FAIL: $deps missing: run scripts/pack-device-deps here and carry .devhdr"
  return 1
}

device_deps() {
  local ok=0
  mkdir -p "$prefix/lib"
  cc -O2 -shared -fPIC -I"$deps/include" -o "$prefix/lib/libopenblas.so" "$deps/src/cblas_shim.c" || ok=1
  if [ "${1:-}" != --no-gtest ] && [ ! -f "$prefix/lib/cmake/GTest/GTestConfig.cmake" ]; then
    cmake -S "$deps/src/googletest" -B "$build/gtest" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
      -DINSTALL_GTEST=ON -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_POSITION_INDEPENDENT_CODE=ON > "$OUT/build.log" 2>&1 &&
      cmake --build "$build/gtest" -j"$jobs" >> "$OUT/build.log" 2>&1 &&
      cmake --install "$build/gtest" >> "$OUT/build.log" 2>&1 || { echo "FAIL: GoogleTest build (build.log)"; ok=1; }
  fi
  # OpenMP: the host compiler's own libgomp when it links, else the one packed from Debian.
  omp_flags=()
  if ! echo 'int main(){return 0;}' | ${CXX:-g++} -fopenmp -x c++ - -o /tmp/omp_probe 2>/dev/null; then
    echo "host compiler has no OpenMP runtime: using .devhdr/gomp"
    omp_flags=(-DOpenMP_CXX_FLAGS="-fopenmp -I$deps/gomp" -DOpenMP_CXX_LIB_NAMES=gomp -DOpenMP_gomp_LIBRARY="$deps/gomp/libgomp.so")
  fi
  return $ok
}

device_configure_build() {
  local targets=$1
  shift
  # The pc files point inside .devhdr; our own libopenblas.so goes first in the prefix path.
  mkdir -p "$prefix/lib/pkgconfig"
  sed "s|^prefix=.*|prefix=$prefix|" "$deps/lib/pkgconfig/openblas.pc" > "$prefix/lib/pkgconfig/openblas.pc"
  mkdir -p "$prefix/include" && cp "$deps/include/cblas.h" "$prefix/include/"
  export PKG_CONFIG_PATH=""
  cat > "$build/pkg-config" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$deps/lib" PKG_CONFIG_LIBDIR="$prefix/lib/pkgconfig:$deps/lib/pkgconfig" exec "$deps/bin/pkgconf" "\$@"
EOF
  chmod +x "$build/pkg-config"
  if ! cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTATELM_CUDA=ON "$@" \
      -DCMAKE_PREFIX_PATH="$prefix;$deps" -DPKG_CONFIG_EXECUTABLE="$build/pkg-config" \
      -DCMAKE_BUILD_RPATH="$deps/lib;$prefix/lib" "${omp_flags[@]}" >> "$OUT/build.log" 2>&1; then
    echo "FAIL: configure (build.log)"; tail -n 30 "$OUT/build.log"
    return 1
  fi
  # shellcheck disable=SC2086  # TARGETS is a space-separated list
  if ! cmake --build "$build" -j"$jobs" --target $targets >> "$OUT/build.log" 2>&1; then
    echo "FAIL: build (build.log)"; grep -E "error|FAILED" "$OUT/build.log" | head -n 40
    return 1
  fi
}

device_runtime_env() {
  export LD_LIBRARY_PATH="$deps/lib:$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
