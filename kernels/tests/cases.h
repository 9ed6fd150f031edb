// Shared test cases and random data for the CPU-twin test and the CUDA-vs-twin test.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "compressor_kernels/int8_conv.h"

namespace ck_test {

enum Residual { kNoResidual = 0, kResidualI8 = 1, kResidualF32 = 2 };

struct Case {
  const char* name;
  ck::ConvShape s;
  bool depthwise;
  ck::Activation act;
  Residual residual;
  bool out_i8;
  bool bias;
  float gain;  // multiplies the requantization scale; > 4 drives many outputs into saturation
};

inline std::vector<Case> cases() {
  using A = ck::Activation;
  // ConvShape: n, h, w, cin, cout, kh, kw, stride_h, stride_w, pad_h, pad_w
  return {
      {"stem 3->16 3x3 s1 p1", {2, 8, 8, 3, 16, 3, 3, 1, 1, 1, 1}, false, A::kRelu, kNoResidual, true, true, 1.f},
      {"16->32 s2 p1 int8 residual relu", {2, 9, 9, 16, 32, 3, 3, 2, 2, 1, 1}, false, A::kRelu, kResidualI8, true,
       true, 1.f},
      {"odd 5->7 s2 relu6 float out", {1, 7, 9, 5, 7, 3, 3, 2, 2, 1, 1}, false, A::kRelu6, kNoResidual, false, true,
       1.f},
      {"1x1 13->70 float residual", {3, 5, 6, 13, 70, 1, 1, 1, 1, 0, 0}, false, A::kNone, kResidualF32, true, true,
       1.f},
      {"64->64 3x3 saturating", {2, 8, 8, 64, 64, 3, 3, 1, 1, 1, 1}, false, A::kNone, kNoResidual, true, true, 12.f},
      {"5x5 s(2,1) p2 6->9 no bias", {1, 11, 10, 6, 9, 5, 5, 2, 1, 2, 2}, false, A::kRelu, kResidualI8, true, false,
       1.f},
      {"7->130 3x3 s1 p0 relu6", {1, 6, 5, 7, 130, 3, 3, 1, 1, 0, 0}, false, A::kRelu6, kNoResidual, true, true, 1.f},
      {"dw 24 3x3 s1 relu6", {2, 8, 8, 24, 24, 3, 3, 1, 1, 1, 1}, true, A::kRelu6, kNoResidual, true, true, 1.f},
      {"dw 37 3x3 s2 float out", {1, 9, 7, 37, 37, 3, 3, 2, 2, 1, 1}, true, A::kNone, kNoResidual, false, true, 1.f},
      {"dw 19 3x3 residual saturating", {2, 6, 6, 19, 19, 3, 3, 1, 1, 1, 1}, true, A::kNone, kResidualI8, true, true,
       12.f},
  };
}

// Random operands for one case; `scale` gives typical |y / out_scale| around 40 before `gain`.
struct Data {
  std::vector<int8_t> x, w, res_i8;
  std::vector<float> scale, bias, res_f32;
  float out_scale = 0.05f, residual_scale = 0.04f;
  size_t out_count = 0;
};

inline Data make_data(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> i8(-128, 127);
  std::uniform_real_distribution<float> u(0.5f, 1.5f), sym(-1.f, 1.f);
  const ck::ConvShape& s = c.s;
  Data d;
  d.x.resize(static_cast<size_t>(s.n) * s.h * s.w * s.cin);
  const size_t k = static_cast<size_t>(s.kh) * s.kw * (c.depthwise ? 1 : s.cin);
  d.w.resize(k * s.cout);
  for (auto& v : d.x) v = static_cast<int8_t>(i8(rng));
  for (auto& v : d.w) v = static_cast<int8_t>(i8(rng));
  d.out_count = static_cast<size_t>(s.n) * s.out_h() * s.out_w() * s.cout;
  const float base = c.gain * 40.f * d.out_scale / (std::sqrt(static_cast<float>(k)) * 74.f * 74.f);
  for (int i = 0; i < s.cout; ++i) {
    d.scale.push_back(base * u(rng));
    d.bias.push_back(2.f * sym(rng));
  }
  if (c.residual == kResidualI8) {
    d.res_i8.resize(d.out_count);
    for (auto& v : d.res_i8) v = static_cast<int8_t>(i8(rng));
  } else if (c.residual == kResidualF32) {
    d.res_f32.resize(d.out_count);
    for (auto& v : d.res_f32) v = 3.f * sym(rng);
  }
  return d;
}

// Epilogue over host or device copies of the operands (the caller supplies the pointers).
inline ck::Epilogue make_epilogue(const Case& c, const Data& d, const float* scale, const float* bias,
                                  const int8_t* res_i8, const float* res_f32, int8_t* out_i8, float* out_f32) {
  ck::Epilogue e;
  e.scale = scale;
  e.bias = c.bias ? bias : nullptr;
  e.residual_i8 = c.residual == kResidualI8 ? res_i8 : nullptr;
  e.residual_f32 = c.residual == kResidualF32 ? res_f32 : nullptr;
  e.residual_scale = c.residual == kResidualF32 ? 1.f : d.residual_scale;
  e.act = c.act;
  e.out_scale = d.out_scale;
  e.out_i8 = c.out_i8 ? out_i8 : nullptr;
  e.out_f32 = c.out_i8 ? nullptr : out_f32;
  return e;
}

}  // namespace ck_test
