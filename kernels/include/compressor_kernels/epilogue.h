// The fused epilogue, compiled into both the CPU twins and the CUDA kernels so their semantics cannot drift.
//
// Every floating-point step is pinned to one IEEE operation: an explicit fused multiply-add for the scale + bias
// and for the residual, a correctly rounded division by the output scale, and round-half-to-even (the IEEE
// default, same as torch.round and numpy.rint) before saturating to [-128, 127]. No step depends on compiler
// contraction or fast-math, so host and device agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "compressor_kernels/int8_conv.h"

namespace ck {

CK_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

CK_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Round half to even; the host relies on the default FE_TONEAREST rounding mode.
CK_HD float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

CK_HD int8_t saturate_int8(float v) {
  v = v < -128.0f ? -128.0f : v;
  v = v > 127.0f ? 127.0f : v;
  return static_cast<int8_t>(static_cast<int>(v));
}

// Applies the epilogue to one accumulator: output channel c, flat NHWC output index idx.
CK_HD void apply_epilogue(const Epilogue& e, int32_t acc, int c, long long idx) {
  float y = fma_rn(static_cast<float>(acc), e.scale[c], e.bias ? e.bias[c] : 0.0f);
  if (e.residual_i8) {
    y = fma_rn(e.residual_scale, static_cast<float>(e.residual_i8[idx]), y);
  } else if (e.residual_f32) {
    y = fma_rn(e.residual_scale, e.residual_f32[idx], y);
  }
  if (e.act != Activation::kNone) {
    y = y < 0.0f ? 0.0f : y;
    if (e.act == Activation::kRelu6) y = y > 6.0f ? 6.0f : y;
  }
  if (e.out_i8) {
    e.out_i8[idx] = saturate_int8(round_half_even(div_rn(y, e.out_scale)));
  } else {
    e.out_f32[idx] = y;
  }
}

}  // namespace ck
