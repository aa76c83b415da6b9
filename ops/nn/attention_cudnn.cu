// Attention through cuDNN's fused flash attention (see attention_cudnn.h). cuDNN has no single
// operation for it before 9.13 (and no causal one before 9.21): a program states the attention
// as an operation graph of products, pointwise ops and reductions, and cuDNN's engines match the
// graph's pattern and run it fused, without a score matrix in memory. The graphs below are the
// pattern cuDNN's frontend library builds for the same problem (learned from its
// sdpa node; written here against the backend API, which libcudnn.so exports):
//
//   forward:  s = (q k^T) scale, causal: s = row >= col ? s : -inf,
//             m = max_j s, e = exp(s - m), l = sum_j e, lse = m + log l, out = (e / l) v
//   backward: D = sum_d dout * out (a workspace tensor), p = exp(s - lse) (s masked as above),
//             dv = p^T dout, ds = p (dout v^T - D) scale, dk = ds^T q, dq = ds k (summed in a
//             f32 workspace tensor, then converted)
//
// Each problem's plan (graph, engine configuration, workspace size) is made once per cuDNN
// handle and kept in the executor's kernel cache, as is a refusal and its reason.
#include "kiln/ops/nn/attention_cudnn.h"

#include <cudnn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kiln/framework/cuda/cuda_check.h"
#include "kiln/framework/cuda/cuda_libraries.h"
#include "kiln/ops/cuda/cudnn_lane.h"
#include "kiln/ops/cuda/map.cuh"

namespace kiln::ops::cuda_attention {

using ::kiln::cuda::cudnn;
using ::kiln::ops::cuda::CudnnLane;
using ::kiln::ops::cuda::stream_of;

bool attention_choice_holds(const char* word) {
  const char* value = std::getenv("KILN_CUDA_ATTENTION");
  if (value == nullptr) return false;
  const std::string list = str(",", value, ",");
  return list.find(str(",", word, ",")) != std::string::npos;
}

namespace {

bool strict() {
  return attention_choice_holds("strict");
}

// Throws kiln::DeviceError naming the call, cuDNN's status and its last error message.
void check(cudnnStatus_t status, const char* what) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  char detail[512] = {0};
  cudnn().cudnnGetLastErrorString(detail, sizeof(detail));
  throw DeviceError(str("cuDNN ", what, ": ", cudnn().cudnnGetErrorString(status),
                        detail[0] != 0 ? str(" (", detail, ")") : std::string()));
}

// One backend descriptor, destroyed with its owner.
class Descriptor {
 public:
  explicit Descriptor(cudnnBackendDescriptorType_t type) {
    check(cudnn().cudnnBackendCreateDescriptor(type, &descriptor_), "create descriptor");
  }
  ~Descriptor() {
    if (descriptor_ != nullptr) cudnn().cudnnBackendDestroyDescriptor(descriptor_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return descriptor_; }

  template <typename T>
  Descriptor& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                  const T* values, int64_t count = 1) {
    check(cudnn().cudnnBackendSetAttribute(descriptor_, name, type, count, values),
          "set attribute");
    return *this;
  }
  Descriptor& set_descriptor(cudnnBackendAttributeName_t name, const Descriptor& value) {
    cudnnBackendDescriptor_t d = value.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, &d);
  }
  Descriptor& finalize(const char* what) {
    check(cudnn().cudnnBackendFinalize(descriptor_), what);
    return *this;
  }

 private:
  cudnnBackendDescriptor_t descriptor_ = nullptr;
};

using Dims = std::vector<int64_t>;

// Unique ids of the graphs' tensors that have memory (the variant pack names them).
enum Uid : int64_t {
  kQ = 1,
  kK,
  kV,
  kOut,
  kLse,
  kDout,
  kDq,
  kDk,
  kDv,
  kScale,
  kMinusInf,
  kOne,
  kRowDots,      // backward workspace: D = sum_d dout * out, [B, H, Tq, 1] f32
  kDqSums,       // backward workspace: dq in f32, [B, H, Tq, D]
  kFirstVirtual  // virtual tensors from here on
};

