// The op-case table's entries for the fused optimizer updates (sgd_update ... rprop_update, and
// the product forms the matmul_epilogue pass makes): no gradients, no torch parity (the
// optimizer tests compare whole steps with torch.optim); the table runs each CUDA kernel
// against the CPU's where a GPU is lent.
#include <functional>

#include "cases/op_cases.h"

namespace kiln::testing {

void add_update_cases(const std::function<void(OpCase)>& add) {
  add({.op = "sgd_update",
       .name = "sgd_update_nesterov",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             return sgd_update(var, c.variable({3, 4}), c.input({3, 4}), c.scalar(0.1), 0.9, true,
                               0.01);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "adam_update",
       .name = "adam_update",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             Value m = c.variable({3, 4}, -0.1, 0.1), v = c.variable({3, 4}, 0, 0.1);
             return adam_update(var, m, v, c.input({3, 4}), c.scalar(0.01), c.g.scalar(3, i64), 0.9,
                                0.999, 1e-8, 0.01, true);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  // The updates whose gradient is a product, built as a graph file could hold them (the
  // matmul_epilogue pass makes them on the CPU from an update of a matmul; passes_test checks
  // that): so the GPU table runs their CUDA kernels against the CPU's.
  add({.op = "matmul_sgd_update",
       .name = "matmul_sgd_update",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({5, 4});
             return c.g.add(
                 "matmul_sgd_update",
                 {var, c.variable({5, 4}), c.input({3, 5}), c.input({3, 4}), c.scalar(0.1)},
                 {{"momentum", 0.9}, {"weight_decay", 0.01}, {"transpose_a", true}});
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "matmul_adam_update",
       .name = "matmul_adam_update",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({4, 5});
             Value m = c.variable({4, 5}, -0.1, 0.1), v = c.variable({4, 5}, 0, 0.1);
             return c.g.add(
                 "matmul_adam_update",
                 {var, m, v, c.input({4, 3}), c.input({5, 3}), c.scalar(0.01), c.g.scalar(3, i64)},
                 {{"weight_decay", 0.01}, {"transpose_b", true}});
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  // This step's momentum as an input (a schedule that cycles it), on the plain and product
  // forms.
  add({.op = "sgd_update",
       .name = "sgd_update_momentum_input",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             return sgd_update(var, c.variable({3, 4}), c.input({3, 4}), c.scalar(0.1), 0, false,
                               0.01, {}, c.g.scalar(0.85, f64));
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  // Dampening: the step count after lr, then this step's momentum (step 2: dampened; the product
  // form at step 0: not).
  add({.op = "sgd_update",
       .name = "sgd_update_dampening",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             return sgd_update(var, c.variable({3, 4}), c.input({3, 4}), c.scalar(0.1), 0.9, false,
                               0.01, {}, c.g.scalar(0.85, f64), 0.4, c.g.scalar(2, i64));
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "matmul_sgd_update",
       .name = "matmul_sgd_update_dampening",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({5, 4});
             return c.g.add("matmul_sgd_update",
                            {var, c.variable({5, 4}), c.input({3, 5}), c.input({3, 4}),
                             c.scalar(0.1), c.g.scalar(0, i64)},
                            {{"momentum", 0.9}, {"dampening", 0.4}, {"transpose_a", true}});
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "matmul_adam_update",
       .name = "matmul_adam_update_momentum_input",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({4, 5});
             Value m = c.variable({4, 5}, -0.1, 0.1), v = c.variable({4, 5}, 0, 0.1);
             return c.g.add("matmul_adam_update",
                            {var, m, v, c.input({3, 4}), c.input({3, 5}), c.scalar(0.01),
                             c.g.scalar(3, i64), c.g.scalar(0.8, f64)},
                            {{"transpose_a", true}, {"momentum_input", true}});
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "rmsprop_update",
       .name = "rmsprop_update",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             return rmsprop_update(var, c.variable({3, 4}, 0, 0.1), c.input({3, 4}), c.scalar(0.01),
                                   0.99, 1e-8, 0.01);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "adadelta_update",
       .name = "adadelta_update",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             return adadelta_update(var, c.variable({3, 4}, 0, 0.1), c.variable({3, 4}, 0, 0.01),
                                    c.input({3, 4}), c.scalar(0.5), 0.8, 1e-3, 0.01);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  // The updates with one rule for both devices (ops/state/element_rules.h): non-default
  // attributes and a step count past the first, so every coefficient shows in GPU-vs-CPU.
  const AdamHyperparameters adam{.beta1 = 0.8, .beta2 = 0.95, .weight_decay = 0.01};
  add({.op = "adagrad_update",
       .name = "adagrad_update",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             return adagrad_update(var, c.variable({3, 4}, 0, 0.1), c.input({3, 4}), c.scalar(0.1),
                                   c.g.scalar(4, i64), 0.1, 1e-6, 0.01);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "rprop_update",
       .name = "rprop_update",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             return rprop_update(var, c.variable({3, 4}, -1, 1), c.variable({3, 4}, 0.01, 0.1),
                                 c.input({3, 4}), c.scalar(0.1), c.g.scalar(4, i64), 0.4, 1.3, 0.02,
                                 0.08);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "asgd_update",
       .name = "asgd_update_averaging",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             return asgd_update(var, c.variable({3, 4}), c.input({3, 4}), c.scalar(0.1),
                                c.g.scalar(5, i64), 0.1, 0.75, 2, 0.01);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "amsgrad_update",
       .name = "amsgrad_update_decoupled",
       .build =
           [adam](CaseGraph& c) {
             Value var = c.variable({3, 4});
             Value m = c.variable({3, 4}, -0.1, 0.1), v = c.variable({3, 4}, 0, 0.1);
             AdamHyperparameters decoupled = adam;
             decoupled.decoupled = true;
             return amsgrad_update(var, m, v, c.variable({3, 4}, 0, 0.1), c.input({3, 4}),
                                   c.scalar(0.01), c.g.scalar(3, i64), decoupled);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "adamax_update",
       .name = "adamax_update",
       .build =
           [adam](CaseGraph& c) {
             Value var = c.variable({3, 4});
             Value m = c.variable({3, 4}, -0.1, 0.1), u = c.variable({3, 4}, 0, 0.5);
             return adamax_update(var, m, u, c.input({3, 4}), c.scalar(0.01), c.g.scalar(3, i64),
                                  adam);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  // Step 9 with beta2 0.8: past the rectification threshold (rho_t > 5).
  add({.op = "radam_update",
       .name = "radam_update_rectified",
       .build =
           [adam](CaseGraph& c) {
             Value var = c.variable({3, 4});
             Value m = c.variable({3, 4}, -0.1, 0.1), v = c.variable({3, 4}, 0, 0.1);
             AdamHyperparameters rectified = adam;
             rectified.beta2 = 0.8;
             return radam_update(var, m, v, c.input({3, 4}), c.scalar(0.01), c.g.scalar(9, i64),
                                 rectified);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  // The running product mu_1 ... mu_t is an f64 scalar whatever the variable's dtype.
  add({.op = "nadam_update",
       .name = "nadam_update",
       .build =
           [adam](CaseGraph& c) {
             Value var = c.variable({3, 4});
             Value m = c.variable({3, 4}, -0.1, 0.1), v = c.variable({3, 4}, 0, 0.1);
             return nadam_update(var, m, v, c.input({3, 4}), c.scalar(0.01), c.g.scalar(3, i64),
                                 c.g.scalar(0.5, f64), adam, 0.05);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "rmsprop_momentum_update",
       .name = "rmsprop_momentum_update_centered",
       .build =
           [](CaseGraph& c) {
             Value var = c.variable({3, 4});
             // The mean gradient's square stays below the mean square: a real variance.
             Value sq = c.variable({3, 4}, 0.5, 1), grad_avg = c.variable({3, 4}, -0.1, 0.1);
             return rmsprop_momentum_update(var, sq, grad_avg, c.variable({3, 4}), c.input({3, 4}),
                                            c.scalar(0.01), c.g.scalar(2, i64), 0.9, 1e-8, 0.01,
                                            0.7, true);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
}

}  // namespace kiln::testing
