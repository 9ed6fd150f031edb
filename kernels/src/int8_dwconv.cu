// INT8 depthwise convolution (channel multiplier 1) with the fused requantization epilogue.
//
// Depthwise convolution does ~9 MACs per output, so it is bandwidth-bound: one thread per output element, with the
// channel index fastest so a warp reads and writes contiguous NHWC bytes. Same semantics as dwconv2d_int8_cpu.
#include <cuda_runtime.h>

#include "compressor_kernels/epilogue.h"
#include "compressor_kernels/int8_conv.h"

namespace ck {
namespace {

__global__ void dwconv2d_int8_direct(ConvShape s, const int8_t* __restrict__ x, const int8_t* __restrict__ w,
                                     Epilogue e) {
  const int ho = s.out_h(), wo = s.out_w(), c = s.cin;
  const long long total = static_cast<long long>(s.n) * ho * wo * c;
  for (long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int ch = static_cast<int>(idx % c);
    long long t = idx / c;
    const int ow = static_cast<int>(t % wo);
    t /= wo;
    const int oh = static_cast<int>(t % ho), n = static_cast<int>(t / ho);
    int32_t acc = 0;
    for (int r = 0; r < s.kh; ++r) {
      const int ih = oh * s.stride_h - s.pad_h + r;
      if (ih < 0 || ih >= s.h) continue;
      for (int q = 0; q < s.kw; ++q) {
        const int iw = ow * s.stride_w - s.pad_w + q;
        if (iw < 0 || iw >= s.w) continue;
        acc += static_cast<int32_t>(x[((static_cast<long long>(n) * s.h + ih) * s.w + iw) * c + ch]) *
               w[(ch * s.kh + r) * s.kw + q];
      }
    }
    apply_epilogue(e, acc, ch, idx);
  }
}

}  // namespace

int dwconv2d_int8_cuda(const ConvShape& s, const int8_t* x, const int8_t* w, const Epilogue& e, void* stream) {
  const long long total = static_cast<long long>(s.n) * s.out_h() * s.out_w() * s.cin;
  constexpr int threads = 256;
  const long long blocks = (total + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535LL * 32 ? blocks : 65535LL * 32);
  dwconv2d_int8_direct<<<grid, threads, 0, static_cast<cudaStream_t>(stream)>>>(s, x, w, e);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace ck