// An operation graph being built: tensors by uid, operations in order, and everything kept
// alive while the plan lives (cuDNN's descriptors refer to one another).
class GraphBuilder {
 public:
  explicit GraphBuilder(cudnnHandle_t handle) : handle_(handle) {}

  // A tensor with memory (or a host scalar passed by value).
  int64_t tensor(int64_t uid, const Dims& dims, const Dims& strides, cudnnDataType_t type,
                 bool by_value = false) {
    make_tensor(uid, dims, strides, type, false, by_value);
    return uid;
  }
  // A host f32 scalar [1, 1, 1, 1] passed by value.
  int64_t scalar(int64_t uid) {
    return tensor(uid, {1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, true);
  }
  // A tensor between two operations (no memory).
  int64_t intermediate(const Dims& dims, const Dims& strides,
                       cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    const int64_t uid = next_virtual_++;
    make_tensor(uid, dims, strides, type, true, false);
    return uid;
  }

  // y = mode(x[, b][, t]), computed in `math`.
  void pointwise(cudnnPointwiseMode_t mode, int64_t x, int64_t y, int64_t b = -1, int64_t t = -1,
                 cudnnDataType_t math = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    auto desc = keep(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    desc->set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, &mode);
    desc->set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, &math);
    if (mode == CUDNN_POINTWISE_GEN_INDEX)
      desc->set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, &axis);
    desc->finalize("pointwise descriptor");
    auto op = keep(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    op->set_descriptor(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, *desc);
    op->set_descriptor(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, at(x));
    if (b >= 0) op->set_descriptor(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, at(b));
    op->set_descriptor(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, at(y));
    if (t >= 0) op->set_descriptor(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, at(t));
    const float one = 1;
    op->set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, &one);
    op->set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, &one);
    op->finalize("pointwise operation");
    operations_.push_back(op.get());
  }

  // y = reduce(x) over the axes where y has extent 1.
  void reduction(cudnnReduceTensorOp_t reduce, int64_t x, int64_t y) {
    auto desc = keep(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    const cudnnDataType_t math = CUDNN_DATA_FLOAT;
    desc->set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &math);
    desc->set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, &reduce);
    if (cudnn().cudnnGetVersion() >= 91100) {
      const bool deterministic = false;
      desc->set(CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, CUDNN_TYPE_BOOLEAN, &deterministic);
    }
    desc->finalize("reduction descriptor");
    auto op = keep(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    op->set_descriptor(CUDNN_ATTR_OPERATION_REDUCTION_DESC, *desc);
    op->set_descriptor(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, at(x));
    op->set_descriptor(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, at(y));
    op->finalize("reduction operation");
    operations_.push_back(op.get());
  }

  // c = a b over the last two axes, batched over the first two; f32 accumulation.
  void matmul(int64_t a, int64_t b, int64_t c) {
    auto desc = keep(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    const cudnnDataType_t math = CUDNN_DATA_FLOAT;
    desc->set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &math);
    desc->finalize("matmul descriptor");
    auto op = keep(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op->set_descriptor(CUDNN_ATTR_OPERATION_MATMUL_ADESC, at(a));
    op->set_descriptor(CUDNN_ATTR_OPERATION_MATMUL_BDESC, at(b));
    op->set_descriptor(CUDNN_ATTR_OPERATION_MATMUL_CDESC, at(c));
    op->set_descriptor(CUDNN_ATTR_OPERATION_MATMUL_DESC, *desc);
    op->finalize("matmul operation");
    operations_.push_back(op.get());
  }

  // y = x seen through other dimensions and strides (a transpose here).
  void reshape(int64_t x, int64_t y) {
    auto op = keep(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    op->set_descriptor(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, at(x));
    op->set_descriptor(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, at(y));
    op->finalize("reshape operation");
    operations_.push_back(op.get());
  }

  // x with the scores outside the causal (top-left) reach set to -inf: keep where row >= col.
  int64_t causal_mask(int64_t x, const Dims& dims, const Dims& strides, int64_t minus_inf) {
    const int64_t row = intermediate(dims, strides, CUDNN_DATA_INT32);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, x, row, -1, -1, CUDNN_DATA_FLOAT, 2);
    const int64_t col = intermediate(dims, strides, CUDNN_DATA_INT32);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, x, col, -1, -1, CUDNN_DATA_FLOAT, 3);
    const int64_t keep_it = intermediate(dims, strides, CUDNN_DATA_BOOLEAN);
    pointwise(CUDNN_POINTWISE_CMP_GE, row, keep_it, col, -1, CUDNN_DATA_BOOLEAN);
    const int64_t masked = intermediate(dims, strides);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, x, masked, minus_inf, keep_it);
    return masked;
  }

  // The finalized operation graph, cuDNN's engine configurations for it (heuristic A, then the
  // fallback list) and the first one that makes a plan. Throws kiln::DeviceError with cuDNN's
  // reasons when none does. With `device` (a finalized device-properties descriptor) the plan
  // is for that device, described rather than present (cuDNN's deviceless planning; the
  // handle is unused); `first_config_only` stops after heuristic A's first configuration.
  struct Plan;
  std::shared_ptr<Plan> plan(const Descriptor* device = nullptr, bool first_config_only = false);

  // How many operations the graph has so far.
  int64_t operations() const { return static_cast<int64_t>(operations_.size()); }

 private:
  std::shared_ptr<Descriptor> keep(cudnnBackendDescriptorType_t type) {
    kept_.push_back(std::make_shared<Descriptor>(type));
    return kept_.back();
  }
  const Descriptor& at(int64_t uid) const {
    for (const auto& [id, d] : tensors_)
      if (id == uid) return *d;
    throw Error(str("cuDNN attention graph: no tensor ", uid));
  }
  void make_tensor(int64_t uid, const Dims& dims, const Dims& strides, cudnnDataType_t type,
                   bool is_virtual, bool by_value) {
    auto d = keep(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t alignment = 16;
    d->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, &type);
    d->set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, dims.data(),
           static_cast<int64_t>(dims.size()));
    d->set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, strides.data(),
           static_cast<int64_t>(strides.size()));
    d->set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, &uid);
    d->set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, &alignment);
    d->set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, &is_virtual);
    if (by_value) d->set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, &by_value);
    d->finalize("tensor descriptor");
    tensors_.emplace_back(uid, d);
  }

  cudnnHandle_t handle_;
  int64_t next_virtual_ = kFirstVirtual;
  std::vector<std::shared_ptr<Descriptor>> kept_;
  std::vector<std::pair<int64_t, std::shared_ptr<Descriptor>>> tensors_;
  std::vector<Descriptor*> operations_;
};

