// The op-case table's convolution, pooling and normalization cases (see
// op_cases.h), with direct-loop f64 references: the kernels unfold (im2col), block and call
// gemm; the references do none of that.
#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "cases/op_cases.h"

namespace kiln::testing {
namespace {

std::vector<double> values(const Tensor& t) {
  std::vector<double> v;
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t.element(i));
  return v;
}

struct Window {
  int64_t kh, kw, sh, sw, ph, pw, dh = 1, dw = 1;
  bool ceil = false;  // pooling's ceil_mode
};

// Pooled size of one dim by PyTorch's rule (floor, or ceil while the last window starts inside
// the input or its left padding), for a window of k taps d apart.
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil, int64_t d = 1) {
  int64_t out = (in + 2 * p - (d * (k - 1) + 1) + (ceil ? s - 1 : 0)) / s + 1;
  if (ceil && (out - 1) * s >= in + p) --out;
  return out;
}

// y[n, o, i, j] = sum_{c, a, b} x[n, g Cg + c, i sh - ph + a dh, j sw - pw + b dw] w[o, c, a, b]
Reference conv_reference(const Window& win, int64_t groups) {
  return [win, groups](const std::vector<Tensor>& in) {
    const Shape& xs = in[0].shape();
    const Shape& ws = in[1].shape();
    const std::vector<double> x = values(in[0]), w = values(in[1]);
    const int64_t n = xs[0], c = xs[1], h = xs[2], wd = xs[3], o = ws[0], cg = ws[1];
    const int64_t oh = (h + 2 * win.ph - win.dh * (win.kh - 1) - 1) / win.sh + 1;
    const int64_t ow = (wd + 2 * win.pw - win.dw * (win.kw - 1) - 1) / win.sw + 1;
    const int64_t og = o / groups;
    std::vector<double> y;
    for (int64_t b = 0; b < n; ++b)
      for (int64_t oc = 0; oc < o; ++oc)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) {
            double sum = 0;
            for (int64_t ic = 0; ic < cg; ++ic)
              for (int64_t a = 0; a < win.kh; ++a)
                for (int64_t e = 0; e < win.kw; ++e) {
                  const int64_t r = i * win.sh - win.ph + a * win.dh;
                  const int64_t s = j * win.sw - win.pw + e * win.dw;
                  if (r < 0 || r >= h || s < 0 || s >= wd) continue;
                  const int64_t channel = (oc / og) * cg + ic;
                  sum += x[((b * c + channel) * h + r) * wd + s] *
                         w[((oc * cg + ic) * win.kh + a) * win.kw + e];
                }
            y.push_back(sum + (in.size() > 2 ? in[2].element(oc) : 0.0));  // the bias
          }
    return y;
  };
}

// One value per window of each plane of x, in output order: window(plane, h, w, i, j), the plane
// as doubles.
template <typename Fn>
std::vector<double> per_window(const Window& win, const Tensor& x, Fn&& window) {
  const Shape& xs = x.shape();
  const std::vector<double> all = values(x);
  const int64_t planes = xs[0] * xs[1], h = xs[2], wd = xs[3];
  const int64_t oh = pooled_size(h, win.kh, win.sh, win.ph, win.ceil, win.dh);
  const int64_t ow = pooled_size(wd, win.kw, win.sw, win.pw, win.ceil, win.dw);
  std::vector<double> y;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) y.push_back(window(all.data() + p * h * wd, h, wd, i, j));
  return y;
}

// max (NaN wins) or mean over each window; padding never takes part in the max.
Reference pool_reference(const Window& win, bool max, bool include_pad) {
  return [=](const std::vector<Tensor>& in) {
    return per_window(
        win, in[0], [&](const double* x, int64_t h, int64_t wd, int64_t i, int64_t j) {
          double best = -std::numeric_limits<double>::infinity(), sum = 0;
          int64_t inside = 0, padded = 0;
          for (int64_t a = 0; a < win.kh; ++a)
            for (int64_t e = 0; e < win.kw; ++e) {
              const int64_t r = i * win.sh - win.ph + a * win.dh,
                            s = j * win.sw - win.pw + e * win.dw;
              if (r < h + win.ph && s < wd + win.pw) ++padded;
              if (r < 0 || r >= h || s < 0 || s >= wd) continue;
              const double v = x[r * wd + s];
              best = std::isnan(best) || std::isnan(v) ? NAN : std::max(best, v);
              sum += v;
              ++inside;
            }
          return max ? best : sum / static_cast<double>(include_pad ? padded : inside);
        });
  };
}

