// Pure-CUDA benchmark of the fused INT8 kernels on the convolution shapes of CIFAR ResNet-56 and MobileNetV2
// (width 0.5). No Python or torch: built by the top-level CMakeLists.txt as bench_kernels_cuda.
//
//   bench_kernels_cuda OUT.csv [--batch 256] [--samples 7] [--check-batch 2] [--model resnet56|mobilenetv2]
//
// For every layer shape it
//   1. checks the CUDA kernel bit for bit against its CPU twin at a small batch (random operands, same epilogue);
//   2. times the kernel at the full batch: one sample is a CUDA graph of many back-to-back launches (plain stream
//      launches if capture fails) replayed between two CUDA events; the figure is the median of the samples, in
//      microseconds per launch. The main figure cycles through enough copies of the activations that each launch
//      reads and writes memory that is not in L2 (HBM scale); "_l2" figures reuse one copy (L2-resident);
//   3. times the same convolution in FP16 NHWC through cuDNN (convolution only, no bias or activation), when the
//      build found cuDNN (COMPRESSOR_BENCH_CUDNN), with the algorithm cudnnFind picks.
// Bytes are the compulsory traffic of one launch (inputs, weights, epilogue operands, output), so GB/s is a lower
// bound on what the kernel moved. The dp4a peak and the copy bandwidth in the CSV header are measured here, by the
// micro-kernels below; the INT8 kernels use dp4a (not tensor cores), so that is the peak they are compared with.
// Writes one CSV row per layer as soon as it is measured; exits 77 without a CUDA device, 1 when a layer is not
// bit-exact.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef COMPRESSOR_BENCH_CUDNN
#include <cuda_fp16.h>
#include <cudnn.h>
#endif

#include "cases.h"
#include "compressor_kernels/int8_conv.h"