struct GraphBuilder::Plan {
  std::vector<std::shared_ptr<Descriptor>> kept;  // the graph's descriptors, the plan's last
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;
};

std::shared_ptr<GraphBuilder::Plan> GraphBuilder::plan(const Descriptor* device,
                                                       bool first_config_only) {
  auto graph = keep(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  std::vector<cudnnBackendDescriptor_t> ops;
  for (Descriptor* op : operations_) ops.push_back(op->get());
  if (device == nullptr) graph->set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, &handle_);
  graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ops.data(),
             static_cast<int64_t>(ops.size()));
  graph->finalize("operation graph (is the attention pattern supported by this cuDNN?)");
  std::string reasons;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    const char* heuristic_name = mode == CUDNN_HEUR_MODE_A ? "heuristic A" : "fallback heuristic";
    auto heuristic = keep(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    heuristic->set_descriptor(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, *graph);
    heuristic->set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, &mode);
    if (device != nullptr) heuristic->set_descriptor(CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, *device);
    try {
      heuristic->finalize("engine heuristic");
    } catch (const DeviceError& e) {
      reasons += str(" ", heuristic_name, ": ", e.what(), ";");
      continue;
    }
    // The count, then the configurations: cuDNN returns only those that support the graph on
    // the device (engines it cannot compile or load are left out: CUDNN_LOGWARN_DBG says why).
    int64_t count = 0;
    check(cudnn().cudnnBackendGetAttribute(heuristic->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
          "engine heuristic results");
    std::vector<std::shared_ptr<Descriptor>> configs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      configs.push_back(keep(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
      raw.push_back(configs.back()->get());
    }
    int64_t returned = 0;
    if (count > 0)
      check(cudnn().cudnnBackendGetAttribute(heuristic->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                             CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned,
                                             raw.data()),
            "engine heuristic results");
    if (returned <= 0) {
      reasons += str(" ", heuristic_name, " offers no engine that supports the graph (of ", count,
                     " it considered);");
      continue;
    }
    for (int64_t i = 0; i < (first_config_only ? 1 : returned); ++i) {
      auto plan = std::make_shared<Descriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      if (device == nullptr)
        plan->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, &handle_);
      else
        plan->set_descriptor(CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, *device);
      plan->set_descriptor(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, *configs[i]);
      try {
        plan->finalize("execution plan");
      } catch (const DeviceError& e) {
        reasons += str(" ", heuristic_name, "'s engine configuration ", i, ": ", e.what(), ";");
        continue;
      }
      auto result = std::make_shared<Plan>();
      int64_t got = 0;
      check(cudnn().cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                             CUDNN_TYPE_INT64, 1, &got, &result->workspace),
            "plan workspace size");
      result->plan = plan->get();
      result->kept = kept_;
      result->kept.push_back(plan);
      return result;
    }
    if (first_config_only) break;
  }
  throw DeviceError(str("cuDNN has no plan for this attention graph:", reasons));
}

