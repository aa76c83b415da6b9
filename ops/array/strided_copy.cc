#include "kiln/ops/array/strided_copy.h"

#include <cstring>

#include "kiln/framework/cuda/device_memory.h"
#include "kiln/ops/array/permute.h"

namespace kiln::ops {

namespace {
// Elements are copied as unsigned integers of their size, so one loop serves every dtype.
// Copies between a dense tensor of `dims` and a strided view; kScatter picks the direction.
template <bool kScatter, typename Word>
void copy_rows(const KernelContext& ctx, const Word* src, Word* out, int64_t offset,
               const std::vector<int64_t>& dims, const std::vector<int64_t>& strides) {
  const int64_t rank = static_cast<int64_t>(dims.size());
  const int64_t inner = rank ? dims.back() : 1;
  const int64_t inner_stride = rank ? strides.back() : 0;
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < rank; ++d) rows *= dims[d];
  ctx.parallel_for(rows, inner, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      int64_t at = offset, rest = row;
      for (int64_t d = rank - 2; d >= 0; --d) {
        at += (rest % dims[d]) * strides[d];
        rest /= dims[d];
      }
      if constexpr (kScatter) {
        const Word* s = src + row * inner;
        Word* o = out + at;
        for (int64_t j = 0; j < inner; ++j) o[j * inner_stride] = s[j];
      } else {
        Word* o = out + row * inner;
        const Word* s = src + at;
        if (inner_stride == 1) {
          std::memcpy(o, s, inner * sizeof(Word));
        } else {
          for (int64_t j = 0; j < inner; ++j) o[j] = s[j * inner_stride];
        }
      }
    }
  });
}
}  // namespace

namespace {
template <bool kScatter>
void strided(const KernelContext& ctx, const Tensor& dense_or_src, void* out, const void* in,
             int64_t offset, const std::vector<int64_t>& dims,
             const std::vector<int64_t>& strides) {
  switch (dtype_size(dense_or_src.dtype())) {
    case 1:
      copy_rows<kScatter>(ctx, static_cast<const uint8_t*>(in), static_cast<uint8_t*>(out), offset,
                          dims, strides);
      break;
    case 2:
      copy_rows<kScatter>(ctx, static_cast<const uint16_t*>(in), static_cast<uint16_t*>(out),
                          offset, dims, strides);
      break;
    case 4:
      copy_rows<kScatter>(ctx, static_cast<const uint32_t*>(in), static_cast<uint32_t*>(out),
                          offset, dims, strides);
      break;
    default:
      copy_rows<kScatter>(ctx, static_cast<const uint64_t*>(in), static_cast<uint64_t*>(out),
                          offset, dims, strides);
      break;
  }
}
}  // namespace

void strided_copy(const KernelContext& ctx, const Tensor& src, int64_t offset,
                  const std::vector<int64_t>& strides, Tensor& out) {
  if (out.numel() == 0) return;
  if (ctx.cuda())
    return strided_copy_cuda(ctx, false, dtype_size(src.dtype()), src.raw_data(), out.raw_data(),
                             offset, out.shape().dims(), strides);
  strided<false>(ctx, src, out.raw_data(), src.raw_data(), offset, out.shape().dims(), strides);
}

void strided_scatter(const KernelContext& ctx, const Tensor& src, Tensor& dst, int64_t offset,
                     const std::vector<int64_t>& strides) {
  if (src.numel() == 0) return;
  if (ctx.cuda())
    return strided_copy_cuda(ctx, true, dtype_size(src.dtype()), src.raw_data(), dst.raw_data(),
                             offset, src.shape().dims(), strides);
  strided<true>(ctx, src, dst.raw_data(), src.raw_data(), offset, src.shape().dims(), strides);
}

void permute_copy(const KernelContext& ctx, const Tensor& x, const std::vector<int64_t>& perm,
                  Tensor& out) {
  std::vector<int64_t> in_strides = x.shape().strides();
  std::vector<int64_t> strides;
  for (int64_t p : perm) strides.push_back(in_strides[p]);
  strided_copy(ctx, x, 0, strides, out);
}

void view_kernel(KernelContext& ctx) {
  ctx.set_output(0, ctx.input(0).reshaped(ctx.output_type(0).shape));
}

void fill_zero(const KernelContext& ctx, Tensor& t) {
  if (ctx.cuda())
    zero_device_bytes(t.raw_data(), t.nbytes(), ctx.stream(), ctx.where());
  else if (t.nbytes())
    std::memset(t.raw_data(), 0, t.nbytes());
}

#ifndef KILN_WITH_CUDA
void strided_copy_cuda(const KernelContext& ctx, bool, size_t, const void*, void*, int64_t,
                       const std::vector<int64_t>&, const std::vector<int64_t>&) {
  throw DeviceError(str(ctx.where(), ": Kiln was built without CUDA"));
}
#endif

}  // namespace kiln::ops
