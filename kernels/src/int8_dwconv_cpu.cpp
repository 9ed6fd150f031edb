// CPU twin of the INT8 depthwise convolution (int8_dwconv.cu): channel multiplier 1, weights [C][kh][kw],
// exact int32 accumulation and the shared epilogue.
#include <cstddef>

#include "compressor_kernels/epilogue.h"
#include "compressor_kernels/int8_conv.h"

namespace ck {

void dwconv2d_int8_cpu(const ConvShape& s, const int8_t* x, const int8_t* w, const Epilogue& e) {
  const int ho = s.out_h(), wo = s.out_w(), c = s.cin;
  long long idx = 0;
  for (int n = 0; n < s.n; ++n) {
    for (int oh = 0; oh < ho; ++oh) {
      for (int ow = 0; ow < wo; ++ow) {
        for (int ch = 0; ch < c; ++ch, ++idx) {
          int32_t acc = 0;
          for (int r = 0; r < s.kh; ++r) {
            const int ih = oh * s.stride_h - s.pad_h + r;
            if (ih < 0 || ih >= s.h) continue;
            for (int q = 0; q < s.kw; ++q) {
              const int iw = ow * s.stride_w - s.pad_w + q;
              if (iw < 0 || iw >= s.w) continue;
              const std::ptrdiff_t xi = ((static_cast<std::ptrdiff_t>(n) * s.h + ih) * s.w + iw) * c + ch;
              acc += static_cast<int32_t>(x[xi]) * w[(static_cast<std::ptrdiff_t>(ch) * s.kh + r) * s.kw + q];
            }
          }
          apply_epilogue(e, acc, ch, idx);
        }
      }
    }
  }
}

}  // namespace ck
