// Neural-network ops: softmax and losses.
#pragma once

#include "framework/graph.h"

namespace kiln {

/// exp(x) / sum(exp(x)) along `axis` (computed as exp(x - max) for stability).
Value softmax(const Value& x, int64_t axis = -1);
/// log(softmax(x)) along `axis`, computed without forming softmax.
Value log_softmax(const Value& x, int64_t axis = -1);
/// Per-example cross entropy of `logits` [N, C] (floating) against integer class `labels` [N]
/// (i32 or i64): loss[i] = logsumexp(logits[i]) - logits[i, labels[i]]. A label outside
/// [0, C) is an error when the graph runs, naming the position and value.
Value softmax_cross_entropy(const Value& logits, const Value& labels);
/// The mask of inverted dropout, shaped like `x`: 1 / (1 - rate) with probability 1 - rate,
/// else 0; a new mask on every run (the random trait: drawn under `seed`, the node's name and
/// the graph's random counter, so a restored checkpoint continues the same sequence).
/// Dropout is x * dropout_mask(x, rate, seed).
Value dropout_mask(const Value& x, double rate, int64_t seed = 0);

}  // namespace kiln
