// CUDA kernels of conv2d and its gradient ops (ops/nn/conv.cc). cuDNN runs them: opened on
// first use, one handle per lane (a lane resource, bound to the lane's stream), the algorithm
// picked by cuDNN's heuristic once per problem and kept in the executor's kernel cache
// (deterministic algorithms first, so a run repeats bit for bit, unless the session's
// `deterministic` is off; f32 uses TF32 only where the session allows it, as the products). Where
// cuDNN cannot be opened, or KILN_CUDNN=0, Kiln's direct kernels run instead (one thread per output
// element, f32 accumulation): slower, and a reference for cuDNN.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kiln/framework/cuda/cuda_libraries.h"
#include "kiln/ops/cuda/cudnn_lane.h"
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/nn/conv.h"

namespace kiln::ops::cuda_conv {

using namespace kiln::ops::cuda;
using ::kiln::cuda::cudnn;

// ---- cuDNN.

void check_cudnn(cudnnStatus_t status, const char* call, const KernelContext& ctx) {
  if (status != CUDNN_STATUS_SUCCESS)
    throw DeviceError(
        str(ctx.where(), ": ", call, " failed: ", cudnn().cudnnGetErrorString(status)));
}
#define KILN_CUDNN_CHECK(call) check_cudnn((call), #call, ctx)

// cuDNN unless KILN_CUDNN=0 or the library cannot be opened (said once on stderr).
bool use_cudnn() {
  static const bool use = [] {
    const char* env = std::getenv("KILN_CUDNN");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    try {
      cudnn();
      return true;
    } catch (const DeviceError& e) {
      std::fprintf(stderr, "kiln: %s; convolutions run Kiln's direct CUDA kernels\n", e.what());
      return false;
    }
  }();
  return use;
}

cudnnDataType_t cudnn_type(DType dtype) {
  switch (dtype) {
    case DType::f64:
      return CUDNN_DATA_DOUBLE;
    case DType::f16:
      return CUDNN_DATA_HALF;
    case DType::bf16:
      return CUDNN_DATA_BFLOAT16;
    default:
      return CUDNN_DATA_FLOAT;
  }
}

int narrow(const KernelContext& ctx, int64_t v) {
  KILN_CHECK(v < (int64_t{1} << 31), Error, ctx.where(), ": size ", v, " exceeds cuDNN's 32 bits");
  return static_cast<int>(v);
}

// The three descriptors of a problem: x [N, C, H, W], y [N, O, OH, OW], w [O, C / g, KH, KW].
struct Descriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;

  Descriptors(const KernelContext& ctx, const ConvGeometry& g, DType dtype) {
    const cudnnDataType_t type = cudnn_type(dtype);
    KILN_CUDNN_CHECK(cudnn().cudnnCreateTensorDescriptor(&x));
    KILN_CUDNN_CHECK(cudnn().cudnnCreateTensorDescriptor(&y));
    KILN_CUDNN_CHECK(cudnn().cudnnCreateFilterDescriptor(&w));
    KILN_CUDNN_CHECK(cudnn().cudnnCreateConvolutionDescriptor(&conv));
    auto n = [&](int64_t v) { return narrow(ctx, v); };
    KILN_CUDNN_CHECK(cudnn().cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, type, n(g.batch),
                                                        n(g.in_channels), n(g.in_h), n(g.in_w)));
    KILN_CUDNN_CHECK(cudnn().cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, type, n(g.batch),
                                                        n(g.out_channels), n(g.out_h), n(g.out_w)));
    KILN_CUDNN_CHECK(cudnn().cudnnSetFilter4dDescriptor(w, type, CUDNN_TENSOR_NCHW,
                                                        n(g.out_channels), n(g.group_in()),
                                                        n(g.kernel_h), n(g.kernel_w)));
    KILN_CUDNN_CHECK(cudnn().cudnnSetConvolution2dDescriptor(
        conv, n(g.pad_h), n(g.pad_w), n(g.stride_h), n(g.stride_w), n(g.dilation_h),
        n(g.dilation_w), CUDNN_CROSS_CORRELATION,
        dtype == DType::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT));
    KILN_CUDNN_CHECK(cudnn().cudnnSetConvolutionGroupCount(conv, n(g.groups)));
  }
  ~Descriptors() {
    if (x) cudnn().cudnnDestroyTensorDescriptor(x);
    if (y) cudnn().cudnnDestroyTensorDescriptor(y);
    if (w) cudnn().cudnnDestroyFilterDescriptor(w);
    if (conv) cudnn().cudnnDestroyConvolutionDescriptor(conv);
  }
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;
};

