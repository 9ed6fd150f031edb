// CPU twin of the dense INT8 implicit-GEMM convolution (int8_conv.cu): same layouts, exact int32 accumulation and
// the shared epilogue, so it is both the CPU backend of the torch op and the oracle for the CUDA kernel.
#include <cstddef>
#include <cstring>
#include <vector>

#include "compressor_kernels/epilogue.h"
#include "compressor_kernels/int8_conv.h"

namespace ck {
namespace {

// Integer dot product; on x86-64 GCC also emits an AVX2 clone picked at load time (integer math, so every clone
// returns the same value).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
int32_t dot_i8(const int8_t* a, const int8_t* b, std::ptrdiff_t n) {
  int32_t acc = 0;
  for (std::ptrdiff_t k = 0; k < n; ++k) acc += static_cast<int32_t>(a[k]) * b[k];
  return acc;
}

}  // namespace

const char* validate(const ConvShape& s, const Epilogue& e, bool depthwise) {
  if (s.n <= 0 || s.h <= 0 || s.w <= 0 || s.cin <= 0 || s.cout <= 0 || s.kh <= 0 || s.kw <= 0) {
    return "sizes must be positive";
  }
  if (s.stride_h <= 0 || s.stride_w <= 0 || s.pad_h < 0 || s.pad_w < 0) return "bad stride or padding";
  if (s.h + 2 * s.pad_h < s.kh || s.w + 2 * s.pad_w < s.kw) return "kernel larger than the padded input";
  if (depthwise && s.cin != s.cout) return "depthwise convolution needs cin == cout";
  if (!e.scale) return "scale is required";
  if ((e.out_i8 == nullptr) == (e.out_f32 == nullptr)) return "set exactly one of out_i8 and out_f32";
  if (e.residual_i8 && e.residual_f32) return "set at most one residual";
  if (e.out_i8 && !(e.out_scale > 0.0f)) return "out_scale must be positive";
  return "";
}

// Per output pixel, the receptive field is gathered once into a zero-padded patch laid out like a weight row
// ([kh][kw][Cin]), so every output channel is one contiguous int8 dot product the compiler vectorizes. Padded
// taps contribute exact zeros, so the int32 result equals the direct sum.
void conv2d_int8_cpu(const ConvShape& s, const int8_t* x, const int8_t* w, const Epilogue& e) {
  const int ho = s.out_h(), wo = s.out_w();
  const std::ptrdiff_t kvol = static_cast<std::ptrdiff_t>(s.kh) * s.kw * s.cin;
  std::vector<int8_t> patch(static_cast<size_t>(kvol));
  long long idx = 0;
  for (int n = 0; n < s.n; ++n) {
    for (int oh = 0; oh < ho; ++oh) {
      for (int ow = 0; ow < wo; ++ow) {
        int8_t* dst = patch.data();
        for (int r = 0; r < s.kh; ++r) {
          const int ih = oh * s.stride_h - s.pad_h + r;
          for (int q = 0; q < s.kw; ++q, dst += s.cin) {
            const int iw = ow * s.stride_w - s.pad_w + q;
            if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) {
              std::memset(dst, 0, static_cast<size_t>(s.cin));
            } else {
              std::memcpy(dst, x + ((static_cast<std::ptrdiff_t>(n) * s.h + ih) * s.w + iw) * s.cin,
                          static_cast<size_t>(s.cin));
            }
          }
        }
        for (int co = 0; co < s.cout; ++co, ++idx) {
          apply_epilogue(e, dot_i8(patch.data(), w + co * kvol, kvol), co, idx);
        }
      }
    }
  }
}

}  // namespace ck
