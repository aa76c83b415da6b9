// oneDNN convolution on the CPU. Measured on the CNN benchmark's second layer (64 images,
// 32 -> 64 channels, 3x3 on 14x14, one thread): oneDNN's JIT kernel in its blocked layouts,
// reorders in and out included, 3.9 ms; im2col + sgemm 10.0 ms (bench/RESULTS.md).
//
// Kiln's tensors are NCHW and its filters [O, C/g, KH, KW]; each primitive takes the layouts
// oneDNN prefers (format `any`), and reorders convert at the edges. Every primitive, reorders
// included, is made once with its problem, on one thread: making one goes through oneDNN's
// global primitive cache, which ThreadSanitizer caught racing when pool threads made reorders
// at once (a key read while another thread's entry was being built). Pool threads only execute
// primitives, with a user scratchpad: the same primitive runs on several threads at once, which
// oneDNN's own (library) scratchpad does not allow.
#include "kiln/ops/nn/conv_onednn.h"

#include <oneapi/dnnl/dnnl.hpp>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln/ops/math/blas.h"

namespace kiln::ops {
namespace {

using dnnl::memory;

// Images per oneDNN call: every image goes through a primitive of this many images (or of the
// batch's remainder), whatever the number of threads. 16 against 8: the CNN benchmark's
// block-2 convolution 2.46 -> 2.24 ms forward, 2.97 -> 2.33 ms filter gradient (32: no better,
// and fewer blocks to spread over the threads).
constexpr int64_t kImagesPerBlock = 16;
// Input channels per group below which im2col + sgemm is faster.
constexpr int64_t kMinGroupChannels = 8;

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

bool onednn_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("KILN_ONEDNN");
    return value == nullptr || std::string(value) != "0";
  }();
  return enabled;
}

// A change of layout between two descriptions of the same tensor: a reorder primitive, or
// none where the layouts agree.
class LayoutChange {
 public:
  LayoutChange() = default;
  LayoutChange(const memory::desc& from, const memory::desc& to) : to_(to) {
    if (from == to) return;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::reorder::primitive_desc pd(cpu_engine(), from, cpu_engine(), to, attr);
    scratch_md_ = pd.scratchpad_desc();
    reorder_ = dnnl::reorder(pd);
    needed_ = true;
  }

  bool needed() const { return needed_; }

