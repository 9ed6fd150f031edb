// PyTorch custom operators over the fused INT8 kernels (torch.library):
//   compressor::int8_conv2d(x, weight, scale, bias?, residual?, residual_scale, stride, padding, activation,
//                           out_scale?) -> Tensor
//   compressor::int8_dwconv2d(...same...)                                  -> Tensor
// x: int8 NHWC [N,H,W,Cin]; weight: int8 [Cout,kh,kw,Cin] (depthwise: [C,kh,kw,1]); scale, bias: float32 [Cout];
// residual: int8 or float32 NHWC of the output's shape; activation: "none" | "relu" | "relu6"; out_scale given:
// int8 NHWC output, None: float32 NHWC output. CPU dispatches to the CPU twins (parallel over the batch), CUDA
// (when built with COMPRESSOR_WITH_CUDA) to the CUDA kernels on the current stream.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "compressor_kernels/int8_conv.h"

namespace {

struct Prepared {
  ck::ConvShape shape;
  ck::Epilogue epilogue;
  at::Tensor x, weight, scale, bias, residual, out;
};

ck::Activation parse_activation(c10::string_view name) {
  if (name == "none") return ck::Activation::kNone;
  if (name == "relu") return ck::Activation::kRelu;
  if (name == "relu6") return ck::Activation::kRelu6;
  TORCH_CHECK(false, "compressor int8 conv: activation must be 'none', 'relu' or 'relu6', got '", std::string(name),
              "'");
}

Prepared prepare(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                 double residual_scale, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view activation,
                 std::optional<double> out_scale, bool depthwise) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kChar, "x must be int8 NHWC [N,H,W,C], got ", x.sizes(), " ",
              x.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == at::kChar, "weight must be int8 [Cout,kh,kw,Cin]");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2, "stride and padding take two values");
  const auto device = x.device();
  Prepared p;
  p.x = x.contiguous();
  p.weight = weight.to(device).contiguous();
  ck::ConvShape& s = p.shape;
  s.n = static_cast<int>(x.size(0));
  s.h = static_cast<int>(x.size(1));
  s.w = static_cast<int>(x.size(2));
  s.cin = static_cast<int>(x.size(3));
  s.cout = static_cast<int>(weight.size(0));
  s.kh = static_cast<int>(weight.size(1));
  s.kw = static_cast<int>(weight.size(2));
  s.stride_h = static_cast<int>(stride[0]);
  s.stride_w = static_cast<int>(stride[1]);
  s.pad_h = static_cast<int>(padding[0]);
  s.pad_w = static_cast<int>(padding[1]);
  TORCH_CHECK(weight.size(3) == (depthwise ? 1 : s.cin), "weight's last dimension must be ", (depthwise ? 1 : s.cin),
              " (input channels), got ", weight.size(3));
  p.scale = scale.to(device, at::kFloat).contiguous();
  TORCH_CHECK(p.scale.numel() == s.cout, "scale needs one value per output channel (", s.cout, ")");
  ck::Epilogue& e = p.epilogue;
  e.scale = p.scale.data_ptr<float>();
  if (bias.has_value()) {
    p.bias = bias->to(device, at::kFloat).contiguous();
    TORCH_CHECK(p.bias.numel() == s.cout, "bias needs one value per output channel (", s.cout, ")");
    e.bias = p.bias.data_ptr<float>();
  }
  TORCH_CHECK(s.h + 2 * s.pad_h >= s.kh && s.w + 2 * s.pad_w >= s.kw, "kernel larger than the padded input");
  const std::vector<int64_t> out_shape = {s.n, s.out_h(), s.out_w(), s.cout};
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(out_shape), "residual must have the output's NHWC shape ",
                out_shape, ", got ", residual->sizes());
    TORCH_CHECK(residual->device() == device, "residual must be on ", device);
    if (residual->scalar_type() == at::kChar) {
      p.residual = residual->contiguous();
      e.residual_i8 = p.residual.data_ptr<int8_t>();
    } else {
      p.residual = residual->to(at::kFloat).contiguous();
      e.residual_f32 = p.residual.data_ptr<float>();
    }
    e.residual_scale = static_cast<float>(residual_scale);
  }
  e.act = parse_activation(activation);
  if (out_scale.has_value()) {
    p.out = at::empty(out_shape, x.options().dtype(at::kChar));
    e.out_scale = static_cast<float>(*out_scale);
    e.out_i8 = p.out.data_ptr<int8_t>();
  } else {
    p.out = at::empty(out_shape, x.options().dtype(at::kFloat));
    e.out_f32 = p.out.data_ptr<float>();
  }
  const char* err = ck::validate(s, e, depthwise);
  TORCH_CHECK(*err == '\0', "compressor int8 conv: ", err);
  return p;
}