// Each window's first maximum, as its offset h W + w in the input plane.
Reference pool_argmax_reference(const Window& win) {
  return [=](const std::vector<Tensor>& in) {
    return per_window(win, in[0],
                      [&](const double* x, int64_t h, int64_t wd, int64_t i, int64_t j) {
                        int64_t best_at = -1;
                        for (int64_t a = 0; a < win.kh; ++a)
                          for (int64_t e = 0; e < win.kw; ++e) {
                            const int64_t r = i * win.sh - win.ph + a * win.dh,
                                          s = j * win.sw - win.pw + e * win.dw;
                            if (r < 0 || r >= h || s < 0 || s >= wd) continue;
                            if (best_at < 0 || x[r * wd + s] > x[best_at]) best_at = r * wd + s;
                          }
                        return static_cast<double>(best_at);
                      });
  };
}

// The maximum (NaN wins) over adaptive windows: output row i covers input rows
// [floor(i H / OH), ceil((i + 1) H / OH)), columns likewise.
Reference adaptive_max_reference(int64_t oh, int64_t ow) {
  return [=](const std::vector<Tensor>& in) {
    const Shape& xs = in[0].shape();
    const std::vector<double> x = values(in[0]);
    const int64_t planes = xs[0] * xs[1], h = xs[2], wd = xs[3];
    std::vector<double> y;
    for (int64_t p = 0; p < planes; ++p)
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j) {
          double best = -std::numeric_limits<double>::infinity();
          for (int64_t r = i * h / oh; r * oh < (i + 1) * h; ++r)
            for (int64_t q = j * wd / ow; q * ow < (j + 1) * wd; ++q) {
              const double v = x[(p * h + r) * wd + q];
              best = std::isnan(best) || std::isnan(v) ? NAN : std::max(best, v);
            }
          y.push_back(best);
        }
    return y;
  };
}

AttrMap conv_attrs(const Window& w, int64_t groups) {
  return {{"stride", std::vector<int64_t>{w.sh, w.sw}},
          {"padding", std::vector<int64_t>{w.ph, w.pw}},
          {"dilation", std::vector<int64_t>{w.dh, w.dw}},
          {"groups", groups}};
}
AttrMap pool_attrs(const Window& w) {
  AttrMap attrs = {{"kernel_size", std::vector<int64_t>{w.kh, w.kw}},
                   {"stride", std::vector<int64_t>{w.sh, w.sw}},
                   {"padding", std::vector<int64_t>{w.ph, w.pw}},
                   {"ceil_mode", w.ceil}};
  if (w.dh != 1 || w.dw != 1)  // the max ops only
    attrs["dilation"] = std::vector<int64_t>{w.dh, w.dw};
  return attrs;
}

}  // namespace

