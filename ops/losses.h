// Loss functions, as PyTorch's torch.nn.functional defines them. Each is built from other ops
// (softmax_cross_entropy has its own kernel), so its gradient is theirs and it runs wherever they
// do. Where PyTorch's takes a `reduction`, so does Kiln's, with PyTorch's default (mean); the
// per-element forms that Kiln has always returned unreduced (binary cross entropy, KL
// divergence) keep `none` as their default.
#pragma once

#include "kiln/framework/graph.h"

namespace kiln {

/// How a loss turns its per-element values into its result (PyTorch's `reduction`): `none`
/// keeps them (shaped as the loss describes), `sum` adds them, `mean` averages them (for the
/// losses with class weights or an ignored label: divided by the sum of the weights counted),
/// `batch_mean` adds them and divides by the size of dim 0 (kl_div's "batchmean").
enum class Reduction { none, mean, sum, batch_mean };

/// "none", "mean", "sum" or "batch_mean".
const char* reduction_name(Reduction reduction);

/// `losses` reduced as `reduction` says (mean: over every element). Every loss below ends with
/// it; it also reduces a custom per-element loss the same way.
Value reduce_loss(const Value& losses, Reduction reduction);

/// Per-example cross entropy of `logits` [N, C] (floating) against integer class `labels` [N]
/// (i32 or i64): loss[i] = logsumexp(logits[i]) - logits[i, labels[i]]. With label smoothing
/// e the target is (1 - e) onehot + e / C (PyTorch's). Rows labelled `ignore_index` get loss
/// 0 and no gradient. Any other label outside [0, C) is an error when the graph runs, naming
/// the position and value.
Value softmax_cross_entropy(const Value& logits, const Value& labels, int64_t ignore_index = -100,
                            double label_smoothing = 0);
/// Cross entropy of `logits` [N, C] or [N, C, d1, ...] (per pixel: the class dim is 1) against
/// integer `labels` [N] or [N, d1, ...] (PyTorch's cross_entropy). A class `weight` [C] weighs
/// each element by weight[label], label smoothing included, as PyTorch's. Elements labelled
/// `ignore_index` count 0. `mean` divides the sum by the number of elements counted (by the sum
/// of their weights with `weight`; NaN when every element is ignored, as PyTorch's); `none`
/// gives the losses shaped like the labels.
Value cross_entropy(const Value& logits, const Value& labels, int64_t ignore_index = -100,
                    double label_smoothing = 0, const Value& weight = {},
                    Reduction reduction = Reduction::mean);
/// Negative log likelihood of integer class `labels` [N, d1, ...] (i32 or i64) under
/// `log_probs` [N, C, d1, ...]: -log_probs[n, labels[n, ...], ...] weighted by weight[label]
/// when a class `weight` [C] is given, 0 for elements labelled `ignore_index`; reduced as
/// cross_entropy (PyTorch's nll_loss). nll_loss(log_softmax(x, 1), labels) is cross entropy.
/// A label outside [0, C) that is not ignored is an error when the graph runs.
Value nll_loss(const Value& log_probs, const Value& labels, int64_t ignore_index = -100,
               const Value& weight = {}, Reduction reduction = Reduction::mean);

/// Connectionist temporal classification loss (PyTorch's CTCLoss): the negative log
/// probability of each target under all alignments of the inputs. `log_probs` [T, N, C]
/// (log_softmax over C, time first), `targets` [N, S] padded (sequence n's labels first, the
/// rest unread) or [L] concatenated (PyTorch's 1-D form: the sequences' labels one after
/// another, the lengths summing to L), `input_lengths` and `target_lengths` [N]; integers of any
/// dtype. Unbatched as PyTorch: log_probs [T, C], targets [S], lengths scalars. Labels are in [0,
/// C) and never `blank`; lengths at most T and S (or what L leaves). All three are checked when the
/// graph runs, naming the sequence. `mean` divides each loss by its target length (at least 1)
/// before the batch mean, as PyTorch. An impossible alignment (too few steps) gives +inf, or 0 and
/// no gradient with `zero_infinity`. The gradient in log_probs is the exact one; PyTorch's adds
/// exp(log_probs), which cancels through log_softmax, so gradients reaching the logits are the
/// same.
Value ctc_loss(const Value& log_probs, const Value& targets, const Value& input_lengths,
               const Value& target_lengths, int64_t blank = 0,
               Reduction reduction = Reduction::mean, bool zero_infinity = false);

/// (a - b)^2, a and b broadcast (PyTorch's MSELoss).
Value mse_loss(const Value& a, const Value& b, Reduction reduction = Reduction::mean);
/// |a - b| (PyTorch's L1Loss).
Value l1_loss(const Value& a, const Value& b, Reduction reduction = Reduction::mean);
/// d = |a - b|: 0.5 d^2 where d < delta, else delta (d - delta / 2) (PyTorch's HuberLoss;
/// delta must be positive).
Value huber_loss(const Value& a, const Value& b, double delta = 1.0,
                 Reduction reduction = Reduction::mean);
/// d = |a - b|: 0.5 d^2 / beta where d < beta, d - beta / 2 beyond (PyTorch's SmoothL1Loss;
/// beta 0 is l1_loss, a negative beta a GraphError).
Value smooth_l1_loss(const Value& a, const Value& b, double beta = 1.0,
                     Reduction reduction = Reduction::mean);
/// Binary cross entropy of sigmoid(logits) against targets in [0, 1], computed as
/// softplus(logits) - logits targets (stable for any logit). A `pos_weight` (broadcast against
/// the logits, one per class in PyTorch's use) weighs the positive term: (1 - t) x + (1 + (w -
/// 1) t) softplus(-x); `weight` (broadcast) multiplies each element's loss. Unreduced by
/// default: Reduction::mean is PyTorch's BCEWithLogitsLoss.
Value binary_cross_entropy_with_logits(const Value& logits, const Value& targets,
                                       const Value& pos_weight = {}, const Value& weight = {},
                                       Reduction reduction = Reduction::none);
/// Binary cross entropy of probabilities `probs` in [0, 1] against targets: -(t log p + (1 - t)
/// log(1 - p)), each log clamped at -100 as PyTorch's BCELoss (so p = 0 or 1 gives a finite
/// loss, and there a gradient of 0), times `weight` (broadcast) when given. Unreduced by
/// default: Reduction::mean is PyTorch's BCELoss.
Value binary_cross_entropy(const Value& probs, const Value& targets, const Value& weight = {},
                           Reduction reduction = Reduction::none);
/// Kullback-Leibler divergence of `target` from exp(log_input), element by element: target (log
/// target - log_input), 0 where target is 0 (with log_target, target holds log probabilities:
/// e^t (t - log_input)). Unreduced by default; Reduction::batch_mean is the mathematically
/// right KL of a batch of distributions (PyTorch's "batchmean").
Value kl_div(const Value& log_input, const Value& target, bool log_target = false,
             Reduction reduction = Reduction::none);

/// max(0, margin - y (x1 - x2)) for labels y of +1 or -1 (PyTorch's MarginRankingLoss: y = 1
/// ranks x1 above x2); x1, x2 and y broadcast.
Value margin_ranking_loss(const Value& x1, const Value& x2, const Value& y, double margin = 0,
                          Reduction reduction = Reduction::mean);
/// x where y is not -1, plus max(0, margin - x) where y is not 1, for labels y of +1 or -1
/// (PyTorch's HingeEmbeddingLoss, which writes it that way).
Value hinge_embedding_loss(const Value& x, const Value& y, double margin = 1.0,
                           Reduction reduction = Reduction::mean);
/// log(1 + exp(-y x)) for labels y of +1 or -1 (PyTorch's SoftMarginLoss), computed as
/// softplus(-y x).
Value soft_margin_loss(const Value& x, const Value& y, Reduction reduction = Reduction::mean);
/// One-vs-all logistic loss of x [N, C] against 0/1 targets y [N, C]: per example the mean over
/// the classes of -(y log sigmoid(x) + (1 - y) log sigmoid(-x)), each class weighed by
/// `weight` [C] when given; `none` gives [N] (PyTorch's MultiLabelSoftMarginLoss).
Value multilabel_soft_margin_loss(const Value& x, const Value& y, const Value& weight = {},
                                  Reduction reduction = Reduction::mean);
/// Multi-class hinge loss of x [N, C] against integer labels y [N] (i32 or i64): per example
/// sum over the classes i != y of max(0, margin - x[y] + x[i])^p / C, times weight[y] when a
/// class `weight` [C] is given; p is 1 or 2; `none` gives [N] (PyTorch's MultiMarginLoss). A
/// label outside [0, C) is an error when the graph runs.
Value multi_margin_loss(const Value& x, const Value& y, int64_t p = 1, double margin = 1.0,
                        const Value& weight = {}, Reduction reduction = Reduction::mean);
/// For rows x1, x2 [N, D] (or [D]) and labels y [N] of +1 or -1: 1 - cos(x1, x2) where y is 1,
/// max(0, cos(x1, x2) - margin) where y is -1, the cosine over the last dim with 1e-12 added to
/// each squared norm (PyTorch's CosineEmbeddingLoss).
Value cosine_embedding_loss(const Value& x1, const Value& x2, const Value& y, double margin = 0,
                            Reduction reduction = Reduction::mean);
/// The p-norm of x1 - x2 + eps over the last dim, which is removed unless `keepdim` (PyTorch's
/// pairwise_distance); p must be positive.
Value pairwise_distance(const Value& x1, const Value& x2, double p = 2.0, double eps = 1e-6,
                        bool keepdim = false);
/// max(0, d(a, p) - d(a, n) + margin) per row of anchor, positive and negative [N, D] (or [D]),
/// d = pairwise_distance(., ., p, eps); with `swap`, d(a, n) is min(d(a, n), d(p, n))
/// (PyTorch's TripletMarginLoss).
Value triplet_margin_loss(const Value& anchor, const Value& positive, const Value& negative,
                          double margin = 1.0, double p = 2.0, double eps = 1e-6, bool swap = false,
                          Reduction reduction = Reduction::mean);
/// Negative log likelihood of `target` counts under a Poisson distribution of rate exp(input)
/// (log_input) or input: exp(input) - target input, or input - target log(input + eps); with
/// `full`, plus Stirling's approximation of log(target!) where target > 1 (PyTorch's
/// PoissonNLLLoss).
Value poisson_nll_loss(const Value& input, const Value& target, bool log_input = true,
                       bool full = false, double eps = 1e-8, Reduction reduction = Reduction::mean);
/// Negative log likelihood of `target` under a Gaussian of mean `input` and variance `var`:
/// 0.5 (log(v) + (input - target)^2 / v) with v = max(var, eps) (the clamp passes the gradient
/// through unchanged, as PyTorch's, which clamps without recording it), plus 0.5 log(2 pi) with
/// `full`. var is shaped like input, or like it with the last dim 1 or removed (one variance per
/// row) (PyTorch's GaussianNLLLoss).
Value gaussian_nll_loss(const Value& input, const Value& target, const Value& var,
                        bool full = false, double eps = 1e-6,
                        Reduction reduction = Reduction::mean);

}  // namespace kiln