namespace {

#define BENCH_CHECK(call)                                                                          \
  do {                                                                                             \
    cudaError_t err_ = (call);                                                                     \
    if (err_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(2);                                                                                \
    }                                                                                              \
  } while (0)

using A = ck::Activation;

struct Layer {
  const char* model;
  const char* name;
  bool depthwise;
  int cin, cout, hw, k, stride;
  A act;
  bool residual;  // int8 residual fused into the epilogue (the block's Add)
  int count;      // how many convolutions of the model have this shape and epilogue
};

// Every convolution of the two models, grouped by shape and epilogue as Int8Model fuses them (conv + Add + ReLU).
const std::vector<Layer>& layers() {
  static const std::vector<Layer> all = {
      {"resnet56", "conv1 3->16", false, 3, 16, 32, 3, 1, A::kRelu, false, 1},
      {"resnet56", "layer1 conv1 16->16", false, 16, 16, 32, 3, 1, A::kRelu, false, 9},
      {"resnet56", "layer1 conv2 16->16 +res", false, 16, 16, 32, 3, 1, A::kRelu, true, 9},
      {"resnet56", "layer2.0 conv1 16->32 s2", false, 16, 32, 32, 3, 2, A::kRelu, false, 1},
      {"resnet56", "layer2 conv1 32->32", false, 32, 32, 16, 3, 1, A::kRelu, false, 8},
      {"resnet56", "layer2 conv2 32->32 +res", false, 32, 32, 16, 3, 1, A::kRelu, true, 9},
      {"resnet56", "layer3.0 conv1 32->64 s2", false, 32, 64, 16, 3, 2, A::kRelu, false, 1},
      {"resnet56", "layer3 conv1 64->64", false, 64, 64, 8, 3, 1, A::kRelu, false, 8},
      {"resnet56", "layer3 conv2 64->64 +res", false, 64, 64, 8, 3, 1, A::kRelu, true, 9},
      {"mobilenetv2", "conv1 3->16", false, 3, 16, 32, 3, 1, A::kRelu6, false, 1},
      {"mobilenetv2", "pw 16->16 @32", false, 16, 16, 32, 1, 1, A::kRelu6, false, 1},
      {"mobilenetv2", "dw 16 @32", true, 16, 16, 32, 3, 1, A::kRelu6, false, 1},
      {"mobilenetv2", "pw 16->8 @32", false, 16, 8, 32, 1, 1, A::kNone, false, 1},
      {"mobilenetv2", "pw 8->48 @32", false, 8, 48, 32, 1, 1, A::kRelu6, false, 1},
      {"mobilenetv2", "dw 48 @32", true, 48, 48, 32, 3, 1, A::kRelu6, false, 1},
      {"mobilenetv2", "pw 48->16 @32", false, 48, 16, 32, 1, 1, A::kNone, false, 1},
      {"mobilenetv2", "pw 16->96 @32", false, 16, 96, 32, 1, 1, A::kRelu6, false, 2},
      {"mobilenetv2", "dw 96 @32", true, 96, 96, 32, 3, 1, A::kRelu6, false, 1},
      {"mobilenetv2", "pw 96->16 @32 +res", false, 96, 16, 32, 1, 1, A::kNone, true, 1},
      {"mobilenetv2", "dw 96 @32 s2", true, 96, 96, 32, 3, 2, A::kRelu6, false, 1},
      {"mobilenetv2", "pw 96->16 @16", false, 96, 16, 16, 1, 1, A::kNone, false, 1},
      {"mobilenetv2", "pw 16->96 @16", false, 16, 96, 16, 1, 1, A::kRelu6, false, 3},
      {"mobilenetv2", "dw 96 @16", true, 96, 96, 16, 3, 1, A::kRelu6, false, 2},
      {"mobilenetv2", "pw 96->16 @16 +res", false, 96, 16, 16, 1, 1, A::kNone, true, 2},
      {"mobilenetv2", "dw 96 @16 s2", true, 96, 96, 16, 3, 2, A::kRelu6, false, 1},
      {"mobilenetv2", "pw 96->32 @8", false, 96, 32, 8, 1, 1, A::kNone, false, 1},
      {"mobilenetv2", "pw 32->192 @8", false, 32, 192, 8, 1, 1, A::kRelu6, false, 4},
      {"mobilenetv2", "dw 192 @8", true, 192, 192, 8, 3, 1, A::kRelu6, false, 4},
      {"mobilenetv2", "pw 192->32 @8 +res", false, 192, 32, 8, 1, 1, A::kNone, true, 3},
      {"mobilenetv2", "pw 192->48 @8", false, 192, 48, 8, 1, 1, A::kNone, false, 1},
      {"mobilenetv2", "pw 48->288 @8", false, 48, 288, 8, 1, 1, A::kRelu6, false, 3},
      {"mobilenetv2", "dw 288 @8", true, 288, 288, 8, 3, 1, A::kRelu6, false, 2},
      {"mobilenetv2", "pw 288->48 @8 +res", false, 288, 48, 8, 1, 1, A::kNone, true, 2},
      {"mobilenetv2", "dw 288 @8 s2", true, 288, 288, 8, 3, 2, A::kRelu6, false, 1},
      {"mobilenetv2", "pw 288->80 @4", false, 288, 80, 4, 1, 1, A::kNone, false, 1},
      {"mobilenetv2", "pw 80->480 @4", false, 80, 480, 4, 1, 1, A::kRelu6, false, 3},
      {"mobilenetv2", "dw 480 @4", true, 480, 480, 4, 3, 1, A::kRelu6, false, 3},
      {"mobilenetv2", "pw 480->80 @4 +res", false, 480, 80, 4, 1, 1, A::kNone, true, 2},
      {"mobilenetv2", "pw 480->160 @4", false, 480, 160, 4, 1, 1, A::kNone, false, 1},
      {"mobilenetv2", "conv2 160->1280 @4", false, 160, 1280, 4, 1, 1, A::kRelu6, false, 1},
  };
  return all;
}

ck::ConvShape shape_of(const Layer& l, int batch) {
  const int pad = l.k / 2;
  return {batch, l.hw, l.hw, l.cin, l.cout, l.k, l.k, l.stride, l.stride, pad, pad};
}

const char* act_name(A a) { return a == A::kRelu ? "relu" : a == A::kRelu6 ? "relu6" : "none"; }

// ---- timing ----

struct Timing {
  double us = 0, us_min = 0;  // median and fastest sample, microseconds per launch
  int launches = 0;           // launches per sample
  int rotate = 1;             // buffer sets cycled through
  const char* method = "";    // "graph" or "stream"
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// `launch(i)` enqueues one launch on `stream` using buffer set i (0 <= i < rotate) and returns false on error.
// A CUDA graph of `per_graph` launches removes host launch overhead from the figure; replays are repeated until
// one sample covers about 2 ms of GPU time.
template <typename Launch>
bool time_launches(Launch launch, int rotate, int samples, cudaStream_t stream, Timing* t) {
  const int per_graph = rotate * ((32 + rotate - 1) / rotate);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  for (int i = 0; ok && i < per_graph; ++i) ok = launch(i % rotate);
  if (cudaStreamEndCapture(stream, &graph) != cudaSuccess) ok = false;
  if (ok && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) ok = false;
  if (!ok) {
    if (graph) cudaGraphDestroy(graph);
    graph = nullptr;
    exec = nullptr;
    cudaGetLastError();
  }
  t->method = exec ? "graph" : "stream";
  auto replay = [&]() -> bool {
    if (exec) return cudaGraphLaunch(exec, stream) == cudaSuccess;
    for (int i = 0; i < per_graph; ++i) {
      if (!launch(i % rotate)) return false;
    }
    return true;
  };
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  bool good = replay() && replay() && cudaStreamSynchronize(stream) == cudaSuccess;  // warm-up
  float ms = 0.f;
  int reps = 1;
  if (good) {
    BENCH_CHECK(cudaEventRecord(start, stream));
    good = replay();
    BENCH_CHECK(cudaEventRecord(stop, stream));
    good = good && cudaEventSynchronize(stop) == cudaSuccess && cudaEventElapsedTime(&ms, start, stop) == cudaSuccess;
    reps = std::max(1, std::min(200, static_cast<int>(2.0 / std::max(ms, 1e-3f)) + 1));
  }
  std::vector<double> per_launch;
  for (int s = 0; good && s < samples; ++s) {
    BENCH_CHECK(cudaEventRecord(start, stream));
    for (int r = 0; good && r < reps; ++r) good = replay();
    BENCH_CHECK(cudaEventRecord(stop, stream));
    good = good && cudaEventSynchronize(stop) == cudaSuccess && cudaEventElapsedTime(&ms, start, stop) == cudaSuccess;
    per_launch.push_back(1e3 * ms / (static_cast<double>(reps) * per_graph));
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!good || per_launch.empty()) {
    std::fprintf(stderr, "timing failed: %s\n", cudaGetErrorString(cudaGetLastError()));
    return false;
  }
  t->us = median(per_launch);
  t->us_min = *std::min_element(per_launch.begin(), per_launch.end());
  t->launches = reps * per_graph;
  t->rotate = rotate;
  return true;
}

// Buffer sets needed so that, cycling through them, each launch touches memory evicted from L2 since its last use.
int rotation_for(double set_bytes, int l2_bytes) {
  const double need = 3.0 * l2_bytes / std::max(set_bytes, 1.0);
  return std::max(1, std::min(512, static_cast<int>(need) + 1));
}

__global__ void fill_i8(int8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = static_cast<int8_t>(h & 0xFF);
  }
}

void fill_random(int8_t* p, size_t n, uint32_t seed) {
  fill_i8<<<1024, 256>>>(p, n, seed);
  BENCH_CHECK(cudaGetLastError());
}

// ---- measured device ceilings ----

// Eight independent dp4a chains per thread, enough warps to fill every SM: the dp4a throughput ceiling.
__global__ void dp4a_peak_kernel(int iters, int b, int* out) {
  int acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = threadIdx.x + j;
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = __dp4a(acc[j], b, acc[j]);
  }
  int sum = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) sum += acc[j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

double measure_dp4a_gmacs(int sms) {
  const int blocks = sms * 8, threads = 256, iters = 256;
  int* out = nullptr;
  BENCH_CHECK(cudaMalloc(&out, sizeof(int) * blocks * threads));
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  dp4a_peak_kernel<<<blocks, threads>>>(iters, 0x01020304, out);
  std::vector<double> gmacs;
  for (int s = 0; s < 5; ++s) {
    BENCH_CHECK(cudaEventRecord(start));
    dp4a_peak_kernel<<<blocks, threads>>>(iters, 0x01020304, out);
    BENCH_CHECK(cudaEventRecord(stop));
    BENCH_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
    gmacs.push_back(4.0 * 8.0 * iters * blocks * threads / (ms * 1e6));
  }
  BENCH_CHECK(cudaGetLastError());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(out);
  return median(gmacs);
}

// Device-to-device copy of 1 GiB, counting bytes read plus bytes written.
double measure_copy_gbs() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  BENCH_CHECK(cudaMalloc(&a, bytes));
  BENCH_CHECK(cudaMalloc(&b, bytes));
  BENCH_CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  BENCH_CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  std::vector<double> gbs;
  for (int s = 0; s < 5; ++s) {
    BENCH_CHECK(cudaEventRecord(start));
    BENCH_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    BENCH_CHECK(cudaEventRecord(stop));
    BENCH_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
    gbs.push_back(2.0 * bytes / (ms * 1e6));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return median(gbs);
}

// ---- bit-exactness at a small batch ----

// Number of outputs that differ between the CUDA kernel and the CPU twin (0 = bit-exact).
size_t check_bitexact(const Layer& l, int batch, uint32_t seed) {
  ck_test::Case c{l.name, shape_of(l, batch), l.depthwise, l.act,
                  l.residual ? ck_test::kResidualI8 : ck_test::kNoResidual, true, true, 1.f};
  const ck_test::Data d = ck_test::make_data(c, seed);
  std::vector<int8_t> want(d.out_count, 0), got(d.out_count, 0);
  const ck::Epilogue host = ck_test::make_epilogue(c, d, d.scale.data(), d.bias.data(), d.res_i8.data(), nullptr,
                                                   want.data(), nullptr);
  (c.depthwise ? ck::dwconv2d_int8_cpu : ck::conv2d_int8_cpu)(c.s, d.x.data(), d.w.data(), host);

  int8_t *x, *w, *res = nullptr, *out;
  float *scale, *bias;
  BENCH_CHECK(cudaMalloc(&x, d.x.size()));
  BENCH_CHECK(cudaMalloc(&w, d.w.size()));
  BENCH_CHECK(cudaMalloc(&out, d.out_count));
  BENCH_CHECK(cudaMalloc(&scale, d.scale.size() * sizeof(float)));
  BENCH_CHECK(cudaMalloc(&bias, d.bias.size() * sizeof(float)));
  BENCH_CHECK(cudaMemcpy(x, d.x.data(), d.x.size(), cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(w, d.w.data(), d.w.size(), cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(scale, d.scale.data(), d.scale.size() * sizeof(float), cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(bias, d.bias.data(), d.bias.size() * sizeof(float), cudaMemcpyHostToDevice));
  if (l.residual) {
    BENCH_CHECK(cudaMalloc(&res, d.res_i8.size()));
    BENCH_CHECK(cudaMemcpy(res, d.res_i8.data(), d.res_i8.size(), cudaMemcpyHostToDevice));
  }
  BENCH_CHECK(cudaMemset(out, 0x5A, d.out_count));  // poison: an unwritten output cannot match
  const ck::Epilogue dev = ck_test::make_epilogue(c, d, scale, bias, res, nullptr, out, nullptr);
  const int rc = (c.depthwise ? ck::dwconv2d_int8_cuda : ck::conv2d_int8_cuda)(c.s, x, w, dev, nullptr);
  size_t bad = d.out_count;
  if (rc == 0 && cudaDeviceSynchronize() == cudaSuccess) {
    BENCH_CHECK(cudaMemcpy(got.data(), out, d.out_count, cudaMemcpyDeviceToHost));
    bad = 0;
    for (size_t i = 0; i < d.out_count; ++i) bad += got[i] != want[i];
  } else {
    std::fprintf(stderr, "[%s] launch failed: %s\n", l.name, ck::cuda_error_string(rc));
  }
  for (void* p : {static_cast<void*>(x), static_cast<void*>(w), static_cast<void*>(out), static_cast<void*>(scale),
                  static_cast<void*>(bias), static_cast<void*>(res)}) {
    if (p) BENCH_CHECK(cudaFree(p));
  }
  return bad;
}

// ---- INT8 timing at the full batch ----

struct Bytes {
  double per_launch = 0;  // compulsory traffic of one launch
  double per_set = 0;     // what each rotated buffer set holds
};

bool time_int8(const Layer& l, int batch, int samples, int l2_bytes, cudaStream_t stream, Timing* hbm, Timing* l2,
               Bytes* bytes) {
  const ck::ConvShape s = shape_of(l, batch);
  const size_t x_bytes = static_cast<size_t>(s.n) * s.h * s.w * s.cin;
  const size_t out_bytes = static_cast<size_t>(s.n) * s.out_h() * s.out_w() * s.cout;
  const size_t w_bytes = static_cast<size_t>(s.cout) * s.kh * s.kw * (l.depthwise ? 1 : s.cin);
  const size_t res_bytes = l.residual ? out_bytes : 0;
  bytes->per_set = static_cast<double>(x_bytes + out_bytes + res_bytes);
  bytes->per_launch = bytes->per_set + static_cast<double>(w_bytes + 2 * sizeof(float) * s.cout);
  const int rotate = rotation_for(bytes->per_set, l2_bytes);

  int8_t* w = nullptr;
  float *scale = nullptr, *bias = nullptr;
  BENCH_CHECK(cudaMalloc(&w, w_bytes));
  fill_random(w, w_bytes, 7);
  // Scales near the calibrated ones' magnitude; values do not change the work done, only the output bytes.
  const std::vector<float> host_scale(s.cout, 1e-3f), host_bias(s.cout, 0.5f);
  BENCH_CHECK(cudaMalloc(&scale, sizeof(float) * s.cout));
  BENCH_CHECK(cudaMalloc(&bias, sizeof(float) * s.cout));
  BENCH_CHECK(cudaMemcpy(scale, host_scale.data(), sizeof(float) * s.cout, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(bias, host_bias.data(), sizeof(float) * s.cout, cudaMemcpyHostToDevice));
  std::vector<int8_t*> xs(rotate), outs(rotate), ress(rotate, nullptr);
  for (int i = 0; i < rotate; ++i) {
    BENCH_CHECK(cudaMalloc(&xs[i], x_bytes));
    BENCH_CHECK(cudaMalloc(&outs[i], out_bytes));
    fill_random(xs[i], x_bytes, 100 + i);
    if (l.residual) {
      BENCH_CHECK(cudaMalloc(&ress[i], res_bytes));
      fill_random(ress[i], res_bytes, 1000 + i);
    }
  }
  BENCH_CHECK(cudaDeviceSynchronize());
  auto launch = [&](int i) {
    ck::Epilogue e;
    e.scale = scale;
    e.bias = bias;
    e.residual_i8 = ress[i];
    e.residual_scale = 0.04f;
    e.act = l.act;
    e.out_scale = 0.05f;
    e.out_i8 = outs[i];
    return (l.depthwise ? ck::dwconv2d_int8_cuda : ck::conv2d_int8_cuda)(s, xs[i], w, e, stream) == 0;
  };
  const bool ok = time_launches(launch, rotate, samples, stream, hbm) && time_launches(launch, 1, samples, stream, l2);
  for (int i = 0; i < rotate; ++i) {
    cudaFree(xs[i]);
    cudaFree(outs[i]);
    if (ress[i]) cudaFree(ress[i]);
  }
  cudaFree(w);
  cudaFree(scale);
  cudaFree(bias);
  return ok;
}

// ---- FP16 cuDNN baseline ----

#ifdef COMPRESSOR_BENCH_CUDNN
#define CUDNN_OK(call)                                                                      \
  do {                                                                                      \
    cudnnStatus_t st_ = (call);                                                             \
    if (st_ != CUDNN_STATUS_SUCCESS) {                                                      \
      *err = std::string(#call) + ": " + cudnnGetErrorString(st_);                          \
      return false;                                                                         \
    }                                                                                       \
  } while (0)

__global__ void fill_half(__half* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    p[i] = __float2half(static_cast<float>(h & 0xFFFF) / 32768.f - 1.f);
  }
}

struct CudnnConv {
  cudnnHandle_t handle = nullptr;
  cudnnTensorDescriptor_t x_desc = nullptr, y_desc = nullptr;
  cudnnFilterDescriptor_t w_desc = nullptr;
  cudnnConvolutionDescriptor_t conv_desc = nullptr;
  cudnnConvolutionFwdAlgo_t algo{};
  void* workspace = nullptr;
  size_t workspace_bytes = 0;

  bool setup(const Layer& l, int batch, cudaStream_t stream, std::string* err) {
    const ck::ConvShape s = shape_of(l, batch);
    CUDNN_OK(cudnnCreate(&handle));
    CUDNN_OK(cudnnSetStream(handle, stream));
    CUDNN_OK(cudnnCreateTensorDescriptor(&x_desc));
    CUDNN_OK(cudnnCreateTensorDescriptor(&y_desc));
    CUDNN_OK(cudnnCreateFilterDescriptor(&w_desc));
    CUDNN_OK(cudnnCreateConvolutionDescriptor(&conv_desc));
    CUDNN_OK(cudnnSetTensor4dDescriptor(x_desc, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, s.n, s.cin, s.h, s.w));
    CUDNN_OK(cudnnSetTensor4dDescriptor(y_desc, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, s.n, s.cout, s.out_h(),
                                        s.out_w()));
    CUDNN_OK(cudnnSetFilter4dDescriptor(w_desc, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, s.cout,
                                        l.depthwise ? 1 : s.cin, s.kh, s.kw));
    CUDNN_OK(cudnnSetConvolution2dDescriptor(conv_desc, s.pad_h, s.pad_w, s.stride_h, s.stride_w, 1, 1,
                                             CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_OK(cudnnSetConvolutionGroupCount(conv_desc, l.depthwise ? s.cin : 1));
    CUDNN_OK(cudnnSetConvolutionMathType(conv_desc, CUDNN_TENSOR_OP_MATH));
    cudnnConvolutionFwdAlgoPerf_t perf[8];
    int found = 0;
    CUDNN_OK(cudnnFindConvolutionForwardAlgorithm(handle, x_desc, w_desc, conv_desc, y_desc, 8, &found, perf));
    int best = -1;
    for (int i = 0; i < found && best < 0; ++i) {
      if (perf[i].status == CUDNN_STATUS_SUCCESS) best = i;
    }
    if (best < 0) {
      *err = "cudnnFindConvolutionForwardAlgorithm found no working algorithm";
      return false;
    }
    algo = perf[best].algo;
    CUDNN_OK(cudnnSetConvolutionMathType(conv_desc, perf[best].mathType));
    CUDNN_OK(cudnnGetConvolutionForwardWorkspaceSize(handle, x_desc, w_desc, conv_desc, y_desc, algo,
                                                     &workspace_bytes));
    if (workspace_bytes && cudaMalloc(&workspace, workspace_bytes) != cudaSuccess) {
      *err = "cannot allocate the cuDNN workspace";
      return false;
    }
    return true;
  }

  bool run(const __half* x, const __half* w, __half* y) const {
    const float one = 1.f, zero = 0.f;
    return cudnnConvolutionForward(handle, &one, x_desc, x, w_desc, w, conv_desc, algo, workspace, workspace_bytes,
                                   &zero, y_desc, y) == CUDNN_STATUS_SUCCESS;
  }

  ~CudnnConv() {
    if (workspace) cudaFree(workspace);
    if (conv_desc) cudnnDestroyConvolutionDescriptor(conv_desc);
    if (w_desc) cudnnDestroyFilterDescriptor(w_desc);
    if (y_desc) cudnnDestroyTensorDescriptor(y_desc);
    if (x_desc) cudnnDestroyTensorDescriptor(x_desc);
    if (handle) cudnnDestroy(handle);
  }
};

bool time_fp16(const Layer& l, int batch, int samples, int l2_bytes, cudaStream_t stream, Timing* hbm, Timing* l2,
               Bytes* bytes, int* algo, std::string* err) {
  const ck::ConvShape s = shape_of(l, batch);
  const size_t x_n = static_cast<size_t>(s.n) * s.h * s.w * s.cin;
  const size_t y_n = static_cast<size_t>(s.n) * s.out_h() * s.out_w() * s.cout;
  const size_t w_n = static_cast<size_t>(s.cout) * s.kh * s.kw * (l.depthwise ? 1 : s.cin);
  bytes->per_set = 2.0 * (x_n + y_n);
  bytes->per_launch = bytes->per_set + 2.0 * w_n;
  CudnnConv conv;
  if (!conv.setup(l, batch, stream, err)) return false;
  *algo = static_cast<int>(conv.algo);
  const int rotate = rotation_for(bytes->per_set, l2_bytes);
  __half* w = nullptr;
  BENCH_CHECK(cudaMalloc(&w, 2 * w_n));
  fill_half<<<1024, 256>>>(w, w_n, 7);
  std::vector<__half*> xs(rotate), ys(rotate);
  for (int i = 0; i < rotate; ++i) {
    BENCH_CHECK(cudaMalloc(&xs[i], 2 * x_n));
    BENCH_CHECK(cudaMalloc(&ys[i], 2 * y_n));
    fill_half<<<1024, 256>>>(xs[i], x_n, 100 + i);
  }
  BENCH_CHECK(cudaDeviceSynchronize());
  auto launch = [&](int i) { return conv.run(xs[i], w, ys[i]); };
  const bool ok = time_launches(launch, rotate, samples, stream, hbm) && time_launches(launch, 1, samples, stream, l2);
  if (!ok) *err = "cudnnConvolutionForward failed while timing";
  for (int i = 0; i < rotate; ++i) {
    cudaFree(xs[i]);
    cudaFree(ys[i]);
  }
  cudaFree(w);
  return ok;
}
#endif  // COMPRESSOR_BENCH_CUDNN

// ---- CSV ----

std::string fmt(double v, const char* f = "%.3f") {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

int usage(const char* prog) {
  std::fprintf(stderr, "usage: %s OUT.csv [--batch N] [--samples N] [--check-batch N] [--model resnet56|mobilenetv2]\n",
               prog);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line even into a pipe, so a killed run keeps its output
  if (argc < 2 || argv[1][0] == '-') return usage(argv[0]);
  const char* csv_path = argv[1];
  int batch = 256, samples = 7, check_batch = 2;
  std::string only;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return usage(argv[0]);
    if (a == "--batch") batch = std::atoi(argv[++i]);
    else if (a == "--samples") samples = std::atoi(argv[++i]);
    else if (a == "--check-batch") check_batch = std::atoi(argv[++i]);
    else if (a == "--model") only = argv[++i];
    else return usage(argv[0]);
  }
  if (batch <= 0 || samples <= 0 || check_batch <= 0) return usage(argv[0]);

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  int dev = 0, sms = 0, l2_bytes = 0, major = 0, minor = 0, clock_khz = 0;
  BENCH_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, dev));
  BENCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  BENCH_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, dev));
  BENCH_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  BENCH_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev);
  cudaGetLastError();

  FILE* csv = std::fopen(csv_path, "w");
  if (!csv) {
    std::fprintf(stderr, "cannot write %s\n", csv_path);
    return 2;
  }
  const double dp4a_gmacs = measure_dp4a_gmacs(sms);
  const double copy_gbs = measure_copy_gbs();
#ifdef COMPRESSOR_BENCH_CUDNN
  const std::string baseline = "cuDNN " + std::to_string(cudnnGetVersion()) + " FP16 NHWC convolution only";
#else
  const std::string baseline = "none (built without cuDNN)";
#endif
  const std::string head[] = {
      std::string("device: ") + prop.name + ", sm_" + std::to_string(major) + std::to_string(minor) + ", " +
          std::to_string(sms) + " SMs, L2 " + std::to_string(l2_bytes >> 20) + " MiB, max SM clock " +
          std::to_string(clock_khz / 1000) + " MHz",
      "dp4a peak (measured, dp4a micro-kernel): " + fmt(dp4a_gmacs, "%.0f") + " GMAC/s",
      "device-to-device copy (measured, 1 GiB, read + write): " + fmt(copy_gbs, "%.0f") + " GB/s",
      "batch " + std::to_string(batch) + "; " + std::to_string(samples) +
          " samples per figure, median; *_us: buffers rotated past L2 (HBM scale); *_us_l2: one buffer set "
          "(L2-resident); bytes: compulsory traffic per launch",
      "bit-exactness: CUDA vs CPU twin at batch " + std::to_string(check_batch) + "; FP16 baseline: " + baseline,
  };
  for (const std::string& h : head) {
    std::printf("# %s\n", h.c_str());
    std::fprintf(csv, "# %s\n", h.c_str());
  }
  std::fprintf(csv,
               "model,layer,kind,count,batch,h,w,cin,cout,k,stride,act,residual,macs,check_batch,mismatches,"
               "int8_us,int8_us_min,int8_us_l2,int8_gmacs,int8_pct_dp4a_peak,int8_bytes,int8_gbs,int8_rotate,"
               "int8_method,fp16_us,fp16_us_min,fp16_us_l2,fp16_gmacs,fp16_bytes,fp16_gbs,fp16_algo,fp16_method,"
               "fp16_over_int8\n");
  std::fflush(csv);

  cudaStream_t stream;
  BENCH_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int not_exact = 0;
#ifdef COMPRESSOR_BENCH_CUDNN
  bool fp16_enabled = true;  // off after the first cuDNN failure, so one bad shape costs only its own baseline
#endif
  struct Sum {
    std::string model;
    double int8 = 0, fp16 = 0;
    bool fp16_complete = true;
  };
  std::vector<Sum> sums;
  uint32_t seed = 4321;
  std::printf("%-28s %9s %9s %9s %8s %8s %9s %9s %7s\n", "layer", "int8 us", "int8 L2", "GMAC/s", "GB/s", "exact",
              "fp16 us", "fp16 L2", "fp16/i8");
  for (const Layer& l : layers()) {
    if (!only.empty() && only != l.model) continue;
    if (sums.empty() || sums.back().model != l.model) sums.push_back({l.model});
    const ck::ConvShape s = shape_of(l, batch);
    const double macs = static_cast<double>(s.n) * s.out_h() * s.out_w() * s.cout * s.kh * s.kw *
                        (l.depthwise ? 1 : s.cin);
    const size_t mismatches = check_bitexact(l, check_batch, seed++);
    not_exact += mismatches != 0;

    Timing i_hbm, i_l2;
    Bytes i_bytes;
    const bool int8_ok = time_int8(l, batch, samples, l2_bytes, stream, &i_hbm, &i_l2, &i_bytes);
    Timing f_hbm, f_l2;
    Bytes f_bytes;
    int algo = -1;
    bool fp16_ok = false;
#ifdef COMPRESSOR_BENCH_CUDNN
    if (fp16_enabled) {
      std::string err;
      fp16_ok = time_fp16(l, batch, samples, l2_bytes, stream, &f_hbm, &f_l2, &f_bytes, &algo, &err);
      if (!fp16_ok) {
        std::printf("FP16 baseline failed on %s: %s; no baseline for the remaining layers\n", l.name, err.c_str());
        fp16_enabled = false;
        cudaGetLastError();
      }
    }
#endif
    sums.back().int8 += int8_ok ? l.count * i_hbm.us : 0.0;
    sums.back().fp16 += fp16_ok ? l.count * f_hbm.us : 0.0;
    sums.back().fp16_complete = sums.back().fp16_complete && fp16_ok;

    std::string row = std::string(l.model) + ",\"" + l.name + "\"," + (l.depthwise ? "depthwise" : "dense") + "," +
                      std::to_string(l.count) + "," + std::to_string(batch) + "," + std::to_string(l.hw) + "," +
                      std::to_string(l.hw) + "," + std::to_string(l.cin) + "," + std::to_string(l.cout) + "," +
                      std::to_string(l.k) + "," + std::to_string(l.stride) + "," + act_name(l.act) + "," +
                      (l.residual ? "int8" : "none") + "," + fmt(macs, "%.0f") + "," + std::to_string(check_batch) +
                      "," + std::to_string(mismatches) + ",";
    if (int8_ok) {
      const double gmacs = macs / (i_hbm.us * 1e3);
      row += fmt(i_hbm.us) + "," + fmt(i_hbm.us_min) + "," + fmt(i_l2.us) + "," + fmt(gmacs, "%.1f") + "," +
             fmt(100.0 * gmacs / dp4a_gmacs, "%.1f") + "," + fmt(i_bytes.per_launch, "%.0f") + "," +
             fmt(i_bytes.per_launch / (i_hbm.us * 1e3), "%.1f") + "," + std::to_string(i_hbm.rotate) + "," +
             i_hbm.method + ",";
    } else {
      row += ",,,,,,,,,";
    }
    if (fp16_ok) {
      row += fmt(f_hbm.us) + "," + fmt(f_hbm.us_min) + "," + fmt(f_l2.us) + "," + fmt(macs / (f_hbm.us * 1e3), "%.1f") +
             "," + fmt(f_bytes.per_launch, "%.0f") + "," + fmt(f_bytes.per_launch / (f_hbm.us * 1e3), "%.1f") + "," +
             std::to_string(algo) + "," + f_hbm.method + "," + (int8_ok ? fmt(f_hbm.us / i_hbm.us) : "");
    } else {
      row += ",,,,,,,,";
    }
    std::fprintf(csv, "%s\n", row.c_str());
    std::fflush(csv);
    std::printf("%-28s %9s %9s %9s %8s %8s %9s %9s %7s\n", l.name, int8_ok ? fmt(i_hbm.us).c_str() : "FAIL",
                int8_ok ? fmt(i_l2.us).c_str() : "-", int8_ok ? fmt(macs / (i_hbm.us * 1e3), "%.0f").c_str() : "-",
                int8_ok ? fmt(i_bytes.per_launch / (i_hbm.us * 1e3), "%.0f").c_str() : "-",
                mismatches ? "NO" : "yes", fp16_ok ? fmt(f_hbm.us).c_str() : "-", fp16_ok ? fmt(f_l2.us).c_str() : "-",
                fp16_ok && int8_ok ? fmt(f_hbm.us / i_hbm.us, "%.2f").c_str() : "-");
  }
  for (const Sum& s : sums) {
    const std::string line = s.model + ": sum over conv layers of count x us (HBM scale; kernels only, not a model "
                             "latency): int8 " + fmt(s.int8, "%.1f") + " us" +
                             (s.fp16_complete && s.fp16 > 0 ? ", fp16 cuDNN " + fmt(s.fp16, "%.1f") + " us" : "");
    std::printf("# %s\n", line.c_str());
    std::fprintf(csv, "# %s\n", line.c_str());
  }
  std::fclose(csv);
  cudaStreamDestroy(stream);
  if (not_exact) {
    std::fprintf(stderr, "%d layer shapes are not bit-exact against the CPU twin\n", not_exact);
    return 1;
  }
  std::printf("all %s layer shapes bit-exact against the CPU twin at batch %d\n",
              only.empty() ? "benchmarked" : only.c_str(), check_batch);
  return 0;
}
