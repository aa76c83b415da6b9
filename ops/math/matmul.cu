// matmul on the GPU through cuBLASLt. Kiln's tensors are row-major and cuBLASLt's matrices
// column-major; a row-major [R, C] matrix is a column-major [C, R] one, so
//   C = op(A) op(B)  (row-major)   is computed as   C^T = op(B)^T op(A)^T  (column-major),
// i.e. cuBLASLt's first operand is our B and its second our A, with the same transpose flags.
// f16 and bf16 multiply on the tensor cores and accumulate in f32; f32 is exact f32 (no TF32,
// like torch's default) unless the session allows TF32 (SessionOptions::allow_tf32); f64 is f64.
#include <cublasLt.h>

#include "kiln/framework/cuda/cuda_libraries.h"

#include "kiln/framework/cuda/device_memory.h"
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/math/cuda_product.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/matmul_batch.h"

namespace kiln::ops::cuda_matmul {

using namespace kiln::ops::cuda;

void check_blas(cublasStatus_t status, const char* call, const KernelContext& ctx) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw DeviceError(str(ctx.where(), ": ", call,
                          " failed: ", ::kiln::cuda::blaslt().cublasLtGetStatusName(status), " (",
                          ::kiln::cuda::blaslt().cublasLtGetStatusString(status), ")"));
}
#define KILN_BLAS_CHECK(call) check_blas((call), #call, ctx)