// ---- The problems' graphs.

cudnnDataType_t io_type(DType dtype) {
  return dtype == DType::f16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

// Strides of a [B, H, T, D] view of a tensor in the problem's layout (T rows of depth D).
Dims strides_of(const CudnnAttention& p, int64_t rows, int64_t depth) {
  if (p.bthd) return {rows * p.heads * depth, depth, p.heads * depth, 1};
  return {p.heads * rows * depth, rows * depth, depth, 1};
}
// The same viewed [B, H, D, T] (a transpose: cuDNN's products read k^T and v^T so).
Dims transposed(Dims strides) {
  std::swap(strides[2], strides[3]);
  return strides;
}

// The scores' [B, H, Tq, Tk] and the rows' statistics [B, H, Tq, 1], contiguous.
struct Shapes {
  Dims scores, score_strides, rows, row_strides;
  explicit Shapes(const CudnnAttention& p)
      : scores{p.batch, p.heads, p.queries, p.keys},
        score_strides{p.heads * p.queries * p.keys, p.queries * p.keys, p.keys, 1},
        rows{p.batch, p.heads, p.queries, 1},
        row_strides{p.heads * p.queries, p.queries, 1, 1} {}
};

// The forward's operations into `g`.
void forward_graph(GraphBuilder& g, const CudnnAttention& p) {
  const Shapes s(p);
  const cudnnDataType_t io = io_type(p.dtype);
  const int64_t b = p.batch, h = p.heads, tq = p.queries, tk = p.keys, d = p.depth;
  const int64_t q = g.tensor(kQ, {b, h, tq, d}, strides_of(p, tq, d), io);
  const int64_t kt = g.tensor(kK, {b, h, d, tk}, transposed(strides_of(p, tk, d)), io);
  const int64_t v = g.tensor(kV, {b, h, tk, d}, strides_of(p, tk, d), io);
  const int64_t out = g.tensor(kOut, {b, h, tq, d}, strides_of(p, tq, d), io);
  const int64_t lse = g.tensor(kLse, s.rows, s.row_strides, CUDNN_DATA_FLOAT);
  const int64_t scale = g.scalar(kScale);

  const int64_t dots = g.intermediate(s.scores, s.score_strides);
  g.matmul(q, kt, dots);
  int64_t scores = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_MUL, dots, scores, scale);
  if (p.causal) scores = g.causal_mask(scores, s.scores, s.score_strides, g.scalar(kMinusInf));
  // The softmax with its statistics: lse = m + log l.
  const int64_t m = g.intermediate(s.rows, s.row_strides);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, scores, m);
  const int64_t centered = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_SUB, scores, centered, m);
  const int64_t e = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_EXP, centered, e);
  const int64_t l = g.intermediate(s.rows, s.row_strides);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, l);
  const int64_t log_l = g.intermediate(s.rows, s.row_strides);
  g.pointwise(CUDNN_POINTWISE_LOG, l, log_l);
  g.pointwise(CUDNN_POINTWISE_ADD, m, lse, log_l);
  // The probabilities in the inputs' type feed the second product, as cuDNN's pattern has it.
  const int64_t probabilities = g.intermediate(s.scores, s.score_strides, io);
  g.pointwise(CUDNN_POINTWISE_DIV, e, probabilities, l);
  g.matmul(probabilities, v, out);
}