// An algorithm of one of the three directions, with its math type and workspace.
struct Choice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
};

// Whether a problem may run on tensor cores: 16-bit types always, f32 in TF32 where the session
// allows it (SessionOptions::allow_tf32), f64 never.
bool tensor_cores(const KernelContext& ctx, DType dtype) {
  return dtype == DType::f16 || dtype == DType::bf16 ||
         (dtype == DType::f32 && ctx.cuda()->allow_tf32);
}

// The first usable result of a heuristic query: the first deterministic one where the session
// asks for the same bits every run (SessionOptions::deterministic, the default), else the first.
// Where tensor cores are not allowed (tensor_cores), only FMA kernels.
template <typename Perf>
Choice pick(const KernelContext& ctx, const Perf* results, int count, DType dtype) {
  const bool tensor = tensor_cores(ctx, dtype);
  for (bool need_deterministic : {true, false})
    for (int i = 0; i < count; ++i) {
      if (need_deterministic && !ctx.cuda()->deterministic) break;
      const Perf& r = results[i];
      if (r.status != CUDNN_STATUS_SUCCESS) continue;
      if (need_deterministic && r.determinism != CUDNN_DETERMINISTIC) continue;
      if (!tensor && r.mathType == CUDNN_TENSOR_OP_MATH) continue;
      // Without tensor cores f32 runs with FMA math, whatever the query reported (DEFAULT
      // would allow TF32).
      return {static_cast<int>(r.algo), tensor ? r.mathType : CUDNN_FMA_MATH, r.memory};
    }
  throw DeviceError(str(ctx.where(), ": cuDNN offers no algorithm for this ", dtype, " problem"));
}

enum class Direction { forward, backward_input, backward_filter };

// cuDNN's heuristic for one direction of the problem, its first usable answer (see pick).
Choice query_heuristic(const KernelContext& ctx, cudnnHandle_t handle, const Descriptors& d,
                       DType dtype, Direction direction) {
  constexpr int kMax = 16;
  int count = 0;
  // Tensor-op math is offered for 16-bit types, and for f32 where TF32 is allowed (cuDNN's
  // DEFAULT math permits TF32 for f32 data on Ampere and later); FMA math otherwise.
  const bool low = dtype == DType::f16 || dtype == DType::bf16;
  KILN_CUDNN_CHECK(cudnn().cudnnSetConvolutionMathType(d.conv, low ? CUDNN_TENSOR_OP_MATH
                                                               : tensor_cores(ctx, dtype)
                                                                   ? CUDNN_DEFAULT_MATH
                                                                   : CUDNN_FMA_MATH));
  if (direction == Direction::forward) {
    cudnnConvolutionFwdAlgoPerf_t results[kMax];
    KILN_CUDNN_CHECK(cudnn().cudnnGetConvolutionForwardAlgorithm_v7(handle, d.x, d.w, d.conv, d.y,
                                                                    kMax, &count, results));
    return pick(ctx, results, count, dtype);
  }
  if (direction == Direction::backward_input) {
    cudnnConvolutionBwdDataAlgoPerf_t results[kMax];
    KILN_CUDNN_CHECK(cudnn().cudnnGetConvolutionBackwardDataAlgorithm_v7(
        handle, d.w, d.y, d.conv, d.x, kMax, &count, results));
    return pick(ctx, results, count, dtype);
  }
  cudnnConvolutionBwdFilterAlgoPerf_t results[kMax];
  KILN_CUDNN_CHECK(cudnn().cudnnGetConvolutionBackwardFilterAlgorithm_v7(
      handle, d.x, d.y, d.conv, d.w, kMax, &count, results));
  return pick(ctx, results, count, dtype);
}