  // Writes `from` into `to` in the target layout.
  void run(const memory& from, const memory& to, dnnl::stream& stream) const {
    std::unordered_map<int, memory> args{{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    if (scratch_md_.get_size() > 0)
      args.emplace(DNNL_ARG_SCRATCHPAD, memory(scratch_md_, cpu_engine()));
    reorder_.execute(stream, args);
  }

  // `from` in the target layout: `from` itself, or a new tensor the reorder writes.
  memory applied(const memory& from, dnnl::stream& stream) const {
    if (!needed_) return from;
    memory to(to_, cpu_engine());
    run(from, to, stream);
    return to;
  }

 private:
  bool needed_ = false;
  memory::desc to_, scratch_md_;
  dnnl::reorder reorder_;
};

// One pass over a block of `images` images: the primitive, Kiln's plain layouts and the ones
// the primitive takes for its two operands and its result, and the reorders between them.
struct Problem {
  memory::desc a_plain, b_plain, out_plain;
  memory::desc a_md, b_md, out_md, scratch_md;
  int a_arg = 0, b_arg = 0, out_arg = 0;
  dnnl::primitive conv;
  LayoutChange a_in, b_in, out_back;
};

memory::desc plain(const memory::dims& dims, memory::format_tag tag) {
  return memory::desc(dims, memory::data_type::f32, tag);
}
memory::desc any(const memory::desc& d) {
  return memory::desc(d.dims(), memory::data_type::f32, memory::format_tag::any);
}

// The problem for `images` images, or nullptr where oneDNN has only its reference kernels (or
// none) for it.
std::shared_ptr<const Problem> make_problem(ConvPass pass, const ConvGeometry& g, int64_t images) {
  const memory::desc x = plain({images, g.in_channels, g.in_h, g.in_w}, memory::format_tag::nchw);
  const memory::desc y =
      plain({images, g.out_channels, g.out_h, g.out_w}, memory::format_tag::nchw);
  const memory::desc w =
      g.groups > 1 ? plain({g.groups, g.group_out(), g.group_in(), g.kernel_h, g.kernel_w},
                           memory::format_tag::goihw)
                   : plain({g.out_channels, g.in_channels, g.kernel_h, g.kernel_w},
                           memory::format_tag::oihw);
  // oneDNN counts dilation from 0, and takes the right/bottom padding that yields Kiln's output
  // size (smaller than the left padding where the last window leaves input unread).
  const memory::dims strides{g.stride_h, g.stride_w};
  const memory::dims dilates{g.dilation_h - 1, g.dilation_w - 1};
  const memory::dims pad_l{g.pad_h, g.pad_w};
  const memory::dims pad_r{
      (g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1 - g.in_h - g.pad_h,
      (g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1 - g.in_w - g.pad_w};
  const dnnl::algorithm direct = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const dnnl::engine& engine = cpu_engine();
  auto problem = std::make_shared<Problem>();
  try {
    const dnnl::convolution_forward::primitive_desc forward(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, direct, any(x), any(w),
                                        any(y), strides, dilates, pad_l, pad_r),
        attr, engine);
    std::string implementation;
    switch (pass) {
      case ConvPass::forward:
        implementation = forward.impl_info_str();
        *problem = {x,
                    w,
                    y,
                    forward.src_desc(),
                    forward.weights_desc(),
                    forward.dst_desc(),
                    forward.scratchpad_desc(),
                    DNNL_ARG_SRC,
                    DNNL_ARG_WEIGHTS,
                    DNNL_ARG_DST,
                    dnnl::convolution_forward(forward)};
        break;
      case ConvPass::backward_input: {
        const dnnl::convolution_backward_data::primitive_desc data(
            dnnl::convolution_backward_data::desc(direct, any(x), any(w), any(y), strides, dilates,
                                                  pad_l, pad_r),
            attr, engine, forward);
        implementation = data.impl_info_str();
        *problem = {y,
                    w,
                    x,
                    data.diff_dst_desc(),
                    data.weights_desc(),
                    data.diff_src_desc(),
                    data.scratchpad_desc(),
                    DNNL_ARG_DIFF_DST,
                    DNNL_ARG_WEIGHTS,
                    DNNL_ARG_DIFF_SRC,
                    dnnl::convolution_backward_data(data)};
        break;
      }
      case ConvPass::backward_filter: {
        const dnnl::convolution_backward_weights::primitive_desc weights(
            dnnl::convolution_backward_weights::desc(direct, any(x), any(w), any(y), strides,
                                                     dilates, pad_l, pad_r),
            attr, engine, forward);
        implementation = weights.impl_info_str();
        *problem = {x,
                    y,
                    w,
                    weights.src_desc(),
                    weights.diff_dst_desc(),
                    weights.diff_weights_desc(),
                    weights.scratchpad_desc(),
                    DNNL_ARG_SRC,
                    DNNL_ARG_DIFF_DST,
                    DNNL_ARG_DIFF_WEIGHTS,
                    dnnl::convolution_backward_weights(weights)};
        break;
      }
    }
    // oneDNN's reference kernels are plain loops, slower than im2col + sgemm.
    if (implementation.find("ref") != std::string::npos) return nullptr;
    problem->a_in = LayoutChange(problem->a_plain, problem->a_md);
    problem->b_in = LayoutChange(problem->b_plain, problem->b_md);
    problem->out_back = LayoutChange(problem->out_md, problem->out_plain);
  } catch (const dnnl::error&) {
    return nullptr;  // no implementation for this problem
  }
  return problem;
}

void* mutable_ptr(const float* p) {
  return const_cast<float*>(p);  // oneDNN takes void*; it only reads operands
}

}  // namespace

bool onednn_convolution(const KernelContext& ctx, ConvPass pass, const ConvGeometry& g,
                        const float* a, const float* b, float* out, const float* bias) {
  // Few input channels per group (a network's first layer, depthwise filters): oneDNN's kernel
  // is slower there than im2col + sgemm (1 -> 32 channels on 28x28: 0.44 ms per 8 images
  // against 0.16).
  if (!onednn_enabled() || g.batch == 0 || g.group_in() < kMinGroupChannels) return false;
  // Before any primitive is made: a primitive takes its thread count from the creating
  // thread's OpenMP setting and asks for that many threads when it runs (an explicit
  // num_threads, whatever the running thread's setting): made at the default (one per core),
  // each block would start an OpenMP team beside Kiln's pool, oversubscribing the cores.
  one_onednn_thread();
  const int64_t full = std::min(g.batch, kImagesPerBlock), rest = g.batch % full;
  const int64_t blocks = (g.batch + full - 1) / full;
  auto problem_for = [&](int64_t images) {
    // Everything the primitive depends on beyond the input shapes in cache_key.
    const std::string what =
        str("onednn_conv|", static_cast<int>(pass), '|', images, '|', g.out_h, 'x', g.out_w, '|',
            g.kernel_h, 'x', g.kernel_w, '|', g.stride_h, ',', g.stride_w, '|', g.pad_h, ',',
            g.pad_w, '|', g.dilation_h, ',', g.dilation_w, '|', g.groups);
    auto make = [&] { return make_problem(pass, g, images); };
    return ctx.has_cache()
               ? ctx.cache().get<std::shared_ptr<const Problem>>(ctx.cache_key(what), make)
               : make();
  };
  const std::shared_ptr<const Problem> full_problem = problem_for(full);
  const std::shared_ptr<const Problem> rest_problem = rest ? problem_for(rest) : full_problem;
  if (!full_problem || !rest_problem) return false;

  const int64_t x_image = g.in_channels * g.in_pixels(), y_image = g.out_channels * g.out_pixels();
  const int64_t a_image = pass == ConvPass::backward_input ? y_image : x_image;
  const int64_t b_image = pass == ConvPass::backward_filter ? y_image : 0;  // 0: the filter
  const int64_t out_image = pass == ConvPass::forward ? y_image : x_image;
  const int64_t filter_size = g.out_channels * g.patch_size();
  const dnnl::engine& engine = cpu_engine();

  // The filter operand, in each problem's layout, once per call (read by every block).
  dnnl::stream stream(engine);
  memory full_filter, rest_filter;
  if (pass != ConvPass::backward_filter) {
    const memory user(full_problem->b_plain, engine, mutable_ptr(b));
    full_filter = full_problem->b_in.applied(user, stream);
    rest_filter = rest_problem->b_in.applied(user, stream);
    stream.wait();
  }
  // The filter gradient: one partial sum per block, added in block order below.
  std::vector<float> partial(
      pass == ConvPass::backward_filter ? static_cast<size_t>(blocks * filter_size) : 0);

  ctx.parallel_for(
      blocks, full * (x_image + y_image) * g.patch_size(), [&](int64_t b0, int64_t b1) {
        one_onednn_thread();
        dnnl::stream block_stream(engine);
        for (int64_t block = b0; block < b1; ++block) {
          const bool last = block == blocks - 1 && rest;
          const Problem& p = last ? *rest_problem : *full_problem;
          const int64_t first = block * full;
          const memory a_mem = p.a_in.applied(
              memory(p.a_plain, engine, mutable_ptr(a + first * a_image)), block_stream);
          const memory b_mem =
              pass == ConvPass::backward_filter
                  ? p.b_in.applied(memory(p.b_plain, engine, mutable_ptr(b + first * b_image)),
                                   block_stream)
                  : (last ? rest_filter : full_filter);
          float* out_ptr = pass == ConvPass::backward_filter ? partial.data() + block * filter_size
                                                             : out + first * out_image;
          memory out_user(p.out_plain, engine, out_ptr);
          memory out_mem = p.out_back.needed() ? memory(p.out_md, engine) : out_user;
          memory scratch(p.scratch_md, engine);
          p.conv.execute(block_stream, {{p.a_arg, a_mem},
                                        {p.b_arg, b_mem},
                                        {p.out_arg, out_mem},
                                        {DNNL_ARG_SCRATCHPAD, scratch}});
          if (p.out_back.needed()) p.out_back.run(out_mem, out_user, block_stream);
          block_stream.wait();
          if (bias)
            add_channel_bias(out_ptr, last ? rest : full, g.out_channels, g.out_pixels(), bias);
        }
      });
  if (pass == ConvPass::backward_filter) {
    std::memset(out, 0, static_cast<size_t>(filter_size) * sizeof(float));
    for (int64_t block = 0; block < blocks; ++block) {
      const float* sum = partial.data() + block * filter_size;
      for (int64_t i = 0; i < filter_size; ++i) out[i] += sum[i];
    }
  }
  return true;
}

}  // namespace kiln::ops
