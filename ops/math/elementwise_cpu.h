// CPU loops for elementwise ops: flat when shapes match, broadcast rows otherwise.
#pragma once

#include <array>
#include <tuple>
#include <utility>

#include "kiln/framework/kernel.h"
#include "kiln/ops/broadcast.h"
#include "kiln/ops/math/vector_math.h"

namespace kiln::ops {

namespace detail {
template <typename Out, typename F, typename... In, size_t... I>
void broadcast_row(Out* out, int64_t n, const F& f, const std::array<int64_t, sizeof...(In)>& st,
                   std::index_sequence<I...>, const In*... in) {
  for (int64_t j = 0; j < n; ++j) out[j] = f(in[j * st[I]]...);
}

// Two inputs: contiguous and scalar operands get loops the compiler can vectorize.
template <typename Out, typename F, typename A, typename B>
void broadcast_row2(Out* out, int64_t n, const F& f, const std::array<int64_t, 2>& st, const A* a,
                    const B* b) {
  if (st[0] == 1 && st[1] == 1) {
    apply_contiguous(f, out, n, a, b);
  } else if (st[0] == 1 && st[1] == 0) {
    const B bv = *b;
    for (int64_t j = 0; j < n; ++j) out[j] = f(a[j], bv);
  } else if (st[0] == 0 && st[1] == 1) {
    const A av = *a;
    for (int64_t j = 0; j < n; ++j) out[j] = f(av, b[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = f(a[j * st[0]], b[j * st[1]]);
  }
}
}  // namespace detail

/// out[i] = f(in[i]...) with every input broadcast to `out_shape`. Parallel over rows of the
/// coalesced iteration space.
template <typename Out, typename F, typename... In>
void elementwise_loop(const KernelContext& ctx, Out* out, const Shape& out_shape, const F& f,
                      const std::array<Shape, sizeof...(In)>& shapes, const In*... in) {
  constexpr int N = sizeof...(In);
  const int64_t n = out_shape.numel();
  if (n == 0) return;
  bool same = true;
  for (const Shape& s : shapes) same &= s.numel() == n;
  if (same) {
    ctx.parallel_for(n, 1, [&](int64_t begin, int64_t end) {
      apply_contiguous(f, out + begin, end - begin, (in + begin)...);
    });
    return;
  }
  const BroadcastLoop<N> loop = make_broadcast_loop<N>(out_shape, shapes);
  const int64_t inner = loop.inner();
  const std::array<int64_t, N> st = loop.inner_strides();
  ctx.parallel_for(loop.outer(), inner, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const std::array<int64_t, N> off = loop.row_offsets(row);
      Out* o = out + row * inner;
      [&]<size_t... I>(std::index_sequence<I...> seq) {
        if constexpr (N == 2)
          detail::broadcast_row2(o, inner, f, st, (in + off[I])...);
        else
          detail::broadcast_row(o, inner, f, st, seq, (in + off[I])...);
      }
      (std::make_index_sequence<N>{});
    }
  });
}

}  // namespace kiln::ops