// The heuristic's choice for this node's problem, queried once per problem and device.
Choice choose(const KernelContext& ctx, cudnnHandle_t handle, const Descriptors& d,
              const ConvGeometry& g, DType dtype, Direction direction) {
  const std::string key = ctx.cache_key(
      str(static_cast<int>(direction), " k", g.kernel_h, 'x', g.kernel_w, " s", g.stride_h, ',',
          g.stride_w, " p", g.pad_h, ',', g.pad_w, " d", g.dilation_h, ',', g.dilation_w, " g",
          g.groups, " in ", g.in_h, 'x', g.in_w, tensor_cores(ctx, dtype) ? " tensor" : "",
          ctx.cuda()->deterministic ? "" : " any order"));
  return ctx.cache().get<Choice>(key, [&] {
    Choice choice = query_heuristic(ctx, handle, d, dtype, direction);
    // The workspace of the algorithm with the math it will run with, asked for directly: the
    // heuristic's figure was for the math of its query, and cuDNN refuses a smaller one.
    KILN_CUDNN_CHECK(cudnn().cudnnSetConvolutionMathType(d.conv, choice.math));
    size_t bytes = 0;
    if (direction == Direction::forward)
      KILN_CUDNN_CHECK(cudnn().cudnnGetConvolutionForwardWorkspaceSize(
          handle, d.x, d.w, d.conv, d.y, static_cast<cudnnConvolutionFwdAlgo_t>(choice.algo),
          &bytes));
    else if (direction == Direction::backward_input)
      KILN_CUDNN_CHECK(cudnn().cudnnGetConvolutionBackwardDataWorkspaceSize(
          handle, d.w, d.y, d.conv, d.x, static_cast<cudnnConvolutionBwdDataAlgo_t>(choice.algo),
          &bytes));
    else
      KILN_CUDNN_CHECK(cudnn().cudnnGetConvolutionBackwardFilterWorkspaceSize(
          handle, d.x, d.y, d.conv, d.w, static_cast<cudnnConvolutionBwdFilterAlgo_t>(choice.algo),
          &bytes));
    choice.workspace = std::max(choice.workspace, bytes);
    return choice;
  });
}

// Runs one direction through cuDNN: x, w, y are the problem's tensors (the output among them
// is written).
void run_cudnn(KernelContext& ctx, const ConvGeometry& g, DType dtype, Direction direction, void* x,
               void* w, void* y) {
  const cudnnHandle_t handle = ctx.lane_resource<CudnnLane>().handle;
  const Descriptors d(ctx, g, dtype);
  const Choice choice = choose(ctx, handle, d, g, dtype, direction);
  KILN_CUDNN_CHECK(cudnn().cudnnSetConvolutionMathType(d.conv, choice.math));
  std::shared_ptr<Storage> workspace;
  void* space = nullptr;
  if (choice.workspace > 0) {
    workspace = ctx.scratch(choice.workspace);
    space = workspace->data();
  }
  const double one = 1, zero = 0;
  const float one_f = 1, zero_f = 0;
  const void* alpha = dtype == DType::f64 ? static_cast<const void*>(&one) : &one_f;
  const void* beta = dtype == DType::f64 ? static_cast<const void*>(&zero) : &zero_f;
  switch (direction) {
    case Direction::forward:
      KILN_CUDNN_CHECK(
          cudnn().cudnnConvolutionForward(handle, alpha, d.x, x, d.w, w, d.conv,
                                          static_cast<cudnnConvolutionFwdAlgo_t>(choice.algo),
                                          space, choice.workspace, beta, d.y, y));
      break;
    case Direction::backward_input:
      KILN_CUDNN_CHECK(cudnn().cudnnConvolutionBackwardData(
          handle, alpha, d.w, w, d.y, y, d.conv,
          static_cast<cudnnConvolutionBwdDataAlgo_t>(choice.algo), space, choice.workspace, beta,
          d.x, x));
      break;
    case Direction::backward_filter:
      KILN_CUDNN_CHECK(cudnn().cudnnConvolutionBackwardFilter(
          handle, alpha, d.x, x, d.y, y, d.conv,
          static_cast<cudnnConvolutionBwdFilterAlgo_t>(choice.algo), space, choice.workspace, beta,
          d.w, w));
      break;
  }
}