cudaDataType_t data_type(DType dtype) {
  switch (dtype) {
    case DType::f64:
      return CUDA_R_64F;
    case DType::f16:
      return CUDA_R_16F;
    case DType::bf16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

// Owned cuBLASLt descriptors of one product.
struct Descriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  ~Descriptors() {
    if (op) ::kiln::cuda::blaslt().cublasLtMatmulDescDestroy(op);
    if (a) ::kiln::cuda::blaslt().cublasLtMatrixLayoutDestroy(a);
    if (b) ::kiln::cuda::blaslt().cublasLtMatrixLayoutDestroy(b);
    if (c) ::kiln::cuda::blaslt().cublasLtMatrixLayoutDestroy(c);
  }
};

void set_batch(const KernelContext& ctx, cublasLtMatrixLayout_t layout, int32_t count,
               int64_t stride) {
  KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatrixLayoutSetAttribute(
      layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatrixLayoutSetAttribute(
      layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
}

// A lane's cuBLASLt handle and workspace, made when the lane's first product runs.
struct BlasLtLane final : LaneResource {
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLASLt's advice for Hopper

  explicit BlasLtLane(const LaneInfo& lane) {
    if (::kiln::cuda::blaslt().cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS)
      throw DeviceError(str("[cuda] cublasLtCreate failed on ", lane.device));
    // Stream-ordered on the lane's own stream, so the products queued after it see it.
    workspace = allocate_device(lane.device, kWorkspaceBytes, lane.stream, "cuBLASLt workspace");
  }
  ~BlasLtLane() override { ::kiln::cuda::blaslt().cublasLtDestroy(handle); }

  cublasLtHandle_t handle = nullptr;
  std::shared_ptr<Storage> workspace;
};

void run_product(const KernelContext& ctx, const Product& p) {
  BlasLtLane& lane = ctx.lane_resource<BlasLtLane>();
  const cublasLtHandle_t handle = lane.handle;
  const cudaDataType_t type = data_type(p.dtype);
  const bool f64 = p.dtype == DType::f64;
  const bool tf32 = p.dtype == DType::f32 && ctx.cuda()->allow_tf32;
  const cublasComputeType_t compute = f64    ? CUBLAS_COMPUTE_64F
                                      : tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                             : CUBLAS_COMPUTE_32F;
  Descriptors d;
  KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatmulDescCreate(&d.op, compute,
                                                                  f64 ? CUDA_R_64F : CUDA_R_32F));
  const cublasOperation_t first_op = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N;   // our B
  const cublasOperation_t second_op = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N;  // our A
  KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatmulDescSetAttribute(
      d.op, CUBLASLT_MATMUL_DESC_TRANSA, &first_op, sizeof(first_op)));
  KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatmulDescSetAttribute(
      d.op, CUBLASLT_MATMUL_DESC_TRANSB, &second_op, sizeof(second_op)));
  if (p.bias) {
    // C^T is column-major [N, M]: a bias of N rows is one value per column of C.
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatmulDescSetAttribute(
        d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatmulDescSetAttribute(
        d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)));
  }
  // Stored column-major shapes: B is [N, K] (or [K, N] transposed), A is [K, M] (or [M, K]).
  const uint64_t b_rows = p.tb ? p.k : p.n, b_cols = p.tb ? p.n : p.k;
  const uint64_t a_rows = p.ta ? p.m : p.k, a_cols = p.ta ? p.k : p.m;
  KILN_BLAS_CHECK(
      ::kiln::cuda::blaslt().cublasLtMatrixLayoutCreate(&d.a, type, b_rows, b_cols, b_rows));
  KILN_BLAS_CHECK(
      ::kiln::cuda::blaslt().cublasLtMatrixLayoutCreate(&d.b, type, a_rows, a_cols, a_rows));
  KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatrixLayoutCreate(&d.c, type, p.n, p.m, p.n));
  if (p.batch > 1) {
    set_batch(ctx, d.a, p.batch, p.b_stride);
    set_batch(ctx, d.b, p.batch, p.a_stride);
    set_batch(ctx, d.c, p.batch, p.m * p.n);
  }
  // The heuristic's choice, made once per problem on this device (the query costs more than a
  // small product): the key holds everything the descriptors above were made from.
  const std::string key = ctx.cache_key(
      str(p.dtype, p.ta, p.tb, ' ', p.m, 'x', p.k, 'x', p.n, " batch ", p.batch, ' ', p.a_stride,
          ' ', p.b_stride, p.bias ? " bias" : "", p.addend ? " addend" : "", tf32 ? " tf32" : ""));
  const cublasLtMatmulAlgo_t algo = ctx.cache().get<cublasLtMatmulAlgo_t>(key, [&] {
    cublasLtMatmulPreference_t preference = nullptr;
    KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatmulPreferenceCreate(&preference));
    size_t workspace = BlasLtLane::kWorkspaceBytes;
    ::kiln::cuda::blaslt().cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t status = ::kiln::cuda::blaslt().cublasLtMatmulAlgoGetHeuristic(
        handle, d.op, d.a, d.b, d.c, d.c, preference, 1, &result, &found);
    ::kiln::cuda::blaslt().cublasLtMatmulPreferenceDestroy(preference);
    KILN_BLAS_CHECK(status);
    KILN_CHECK(found > 0, DeviceError, ctx.where(), ": cuBLASLt has no algorithm for ", p.dtype,
               " ", p.m, "x", p.k, "x", p.n);
    return result.algo;
  });
  const double one = 1.0, zero = 0.0;
  const float one_f = 1.0f, zero_f = 0.0f;
  const void* alpha = f64 ? static_cast<const void*>(&one) : &one_f;
  const void* beta = p.addend ? alpha : f64 ? static_cast<const void*>(&zero) : &zero_f;
  KILN_BLAS_CHECK(::kiln::cuda::blaslt().cublasLtMatmul(
      handle, d.op, alpha, p.b, d.a, p.a, d.b, beta, p.addend ? p.addend : p.c, d.c, p.c, d.c,
      &algo, lane.workspace->data(), BlasLtLane::kWorkspaceBytes, stream_of(ctx)));
}

