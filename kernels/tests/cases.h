// Shared test cases and random data for the CPU-twin test and the CUDA-vs-twin test.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "compressor_kernels/int8_conv.h"

namespace ck_test {

enum Residual { kNoResidual = 0, kResidualI8 = 1, kResidualF32 = 2 };

// Rounding-tie cases. Their scales, biases and residual scales are powers of two or multiples of 0.25, so every
// step of the epilogue is exact in float32 and y / out_scale is a multiple of 0.5: the int8 output then depends
// only on how the tie is rounded (half to even) and saturated, with no float32-vs-float64 slack.
//   kTieValues: 1x1 conv over 5 pixels and 8 channels whose values land exactly on 0.5, 2.5, -0.5, 127.5 and
//               -128.5 (want 0, 2, 0, 127, -128), among other ties and integers.
//   kTieRandom: random operands with such scales; about half of all outputs are ties, some saturate.
enum Ties { kNoTies = 0, kTieValues = 1, kTieRandom = 2 };
constexpr double kTieTargets[5] = {0.5, 2.5, -0.5, 127.5, -128.5};

struct Case {
  const char* name;
  ck::ConvShape s;
  bool depthwise;
  ck::Activation act;
  Residual residual;
  bool out_i8;
  bool bias;
  float gain;  // multiplies the requantization scale; > 4 drives many outputs into saturation
  Ties ties = kNoTies;
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
      {"ties: 0.5 2.5 -0.5 127.5 -128.5", {1, 1, 5, 4, 8, 1, 1, 1, 1, 0, 0}, false, A::kNone, kNoResidual, true, true,
       1.f, kTieValues},
      {"ties: 16->16 3x3 int8 residual", {2, 8, 8, 16, 16, 3, 3, 1, 1, 1, 1}, false, A::kNone, kResidualI8, true,
       true, 1.f, kTieRandom},
      {"ties: 1x1 13->70 float residual", {2, 5, 6, 13, 70, 1, 1, 1, 1, 0, 0}, false, A::kRelu, kResidualF32, true,
       true, 1.f, kTieRandom},
      {"ties: dw 24 3x3 s2", {2, 9, 9, 24, 24, 3, 3, 2, 2, 1, 1}, true, A::kNone, kNoResidual, true, true, 1.f,
       kTieRandom},
  };
}

// Random operands for one case; `scale` gives typical |y / out_scale| around 40 before `gain`.
struct Data {
  std::vector<int8_t> x, w, res_i8;
  std::vector<float> scale, bias, res_f32;
  float out_scale = 0.05f, residual_scale = 0.04f;
  size_t out_count = 0;
};

// kTieValues: pixel p holds (v[p], 0, 0, 0) and every weight row is (1, 0, 0, 0), so acc = v[p]; with scale 0.25,
// out_scale 0.5 and the biases below, y / out_scale = v[p] / 2 + 2 * bias[c] (0.5, 2.5, -0.5 in channel 0, 127.5
// in channel 1, -128.5 in channel 2).
inline Data make_tie_values(const Case& c) {
  const ck::ConvShape& s = c.s;
  Data d;
  const int v[5] = {1, 5, -1, 127, -127};
  const float bias[8] = {0.f, 32.f, -32.5f, 0.25f, -0.25f, 1.25f, -1.75f, 63.75f};
  d.x.assign(static_cast<size_t>(s.n) * s.h * s.w * s.cin, 0);
  d.w.assign(static_cast<size_t>(s.cout) * s.cin, 0);
  for (size_t p = 0; p < 5; ++p) d.x[p * s.cin] = static_cast<int8_t>(v[p]);
  for (int co = 0; co < s.cout; ++co) d.w[static_cast<size_t>(co) * s.cin] = 1;
  d.scale.assign(s.cout, 0.25f);
  d.bias.assign(bias, bias + 8);
  d.out_scale = 0.5f;
  d.out_count = static_cast<size_t>(s.n) * s.out_h() * s.out_w() * s.cout;
  return d;
}

inline Data make_data(const Case& c, uint32_t seed) {
  if (c.ties == kTieValues) {
    const ck::ConvShape& s = c.s;
    if (s.n * s.h * s.w != 5 || s.kh != 1 || s.kw != 1 || s.cout != 8 || c.depthwise || c.residual != kNoResidual) {
      std::fprintf(stderr, "[%s] kTieValues needs a 1x1 dense conv over 5 pixels with 8 channels\n", c.name);
      std::exit(2);
    }
    return make_tie_values(c);
  }
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> i8(-128, 127);
  std::uniform_real_distribution<float> u(0.5f, 1.5f), sym(-1.f, 1.f);
  const ck::ConvShape& s = c.s;
  Data d;
  d.x.resize(static_cast<size_t>(s.n) * s.h * s.w * s.cin);
  const size_t k = static_cast<size_t>(s.kh) * s.kw * (c.depthwise ? 1 : s.cin);
  d.w.resize(k * s.cout);
  if (c.ties == kTieRandom) {
    // Small operands keep acc in the hundreds, so scales of 0.25 / 0.75 put y / out_scale on a 0.5 grid in the
    // int8 range and beyond (about half are ties, a few saturate).
    const int wmax = std::max(1, static_cast<int>(std::lround(45.0 / std::sqrt(static_cast<double>(k)))));
    std::uniform_int_distribution<int> small_x(-16, 15), small_w(-wmax, wmax);
    for (auto& v : d.x) v = static_cast<int8_t>(small_x(rng));
    for (auto& v : d.w) v = static_cast<int8_t>(small_w(rng));
  } else {
    for (auto& v : d.x) v = static_cast<int8_t>(i8(rng));
    for (auto& v : d.w) v = static_cast<int8_t>(i8(rng));
  }
  d.out_count = static_cast<size_t>(s.n) * s.out_h() * s.out_w() * s.cout;
  const float base = c.gain * 40.f * d.out_scale / (std::sqrt(static_cast<float>(k)) * 74.f * 74.f);
  if (c.ties == kTieRandom) {
    d.out_scale = 0.5f;
    d.residual_scale = 0.25f;
    std::uniform_int_distribution<int> quarters(-16, 16), pick(0, 1);
    for (int i = 0; i < s.cout; ++i) {
      d.scale.push_back(pick(rng) ? 0.75f : 0.25f);
      d.bias.push_back(0.25f * static_cast<float>(quarters(rng)));
    }
  } else {
    for (int i = 0; i < s.cout; ++i) {
      d.scale.push_back(base * u(rng));
      d.bias.push_back(2.f * sym(rng));
    }
  }
  if (c.residual == kResidualI8) {
    d.res_i8.resize(d.out_count);
    for (auto& v : d.res_i8) v = static_cast<int8_t>(i8(rng));
  } else if (c.residual == kResidualF32) {
    d.res_f32.resize(d.out_count);
    std::uniform_int_distribution<int> quarters(-12, 12);
    for (auto& v : d.res_f32) v = c.ties == kTieRandom ? 0.25f * static_cast<float>(quarters(rng)) : 3.f * sym(rng);
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
