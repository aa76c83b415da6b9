// The learning-rate schedules (torch.optim.lr_scheduler's), each a function of the step built
// from graph ops, and reduce-on-plateau's state fed by observe_metric.
#include <cmath>
#include <functional>

#include "kiln/autograd/optim.h"
#include "kiln/autograd/optim_state.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/state.h"

namespace kiln::optim {

Schedule Schedule::step_decay(int64_t step_size, double gamma) {
  Schedule s;
  s.kind = Kind::step_decay;
  s.step_size = step_size;
  s.gamma = gamma;
  return s;
}

Schedule Schedule::cosine(int64_t total_steps, double min_lr) {
  Schedule s;
  s.kind = Kind::cosine;
  s.total_steps = total_steps;
  s.min_lr = min_lr;
  return s;
}

Schedule Schedule::swa(double swa_lr, int64_t anneal_steps, bool anneal_linear) {
  Schedule s;
  s.kind = Kind::swa;
  s.swa_lr = swa_lr;
  s.total_steps = anneal_steps;
  s.anneal_linear = anneal_linear;
  return s;
}

Schedule Schedule::multi_step(std::vector<int64_t> milestones, double gamma) {
  Schedule s;
  s.kind = Kind::multi_step;
  s.milestones = std::move(milestones);
  s.gamma = gamma;
  return s;
}

Schedule Schedule::exponential(double gamma) {
  Schedule s;
  s.kind = Kind::exponential;
  s.gamma = gamma;
  return s;
}

Schedule Schedule::linear(double start_factor, double end_factor, int64_t total_steps) {
  Schedule s;
  s.kind = Kind::linear;
  s.start_factor = start_factor;
  s.end_factor = end_factor;
  s.total_steps = total_steps;
  return s;
}

Schedule Schedule::polynomial(int64_t total_steps, double power) {
  Schedule s;
  s.kind = Kind::polynomial;
  s.total_steps = total_steps;
  s.power = power;
  return s;
}

Schedule Schedule::one_cycle(int64_t total_steps, double pct_start, double div_factor,
                             double final_div_factor) {
  Schedule s;
  s.kind = Kind::one_cycle;
  s.total_steps = total_steps;
  s.pct_start = pct_start;
  s.div_factor = div_factor;
  s.final_div_factor = final_div_factor;
  s.cycle_momentum = true;
  return s;
}

Schedule Schedule::cyclic(double min_lr, int64_t step_size_up, int64_t step_size_down,
                          CyclicMode mode, double gamma) {
  Schedule s;
  s.kind = Kind::cyclic;
  s.min_lr = min_lr;
  s.cycle_up = step_size_up;
  s.cycle_down = step_size_down == 0 ? step_size_up : step_size_down;
  s.cyclic_mode = mode;
  s.gamma = gamma;
  s.cycle_momentum = true;
  s.base_momentum = 0.8;
  s.max_momentum = 0.9;
  return s;
}

Schedule Schedule::reduce_on_plateau(double factor, int64_t patience, double threshold,
                                     double min_lr) {
  Schedule s;
  s.kind = Kind::reduce_on_plateau;
  s.gamma = factor;
  s.patience = patience;
  s.threshold = threshold;
  s.min_lr = min_lr;
  return s;
}

Schedule Schedule::sequential(std::vector<Schedule> phases, std::vector<int64_t> milestones) {
  Schedule s;
  s.kind = Kind::sequential;
  s.phases = std::move(phases);
  s.milestones = std::move(milestones);
  return s;
}

Schedule Schedule::constant_factor(double factor, int64_t total_steps) {
  Schedule s;
  s.kind = Kind::constant_factor;
  s.gamma = factor;
  s.total_steps = total_steps;
  return s;
}

Schedule Schedule::chained(std::vector<Schedule> schedules) {
  Schedule s;
  s.kind = Kind::chained;
  s.phases = std::move(schedules);
  return s;
}

Schedule Schedule::cosine_restarts(int64_t first_period, int64_t period_mult, double min_lr) {
  Schedule s;
  s.kind = Kind::cosine_restarts;
  s.total_steps = first_period;
  s.period_mult = period_mult;
  s.min_lr = min_lr;
  return s;
}

Schedule Schedule::custom(std::function<Value(const Value&)> factor) {
  Schedule s;
  s.kind = Kind::custom;
  s.factor = std::move(factor);
  return s;
}

Schedule Schedule::with_warmup(int64_t steps) const {
  Schedule s = *this;
  s.warmup_steps = steps;
  return s;
}

namespace {
// The state of the graph's reduce_on_plateau schedule (made on first use).
struct PlateauState {
  Value best, num_bad, cooldown_left, reductions;
};
PlateauState plateau_state(Graph& graph, const Schedule& schedule) {
  KILN_CHECK(schedule.kind == Schedule::Kind::reduce_on_plateau, GraphError,
             "[optim] observe_metric needs a reduce_on_plateau schedule");
  KILN_CHECK(schedule.gamma > 0 && schedule.gamma < 1 && schedule.patience >= 0 &&
                 schedule.cooldown >= 0 && schedule.threshold >= 0,
             GraphError,
             "[optim] reduce_on_plateau needs 0 < factor < 1 and patience, cooldown, threshold "
             ">= 0; got factor ",
             schedule.gamma, ", patience ", schedule.patience, ", cooldown ", schedule.cooldown,
             ", threshold ", schedule.threshold);
  auto state = [&](const char* name, DType dtype, double initial) {
    const std::string full = std::string("lr_plateau/") + name;
    return graph.find_node(full) ? graph.value(full)
                                 : state_variable(graph, full, dtype, Shape{}, initial);
  };
  const double worst = schedule.maximize ? -INFINITY : INFINITY;
  return {state("best", f64, worst), state("num_bad", i64, 0), state("cooldown_left", i64, 0),
          state("reductions", i64, 0)};
}
}  // namespace
Value observe_metric(Graph& graph, const Value& metric, const Schedule& schedule) {
  KILN_CHECK(metric.defined() && metric.graph() == &graph && metric.shape().is_known() &&
                 metric.shape().numel() == 1,
             GraphError, "[optim] observe_metric needs a one-element metric of the graph, got ",
             metric.defined() ? str(metric.shape()) : std::string("none"));
  const PlateauState state = plateau_state(graph, schedule);
  NameScope scope(graph, "lr_plateau");
  Value m = reshape(cast(metric, f64), Shape{});
  const double t = schedule.threshold;
  Value better = schedule.maximize ? (schedule.threshold_relative ? greater(m, state.best * (1 + t))
                                                                  : greater(m, state.best + t))
                                   : (schedule.threshold_relative ? less(m, state.best * (1 - t))
                                                                  : less(m, state.best - t));
  Value zero = graph.scalar(0, i64), one = graph.scalar(1, i64);
  // ReduceLROnPlateau.step's order: the best and the bad count, then the cool-down (which
  // clears the count), then the reduction.
  Value bad = where(better, zero, state.num_bad + one);
  Value cooling = greater(state.cooldown_left, zero);
  Value cooldown_left = where(cooling, state.cooldown_left - one, state.cooldown_left);
  bad = where(cooling, zero, bad);
  Value reduce = greater(bad, graph.scalar(static_cast<double>(schedule.patience), i64));
  return group(graph,
               {assign(state.best, where(better, m, state.best)),
                assign(state.num_bad, where(reduce, zero, bad)),
                assign(state.cooldown_left,
                       where(reduce, graph.scalar(static_cast<double>(schedule.cooldown), i64),
                             cooldown_left)),
                assign_add(state.reductions, cast(reduce, i64))});
}

namespace {
// The step counted from `start` (0 before it: that phase's value is then not used).
Value phase_step(const Value& step, int64_t start) {
  Graph& graph = *step.graph();
  return maximum(step - graph.scalar(static_cast<double>(start), i64), graph.scalar(0, i64));
}

// The cosine interpolation from `from` (at progress 0) to `to` (at progress 1) of PyTorch's
// schedulers: to + (from - to) (1 + cos(pi progress)) / 2.
Value cosine_between(double from, double to, const Value& progress) {
  return to + (cos(progress * M_PI) + 1.0) * (0.5 * (from - to));
}

// OneCycleLR's phases at position t (a scalar of the result's dtype), each from the end of the
// one before (step 0 for the first): from `low` to `peak` by step pct_start T - 1; with
// three_phase back to `low` by 2 pct_start T - 2; then to `last` at T - 1, where it stays.
Value one_cycle_anneal(const Schedule& schedule, const Value& t, double low, double peak,
                       double last) {
  const double total = static_cast<double>(schedule.total_steps);
  struct Phase {
    double end, from, to;
  };
  std::vector<Phase> phases{{schedule.pct_start * total - 1, low, peak}};
  if (schedule.three_phase) phases.push_back({2 * schedule.pct_start * total - 2, peak, low});
  phases.push_back({total - 1, phases.back().to, last});
  for (size_t i = 0; i < phases.size(); ++i) {
    const double start = i == 0 ? 0 : phases[i - 1].end;
    KILN_CHECK(phases[i].end > start, GraphError, "[optim] one_cycle",
               schedule.three_phase ? " (three phases)" : "",
               " needs its phases to end at ascending steps from 0 to total_steps - 1; "
               "with total_steps ",
               schedule.total_steps, " and pct_start ", schedule.pct_start, " phase ", i + 1,
               " would run from step ", start, " to ", phases[i].end);
  }
  Value clamped = minimum(t, total - 1);
  auto anneal = [&](size_t i) {
    const double begin = i == 0 ? 0 : phases[i - 1].end;
    Value progress = (clamped - begin) / (phases[i].end - begin);
    return schedule.anneal_linear ? phases[i].from + progress * (phases[i].to - phases[i].from)
                                  : cosine_between(phases[i].from, phases[i].to, progress);
  };
  // From the last phase back: each earlier one takes over up to its end.
  Value value = anneal(phases.size() - 1);
  for (size_t i = phases.size() - 1; i-- > 0;)
    value = where(less_equal(clamped, phases[i].end), anneal(i), value);
  return value;
}

// CyclicLR's shape at step `step` in `dtype`: 0 at a cycle's start, 1 at its peak (after
// cycle_up steps), back to 0 after cycle_down more, scaled by the mode (triangular2: halved each
// cycle; exp_range: gamma^t). x is the position within the cycle, in [0, 1).
Value cyclic_shape(Graph& graph, const Schedule& schedule, const Value& step, DType dtype) {
  KILN_CHECK(schedule.cycle_up > 0 && schedule.cycle_down > 0, GraphError,
             "[optim] cyclic needs step sizes > 0, got up ", schedule.cycle_up, " and down ",
             schedule.cycle_down);
  const int64_t size = schedule.cycle_up + schedule.cycle_down;
  const double ratio = static_cast<double>(schedule.cycle_up) / static_cast<double>(size);
  Value cycles = step / graph.scalar(static_cast<double>(size), i64);  // floor: t >= 0
  Value x = cast(step - cycles * graph.scalar(static_cast<double>(size), i64), dtype) /
            static_cast<double>(size);
  Value shape = where(less_equal(x, ratio), x / ratio, (x - 1.0) / (ratio - 1.0));
  switch (schedule.cyclic_mode) {
    case Schedule::CyclicMode::triangular:
      return shape;
    case Schedule::CyclicMode::triangular2:
      return shape * pow(graph.scalar(0.5, dtype), cast(cycles, dtype));
    case Schedule::CyclicMode::exp_range:
      return shape * pow(graph.scalar(schedule.gamma, dtype), cast(step, dtype));
  }
  return shape;
}

// Why `schedule` cannot be a factor of a chained one (torch's ChainedScheduler multiplies the
// rate by each scheduler's step in turn: the result is a product only where every scheduler
// multiplies the rate it finds), or null where it can.
const char* not_chainable(const Schedule& schedule) {
  using Kind = Schedule::Kind;
  switch (schedule.kind) {
    case Kind::constant:
    case Kind::constant_factor:
    case Kind::step_decay:
    case Kind::multi_step:
    case Kind::exponential:
    case Kind::linear:
    case Kind::polynomial:
    case Kind::chained:
      return nullptr;
    case Kind::cosine:
      return schedule.min_lr == 0 ? nullptr
                                  : "(cosine to a min_lr above 0) moves the rate toward min_lr";
    case Kind::one_cycle:
      return "(one_cycle) sets the rate outright";
    case Kind::cyclic:
      return "(cyclic) sets the rate outright";
    case Kind::cosine_restarts:
      return "(cosine_restarts) sets the rate outright";
    case Kind::reduce_on_plateau:
      return "(reduce_on_plateau) is stepped by observe_metric, not by the step";
    case Kind::sequential:
      return "(sequential) sets the rate outright at its milestones";
    case Kind::custom:
      return "(custom, LambdaLR) sets the rate outright";
    case Kind::swa:
      return "(swa, SWALR) moves the rate toward swa_lr";
  }
  return "is unknown";
}
}  // namespace

Value scheduled_momentum(Graph& graph, const Schedule& schedule, const Value& step) {
  if (!schedule.cycles_momentum()) return {};
  const double base = schedule.base_momentum, max = schedule.max_momentum;
  KILN_CHECK(base >= 0 && base <= max && max < 1, GraphError,
             "[optim] cycling momentum needs 0 <= base_momentum <= max_momentum < 1; got ", base,
             " and ", max);
  if (schedule.kind == Schedule::Kind::one_cycle)
    return one_cycle_anneal(schedule, cast(step, f64), max, base, max);
  return max - cyclic_shape(graph, schedule, step, f64) * (max - base);
}

Value learning_rate(Graph& graph, double base_lr, const Schedule& schedule, const Value& step,
                    DType dtype, const Value& start_rate) {
  KILN_CHECK(base_lr > 0, GraphError, "[optim] learning rate must be > 0, got ", base_lr);
  Value t = cast(step, dtype);
  Value lr = graph.scalar(base_lr, dtype);
  const double total = static_cast<double>(schedule.total_steps);
  auto need_total = [&](const char* kind) {
    KILN_CHECK(schedule.total_steps > 0, GraphError, "[optim] the ", kind,
               " schedule needs total_steps > 0, got ", schedule.total_steps);
  };
  switch (schedule.kind) {
    case Schedule::Kind::constant:
      break;
    case Schedule::Kind::step_decay: {
      KILN_CHECK(schedule.step_size > 0, GraphError, "[optim] step_decay needs step_size > 0");
      Value decays = cast(step / static_cast<double>(schedule.step_size), dtype);  // floor: t >= 0
      lr = lr * pow(graph.scalar(schedule.gamma, dtype), decays);
      break;
    }
    case Schedule::Kind::multi_step: {
      KILN_CHECK(!schedule.milestones.empty(), GraphError, "[optim] multi_step needs milestones");
      std::vector<Value> passed;
      for (size_t i = 0; i < schedule.milestones.size(); ++i) {
        const int64_t m = schedule.milestones[i];
        KILN_CHECK(m > 0 && (i == 0 || m > schedule.milestones[i - 1]), GraphError,
                   "[optim] multi_step milestones must be positive and ascending; milestone ", i,
                   " is ", m);
        passed.push_back(cast(greater_equal(t, static_cast<double>(m)), dtype));
      }
      lr = lr * pow(graph.scalar(schedule.gamma, dtype), add_n(passed));
      break;
    }
    case Schedule::Kind::exponential:
      lr = lr * pow(graph.scalar(schedule.gamma, dtype), t);
      break;
    case Schedule::Kind::linear: {
      need_total("linear");
      Value progress = minimum(t, total) / total;
      lr = lr * (schedule.start_factor + progress * (schedule.end_factor - schedule.start_factor));
      break;
    }
    case Schedule::Kind::polynomial: {
      need_total("polynomial");
      lr = lr * pow(1.0 - minimum(t, total) / total, schedule.power);
      break;
    }
    case Schedule::Kind::cosine: {
      need_total("cosine");
      lr = cosine_between(base_lr, schedule.min_lr, minimum(t, total) / total);
      break;
    }
    case Schedule::Kind::reduce_on_plateau: {
      KILN_CHECK(schedule.plateau_eps >= 0, GraphError,
                 "[optim] reduce_on_plateau needs plateau_eps >= 0, got ", schedule.plateau_eps);
      // torch applies a reduction only where it moves the rate by more than eps. The rate only
      // falls, so the first reduction skipped is the last one tried: the rate stops after
      // `applied` reductions, found here from this group's base rate.
      int64_t applied = 0;
      for (double rate = base_lr; applied < 100000; ++applied) {
        const double next = std::max(rate * schedule.gamma, schedule.min_lr);
        if (!(rate - next > schedule.plateau_eps)) break;
        rate = next;
      }
      Value reductions = minimum(cast(plateau_state(graph, schedule).reductions, dtype),
                                 static_cast<double>(applied));
      lr = maximum(lr * pow(graph.scalar(schedule.gamma, dtype), reductions),
                   graph.scalar(schedule.min_lr, dtype));
      break;
    }
    case Schedule::Kind::sequential: {
      const auto& phases = schedule.phases;
      const auto& milestones = schedule.milestones;
      KILN_CHECK(!phases.empty() && milestones.size() + 1 == phases.size(), GraphError,
                 "[optim] a sequential schedule needs one milestone fewer than its phases; got ",
                 phases.size(), " phases and ", milestones.size(), " milestones");
      for (size_t i = 0; i < milestones.size(); ++i)
        KILN_CHECK(milestones[i] > 0 && (i == 0 || milestones[i] > milestones[i - 1]), GraphError,
                   "[optim] sequential milestones must be positive and ascending; milestone ", i,
                   " is ", milestones[i]);
      auto begin = [&](size_t j) { return j == 0 ? int64_t{0} : milestones[j - 1]; };
      // The rate an swa phase anneals from: the phase before it at the milestone (which, an
      // swa phase itself, starts from the one before it); undefined for the others.
      std::function<Value(size_t)> start_of = [&](size_t j) -> Value {
        if (phases[j].kind != Schedule::Kind::swa) return {};
        if (j == 0) return start_rate;
        const Value at_end = graph.scalar(static_cast<double>(begin(j) - begin(j - 1)), i64);
        return learning_rate(graph, base_lr, phases[j - 1], at_end, dtype, start_of(j - 1));
      };
      // From the last phase back: each earlier phase takes over below its end milestone.
      const size_t last = phases.size() - 1;
      lr = learning_rate(graph, base_lr, phases[last],
                         last == 0 ? step : phase_step(step, begin(last)), dtype, start_of(last));
      for (size_t i = last; i-- > 0;) {
        Value earlier =
            learning_rate(graph, base_lr, phases[i], i == 0 ? step : phase_step(step, begin(i)),
                          dtype, start_of(i));
        lr = where(less(step, graph.scalar(static_cast<double>(milestones[i]), i64)), earlier, lr);
      }
      break;
    }
    case Schedule::Kind::constant_factor: {
      KILN_CHECK(schedule.gamma > 0 && schedule.gamma <= 1 && schedule.total_steps >= 0, GraphError,
                 "[optim] constant_factor needs 0 < factor <= 1 and total_steps >= 0; ",
                 "got factor ", schedule.gamma, " and total_steps ", schedule.total_steps);
      lr = where(less(step, graph.scalar(total, i64)), lr * schedule.gamma, lr);
      break;
    }
    case Schedule::Kind::chained: {
      KILN_CHECK(!schedule.phases.empty(), GraphError, "[optim] chained needs schedules");
      // The rate times each schedule's factor (its rate from a base of 1).
      for (size_t i = 0; i < schedule.phases.size(); ++i) {
        const char* refused = not_chainable(schedule.phases[i]);
        KILN_CHECK(refused == nullptr, GraphError, "[optim] chained: schedule ", i, " ", refused,
                   "; only schedules that multiply the rate chain");
        lr = lr * learning_rate(graph, 1.0, schedule.phases[i], step, dtype);
      }
      break;
    }
    case Schedule::Kind::cosine_restarts: {
      need_total("cosine_restarts");
      KILN_CHECK(schedule.period_mult >= 1, GraphError,
                 "[optim] cosine_restarts needs period_mult >= 1, got ", schedule.period_mult);
      // In f64 whatever the rate's dtype: the cycle's start must be exact. With period_mult m
      // cycle i starts at T (m^i - 1) / (m - 1); i from a logarithm, then corrected by one
      // where rounding put it a cycle off.
      Value t64 = cast(step, f64);
      const double first = total, mult = static_cast<double>(schedule.period_mult);
      Value start, period;
      if (schedule.period_mult == 1) {
        start = cast(cast(t64 / first, i64), f64) * first;
        period = graph.scalar(first, f64);
      } else {
        auto start_of = [&](const Value& i) { return (pow(mult, i) - 1.0) * (first / (mult - 1)); };
        Value i = cast(cast(log(t64 * ((mult - 1) / first) + 1.0) / std::log(mult), i64), f64);
        i = where(less(t64, start_of(i)), i - 1.0, i);
        i = where(greater_equal(t64, start_of(i + 1.0)), i + 1.0, i);
        start = start_of(i);
        period = pow(mult, i) * first;
      }
      lr = cast(cosine_between(base_lr, schedule.min_lr, (t64 - start) / period), dtype);
      break;
    }
    case Schedule::Kind::swa: {
      KILN_CHECK(schedule.swa_lr > 0 && schedule.total_steps >= 0, GraphError,
                 "[optim] swa needs swa_lr > 0 and anneal_steps >= 0; got swa_lr ", schedule.swa_lr,
                 " and anneal_steps ", schedule.total_steps);
      // a: 0 at the phase's start, 1 from T on (at once for T = 0, as SWALR's).
      Value a = schedule.total_steps == 0 ? graph.scalar(1, dtype) : minimum(t, total) / total;
      if (!schedule.anneal_linear) a = (1.0 - cos(a * M_PI)) * 0.5;
      const Value from = start_rate.defined() ? start_rate : lr;
      lr = a * schedule.swa_lr + from * (1.0 - a);
      break;
    }
    case Schedule::Kind::custom: {
      KILN_CHECK(schedule.factor, GraphError, "[optim] a custom schedule needs a factor function");
      Value factor = schedule.factor(t);
      KILN_CHECK(factor.defined() && factor.graph() == &graph && factor.dtype() == dtype &&
                     factor.shape().rank() == 0,
                 GraphError, "[optim] a custom schedule's factor must be a ", dtype,
                 " scalar of the graph, got ",
                 factor.defined() ? str(factor.dtype(), factor.shape()) : std::string("none"));
      lr = lr * factor;
      break;
    }
    case Schedule::Kind::one_cycle: {
      KILN_CHECK(schedule.div_factor > 0 && schedule.final_div_factor > 0, GraphError,
                 "[optim] one_cycle needs div_factor and final_div_factor > 0");
      const double initial = base_lr / schedule.div_factor;
      lr = one_cycle_anneal(schedule, t, initial, base_lr, initial / schedule.final_div_factor);
      break;
    }
    case Schedule::Kind::cyclic: {
      KILN_CHECK(schedule.min_lr >= 0 && schedule.min_lr < base_lr, GraphError,
                 "[optim] cyclic needs 0 <= min_lr < the learning rate; min_lr is ",
                 schedule.min_lr, ", the rate ", base_lr);
      lr = schedule.min_lr +
           cyclic_shape(graph, schedule, step, dtype) * (base_lr - schedule.min_lr);
      break;
    }
  }
  if (schedule.warmup_steps > 0) {
    Value ramp = (t + 1.0) / static_cast<double>(schedule.warmup_steps);
    lr = lr * minimum(ramp, graph.scalar(1, dtype));
  }
  return lr;
}

}  // namespace kiln::optim