// The backward's operations into `g`.
void backward_graph(GraphBuilder& g, const CudnnAttention& p) {
  const Shapes s(p);
  const cudnnDataType_t io = io_type(p.dtype);
  const int64_t b = p.batch, h = p.heads, tq = p.queries, tk = p.keys, d = p.depth;
  const Dims query_dims{b, h, tq, d}, key_t_dims{b, h, d, tk}, key_dims{b, h, tk, d};
  const int64_t q = g.tensor(kQ, query_dims, strides_of(p, tq, d), io);
  const int64_t kt = g.tensor(kK, key_t_dims, transposed(strides_of(p, tk, d)), io);
  const int64_t vt = g.tensor(kV, key_t_dims, transposed(strides_of(p, tk, d)), io);
  const int64_t out = g.tensor(kOut, query_dims, strides_of(p, tq, d), io);
  const int64_t dout = g.tensor(kDout, query_dims, strides_of(p, tq, d), io);
  const int64_t lse = g.tensor(kLse, s.rows, s.row_strides, CUDNN_DATA_FLOAT);
  const int64_t dq = g.tensor(kDq, query_dims, strides_of(p, tq, d), io);
  const int64_t dk = g.tensor(kDk, key_dims, strides_of(p, tk, d), io);
  const int64_t dv = g.tensor(kDv, key_dims, strides_of(p, tk, d), io);
  const int64_t scale = g.scalar(kScale);
  const int64_t one = g.scalar(kOne);

  // D = sum_d dout * out, kept in the workspace (the frontend's strides for the product).
  const int64_t products = g.intermediate(query_dims, {h * tq * d, tq * d, h * d, 1});
  g.pointwise(CUDNN_POINTWISE_MUL, dout, products, out);
  const int64_t row_sums = g.intermediate(s.rows, s.row_strides);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, products, row_sums);
  const int64_t row_dots = g.tensor(kRowDots, s.rows, s.row_strides, CUDNN_DATA_FLOAT);
  g.pointwise(CUDNN_POINTWISE_MUL, row_sums, row_dots, one);

  // p = exp(scale q k^T - lse), masked.
  const int64_t dots = g.intermediate(s.scores, s.score_strides);
  g.matmul(q, kt, dots);
  const int64_t scores = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_MUL, dots, scores, scale);
  int64_t shifted = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_SUB, scores, shifted, lse);
  if (p.causal) shifted = g.causal_mask(shifted, s.scores, s.score_strides, g.scalar(kMinusInf));
  const int64_t probabilities = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_EXP, shifted, probabilities);

  // dv = p^T dout.
  const Dims scores_t{b, h, tk, tq}, scores_t_strides{h * tq * tk, tq * tk, 1, tk};
  const int64_t probabilities_t = g.intermediate(scores_t, scores_t_strides, io);
  g.reshape(probabilities, probabilities_t);
  g.matmul(probabilities_t, dout, dv);

  // ds = p (dout v^T - D) scale.
  const int64_t dp = g.intermediate(s.scores, s.score_strides);
  g.matmul(dout, vt, dp);
  const int64_t dp_centered = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_SUB, dp, dp_centered, row_dots);
  const int64_t dz = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_MUL, dp_centered, dz, probabilities);
  const int64_t ds = g.intermediate(s.scores, s.score_strides);
  g.pointwise(CUDNN_POINTWISE_MUL, dz, ds, scale);

  // dk = ds^T q.
  const int64_t ds_t = g.intermediate(scores_t, scores_t_strides, io);
  g.reshape(ds, ds_t);
  g.matmul(ds_t, q, dk);

  // dq = ds k: k^T seen back as k. Deterministic: straight into dq (cuDNN keeps ds in its
  // workspace and multiplies it in a pass of its own); else summed in f32 in the workspace by the
  // key blocks (atomics), then converted.
  const int64_t k = g.intermediate(key_dims, strides_of(p, tk, d));
  g.reshape(kt, k);
  if (p.deterministic) {
    g.matmul(ds, k, dq);
  } else {
    const int64_t dq_sums =
        g.tensor(kDqSums, query_dims, {h * tq * d, tq * d, d, 1}, CUDNN_DATA_FLOAT);
    g.matmul(ds, k, dq_sums);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_sums, dq);
  }
}

