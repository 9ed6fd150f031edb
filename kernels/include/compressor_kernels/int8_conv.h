// Fused INT8 convolution kernels: public C++ API shared by the CPU twins, the CUDA kernels and the torch ops.
//
// Layouts: activations NHWC int8; dense weights [Cout][kh][kw][Cin] int8; depthwise weights [C][kh][kw] int8
// (channel multiplier 1). Accumulation is exact int32. The epilogue (epilogue.h) is one shared function, so the
// CPU twin and the CUDA kernel compute bit-identical outputs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CK_HD __host__ __device__ __forceinline__
#else
#define CK_HD inline
#endif

namespace ck {

enum class Activation : int { kNone = 0, kRelu = 1, kRelu6 = 2 };

struct ConvShape {
  int n, h, w;        // input batch and spatial size
  int cin, cout;      // channels; depthwise requires cin == cout
  int kh, kw;         // kernel size
  int stride_h, stride_w;
  int pad_h, pad_w;   // zero padding on each side

  CK_HD int out_h() const { return (h + 2 * pad_h - kh) / stride_h + 1; }
  CK_HD int out_w() const { return (w + 2 * pad_w - kw) / stride_w + 1; }
};

// Per-output-channel requantization: y = acc * scale[c] + bias[c]; y += residual_scale * residual;
// y = act(y); then either out_f32 = y, or out_i8 = saturate(round_half_even(y / out_scale)) in [-128, 127].
// Exactly one of out_i8 / out_f32 is set; at most one of residual_i8 / residual_f32. Residuals and outputs are
// NHWC tensors of the output's shape.
struct Epilogue {
  const float* scale = nullptr;          // [cout], required
  const float* bias = nullptr;           // [cout] or nullptr
  const int8_t* residual_i8 = nullptr;
  const float* residual_f32 = nullptr;
  float residual_scale = 1.0f;
  Activation act = Activation::kNone;
  float out_scale = 1.0f;                // used only with out_i8
  int8_t* out_i8 = nullptr;
  float* out_f32 = nullptr;
};

// Returns an empty string when the arguments are valid, else a message naming the problem.
const char* validate(const ConvShape& s, const Epilogue& e, bool depthwise);

void conv2d_int8_cpu(const ConvShape& s, const int8_t* x, const int8_t* w, const Epilogue& e);
void dwconv2d_int8_cpu(const ConvShape& s, const int8_t* x, const int8_t* w, const Epilogue& e);

// CUDA launches on `stream` (a cudaStream_t, nullptr = legacy default stream); all pointers are device pointers.
// Return the cudaError_t of the launch as int (0 = success). Defined only in the CUDA library.
int conv2d_int8_cuda(const ConvShape& s, const int8_t* x, const int8_t* w, const Epilogue& e, void* stream);
int dwconv2d_int8_cuda(const ConvShape& s, const int8_t* x, const int8_t* w, const Epilogue& e, void* stream);
const char* cuda_error_string(int code);

}  // namespace ck
