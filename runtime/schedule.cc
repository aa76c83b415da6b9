// Stream assignment and the happens-before relation it induces.
#include <algorithm>
#include <limits>
#include <queue>
#include <tuple>
#include <unordered_map>

#include "kiln/runtime/plan.h"

namespace kiln {

namespace {

// For each step, the steps that must complete first: producers of its inputs, and for an op
// that writes a variable, every other reader of that variable.
std::vector<std::vector<int32_t>> predecessors(const Plan& plan) {
  std::unordered_map<int32_t, int32_t> producer;  // slot -> step
  std::unordered_map<int32_t, std::vector<int32_t>> readers;
  for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s) {
    for (int32_t slot : plan.steps[s].output_slots) producer[slot] = s;
    for (int32_t slot : plan.steps[s].input_slots) readers[slot].push_back(s);
  }
  std::vector<std::vector<int32_t>> preds(plan.steps.size());
  for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s) {
    const PlanStep& step = plan.steps[s];
    for (int32_t slot : step.input_slots)
      if (auto it = producer.find(slot); it != producer.end()) preds[s].push_back(it->second);
    for (int index : plan.graph->node(step.node).op().mutated_inputs())
      for (int32_t reader : readers[step.input_slots[index]])
        if (reader < s) preds[s].push_back(reader);
    std::sort(preds[s].begin(), preds[s].end());
    preds[s].erase(std::unique(preds[s].begin(), preds[s].end()), preds[s].end());
  }
  return preds;
}

// With collectives in the plan, reorders the steps (keeping a topological order) so that
// communication overlaps compute: among the steps ready to run, first those that feed the
// earliest collective (a gradient bucket's last gradient and its packing), then the rest, and
// last those that wait for a collective (the updates that read an averaged gradient). Each
// lane runs its steps in this order, so a compute lane reaches a step that needs a collective's
// result only when nothing else is left to do. Collectives keep their relative order, which is
// the same on every rank. Returns false (and changes nothing) without collectives.
bool order_for_communication(Plan& plan) {
  const int32_t n = static_cast<int32_t>(plan.steps.size());
  auto communicates = [&](int32_t s) {
    return plan.graph->node(plan.steps[s].node).op().is_communication();
  };
  constexpr int32_t none = std::numeric_limits<int32_t>::max();
  std::vector<int32_t> feeds(n, none);  // the first collective a step leads to
  int32_t collectives = 0;
  for (int32_t s = 0; s < n; ++s)
    if (communicates(s)) feeds[s] = collectives++;
  if (collectives == 0) return false;
  const auto preds = predecessors(plan);
  std::vector<char> after(n, 0);  // depends on some collective
  for (int32_t s = 0; s < n; ++s)
    for (int32_t p : preds[s]) after[s] |= after[p] || communicates(p);
  for (int32_t s = n - 1; s >= 0; --s)
    for (int32_t p : preds[s]) feeds[p] = std::min(feeds[p], feeds[s]);
  std::vector<std::vector<int32_t>> successors(n);
  std::vector<int32_t> pending(n, 0);
  for (int32_t s = 0; s < n; ++s) {
    pending[s] = static_cast<int32_t>(preds[s].size());
    for (int32_t p : preds[s]) successors[p].push_back(s);
  }
  using Key = std::tuple<char, int32_t, int32_t>;  // (waits for one, first fed, index)
  std::priority_queue<Key, std::vector<Key>, std::greater<Key>> ready;
  for (int32_t s = 0; s < n; ++s)
    if (pending[s] == 0) ready.emplace(after[s], feeds[s], s);
  std::vector<int32_t> order;
  while (!ready.empty()) {
    const int32_t s = std::get<2>(ready.top());
    ready.pop();
    order.push_back(s);
    for (int32_t next : successors[s])
      if (--pending[next] == 0) ready.emplace(after[next], feeds[next], next);
  }
  KILN_CHECK(static_cast<int32_t>(order.size()) == n, Error,
             "[schedule] internal error: the plan's steps have a cycle");
  std::vector<PlanStep> steps;
  steps.reserve(n);
  for (int32_t s : order) steps.push_back(std::move(plan.steps[s]));
  plan.steps = std::move(steps);
  return true;
}

}  // namespace

