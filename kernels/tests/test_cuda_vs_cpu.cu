// CUDA kernels against their CPU twins: outputs must be bit-identical. Each case runs twice with the output
// buffer pre-filled with two different poison patterns, so an element the kernel never writes cannot pass.
// The cases include the rounding ties of cases.h (0.5, 2.5, -0.5, 127.5, -128.5 and other x.5 before rounding).
// Exits 77 (ctest SKIP_RETURN_CODE) when no CUDA device is present. `--quick` runs only the first dense and the
// first depthwise case (for compute-sanitizer, which slows kernels down by orders of magnitude).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cases.h"
#include "compressor_kernels/int8_conv.h"

namespace {

#define CK_CHECK(call)                                                                      \
  do {                                                                                      \
    cudaError_t err_ = (call);                                                              \
    if (err_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

template <typename T>
T* to_device(const std::vector<T>& v) {
  if (v.empty()) return nullptr;
  T* p = nullptr;
  CK_CHECK(cudaMalloc(&p, v.size() * sizeof(T)));
  CK_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

int check_case(const ck_test::Case& c, uint32_t seed) {
  const ck_test::Data d = ck_test::make_data(c, seed);
  std::vector<int8_t> want_i8(d.out_count, 0);
  std::vector<float> want_f32(d.out_count, 0.f);
  const ck::Epilogue host = ck_test::make_epilogue(c, d, d.scale.data(), d.bias.data(), d.res_i8.data(),
                                                   d.res_f32.data(), want_i8.data(), want_f32.data());
  (c.depthwise ? ck::dwconv2d_int8_cpu : ck::conv2d_int8_cpu)(c.s, d.x.data(), d.w.data(), host);

  int8_t* x = to_device(d.x);
  int8_t* w = to_device(d.w);
  float* scale = to_device(d.scale);
  float* bias = to_device(d.bias);
  int8_t* res_i8 = to_device(d.res_i8);
  float* res_f32 = to_device(d.res_f32);
  const size_t out_bytes = d.out_count * (c.out_i8 ? 1 : 4);
  void* out = nullptr;
  CK_CHECK(cudaMalloc(&out, out_bytes));
  const ck::Epilogue dev = ck_test::make_epilogue(c, d, scale, bias, res_i8, res_f32, static_cast<int8_t*>(out),
                                                  static_cast<float*>(out));
  int failures = 0;
  for (int poison : {0x5A, 0xA5}) {
    CK_CHECK(cudaMemset(out, poison, out_bytes));
    const int rc = (c.depthwise ? ck::dwconv2d_int8_cuda : ck::conv2d_int8_cuda)(c.s, x, w, dev, nullptr);
    if (rc != 0) {
      std::fprintf(stderr, "[%s] launch failed: %s\n", c.name, ck::cuda_error_string(rc));
      return 1;
    }
    CK_CHECK(cudaDeviceSynchronize());
    std::vector<unsigned char> got(out_bytes);
    CK_CHECK(cudaMemcpy(got.data(), out, out_bytes, cudaMemcpyDeviceToHost));
    if (c.ties == ck_test::kTieValues) {
      // Output index = pixel * 8 + channel; see make_tie_values.
      const struct { size_t idx; int8_t want; } ties[5] = {{0, 0}, {8, 2}, {16, 0}, {25, 127}, {34, -128}};
      for (const auto& t : ties) {
        if (static_cast<int8_t>(got[t.idx]) != t.want) {
          std::fprintf(stderr, "[%s] tie %.1f: got %d want %d\n", c.name, ck_test::kTieTargets[&t - ties],
                       static_cast<int8_t>(got[t.idx]), t.want);
          ++failures;
        }
      }
    }
    const void* want = c.out_i8 ? static_cast<const void*>(want_i8.data()) : want_f32.data();
    if (std::memcmp(got.data(), want, out_bytes) != 0) {
      size_t bad = 0, first = 0;
      const size_t elem = c.out_i8 ? 1 : 4;
      for (size_t i = 0; i < d.out_count; ++i) {
        if (std::memcmp(got.data() + i * elem, static_cast<const unsigned char*>(want) + i * elem, elem) != 0) {
          if (bad++ == 0) first = i;
        }
      }
      std::fprintf(stderr, "[%s] poison 0x%02X: %zu of %zu outputs differ from the CPU twin (first at %zu)\n",
                   c.name, poison, bad, d.out_count, first);
      ++failures;
    }
  }
  for (void* p : {static_cast<void*>(x), static_cast<void*>(w), static_cast<void*>(scale), static_cast<void*>(bias),
                  static_cast<void*>(res_i8), static_cast<void*>(res_f32), out}) {
    if (p) CK_CHECK(cudaFree(p));
  }
  std::printf("%-34s %s\n", c.name, failures ? "FAIL" : "bit-exact");
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int failures = 0;
  uint32_t seed = 1234;
  bool dense_done = false, depthwise_done = false;
  for (const ck_test::Case& c : ck_test::cases()) {
    const uint32_t case_seed = seed++;
    if (quick && (c.depthwise ? depthwise_done : dense_done)) continue;
    failures += check_case(c, case_seed);
    (c.depthwise ? depthwise_done : dense_done) = true;
  }
  if (failures) std::fprintf(stderr, "%d failing cases\n", failures);
  return failures ? 1 : 0;
}