// ---- Kiln's direct kernels.

// The geometry as plain numbers a device lambda can capture.
struct Dims {
  int64_t n, c, h, w, o, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, cg, og;
};
Dims dims_of(const ConvGeometry& g) {
  return {g.batch, g.in_channels, g.in_h,       g.in_w,       g.out_channels, g.out_h,
          g.out_w, g.kernel_h,    g.kernel_w,   g.stride_h,   g.stride_w,     g.pad_h,
          g.pad_w, g.dilation_h,  g.dilation_w, g.group_in(), g.group_out()};
}

template <typename T>
void direct(KernelContext& ctx, const ConvGeometry& g, Direction direction, T* x, T* w, T* y) {
  using C = Compute<T>;
  const Dims s = dims_of(g);
  if (direction == Direction::forward) {
    for_each(ctx, s.n * s.o * s.oh * s.ow, [=] __device__(int64_t idx) {
      const int64_t j = idx % s.ow, i = idx / s.ow % s.oh, o = idx / (s.ow * s.oh) % s.o,
                    n = idx / (s.ow * s.oh * s.o);
      const int64_t first = o / s.og * s.cg;
      C sum = 0;
      for (int64_t c = 0; c < s.cg; ++c)
        for (int64_t a = 0; a < s.kh; ++a) {
          const int64_t r = i * s.sh - s.ph + a * s.dh;
          if (r < 0 || r >= s.h) continue;
          for (int64_t b = 0; b < s.kw; ++b) {
            const int64_t q = j * s.sw - s.pw + b * s.dw;
            if (q < 0 || q >= s.w) continue;
            sum += static_cast<C>(x[((n * s.c + first + c) * s.h + r) * s.w + q]) *
                   static_cast<C>(w[((o * s.cg + c) * s.kh + a) * s.kw + b]);
          }
        }
      y[idx] = static_cast<T>(sum);
    });
  } else if (direction == Direction::backward_input) {
    // dx[n, c, r, q] = sum over the group's o and (a, b) with r = i sh - ph + a dh (same for q).
    for_each(ctx, s.n * s.c * s.h * s.w, [=] __device__(int64_t idx) {
      const int64_t q = idx % s.w, r = idx / s.w % s.h, c = idx / (s.w * s.h) % s.c,
                    n = idx / (s.w * s.h * s.c);
      const int64_t group = c / s.cg, cc = c % s.cg;
      C sum = 0;
      for (int64_t o = group * s.og; o < (group + 1) * s.og; ++o)
        for (int64_t a = 0; a < s.kh; ++a) {
          const int64_t ti = r + s.ph - a * s.dh;
          if (ti < 0 || ti % s.sh != 0 || ti / s.sh >= s.oh) continue;
          for (int64_t b = 0; b < s.kw; ++b) {
            const int64_t tj = q + s.pw - b * s.dw;
            if (tj < 0 || tj % s.sw != 0 || tj / s.sw >= s.ow) continue;
            sum += static_cast<C>(y[((n * s.o + o) * s.oh + ti / s.sh) * s.ow + tj / s.sw]) *
                   static_cast<C>(w[((o * s.cg + cc) * s.kh + a) * s.kw + b]);
          }
        }
      x[idx] = static_cast<T>(sum);
    });
  } else {
    // dw[o, c, a, b] = sum over n, i, j of x[n, group c, i sh - ph + a dh, ...] dy[n, o, i, j].
    for_each(ctx, s.o * s.cg * s.kh * s.kw, [=] __device__(int64_t idx) {
      const int64_t b = idx % s.kw, a = idx / s.kw % s.kh, c = idx / (s.kw * s.kh) % s.cg,
                    o = idx / (s.kw * s.kh * s.cg);
      const int64_t channel = o / s.og * s.cg + c;
      C sum = 0;
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t i = 0; i < s.oh; ++i) {
          const int64_t r = i * s.sh - s.ph + a * s.dh;
          if (r < 0 || r >= s.h) continue;
          for (int64_t j = 0; j < s.ow; ++j) {
            const int64_t q = j * s.sw - s.pw + b * s.dw;
            if (q < 0 || q >= s.w) continue;
            sum += static_cast<C>(x[((n * s.c + channel) * s.h + r) * s.w + q]) *
                   static_cast<C>(y[((n * s.o + o) * s.oh + i) * s.ow + j]);
          }
        }
      w[idx] = static_cast<T>(sum);
    });
  }
}