// The problem's backward or forward operations into `g`.
void build_graph(GraphBuilder& g, const CudnnAttention& p, bool backward) {
  if (backward)
    backward_graph(g, p);
  else
    forward_graph(g, p);
}

// ---- Running them.

// A problem's plan, or why cuDNN has none (kept so the refusal is said and paid once).
struct CachedPlan {
  std::shared_ptr<GraphBuilder::Plan> plan;
  std::string refusal;
};

CachedPlan cached_plan(const KernelContext& ctx, cudnnHandle_t handle, const CudnnAttention& p,
                       bool backward) {
  const char* direction = backward ? "backward" : "forward";
  const std::string key =
      ctx.cache_key(str("cudnn attention ", direction, p.bthd ? " bthd" : " bhtd",
                        p.causal ? " causal" : "", p.deterministic ? " deterministic" : "",
                        " scale ", p.scale, " handle ", reinterpret_cast<uintptr_t>(handle)));
  return ctx.cache().get<CachedPlan>(key, [&] {
    CachedPlan cached;
    try {
      GraphBuilder g(handle);
      build_graph(g, p, backward);
      cached.plan = g.plan();
    } catch (const DeviceError& e) {
      cached.refusal = e.what();
      if (!strict())
        std::fprintf(stderr, "kiln: %s: %s; Kiln's attention kernels run it instead\n",
                     ctx.where().c_str(), e.what());
    }
    return cached;
  });
}

size_t round_up(size_t n) {
  return (n + 255) / 256 * 256;
}

// Runs `plan` over the tensors at `uids` (device memory, or host scalars passed by value) with
// `workspace` (cuDNN's own bytes first).
void execute(cudnnHandle_t handle, const GraphBuilder::Plan& plan, const std::vector<int64_t>& uids,
             const std::vector<void*>& pointers, void* workspace) {
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, uids.data(),
           static_cast<int64_t>(uids.size()));
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, pointers.data(),
           static_cast<int64_t>(pointers.size()));
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, &workspace);
  pack.finalize("variant pack");
  check(cudnn().cudnnBackendExecute(handle, plan.plan, pack.get()), "execute");
}

// The lane's cuDNN handle, or nullptr where cuDNN cannot be opened (said once; under "strict" a
// DeviceError instead).
cudnnHandle_t lane_handle(KernelContext& ctx) {
  try {
    return ctx.lane_resource<CudnnLane>().handle;
  } catch (const DeviceError& e) {
    if (strict()) throw;
    static std::once_flag said;
    std::call_once(
        said, [&] { std::fprintf(stderr, "kiln: %s; attention runs Kiln's kernels\n", e.what()); });
    return nullptr;
  }
}

// The score of a masked-out pair: -inf (cuDNN 9.10 and later), else the lowest float.
float minus_infinity() {
  return cudnn().cudnnGetVersion() >= 91000 ? -std::numeric_limits<float>::infinity()
                                            : std::numeric_limits<float>::lowest();
}

}  // namespace

int64_t cudnn_attention_operations(const CudnnAttention& problem, bool backward) {
  GraphBuilder g(nullptr);
  build_graph(g, problem, backward);
  return g.operations();
}