// One image at a time through the twin, images in parallel; the epilogue pointers move with the image.
void run_cpu(Prepared& p, bool depthwise) {
  const ck::ConvShape whole = p.shape;
  const int64_t in_image = static_cast<int64_t>(whole.h) * whole.w * whole.cin;
  const int64_t out_image = static_cast<int64_t>(whole.out_h()) * whole.out_w() * whole.cout;
  const int8_t* x = p.x.data_ptr<int8_t>();
  const int8_t* w = p.weight.data_ptr<int8_t>();
  at::parallel_for(0, whole.n, 1, [&](int64_t begin, int64_t end) {
    ck::ConvShape s = whole;
    s.n = static_cast<int>(end - begin);
    ck::Epilogue e = p.epilogue;
    if (e.residual_i8) e.residual_i8 += begin * out_image;
    if (e.residual_f32) e.residual_f32 += begin * out_image;
    if (e.out_i8) e.out_i8 += begin * out_image;
    if (e.out_f32) e.out_f32 += begin * out_image;
    (depthwise ? ck::dwconv2d_int8_cpu : ck::conv2d_int8_cpu)(s, x + begin * in_image, w, e);
  });
}

template <bool Depthwise>
at::Tensor conv_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                    double residual_scale, at::IntArrayRef stride, at::IntArrayRef padding,
                    c10::string_view activation, std::optional<double> out_scale) {
  Prepared p = prepare(x, weight, scale, bias, residual, residual_scale, stride, padding, activation, out_scale,
                       Depthwise);
  run_cpu(p, Depthwise);
  return p.out;
}

#ifdef COMPRESSOR_WITH_CUDA
template <bool Depthwise>
at::Tensor conv_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                     double residual_scale, at::IntArrayRef stride, at::IntArrayRef padding,
                     c10::string_view activation, std::optional<double> out_scale) {
  c10::DeviceGuard guard(x.device());
  Prepared p = prepare(x, weight, scale, bias, residual, residual_scale, stride, padding, activation, out_scale,
                       Depthwise);
  // The generic guard API gives the current torch stream without CUDA-specific torch headers.
  void* stream = c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(x.device()).native_handle();
  const int8_t* xp = p.x.data_ptr<int8_t>();
  const int8_t* wp = p.weight.data_ptr<int8_t>();
  const int rc = Depthwise ? ck::dwconv2d_int8_cuda(p.shape, xp, wp, p.epilogue, stream)
                           : ck::conv2d_int8_cuda(p.shape, xp, wp, p.epilogue, stream);
  TORCH_CHECK(rc == 0, "compressor int8 conv CUDA launch failed: ", ck::cuda_error_string(rc));
  return p.out;
}
#endif

// A macro so the schema strings stay literals, which torch::Library::def requires.
#define COMPRESSOR_CONV_ARGS                                                                                    \
  "(Tensor x, Tensor weight, Tensor scale, Tensor? bias=None, Tensor? residual=None, float residual_scale=1.0, " \
  "int[2] stride=[1, 1], int[2] padding=[0, 0], str activation='none', float? out_scale=None) -> Tensor"

}  // namespace

TORCH_LIBRARY(compressor, m) {
  m.def("int8_conv2d" COMPRESSOR_CONV_ARGS);
  m.def("int8_dwconv2d" COMPRESSOR_CONV_ARGS);
}

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("int8_conv2d", &conv_cpu<false>);
  m.impl("int8_dwconv2d", &conv_cpu<true>);
}

#ifdef COMPRESSOR_WITH_CUDA
TORCH_LIBRARY_IMPL(compressor, CUDA, m) {
  m.impl("int8_conv2d", &conv_cuda<false>);
  m.impl("int8_dwconv2d", &conv_cuda<true>);
}
#endif