// ---- The three kernels: (x, w, y) are (input 0, input 1, output) in some order.

void convolve(KernelContext& ctx, Direction direction, const Tensor& x, const Tensor& w,
              const Tensor& y) {
  const ConvGeometry g = conv_geometry(ctx.node(), x.shape(), y.shape(), w.shape());
  if (x.numel() == 0 || y.numel() == 0 || w.numel() == 0) return;
  void* px = const_cast<void*>(x.raw_data());
  void* pw = const_cast<void*>(w.raw_data());
  void* py = const_cast<void*>(y.raw_data());
  if (use_cudnn()) return run_cudnn(ctx, g, x.dtype(), direction, px, pw, py);
  dispatch_cuda_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    direct<T>(ctx, g, direction, static_cast<T*>(px), static_cast<T*>(pw), static_cast<T*>(py));
  });
}

// y[n, o, :] += bias[o], in place after the product (conv2d's optional bias).
template <typename T>
void add_bias(const KernelContext& ctx, T* out, const T* bias, int64_t n, int64_t pixels,
              int64_t channels) {
  using C = Compute<T>;
  for_each(ctx, n, [=] __device__(int64_t idx) {
    out[idx] =
        static_cast<T>(static_cast<C>(out[idx]) + static_cast<C>(bias[idx / pixels % channels]));
  });
}

void conv2d_cuda(KernelContext& ctx) {
  Tensor& y = ctx.output(0);
  convolve(ctx, Direction::forward, ctx.input(0), ctx.input(1), y);
  if (ctx.num_inputs() < 3 || y.numel() == 0) return;
  dispatch_cuda_float(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    add_bias(ctx, static_cast<T*>(y.raw_data()), ctx.input(2).data<T>(), y.numel(),
             y.shape()[2] * y.shape()[3], y.shape()[1]);
  });
}
void backward_input_cuda(KernelContext& ctx) {
  Tensor& dx = ctx.output(0);
  convolve(ctx, Direction::backward_input, dx, ctx.input(1), ctx.input(0));
}
void backward_filter_cuda(KernelContext& ctx) {
  Tensor& dw = ctx.output(0);
  convolve(ctx, Direction::backward_filter, ctx.input(0), dw, ctx.input(1));
}

KILN_CUDA_KERNEL(conv2d, conv2d_cuda, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(conv2d_backward_input, backward_input_cuda, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(conv2d_backward_filter, backward_filter_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_conv