void add_nn_cases(const std::function<void(OpCase)>& add) {
  // ---- conv2d: plain, strided + padded + dilated (unequal per dim), grouped, pointwise, and
  // two that oneDNN runs.
  struct Conv {
    const char* name;
    Shape x, w;
    Window win;
    int64_t groups;
  };
  for (const Conv& conv :
       {Conv{"conv2d", {2, 3, 7, 6}, {4, 3, 3, 3}, {3, 3, 1, 1, 0, 0}, 1},
        Conv{"conv2d_stride_pad_dilation", {2, 2, 9, 8}, {3, 2, 3, 2}, {3, 2, 2, 1, 1, 2, 2, 1}, 1},
        Conv{"conv2d_groups", {2, 4, 5, 5}, {6, 2, 3, 3}, {3, 3, 1, 1, 1, 1}, 2},
        Conv{"conv2d_pointwise", {2, 3, 4, 5}, {5, 3, 1, 1}, {1, 1, 1, 1, 0, 0}, 1},
        // With 8 or more input channels per group f32 runs on oneDNN: 19 images (its blocks of
        // 16 and a remainder; stride 2 leaves the last row unread), and groups with dilation.
        Conv{"conv2d_batch_blocks", {19, 8, 6, 5}, {4, 8, 3, 3}, {3, 3, 2, 1, 1, 0}, 1},
        Conv{"conv2d_groups_dilation", {3, 16, 5, 7}, {6, 8, 3, 3}, {3, 3, 1, 2, 1, 1, 1, 2}, 2}})
    add({.op = "conv2d",
         .name = conv.name,
         .build =
             [conv](CaseGraph& c) {
               return c.g.add("conv2d", {c.input(conv.x), c.input(conv.w)},
                              conv_attrs(conv.win, conv.groups));
             },
         .reference = conv_reference(conv.win, conv.groups)});
  // With the bias the matmul_epilogue pass folds in: on the im2col path (groups) and oneDNN's.
  for (const Conv& conv :
       {Conv{"conv2d_bias_groups", {2, 4, 5, 5}, {6, 2, 3, 3}, {3, 3, 1, 1, 1, 1}, 2},
        Conv{"conv2d_bias_batch_blocks", {19, 8, 6, 5}, {4, 8, 3, 3}, {3, 3, 2, 1, 1, 0}, 1}})
    add({.op = "conv2d",
         .name = conv.name,
         .build =
             [conv](CaseGraph& c) {
               return c.g.add("conv2d", {c.input(conv.x), c.input(conv.w), c.input({conv.w[0]})},
                              conv_attrs(conv.win, conv.groups));
             },
         .reference = conv_reference(conv.win, conv.groups)});
  // The transposed convolution is conv2d's input gradient, with an output padding.
  add({"conv2d_backward_input", "conv_transpose2d", [](CaseGraph& c) {
         return conv_transpose2d(c.input({2, 4, 4, 5}), c.input({4, 3, 3, 3}),
                                 {.stride = {2, 2}, .padding = {1, 1}}, {1, 0});
       }});
  add({"conv2d_backward_input", "conv2d_backward_input_groups", [](CaseGraph& c) {
         AttrMap attrs = conv_attrs({3, 3, 1, 1, 1, 1}, 2);
         attrs["input_size"] = std::vector<int64_t>{5, 5};
         return c.g.add("conv2d_backward_input", {c.input({2, 6, 5, 5}), c.input({6, 2, 3, 3})},
                        attrs);
       }});
  add({"conv2d_backward_filter", "conv2d_backward_filter", [](CaseGraph& c) {
         AttrMap attrs = conv_attrs({3, 3, 2, 2, 1, 1}, 1);
         attrs["kernel_size"] = std::vector<int64_t>{3, 3};
         return c.g.add("conv2d_backward_filter", {c.input({2, 3, 6, 6}), c.input({2, 4, 3, 3})},
                        attrs);
       }});
  add({"conv2d_backward_filter", "conv2d_backward_filter_groups", [](CaseGraph& c) {
         AttrMap attrs = conv_attrs({2, 3, 1, 2, 0, 1, 1, 2}, 2);
         attrs["kernel_size"] = std::vector<int64_t>{2, 3};
         return c.g.add("conv2d_backward_filter", {c.input({3, 4, 5, 7}), c.input({3, 2, 4, 3})},
                        attrs);
       }});

  // ---- Pooling: a square window without padding (tiling the input), an overlapping padded one.
  const Window square{2, 2, 2, 2, 0, 0}, padded{3, 2, 2, 1, 1, 1};
  add({.op = "max_pool2d",
       .name = "max_pool2d",
       .build =
           [square](CaseGraph& c) {
             return c.g.add("max_pool2d", {c.input({2, 3, 6, 6})}, pool_attrs(square));
           },
       .reference = pool_reference(square, true, true)});
  add({.op = "max_pool2d",
       .name = "max_pool2d_padded",
       .build =
           [padded](CaseGraph& c) {
             return c.g.add("max_pool2d", {c.input({2, 3, 6, 7})}, pool_attrs(padded));
           },
       .reference = pool_reference(padded, true, true)});
  add({"max_pool2d_backward", "max_pool2d_backward", [padded](CaseGraph& c) {
         return c.g.add("max_pool2d_backward", {c.input({2, 3, 6, 7}), c.input({2, 3, 3, 8})},
                        pool_attrs(padded));
       }});
  add({"max_pool2d_select", "max_pool2d_select", [padded](CaseGraph& c) {
         return c.g.add("max_pool2d_select", {c.input({2, 3, 6, 7}), c.input({2, 3, 6, 7})},
                        pool_attrs(padded));
       }});
  // Dilated windows (taps 2 rows and 3 columns apart), padded, in ceil mode: overlapping,
  // partly in the padding, a last window whose taps step past the input.
  const Window dilated{3, 2, 2, 1, 1, 1, 2, 3, true};
  add({.op = "max_pool2d",
       .name = "max_pool2d_dilated",
       .build =
           [dilated](CaseGraph& c) {
             return c.g.add("max_pool2d", {c.input({2, 3, 8, 9})}, pool_attrs(dilated));
           },
       .reference = pool_reference(dilated, true, true)});
  // Where each window's maximum is (i64, h W + w in its plane): the dilated windows'.
  add({.op = "max_pool2d_indices",
       .name = "max_pool2d_indices_dilated",
       .build =
           [dilated](CaseGraph& c) {
             return c.g.add("max_pool2d_indices", {c.input({2, 3, 8, 9})}, pool_attrs(dilated));
           },
       .gradients = false,
       .reference = pool_argmax_reference(dilated)});
  add({"max_pool2d_backward", "max_pool2d_backward_dilated", [dilated](CaseGraph& c) {
         return c.g.add("max_pool2d_backward", {c.input({2, 3, 8, 9}), c.input({2, 3, 4, 8})},
                        pool_attrs(dilated));
       }});
  add({"max_pool2d_select", "max_pool2d_select_dilated", [dilated](CaseGraph& c) {
         return c.g.add("max_pool2d_select", {c.input({2, 3, 8, 9}), c.input({2, 3, 8, 9})},
                        pool_attrs(dilated));
       }});
  // Unpooling [2, 3, 2, 3] into 5 x 6 planes at distinct places (7 j + 3 p mod 30 for element j
  // of plane p), against the scatter by hand.
  add({.op = "max_unpool2d",
       .name = "max_unpool2d",
       .build =
           [](CaseGraph& c) {
             std::vector<int64_t> places;
             for (int64_t p = 0; p < 6; ++p)
               for (int64_t j = 0; j < 6; ++j) places.push_back((7 * j + 3 * p) % 30);
             return c.g.add("max_unpool2d", {c.input({2, 3, 2, 3}), c.ints(places, {2, 3, 2, 3})},
                            {{"output_size", std::vector<int64_t>{5, 6}}});
           },
       .reference =
           [](const std::vector<Tensor>& in) {
             const std::vector<double> x = values(in[0]), at = values(in[1]);
             std::vector<double> y(6 * 30, 0.0);
             for (size_t k = 0; k < x.size(); ++k)
               y[k / 6 * 30 + static_cast<size_t>(at[k])] = x[k];
             return y;
           }});
  // positive_only (relu's gradient folded in): inputs mostly below 0, so some windows route
  // nothing; tiled 2x2, tiled 3x3 and padded windows.
  struct Positive {
    const char* name;
    Shape shape;
    Window window;
  };
  for (const Positive& p :
       {Positive{"2x2", {2, 3, 6, 6}, square}, Positive{"padded", {2, 3, 6, 7}, padded},
        Positive{"3x3", {1, 2, 7, 9}, {3, 3, 3, 3, 0, 0}}}) {
    // Copies, not references into p: lambdas capture them (structured bindings they could
    // not, before clang 16).
    const Shape shape = p.shape;
    const Window window = p.window;
    const char* name = p.name;
    AttrMap attrs = pool_attrs(window);
    attrs["positive_only"] = true;
    const int64_t oh = (shape[2] + 2 * window.ph - window.kh) / window.sh + 1,
                  ow = (shape[3] + 2 * window.pw - window.kw) / window.sw + 1;
    add({"max_pool2d_backward", str("max_pool2d_backward_positive_", name),
         [attrs, shape, oh, ow](CaseGraph& c) {
           return c.g.add("max_pool2d_backward",
                          {c.input(shape, -2, 1), c.input({shape[0], shape[1], oh, ow})}, attrs);
         }});
    add({"max_pool2d_select", str("max_pool2d_select_positive_", name),
         [attrs, shape](CaseGraph& c) {
           return c.g.add("max_pool2d_select", {c.input(shape, -2, 1), c.input(shape)}, attrs);
         }});
  }
  // The tiled fast path (windows that tile the input; a last row no window reads).
  add({"max_pool2d_backward", "max_pool2d_backward_tiled", [square](CaseGraph& c) {
         return c.g.add("max_pool2d_backward", {c.input({2, 3, 7, 6}), c.input({2, 3, 3, 3})},
                        pool_attrs(square));
       }});
  add({"max_pool2d_select", "max_pool2d_select_tiled", [square](CaseGraph& c) {
         return c.g.add("max_pool2d_select", {c.input({2, 3, 6, 6}), c.input({2, 3, 6, 6})},
                        pool_attrs(square));
       }});
  for (bool include : {true, false}) {
    AttrMap attrs = pool_attrs(padded);
    attrs["count_include_pad"] = include;
    add({.op = "avg_pool2d",
         .name = include ? "avg_pool2d" : "avg_pool2d_exclude_pad",
         .build =
             [attrs](CaseGraph& c) {
               return c.g.add("avg_pool2d", {c.input({2, 3, 6, 7})}, attrs);
             },
         .reference = pool_reference(padded, false, include)});
    attrs["input_size"] = std::vector<int64_t>{6, 7};
    add({"avg_pool2d_backward", include ? "avg_pool2d_backward" : "avg_pool2d_backward_exclude_pad",
         [attrs](CaseGraph& c) {
           return c.g.add("avg_pool2d_backward", {c.input({2, 3, 3, 8})}, attrs);
         }});
  }
  // ceil_mode: a last, partial window along H (padded: 6 rows give 4 windows, not 3) and along
  // both dims of an unpadded 2 x 2 pool of 5 x 8 (columns tile, but the last row of windows
  // overruns the input: not the tiled path).
  const Window ceil_padded{3, 3, 2, 2, 1, 1, 1, 1, true}, ceil_square{2, 2, 2, 2, 0, 0, 1, 1, true};
  for (const auto& ceil_case :
       {std::tuple{"padded", ceil_padded, Shape{2, 3, 6, 7}, Shape{2, 3, 4, 4}},
        std::tuple{"square", ceil_square, Shape{2, 2, 5, 8}, Shape{2, 2, 3, 4}}}) {
    // Copies, not structured bindings: the lambdas capture them.
    const auto& [name, win, x_ref, pooled_ref] = ceil_case;
    const Shape x = x_ref, pooled = pooled_ref;
    const AttrMap attrs = pool_attrs(win);
    add({.op = "max_pool2d",
         .name = str("max_pool2d_ceil_", name),
         .build = [attrs, x](CaseGraph& c) { return c.g.add("max_pool2d", {c.input(x)}, attrs); },
         .reference = pool_reference(win, true, true)});
    add({"max_pool2d_backward", str("max_pool2d_backward_ceil_", name),
         [attrs, x, pooled](CaseGraph& c) {
           return c.g.add("max_pool2d_backward", {c.input(x), c.input(pooled)}, attrs);
         }});
    for (bool include : {true, false}) {
      AttrMap avg = attrs;
      avg["count_include_pad"] = include;
      add({.op = "avg_pool2d",
           .name = str("avg_pool2d_ceil_", name, include ? "" : "_exclude_pad"),
           .build = [avg, x](CaseGraph& c) { return c.g.add("avg_pool2d", {c.input(x)}, avg); },
           .reference = pool_reference(win, false, include)});
      avg["input_size"] = std::vector<int64_t>{x[2], x[3]};
      add({"avg_pool2d_backward",
           str("avg_pool2d_backward_ceil_", name, include ? "" : "_exclude_pad"),
           [avg, pooled](CaseGraph& c) {
             return c.g.add("avg_pool2d_backward", {c.input(pooled)}, avg);
           }});
    }
  }
  // Adaptive max pooling: uneven overlapping windows (7 x 5 into 3 x 2), windows that tile the
  // input (the ordinary window's fast paths), and more outputs than inputs (windows repeat).
  struct Adaptive {
    const char* name;
    Shape x;
    int64_t oh, ow;
  };
  for (const Adaptive& a :
       {Adaptive{"uneven", {2, 3, 7, 5}, 3, 2}, Adaptive{"tiled", {2, 2, 6, 8}, 3, 4},
        Adaptive{"upsampled", {1, 2, 3, 2}, 4, 5}}) {
    const AttrMap attrs{{"output_size", std::vector<int64_t>{a.oh, a.ow}}};
    const Shape x = a.x, pooled{a.x[0], a.x[1], a.oh, a.ow};
    add({.op = "adaptive_max_pool2d",
         .name = str("adaptive_max_pool2d_", a.name),
         .build = [attrs,
                   x](CaseGraph& c) { return c.g.add("adaptive_max_pool2d", {c.input(x)}, attrs); },
         .reference = adaptive_max_reference(a.oh, a.ow)});
    add({"adaptive_max_pool2d_backward", str("adaptive_max_pool2d_backward_", a.name),
         [attrs, x, pooled](CaseGraph& c) {
           return c.g.add("adaptive_max_pool2d_backward", {c.input(x), c.input(pooled)}, attrs);
         }});
    add({"adaptive_max_pool2d_select", str("adaptive_max_pool2d_select_", a.name),
         [attrs, x](CaseGraph& c) {
           return c.g.add("adaptive_max_pool2d_select", {c.input(x), c.input(x)}, attrs);
         }});
  }
}

