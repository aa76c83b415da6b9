// fused_elementwise(inputs...): runs a small program of elementwise ops over its inputs in
// chunks, so each input is read once and the output written once, whatever the number of ops.
//   attrs: code   4 ints per instruction: opcode, then up to three operand registers;
//                 registers 0..n-1 are the inputs, n+k is instruction k's result; the last
//                 instruction's result is the output.
//          expr   the program as text, for people; dtype, shape: the output.
// Inputs have the output's element count, one element (a scalar), or the output's trailing
// dims (repeated over the leading ones, as a bias row).
#include <cstring>
#include <memory>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "kiln/framework/kernel.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/fused.h"
#include "kiln/ops/math/vector_math.h"

namespace kiln {
namespace ops {

namespace {
constexpr const char* kNames[] = {
#define KILN_OPNAME(name, ...) #name,
    KILN_UNARY_OPS(KILN_OPNAME) KILN_BINARY_OPS(KILN_OPNAME) KILN_COMPARE_OPS(KILN_OPNAME)
#undef KILN_OPNAME
        "where"};
constexpr int kFirstBinary = 0
#define KILN_COUNT(...) +1
    KILN_UNARY_OPS(KILN_COUNT)
#undef KILN_COUNT
    ;
}  // namespace

int fused_opcode(const std::string& op) {
  for (int i = 0; i < op_count; ++i)
    if (op == kNames[i]) return op == "gelu_grad" ? -1 : i;
  return -1;
}
bool assign_fused_slots(const std::vector<int64_t>& code, int num_inputs, int max_slots,
                        std::vector<int>* slots) {
  const int n_ops = static_cast<int>(code.size() / 4);
  // last_use[k]: the last instruction reading instruction k's result.
  std::vector<int> last_use(n_ops, -1);
  for (int k = 0; k < n_ops; ++k)
    for (int j = 1; j <= fused_arity(static_cast<int>(code[4 * k])); ++j)
      if (code[4 * k + j] >= num_inputs) last_use[code[4 * k + j] - num_inputs] = k;
  std::vector<int> owner(max_slots, -1);  // instruction whose result a slot holds
  slots->assign(n_ops, -1);
  for (int k = 0; k < n_ops; ++k) {
    // Slots whose value was last read by this instruction are free for its result (an
    // instruction reads all its operands before writing).
    for (int s = 0; s < max_slots; ++s)
      if (owner[s] >= 0 && last_use[owner[s]] <= k) owner[s] = -1;
    int free_slot = -1;
    for (int s = 0; s < max_slots && free_slot < 0; ++s)
      if (owner[s] < 0) free_slot = s;
    if (free_slot < 0) return false;
    owner[free_slot] = k;
    if (last_use[k] < 0) last_use[k] = n_ops;  // the output (or an unused value) stays
    (*slots)[k] = free_slot;
  }
  return true;
}

int fused_arity(int opcode) {
  return opcode < kFirstBinary ? 1 : opcode == op_where ? 3 : 2;
}
const char* fused_op_name(int opcode) {
  return kNames[opcode];
}

namespace {

constexpr int64_t kChunk = 1024;

// Outputs at least this large are written with streaming (non-temporal) stores: a result that
// will not fit in cache then costs one write instead of a read-for-ownership plus a write.
constexpr int64_t kStreamingBytes = int64_t{8} << 20;

// dst[0, n) = src[0, n), bypassing the cache where the ISA allows.
template <typename T>
void stream_copy(T* dst, const T* src, int64_t n) {
#if defined(__AVX__)
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  if (reinterpret_cast<uintptr_t>(dst) % 32 == 0 && bytes % 32 == 0) {
    auto* d = reinterpret_cast<__m256*>(dst);
    const auto* s = reinterpret_cast<const float*>(src);
    for (int64_t i = 0; i < bytes / 32; ++i)
      _mm256_stream_ps(reinterpret_cast<float*>(d + i), _mm256_loadu_ps(s + 8 * i));
    return;
  }
#endif
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
}

// Operand loops over one chunk. Scalars (stride 0) are hoisted so every loop vectorizes.
template <typename T, typename F>
void loop1(T* out, const T* a, int64_t sa, int64_t n, F f) {
  if (sa == 1) {
    apply_contiguous(f, out, n, a);
  } else {
    const T v = f(a[0]);
    for (int64_t j = 0; j < n; ++j) out[j] = v;
  }
}

// A binary op's result as a register value: a comparison's bool as 1 or 0, written as a select
// (a bool-to-float conversion does not vectorize).
template <typename T, typename R>
T register_value(R r) {
  if constexpr (std::is_same_v<R, bool>)
    return r ? T(1) : T(0);
  else
    return static_cast<T>(r);
}

template <typename T, typename F>
void loop2(T* out, const T* a, int64_t sa, const T* b, int64_t sb, int64_t n, F f) {
  if (sa == 1 && sb == 1) {
    for (int64_t j = 0; j < n; ++j) out[j] = register_value<T>(f(a[j], b[j]));
  } else if (sa == 1) {
    const T bv = b[0];
    for (int64_t j = 0; j < n; ++j) out[j] = register_value<T>(f(a[j], bv));
  } else if (sb == 1) {
    const T av = a[0];
    for (int64_t j = 0; j < n; ++j) out[j] = register_value<T>(f(av, b[j]));
  } else {
    const T v = register_value<T>(f(a[0], b[0]));
    for (int64_t j = 0; j < n; ++j) out[j] = v;
  }
}

// where(a, b, c) over one chunk: each stride (0 or 1) a compile-time constant, so the loop
// vectorizes into blends (a ReLU gradient is where(y > 0, dy, 0)).
template <int SA, int SB, int SC, typename T>
void loop_where_fixed(T* out, const T* a, const T* b, const T* c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const T when_true = b[j * SB], when_false = c[j * SC];  // both read: no branch to vectorize
    out[j] = a[j * SA] != T(0) ? when_true : when_false;
  }
}

template <typename T>
void loop_where(T* out, const T* a, int64_t sa, const T* b, int64_t sb, const T* c, int64_t sc,
                int64_t n) {
  switch (sa * 4 + sb * 2 + sc) {
    case 0:
      return loop_where_fixed<0, 0, 0>(out, a, b, c, n);
    case 1:
      return loop_where_fixed<0, 0, 1>(out, a, b, c, n);
    case 2:
      return loop_where_fixed<0, 1, 0>(out, a, b, c, n);
    case 3:
      return loop_where_fixed<0, 1, 1>(out, a, b, c, n);
    case 4:
      return loop_where_fixed<1, 0, 0>(out, a, b, c, n);
    case 5:
      return loop_where_fixed<1, 0, 1>(out, a, b, c, n);
    case 6:
      return loop_where_fixed<1, 1, 0>(out, a, b, c, n);
    default:
      return loop_where_fixed<1, 1, 1>(out, a, b, c, n);
  }
}

template <typename T>
void fused_typed(KernelContext& ctx) {
  const auto& code = ctx.attr<std::vector<int64_t>>("code");
  const int n_in = ctx.num_inputs();
  const int n_ops = static_cast<int>(code.size() / 4);
  Tensor& y = ctx.output(0);
  const int64_t n = y.numel();
  T* out = y.data<T>();
  // Input access modes: full (stride 1), scalar (stride 0), or periodic with period m.
  std::vector<const T*> in(n_in);
  std::vector<int64_t> period(n_in, 0);
  for (int i = 0; i < n_in; ++i) {
    in[i] = ctx.input(i).data<T>();
    const int64_t m = ctx.input(i).numel();
    period[i] = m == n ? -1 : m == 1 ? 0 : m;
  }
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const bool streaming = n * static_cast<int64_t>(sizeof(T)) >= kStreamingBytes;
  // Elementwise results do not depend on how chunks are grouped, so ranges can be large: a
  // few per thread, each paying for its scratch registers once.
  const int64_t grain = std::max<int64_t>(1, chunks / (8 * ctx.pool().num_threads()));
  ctx.pool().parallel_for(chunks, grain, [&](int64_t c0, int64_t c1) {
    std::unique_ptr<T[]> scratch(
        new T[static_cast<size_t>(n_ops + n_in) * kChunk]);  // uninitialized
    std::vector<const T*> reg(n_in + n_ops);
    std::vector<int64_t> stride(n_in + n_ops, 1);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t start = c * kChunk, len = std::min(kChunk, n - start);
      for (int i = 0; i < n_in; ++i) {
        if (period[i] < 0) {
          reg[i] = in[i] + start, stride[i] = 1;
        } else if (period[i] == 0) {
          reg[i] = in[i], stride[i] = 0;
        } else {  // a row repeated over the leading dims
          T* buf = scratch.get() + static_cast<size_t>(n_ops + i) * kChunk;
          const int64_t m = period[i];
          for (int64_t j = 0, at = start % m; j < len; ++j, at = at + 1 == m ? 0 : at + 1)
            buf[j] = in[i][at];
          reg[i] = buf, stride[i] = 1;
        }
      }
      for (int k = 0; k < n_ops; ++k) {
        const int64_t* ins = &code[4 * k];
        const bool last = k == n_ops - 1;
        T* dest =
            last && !streaming ? out + start : scratch.get() + static_cast<size_t>(k) * kChunk;
        const T* a = reg[ins[1]];
        const int64_t sa = stride[ins[1]];
        // Operands the opcode does not use are -1 (checked by inference): never read them.
        const bool binary = fused_arity(static_cast<int>(ins[0])) >= 2;
        const T* b = binary ? reg[ins[2]] : nullptr;
        const int64_t sb = binary ? stride[ins[2]] : 0;
        switch (static_cast<int>(ins[0])) {
#define KILN_UNARY_CASE(name, ...)                  \
  case op_##name:                                   \
    loop1(dest, a, sa, len, cpu_form(name##_fn{})); \
    break;
#define KILN_BINARY_CASE(name, ...)                        \
  case op_##name:                                          \
    loop2(dest, a, sa, b, sb, len, cpu_form(name##_fn{})); \
    break;
          KILN_UNARY_OPS(KILN_UNARY_CASE)
          KILN_BINARY_OPS(KILN_BINARY_CASE)
          KILN_COMPARE_OPS(KILN_BINARY_CASE)
#undef KILN_UNARY_CASE
#undef KILN_BINARY_CASE
          case op_where:
            loop_where(dest, a, sa, b, sb, reg[ins[3]], stride[ins[3]], len);
            break;
          default:
            throw Error(str(ctx.where(), ": bad opcode ", ins[0]));
        }
        reg[n_in + k] = dest;
        stride[n_in + k] = 1;
        if (last && streaming) stream_copy(out + start, dest, len);
      }
    }
#if defined(__AVX__)
    if (streaming) _mm_sfence();  // streaming stores are weakly ordered: publish them
#endif
  });
}

KILN_OP(fused_elementwise)
    .variadic_input("inputs", 1)
    .attr("code", AttrType::integers)
    .attr("expr", std::string())
    .attr("dtype", DType::f32)
    .attr("shape", AttrType::shape)
    .elementwise()
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      // The program comes from a file as often as from the fusion pass: every opcode and
      // every operand the kernels will index with is checked here, and operand slots an
      // opcode does not use must hold -1, so no value in the program goes unchecked.
      const auto& code = ctx.attr<std::vector<int64_t>>("code");
      if (code.empty() || code.size() % 4 != 0)
        ctx.fail("malformed program: ", code.size(), " ints (4 per instruction)");
      if (code.size() / 4 > kMaxFusedInstructions)
        ctx.fail("the program has ", code.size() / 4, " instructions; at most ",
                 kMaxFusedInstructions, " are allowed");
      const int64_t registers = ctx.num_inputs() + static_cast<int64_t>(code.size() / 4);
      for (size_t k = 0; k < code.size() / 4; ++k) {
        const int64_t opcode = code[4 * k];
        if (opcode < 0 || opcode >= op_count) ctx.fail("instruction ", k, ": bad opcode ", opcode);
        const int arity = fused_arity(static_cast<int>(opcode));
        for (int j = 1; j <= 3; ++j) {
          const int64_t operand = code[4 * k + j];
          if (j > arity && operand != -1)
            ctx.fail("instruction ", k, " (", fused_op_name(static_cast<int>(opcode)),
                     ") has operand ", j, " = ", operand, " where it takes none (must be -1)");
          if (j <= arity && (operand < 0 || operand >= ctx.num_inputs() + static_cast<int64_t>(k)))
            ctx.fail("instruction ", k, " reads register ", operand, " of ", registers,
                     " (it may read the inputs and earlier instructions' results)");
        }
      }
      const Shape& shape = ctx.attr<Shape>("shape");
      if (!shape.is_known()) ctx.fail("shape ", shape, " must be fully known");
      for (int i = 0; i < ctx.num_inputs(); ++i) {
        ctx.expect_dtype(i, {ctx.attr<DType>("dtype")});
        // The kernel reads full-size inputs, scalars, or rows of the output's trailing dims.
        const Shape& in = ctx.shape(i);
        if (!in.is_known()) continue;
        bool readable = in.numel() == shape.numel() || in.numel() == 1;
        if (!readable && in.numel() > 0 && shape.numel() % in.numel() == 0) {
          int64_t lead = 0;
          while (lead < in.rank() && in[lead] == 1) ++lead;
          readable = in.rank() - lead <= shape.rank();
          for (int64_t d = 1; readable && d <= in.rank() - lead; ++d)
            readable = in[-d] == shape[-d];
        }
        if (!readable) ctx.fail("input ", i, " ", in, " cannot be read for an output of ", shape);
      }
      return {{ctx.attr<DType>("dtype"), shape}};
    })
    .kernel(DeviceKind::cpu,
            [](KernelContext& ctx) {
              dispatch_float(ctx.output_type(0).dtype,
                             [&](auto tag) { fused_typed<decltype(tag)>(ctx); });
            },
            {f32, f64});

}  // namespace
}  // namespace ops
}  // namespace kiln