std::string cudnn_attention_plan_for_device(const CudnnAttention& problem, bool backward,
                                            const std::string& device_json) {
  if (cudnn().cudnnGetVersion() < 90800)
    throw DeviceError(str("cuDNN ", cudnn().cudnnGetVersion(),
                          " cannot plan for a described device (9.8 and later can)"));
  Descriptor device(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR);
  device.set(CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, device_json.data(),
             static_cast<int64_t>(device_json.size()));
  device.finalize("device properties (the JSON description)");
  GraphBuilder g(nullptr);
  build_graph(g, problem, backward);
  try {
    g.plan(&device, true);
  } catch (const DeviceError& e) {
    return e.what();
  }
  return "";
}

bool cudnn_attention_forward(KernelContext& ctx, const CudnnAttention& problem, const void* q,
                             const void* k, const void* v, void* out, float* lse) {
  const cudnnHandle_t handle = lane_handle(ctx);
  if (handle == nullptr) return false;
  const CachedPlan cached = cached_plan(ctx, handle, problem, false);
  if (cached.plan == nullptr) {
    if (strict()) throw DeviceError(str(ctx.where(), ": ", cached.refusal));
    return false;
  }
  float scale = problem.scale, minus_inf = minus_infinity();
  std::vector<int64_t> uids = {kQ, kK, kV, kOut, kLse, kScale};
  std::vector<void*> pointers = {
      const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), out, lse, &scale};
  if (problem.causal) {
    uids.push_back(kMinusInf);
    pointers.push_back(&minus_inf);
  }
  std::shared_ptr<Storage> workspace;
  if (cached.plan->workspace > 0) workspace = ctx.scratch(cached.plan->workspace);
  execute(handle, *cached.plan, uids, pointers, workspace ? workspace->data() : nullptr);
  return true;
}

bool cudnn_attention_backward(KernelContext& ctx, const CudnnAttention& problem, const void* q,
                              const void* k, const void* v, const void* out, const float* lse,
                              const void* dout, void* dq, void* dk, void* dv) {
  const cudnnHandle_t handle = lane_handle(ctx);
  if (handle == nullptr) return false;
  const CachedPlan cached = cached_plan(ctx, handle, problem, true);
  if (cached.plan == nullptr) {
    if (strict()) throw DeviceError(str(ctx.where(), ": ", cached.refusal));
    return false;
  }
  const int64_t rows = problem.batch * problem.heads * problem.queries;
  const size_t row_dot_bytes = round_up(sizeof(float) * rows);
  const size_t dq_sum_bytes =
      problem.deterministic ? 0 : round_up(sizeof(float) * rows * problem.depth);
  float scale = problem.scale, one = 1, minus_inf = minus_infinity();
  // The graph's workspace tensors (D, and dq's f32 sums) go after cuDNN's own workspace.
  const size_t own = round_up(static_cast<size_t>(cached.plan->workspace));
  std::shared_ptr<Storage> workspace = ctx.scratch(own + row_dot_bytes + dq_sum_bytes);
  char* base = static_cast<char*>(workspace->data());
  char* row_dots = base + own;
  char* dq_sums = row_dots + row_dot_bytes;
  // Before cuDNN 9.6 the dq sums start from zeros the caller writes; later cuDNN clears them.
  if (!problem.deterministic && cudnn().cudnnGetVersion() < 90600)
    KILN_CUDA_CHECK(cudaMemsetAsync(dq_sums, 0, dq_sum_bytes, stream_of(ctx)), ctx.where());
  std::vector<int64_t> uids = {kQ,  kK,  kV,  kOut,   kLse, kDout,
                               kDq, kDk, kDv, kScale, kOne, kRowDots};
  std::vector<void*> pointers = {const_cast<void*>(q),
                                 const_cast<void*>(k),
                                 const_cast<void*>(v),
                                 const_cast<void*>(out),
                                 const_cast<float*>(lse),
                                 const_cast<void*>(dout),
                                 dq,
                                 dk,
                                 dv,
                                 &scale,
                                 &one,
                                 row_dots};
  if (!problem.deterministic) {
    uids.push_back(kDqSums);
    pointers.push_back(dq_sums);
  }
  if (problem.causal) {
    uids.push_back(kMinusInf);
    pointers.push_back(&minus_inf);
  }
  execute(handle, *cached.plan, uids, pointers, base);
  return true;
}

}  // namespace kiln::ops::cuda_attention
