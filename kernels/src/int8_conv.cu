// INT8 convolution as an implicit GEMM with __dp4a accumulation and the fused requantization epilogue.
//
// GEMM view: M = N*Ho*Wo output pixels, N = Cout, K = kh*kw*Cin4 where Cin4 is Cin rounded up to a multiple of 4;
// the padded channels read as zero inside the kernel, so any Cin works and every 4-byte K group lies in one
// (r, s) tap. A 256-thread block computes a 64x64 output tile, staging 32 bytes of K per step in shared memory
// as packed int32 words; each thread owns a 4x4 sub-tile. Same semantics as conv2d_int8_cpu (CPU twin).
#include <cuda_runtime.h>

#include <cstdint>

#include "compressor_kernels/epilogue.h"
#include "compressor_kernels/int8_conv.h"

namespace ck {
namespace {

constexpr int kBM = 64, kBN = 64, kBKW = 8, kThreads = 256;

// Four consecutive channels [c, c+4) of one NHWC pixel (or one weight tap) as a packed word, zero past cin.
// `vec` (set by the launcher when cin % 4 == 0 and both base pointers are 4-byte aligned) allows one 32-bit load.
__device__ __forceinline__ int load_word(const int8_t* p, int c, int cin, bool vec) {
  if (vec) return *reinterpret_cast<const int*>(p + c);
  unsigned v = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (c + j < cin) v |= (static_cast<unsigned>(static_cast<uint8_t>(p[c + j])) << (8 * j));
  }
  return static_cast<int>(v);
}

__global__ void __launch_bounds__(kThreads)
conv2d_int8_dp4a(ConvShape s, const int8_t* __restrict__ x, const int8_t* __restrict__ w, Epilogue e, bool vec) {
  __shared__ int a_tile[kBKW][kBM + 1];
  __shared__ int b_tile[kBKW][kBN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int ho = s.out_h(), wo = s.out_w();
  const long long m_total = static_cast<long long>(s.n) * ho * wo;
  const long long m0 = static_cast<long long>(blockIdx.x) * kBM;
  const int n0 = blockIdx.y * kBN;
  const int words_per_tap = (s.cin + 3) / 4;
  const int k_words = s.kh * s.kw * words_per_tap;
  const long long w_stride = static_cast<long long>(s.kh) * s.kw * s.cin;

  int acc[4][4] = {};
  for (int k0 = 0; k0 < k_words; k0 += kBKW) {
    // Consecutive threads read consecutive words of one pixel, so NHWC loads are contiguous.
    for (int l = tid; l < kBKW * kBM; l += kThreads) {
      const int kk = l % kBKW, mm = l / kBKW, kw_idx = k0 + kk;
      const long long m = m0 + mm;
      int v = 0;
      if (kw_idx < k_words && m < m_total) {
        const int tap = kw_idx / words_per_tap, c = (kw_idx % words_per_tap) * 4;
        const int r = tap / s.kw, q = tap % s.kw;
        const int ow = static_cast<int>(m % wo);
        const long long t = m / wo;
        const int oh = static_cast<int>(t % ho), n = static_cast<int>(t / ho);
        const int ih = oh * s.stride_h - s.pad_h + r, iw = ow * s.stride_w - s.pad_w + q;
        if (ih >= 0 && ih < s.h && iw >= 0 && iw < s.w) {
          v = load_word(x + ((static_cast<long long>(n) * s.h + ih) * s.w + iw) * s.cin, c, s.cin, vec);
        }
      }
      a_tile[kk][mm] = v;
    }
    for (int l = tid; l < kBKW * kBN; l += kThreads) {
      const int kk = l % kBKW, nn = l / kBKW, kw_idx = k0 + kk, co = n0 + nn;
      int v = 0;
      if (kw_idx < k_words && co < s.cout) {
        const int tap = kw_idx / words_per_tap, c = (kw_idx % words_per_tap) * 4;
        v = load_word(w + co * w_stride + static_cast<long long>(tap) * s.cin, c, s.cin, vec);
      }
      b_tile[kk][nn] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBKW; ++kk) {
      int a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = a_tile[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = b_tile[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const long long m = m0 + ty + 16 * i;
    if (m >= m_total) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int co = n0 + tx + 16 * j;
      if (co < s.cout) apply_epilogue(e, acc[i][j], co, m * s.cout + co);
    }
  }
}

}  // namespace

int conv2d_int8_cuda(const ConvShape& s, const int8_t* x, const int8_t* w, const Epilogue& e, void* stream) {
  const long long m_total = static_cast<long long>(s.n) * s.out_h() * s.out_w();
  const dim3 grid(static_cast<unsigned>((m_total + kBM - 1) / kBM), static_cast<unsigned>((s.cout + kBN - 1) / kBN));
  const bool vec = (s.cin % 4 == 0) && (reinterpret_cast<uintptr_t>(x) % 4 == 0) &&
                   (reinterpret_cast<uintptr_t>(w) % 4 == 0);
  conv2d_int8_dp4a<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(s, x, w, e, vec);
  return static_cast<int>(cudaGetLastError());
}

const char* cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace ck
