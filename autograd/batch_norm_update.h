// torch.optim.swa_utils.update_bn: batch norm's running statistics recomputed for the weights a
// model holds now (after stochastic weight averaging copied its averages in, say), as the plain
// average of each batch's statistics over a pass through the data.
#pragma once

#include <vector>

#include "kiln/framework/graph.h"
#include "kiln/ops/layers.h"
#include "kiln/runtime/session.h"

namespace kiln::optim {

/// The pass that recomputes the running statistics of every nn::BatchNorm inside a model:
///
///     optim::BatchNormUpdate update_bn(model, images);   // before or after the Session
///     swa.copy_to_variables(session);                     // the averaged weights
///     update_bn.run(session, batches);                    // torch's update_bn(loader, model)
///
/// The constructor builds model(x) once more, in training mode, with each batch norm that keeps
/// running statistics averaging the batches equally into them whatever its momentum (torch sets
/// momentum None for the pass), each counting its batches: in its own num_batches_tracked where
/// it has one (momentum std::nullopt), else in a variable "<layer>/update_bn_count" that
/// checkpoints do not keep. Every layer's mode is then put back as it was, so the graphs built
/// before and after are unchanged. A model without such layers gives an update that does
/// nothing, as torch's.
class BatchNormUpdate {
 public:
  /// Throws kiln::GraphError when x is not a value of the model's graph.
  BatchNormUpdate(nn::Module& model, const Value& x);

  /// Resets the running statistics (mean 0, variance 1, counts 0), then runs each batch's feeds
  /// (which must feed x): afterwards each running statistic is the mean of the batches'.
  void run(Session& session, const std::vector<FeedList>& batches) const;
  /// The two halves of run(), for batches that come one at a time from a loader.
  void reset(Session& session) const;
  void add(Session& session, const FeedList& batch) const;

  /// How many batch norms the pass updates.
  size_t layers() const { return layers_.size(); }

 private:
  struct Layer {
    Value mean, var, count;
  };
  std::vector<Layer> layers_;
  Value pass_;  // model(x) in training mode, its running statistics averaged
};

}  // namespace kiln::optim