namespace {

// normalize_backward of a fresh x [shape] normalized over `axes`, with a random dy and, where
// `scale` is given, a random scale of that shape.
std::vector<Value> normalize_backward_of(CaseGraph& c, const Shape& shape,
                                         const std::vector<int64_t>& axes, bool center,
                                         const Shape* scale, const AttrMap& attrs) {
  Value x = c.input(shape, -2, 3);
  Normalized n = normalize(x, axes, 1e-5, center);
  std::vector<Value> inputs{x, n.mean, n.rstd, c.input(shape)};
  if (scale) inputs.push_back(c.input(*scale));
  return c.g.add_node("normalize_backward", inputs, attrs);
}

}  // namespace

void add_normalization_cases(const std::function<void(OpCase)>& add) {
  // normalize over batch norm's axes (N, H, W), layer norm's last two, and RMS norm's last;
  // every output is used, so the statistics' own gradients are checked too.
  struct Norm {
    const char* name;
    Shape x;
    std::vector<int64_t> axes;
    bool center;
  };
  for (const Norm& n : {Norm{"normalize_batch", {4, 3, 2, 5}, {0, 2, 3}, true},
                        Norm{"normalize_layer", {3, 4, 6}, {-2, -1}, true},
                        Norm{"normalize_rms", {5, 7}, {1}, false}})
    add({"normalize", n.name, [n](CaseGraph& c) {
           Value x = c.input(n.x, -2, 3);
           Normalized out = normalize(x, n.axes, 1e-5, n.center);
           // Weigh the statistics so that their gradients count (each shaped like the kept
           // dims, broadcast back over the normalized ones).
           std::vector<int64_t> axes;
           for (int64_t a : n.axes) axes.push_back(a < 0 ? a + n.x.rank() : a);
           return out.y + expand_dims(out.mean * 0.5 + out.rstd * 0.25, axes);
         }});
  // With scale and shift (batch norm's weight and bias, fused): gradients reach all three.
  add({"normalize", "normalize_batch_affine", [](CaseGraph& c) {
         Value x = c.input({4, 3, 2, 5}, -2, 3);
         Normalized out =
             normalize(x, {0, 2, 3}, 1e-5, true, c.input({3}, 0.5, 2), c.input({3}, -1, 1));
         return out.y + expand_dims(out.mean * 0.5 + out.rstd * 0.25, {0, 2, 3});
       }});
  // activation relu (the matmul_epilogue pass folds batch norm's relu in); the 40 random values
  // leave none within the finite-difference step (1e-6) of relu's kink.
  for (bool affine : {true, false})
    add({"normalize", affine ? "normalize_batch_affine_relu" : "normalize_batch_relu",
         [affine](CaseGraph& c) {
           Value x = c.input({4, 3, 2, 5}, -2, 3);
           std::vector<Value> inputs{x};
           if (affine) inputs.insert(inputs.end(), {c.input({3}, 0.5, 2), c.input({3}, -1, 1)});
           std::vector<Value> out = c.g.add_node("normalize", inputs,
                                                 {{"axes", std::vector<int64_t>{0, 2, 3}},
                                                  {"eps", 1e-5},
                                                  {"center", true},
                                                  {"activation", std::string("relu")}});
           return out[0] + expand_dims(out[1] * 0.5 + out[2] * 0.25, {0, 2, 3});
         }});
  add({.op = "normalize_backward",
       .name = "normalize_backward_affine",
       .build =
           [](CaseGraph& c) {
             const Shape scale{3};
             std::vector<Value> grads = normalize_backward_of(
                 c, {4, 3, 5}, {0, 2}, true, &scale,
                 {{"axes", std::vector<int64_t>{0, 2}}, {"eps", 1e-5}, {"center", true}});
             return grads[0] + expand_dims(grads[1] * 0.5 + grads[2] * 0.25, {0, 2});
           },
       .gradients = false});
  add({.op = "normalize_backward",
       .name = "normalize_backward",
       .build =
           [](CaseGraph& c) {
             return normalize_backward_of(
                 c, {4, 3, 5}, {0, 2}, true, nullptr,
                 {{"axes", std::vector<int64_t>{0, 2}}, {"eps", 1e-5}, {"center", true}})[0];
           },
       .gradients = false});
  // Affine "elements" (layer and RMS norm's weight and bias, shaped like the normalized dims),
  // forward and backward; 70 rows for the backward's blocks of 64 rows.
  for (bool center : {true, false}) {
    const AttrMap attrs{{"axes", std::vector<int64_t>{1, 2}},
                        {"eps", 1e-5},
                        {"center", center},
                        {"affine", std::string("elements")}};
    add({"normalize", center ? "normalize_layer_elements" : "normalize_rms_elements",
         [attrs](CaseGraph& c) {
           Value x = c.input({5, 3, 4}, -2, 3);
           std::vector<Value> out = c.g.add_node(
               "normalize", {x, c.input({3, 4}, 0.5, 2), c.input({3, 4}, -1, 1)}, attrs);
           return out[0] + expand_dims(out[1] * 0.5 + out[2] * 0.25, {1, 2});
         }});
    add({.op = "normalize_backward",
         .name = center ? "normalize_backward_layer_elements" : "normalize_backward_rms_elements",
         .build =
             [attrs, center](CaseGraph& c) {
               const Shape scale{2, 3};
               std::vector<Value> grads =
                   normalize_backward_of(c, {70, 2, 3}, {1, 2}, center, &scale, attrs);
               return grads[0] + (grads[1] * 0.5 + grads[2] * 0.25);
             },
         .gradients = false});
    // The parameters' gradients alone (x needs none).
    AttrMap parameters_only = attrs;
    parameters_only["input_gradient"] = false;
    add({.op = "normalize_backward",
         .name =
             center ? "normalize_backward_layer_parameters" : "normalize_backward_rms_parameters",
         .build =
             [parameters_only, center](CaseGraph& c) {
               const Shape scale{2, 3};
               std::vector<Value> grads =
                   normalize_backward_of(c, {70, 2, 3}, {1, 2}, center, &scale, parameters_only);
               return grads[0] * 0.5 + grads[1] * 0.25;
             },
         .gradients = false});
  }
  add({.op = "normalize_backward",
       .name = "normalize_backward_batch_parameters",
       .build =
           [](CaseGraph& c) {
             const Shape scale{3};
             std::vector<Value> grads = normalize_backward_of(c, {4, 3, 5}, {0, 2}, true, &scale,
                                                              {{"axes", std::vector<int64_t>{0, 2}},
                                                               {"eps", 1e-5},
                                                               {"center", true},
                                                               {"input_gradient", false}});
             return grads[0] * 0.5 + grads[1] * 0.25;
           },
       .gradients = false});
  add({"after", "after", [](CaseGraph& c) {
         Value x = c.input({3, 4});
         return after(x * 2.0, {c.input({2})}) * x;
       }});
}

}  // namespace kiln::testing
