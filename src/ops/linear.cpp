// Backend::linear composed of the backend's own ops: the input transform into in_scratch, the
// matmul, and (accumulate) the product added to out. What a backend without a fused kernel for a
// case runs; the CPU backend runs it always.
#include "core/error.h"
#include "ops/ops.h"

namespace statelm {

Tensor Backend::linear_input(const LinearParams& p) {
  switch (p.input) {
    case LinearInput::Plain:
      return p.x;
    case LinearInput::RmsNorm:
      rms_norm(p.x, p.norm_weight, p.norm_eps, p.in_scratch);
      return p.in_scratch;
    case LinearInput::GatedRmsNorm:
      gated_rms_norm(p.x, p.gate, p.norm_weight, p.norm_group, p.norm_eps, p.in_scratch);
      return p.in_scratch;
    case LinearInput::SwiGlu:
      swiglu(p.x, p.in_scratch);
      return p.in_scratch;
  }
  fail(ErrorKind::InvalidArgument, "linear: unknown input transform ", int(p.input));
}

void Backend::linear(const LinearParams& p) {
  const Tensor in = linear_input(p);
  if (!p.accumulate) return matmul(in, p.w, p.bias, p.out);
  STATELM_CHECK(p.out_scratch.defined(), "linear: accumulating needs out_scratch for the product");
  matmul(in, p.w, p.bias, p.out_scratch);
  add(p.out, p.out_scratch);
}

}  // namespace statelm
