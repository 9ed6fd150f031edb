// CPU twins against an independent float64 reference: exact integer accumulation, epilogue within float rounding,
// saturation at -128/127, odd channel counts, stride 2 and padding, and exact round-half-to-even on the tie cases
// (values landing on 0.5, 2.5, -0.5, 127.5, -128.5 and other x.5 before rounding). Exit code 0 on success (ctest).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cases.h"
#include "compressor_kernels/int8_conv.h"

namespace {

using ck_test::Case;
using ck_test::Data;

// Exact int64 accumulators of the convolution, NHWC output order.
std::vector<long long> reference_acc(const Case& c, const Data& d) {
  const ck::ConvShape& s = c.s;
  const int ho = s.out_h(), wo = s.out_w();
  std::vector<long long> acc(d.out_count, 0);
  size_t idx = 0;
  for (int n = 0; n < s.n; ++n)
    for (int oh = 0; oh < ho; ++oh)
      for (int ow = 0; ow < wo; ++ow)
        for (int co = 0; co < s.cout; ++co, ++idx)
          for (int r = 0; r < s.kh; ++r)
            for (int q = 0; q < s.kw; ++q) {
              const int ih = oh * s.stride_h + r - s.pad_h, iw = ow * s.stride_w + q - s.pad_w;
              if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
              const size_t pix = ((static_cast<size_t>(n) * s.h + ih) * s.w + iw) * s.cin;
              if (c.depthwise) {
                acc[idx] += static_cast<long long>(d.x[pix + co]) * d.w[(co * s.kh + r) * s.kw + q];
              } else {
                for (int ci = 0; ci < s.cin; ++ci)
                  acc[idx] += static_cast<long long>(d.x[pix + ci]) * d.w[((co * s.kh + r) * s.kw + q) * s.cin + ci];
              }
            }
  return acc;
}

void run(const Case& c, const Data& d, const ck::Epilogue& e) {
  const char* err = ck::validate(c.s, e, c.depthwise);
  if (*err) {
    std::fprintf(stderr, "invalid case %s: %s\n", c.name, err);
    std::exit(1);
  }
  (c.depthwise ? ck::dwconv2d_int8_cpu : ck::conv2d_int8_cpu)(c.s, d.x.data(), d.w.data(), e);
}

int check_case(const Case& c, uint32_t seed) {
  const Data d = ck_test::make_data(c, seed);
  const std::vector<long long> acc = reference_acc(c, d);
  int failures = 0;

  // 1. Integer accumulation is exact: unit scale, no bias/residual/activation, float output.
  {
    std::vector<float> ones(c.s.cout, 1.f), out(d.out_count, -1.f);
    ck::Epilogue e;
    e.scale = ones.data();
    e.out_f32 = out.data();
    run(c, d, e);
    for (size_t i = 0; i < out.size(); ++i) {
      if (static_cast<long long>(out[i]) != acc[i]) {
        std::fprintf(stderr, "[%s] accumulator %zu: got %.1f want %lld\n", c.name, i, out[i], acc[i]);
        return 1;
      }
    }
  }

  // 2. Full epilogue against float64.
  std::vector<int8_t> out_i8(d.out_count, 0x5A);
  std::vector<float> out_f32(d.out_count, -12345.f);
  const ck::Epilogue e = ck_test::make_epilogue(c, d, d.scale.data(), d.bias.data(), d.res_i8.data(),
                                                d.res_f32.data(), out_i8.data(), out_f32.data());
  run(c, d, e);
  size_t off_by_one = 0, lo = 0, hi = 0, saturated_ref = 0, ties = 0;
  bool target_seen[5] = {false, false, false, false, false};
  for (size_t i = 0; i < d.out_count; ++i) {
    const int co = static_cast<int>(i % c.s.cout);
    double y = static_cast<double>(acc[i]) * d.scale[co] + (c.bias ? d.bias[co] : 0.0);
    if (c.residual == ck_test::kResidualI8) y += static_cast<double>(d.residual_scale) * d.res_i8[i];
    if (c.residual == ck_test::kResidualF32) y += d.res_f32[i];
    if (c.act != ck::Activation::kNone) y = std::max(y, 0.0);
    if (c.act == ck::Activation::kRelu6) y = std::min(y, 6.0);
    if (c.out_i8) {
      const double scaled = y / d.out_scale;
      ties += std::fabs(scaled - std::trunc(scaled)) == 0.5;
      for (int t = 0; t < 5; ++t) target_seen[t] = target_seen[t] || scaled == ck_test::kTieTargets[t];
      const double q = std::nearbyint(scaled);
      const double want = std::min(127.0, std::max(-128.0, q));
      saturated_ref += (q > 127.0 || q < -128.0);
      const int got = out_i8[i];
      lo += got == -128;
      hi += got == 127;
      if (got != want) {
        if (std::fabs(got - want) > 1.0) {
          std::fprintf(stderr, "[%s] out %zu: got %d want %.0f (y=%.6f)\n", c.name, i, got, want, y);
          return 1;
        }
        ++off_by_one;  // float32 vs float64 epilogue at a rounding tie
      }
    } else if (std::fabs(out_f32[i] - y) > 1e-5 * std::max(1.0, std::fabs(y))) {
      std::fprintf(stderr, "[%s] out %zu: got %.7f want %.7f\n", c.name, i, out_f32[i], y);
      return 1;
    }
  }
  if (c.ties != ck_test::kNoTies) {
    // Every epilogue step is exact here, so float32 must match float64 everywhere, ties included.
    if (off_by_one != 0 || ties * 5 < d.out_count) {
      std::fprintf(stderr, "[%s] ties: %zu of %zu outputs are ties, %zu rounded differently from half-to-even\n",
                   c.name, ties, d.out_count, off_by_one);
      ++failures;
    }
    for (int t = 0; t < 5 && c.ties == ck_test::kTieValues; ++t) {
      if (!target_seen[t]) {
        std::fprintf(stderr, "[%s] no output lands on %g before rounding\n", c.name, ck_test::kTieTargets[t]);
        ++failures;
      }
    }
  }
  if (off_by_one * 200 > d.out_count) {
    std::fprintf(stderr, "[%s] %zu of %zu int8 outputs off by one\n", c.name, off_by_one, d.out_count);
    ++failures;
  }
  if (c.gain > 4.f && (lo == 0 || hi == 0 || saturated_ref == 0)) {
    std::fprintf(stderr, "[%s] saturation not exercised (-128: %zu, 127: %zu)\n", c.name, lo, hi);
    ++failures;
  }
  std::printf("%-34s %s  outputs=%zu off_by_one=%zu saturated(-128/127)=%zu/%zu ties=%zu\n", c.name,
              failures ? "FAIL" : "ok", d.out_count, off_by_one, lo, hi, ties);
  return failures;
}

// Rounding and saturation of the epilogue at exact ties: half-to-even and clamping.
int check_rounding() {
  const ck::ConvShape s{1, 1, 1, 1, 8, 1, 1, 1, 1, 0, 0};
  const int8_t x = 1;
  const std::vector<int8_t> w = {1, 1, 1, 1, 1, 1, 1, 1};
  // y = scale (acc = 1): y / 1.0 = 0.5, 1.5, 2.5, -0.5, -2.5, 127.5, -128.5, 1000
  const std::vector<float> scale = {0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 127.5f, -128.5f, 1000.f};
  const int8_t want[8] = {0, 2, 2, 0, -2, 127, -128, 127};
  std::vector<int8_t> out(8, 0x11);
  ck::Epilogue e;
  e.scale = scale.data();
  e.out_i8 = out.data();
  ck::conv2d_int8_cpu(s, &x, w.data(), e);
  for (int i = 0; i < 8; ++i) {
    if (out[i] != want[i]) {
      std::fprintf(stderr, "rounding %d: y=%g got %d want %d\n", i, scale[i], out[i], want[i]);
      return 1;
    }
  }
  std::printf("%-34s ok\n", "round-half-even + saturation");
  return 0;
}

}  // namespace

int main() {
  int failures = check_rounding();
  uint32_t seed = 1234;
  for (const Case& c : ck_test::cases()) failures += check_case(c, seed++);
  if (failures) std::fprintf(stderr, "%d failing checks\n", failures);
  return failures ? 1 : 0;
}
