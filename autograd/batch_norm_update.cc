#include "kiln/autograd/batch_norm_update.h"

#include "kiln/autograd/optim_state.h"

namespace kiln::optim {

BatchNormUpdate::BatchNormUpdate(nn::Module& model, const Value& x) {
  Graph& graph = model.graph();
  KILN_CHECK(x.defined() && x.graph() == &graph, GraphError, "[update_bn] the input ",
             x.defined() ? x.name() : "(undefined)", " is not a value of the graph of model '",
             model.path(), "'");
  const std::vector<nn::Module*> modules = model.modules();
  std::vector<bool> modes;
  for (nn::Module* m : modules) modes.push_back(m->training());
  std::vector<nn::BatchNorm*> norms;
  for (nn::Module* m : modules) {
    auto* norm = dynamic_cast<nn::BatchNorm*>(m);
    if (norm == nullptr || !norm->running_mean.defined()) continue;
    Value count = norm->num_batches_tracked;
    if (!count.defined()) {
      const std::string name = norm->path() + "/update_bn_count";
      count = graph.find_node(name) != nullptr
                  ? graph.value(name)  // a second update of the same model
                  : state_variable(graph, name, i64, Shape{}, 0, /*persistent=*/false);
    }
    norm->average_batches_into(count);
    norms.push_back(norm);
    layers_.push_back({norm->running_mean, norm->running_var, count});
  }
  if (!norms.empty()) {
    model.train();
    pass_ = model(x);
  }
  for (nn::BatchNorm* norm : norms) norm->average_batches_into(Value());
  // Pre-order: each module's mode is set after its parent's, which set it with the parent's.
  for (size_t i = 0; i < modules.size(); ++i) modules[i]->train(modes[i]);
}

void BatchNormUpdate::reset(Session& session) const {
  for (const Layer& layer : layers_) {
    session.set_variable(layer.mean, Tensor::zeros(layer.mean.dtype(), layer.mean.shape()));
    session.set_variable(layer.var, Tensor::full(layer.var.dtype(), layer.var.shape(), 1));
    session.set_variable(layer.count, Tensor::scalar<int64_t>(0));
  }
}

void BatchNormUpdate::add(Session& session, const FeedList& batch) const {
  if (pass_.defined()) session.run(batch, {}, {pass_});
}

void BatchNormUpdate::run(Session& session, const std::vector<FeedList>& batches) const {
  reset(session);
  for (const FeedList& batch : batches) add(session, batch);
}

}  // namespace kiln::optim