void schedule_streams(Plan& plan, int max_streams) {
  max_streams = std::max(1, max_streams);
  order_for_communication(plan);
  const auto preds = predecessors(plan);
  std::vector<int32_t> tail;  // last step of each compute stream
  bool any_communication = false;
  for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s) {
    PlanStep& step = plan.steps[s];
    if (plan.graph->node(step.node).op().is_communication()) {
      step.stream = -1;  // the communication stream, numbered once compute streams are known
      any_communication = true;
      continue;
    }
    int32_t stream = -1;
    // Continue the chain of a predecessor that is still the end of its compute stream.
    for (int32_t p : preds[s])
      if (plan.steps[p].stream >= 0 && tail[plan.steps[p].stream] == p) {
        stream = plan.steps[p].stream;
        break;
      }
    if (stream < 0) {
      if (step.input_slots.empty() && !tail.empty()) {
        stream = 0;  // sources (constants, variables) are cheap: keep them on stream 0
      } else if (static_cast<int>(tail.size()) < max_streams) {
        stream = static_cast<int32_t>(tail.size());
        tail.push_back(-1);
      } else {
        // The stream that has waited longest.
        stream = static_cast<int32_t>(std::min_element(tail.begin(), tail.end()) - tail.begin());
      }
    }
    step.stream = stream;
    tail[stream] = s;
  }
  const int32_t compute_streams = std::max<int32_t>(1, static_cast<int32_t>(tail.size()));
  plan.stream_kinds.assign(compute_streams, StreamKind::compute);
  if (any_communication) plan.stream_kinds.push_back(StreamKind::communication);
  plan.num_streams = static_cast<int32_t>(plan.stream_kinds.size());
  for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s) {
    PlanStep& step = plan.steps[s];
    if (step.stream < 0) step.stream = compute_streams;  // the communication stream
    step.waits.clear();
    for (int32_t p : preds[s])
      if (plan.steps[p].stream != step.stream) step.waits.push_back(p);
  }
}

LaneMap map_streams_to_lanes(const Plan& plan, int compute_lanes) {
  compute_lanes = std::max(1, compute_lanes);
  // Lanes 0..compute_lanes-1 compute, then one communication lane, then one copy lane: the same
  // numbering for every plan of an executor, so a lane keeps its kind.
  LaneMap map;
  map.lane_kinds.assign(compute_lanes, StreamKind::compute);
  int32_t compute_seen = 0;
  for (StreamKind kind : plan.stream_kinds) {
    int32_t lane = 0;
    switch (kind) {
      case StreamKind::compute:
        lane = compute_seen++ % compute_lanes;  // more streams than lanes: in turn
        break;
      case StreamKind::communication:
        lane = compute_lanes;
        break;
      case StreamKind::copy:
        lane = compute_lanes + 1;
        break;
    }
    if (lane >= static_cast<int32_t>(map.lane_kinds.size())) {
      map.lane_kinds.resize(lane + 1, StreamKind::communication);
      map.lane_kinds[lane] = kind;
    }
    map.lane_of_stream.push_back(lane);
  }
  return map;
}

HappensBefore::HappensBefore(const Plan& plan) {
  const int32_t n = static_cast<int32_t>(plan.steps.size());
  const int32_t streams = plan.num_streams;
  stream_.resize(n);
  position_.resize(n);
  clock_.assign(n, std::vector<int32_t>(streams, -1));
  std::vector<int32_t> last(streams, -1), count(streams, 0);
  for (int32_t s = 0; s < n; ++s) {
    const PlanStep& step = plan.steps[s];
    stream_[s] = step.stream;
    position_[s] = count[step.stream]++;
    std::vector<int32_t>& clock = clock_[s];
    if (last[step.stream] >= 0) {  // everything the previous step on this stream knew, and it
      clock = clock_[last[step.stream]];
      clock[step.stream] = position_[last[step.stream]];
    }
    for (int32_t w : step.waits) {  // everything each awaited step knew, and it
      for (int32_t k = 0; k < streams; ++k) clock[k] = std::max(clock[k], clock_[w][k]);
      clock[stream_[w]] = std::max(clock[stream_[w]], position_[w]);
    }
    last[step.stream] = s;
  }
}

bool HappensBefore::before(int32_t u, int32_t p) const {
  return u != p && clock_[p][stream_[u]] >= position_[u];
}

}  // namespace kiln