void matmul_cuda(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  Tensor& c = ctx.output(0);
  const bool ta = ctx.attr<bool>("transpose_a"), tb = ctx.attr<bool>("transpose_b");
  const Shape& as = a.shape();
  const Shape& bs = b.shape();
  const int64_t m = c.shape()[-2], n = c.shape()[-1], k = ta ? as[-2] : as[-1];
  if (c.numel() == 0) return;
  if (k == 0) {
    zero_device_bytes(c.raw_data(), c.nbytes(), ctx.stream(), ctx.where());
    return;
  }
  KILN_CHECK(m < (int64_t{1} << 31) && n < (int64_t{1} << 31) && k < (int64_t{1} << 31), Error,
             ctx.where(), ": matrix dims ", m, "x", k, "x", n, " exceed cuBLAS's 32-bit limit");
  // [B, T, K] times a matrix: one product of B T rows (where cuBLAS's 32-bit rows reach).
  if (product_folds_rows(as, bs, ta) && rows_of_matrix(as) < (int64_t{1} << 31)) {
    run_product(ctx, {a.dtype(), false, tb, rows_of_matrix(as), n, k, a.raw_data(), b.raw_data(),
                      c.raw_data()});
    return;
  }
  const Shape out_batch(std::vector<int64_t>(c.shape().begin(), c.shape().end() - 2));
  const std::vector<int64_t> a_off =
      batch_offsets(out_batch, Shape(std::vector<int64_t>(as.begin(), as.end() - 2)));
  const std::vector<int64_t> b_off =
      batch_offsets(out_batch, Shape(std::vector<int64_t>(bs.begin(), bs.end() - 2)));
  const int64_t a_stride = uniform_batch_stride(a_off), b_stride = uniform_batch_stride(b_off);
  const size_t elem = dtype_size(a.dtype());
  const auto* pa = static_cast<const char*>(a.raw_data());
  const auto* pb = static_cast<const char*>(b.raw_data());
  auto* pc = static_cast<char*>(c.raw_data());
  const int64_t batch = static_cast<int64_t>(a_off.size());
  if (a_stride >= 0 && b_stride >= 0 && batch < (int64_t{1} << 31)) {
    run_product(ctx, {a.dtype(), ta, tb, m, n, k, pa, pb, pc, static_cast<int32_t>(batch),
                      a_stride * m * k, b_stride * k * n});
    return;
  }
  for (int64_t i = 0; i < batch; ++i)  // irregular broadcasting: one product per entry
    run_product(ctx, {a.dtype(), ta, tb, m, n, k, pa + a_off[i] * m * k * elem,
                      pb + b_off[i] * k * n * elem, pc + i * m * n * elem});
}
KILN_CUDA_KERNEL(matmul, matmul_cuda, {DType::f32, DType::f64, DType::f16, DType::bf16});

// c = relu(c), with relu's own functor.
template <typename T>
void relu_in_place(const KernelContext& ctx, Tensor& c) {
  map1<T, T>(ctx, c, c,
             [] __device__(T x) { return static_cast<T>(relu_fn{}(static_cast<Compute<T>>(x))); });
}

// matmul_bias: one cuBLASLt call with the bias epilogue (a bias [N]) or C = the addend with beta
// 1 (an addend [M, N]). Not cuBLASLt's RELU_BIAS: its ReLU is max(x, 0), which turns NaN into 0
// (a NaN would vanish from training unseen); relu's own functor (NaN stays NaN) runs over C
// afterwards instead.
void matmul_bias_cuda(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  Tensor& c = ctx.output(0);
  const bool ta = ctx.attr<bool>("transpose_a"), tb = ctx.attr<bool>("transpose_b");
  const int64_t m = c.shape()[0], n = c.shape()[1], k = ta ? a.shape()[0] : a.shape()[1];
  if (c.numel() == 0) return;
  // The pass that makes matmul_bias (runtime/passes/matmul_epilogue.cc) leaves empty products
  // to matmul + add.
  KILN_CHECK(k > 0, Error, ctx.where(), ": an inner dimension of 0 is not supported on the GPU");
  KILN_CHECK(m < (int64_t{1} << 31) && n < (int64_t{1} << 31) && k < (int64_t{1} << 31), Error,
             ctx.where(), ": matrix dims ", m, "x", k, "x", n, " exceed cuBLAS's 32-bit limit");
  Product p{a.dtype(), ta, tb, m, n, k, a.raw_data(), ctx.input(1).raw_data(), c.raw_data()};
  const Tensor& bias = ctx.input(2);
  (bias.shape().rank() == 2 ? p.addend : p.bias) = bias.raw_data();
  run_product(ctx, p);
  if (ctx.attr<std::string>("activation") == "relu")
    dispatch_cuda_float(c.dtype(), [&](auto tag) { relu_in_place<decltype(tag)>(ctx, c); });
}
KILN_CUDA_KERNEL(matmul_bias, matmul_bias_cuda, {DType::f32, DType::f64, DType::f16, DType::bf16});

}  // namespace kiln::ops::cuda_matmul
