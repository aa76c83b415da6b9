// Static memory planning: every intermediate gets a byte range of one arena, chosen before the
// first run, so a step allocates no tensor memory after that run.
#include <algorithm>
#include <unordered_map>

#include "kiln/runtime/plan.h"

namespace kiln {

namespace {

constexpr int64_t kAlignment = 64;

int64_t aligned(int64_t bytes) {
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

// Whether `step`'s outputs may view its input 0 with the plan's concrete shapes.
bool step_may_alias(const Plan& plan, const PlanStep& step) {
  if (step.input_slots.empty()) return false;
  std::vector<TensorType> inputs{plan.slot_types[static_cast<size_t>(step.input_slots[0])]};
  return plan.graph->node(step.node).op().may_alias(inputs, step.output_types);
}

}  // namespace

void analyze_liveness(Plan& plan) {
  Liveness& live = plan.liveness;
  live.producer.assign(plan.num_slots, -1);
  live.users.assign(plan.num_slots, {});
  live.last_read.assign(plan.num_slots, -1);
  std::vector<int32_t> alias_of(plan.num_slots, -1);  // view slot -> the slot it may view
  for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s) {
    const PlanStep& step = plan.steps[s];
    const OpDef& op = plan.graph->node(step.node).op();
    for (int32_t slot : step.output_slots) live.producer[slot] = s;
    // Every output of a may-alias op (split's pieces) may view input 0; a state write's output
    // 0 is its variable.
    if (step_may_alias(plan, step))
      for (int32_t slot : step.output_slots) alias_of[slot] = step.input_slots[0];
    else if (op.writes_state() && !step.input_slots.empty())
      alias_of[step.output_slots[0]] = step.input_slots[0];
    for (int32_t slot : step.input_slots) {
      live.last_read[slot] = s;
      // A read of a view is a read of everything under it.
      for (int32_t at = slot; at >= 0; at = alias_of[at]) live.users[at].push_back(s);
    }
  }
}

void plan_memory(Plan& plan, bool in_place) {
  const HappensBefore order(plan);
  const Liveness& live = plan.liveness;
  plan.slot_offset.assign(plan.num_slots, -1);
  plan.in_place_of.assign(plan.num_slots, -1);
  plan.arena_bytes = plan.unshared_bytes = 0;
  std::vector<char> fetched(plan.num_slots, 0), aliased(plan.num_slots, 0);
  for (int32_t slot : plan.fetch_slots) fetched[slot] = 1;
  for (const PlanStep& step : plan.steps)
    if (step_may_alias(plan, step)) aliased[step.input_slots[0]] = 1;

  // Packing: the inputs of a concatenation along axis 0 (a gradient bucket, the gate gradients
  // of an unrolled recurrent layer) whose other readers are done before it are written straight
  // into their place in its output. For each such input, its base buffer (under any views) and
  // its byte offset in the output. A buffer goes into one output at most: the first
  // concatenation (in step order) that qualifies takes it.
  struct Packing {
    int32_t out = -1;
    int64_t offset = -1;  // the output's, once its first piece is planned
  };
  std::vector<Packing> packings;
  std::vector<int32_t> piece_of(plan.num_slots, -1), packing_of_out(plan.num_slots, -1);
  std::vector<int64_t> piece_offset(plan.num_slots, -1);
  plan.packed_into.assign(plan.num_slots, -1);
  if (in_place)
    for (int32_t c = 0; c < static_cast<int32_t>(plan.steps.size()); ++c) {
      const PlanStep& step = plan.steps[c];
      const Node& node = plan.graph->node(step.node);
      if (!node.op().concatenates() || step.output_slots.size() != 1) continue;
      const int32_t out = step.output_slots[0];
      const TensorType& type = plan.slot_types[out];
      int64_t axis = node.attr<int64_t>("axis");
      if (axis < 0) axis += type.shape.rank();
      if (axis != 0 || fetched[out]) continue;
      const int32_t index = static_cast<int32_t>(packings.size());
      bool any = false;
      int64_t offset = 0;
      for (int32_t in : step.input_slots) {
        const TensorType& t = plan.slot_types[in];
        const int64_t bytes = static_cast<int64_t>(t.shape.numel() * dtype_size(t.dtype));
        const int64_t at = offset;
        offset += bytes;
        // Under the views (reshapes) to the buffer a kernel writes.
        std::vector<int32_t> chain = {c};
        int32_t base = in;
        // A may-alias op is a view only where its input has the same bytes: sum_to, which
        // aliases when it reduces nothing, must not carry a larger input into the bucket.
        auto bytes_of = [&](int32_t s) {
          const TensorType& st = plan.slot_types[s];
          return static_cast<int64_t>(st.shape.numel() * dtype_size(st.dtype));
        };
        while (live.producer[base] >= 0) {
          const PlanStep& maker = plan.steps[live.producer[base]];
          if (!plan.graph->node(maker.node).op().may_alias() || maker.output_slots[0] != base ||
              bytes_of(maker.input_slots[0]) != bytes)
            break;
          chain.push_back(live.producer[base]);
          base = maker.input_slots[0];
        }
        if (bytes == 0 || at % kAlignment != 0 || live.producer[base] < 0 || fetched[base] ||
            piece_of[base] >= 0 || packing_of_out[base] >= 0)
          continue;
        const PlanStep& maker = plan.steps[live.producer[base]];
        const OpDef& op = plan.graph->node(maker.node).op();
        if (op.external_output() || op.may_alias()) continue;
        // Its other readers (the views aside) all finish before the concatenation: the packed
        // output, alive from the first piece until its own last use, then outlives them.
        bool read_before = true;
        for (int32_t u : live.users[base])
          read_before &=
              std::find(chain.begin(), chain.end(), u) != chain.end() || order.before(u, c);
        if (!read_before) continue;
        piece_of[base] = index;
        piece_offset[base] = at;
        any = true;
      }
      if (!any) continue;
      packing_of_out[out] = index;
      packings.push_back({out, -1});
    }

  // A buffer in use: its byte range and the slot whose lifetime ends its use.
  struct Block {
    int64_t offset, size;
    int32_t slot;
  };
  std::vector<Block> active;  // sorted by offset
  std::vector<int32_t> tails(plan.num_streams, -1);
  // True when every use of `slot` completes before step p starts.
  auto done_before = [&](int32_t slot, int32_t p) {
    const auto& users = live.users[slot];
    if (users.empty()) return order.before(live.producer[slot], p);
    for (int32_t u : users)
      if (u == p || !order.before(u, p)) return false;
    return true;
  };

  // Per packing, the steps that write its pieces into its buffer: the buffer is planned when
  // the first of them runs, but each writes its own part, possibly on another stream.
  std::vector<std::vector<int32_t>> piece_writers(packings.size());
  for (int32_t slot = 0; slot < plan.num_slots; ++slot)
    if (piece_of[slot] >= 0) piece_writers[piece_of[slot]].push_back(live.producer[slot]);

  // First fit among the bytes no unfinished buffer holds, at step p (and at every step in
  // `writers`, which write into the buffer later), for a buffer that lives as long as `slot`.
  auto allocate = [&](int64_t bytes, int32_t slot, int32_t p,
                      const std::vector<int32_t>& writers = {}) {
    const int64_t size = aligned(bytes);
    int64_t offset = 0;
    for (const Block& b : active) {
      if (done_before(b.slot, p) && std::all_of(writers.begin(), writers.end(), [&](int32_t w) {
            return w == p || done_before(b.slot, w);
          }))
        continue;
      if (offset + size <= b.offset) break;
      offset = std::max(offset, b.offset + b.size);
    }
    active.insert(std::upper_bound(active.begin(), active.end(), offset,
                                   [](int64_t v, const Block& b) { return v < b.offset; }),
                  Block{offset, size, slot});
    plan.arena_bytes = std::max(plan.arena_bytes, offset + size);
    return offset;
  };

  for (int32_t p = 0; p < static_cast<int32_t>(plan.steps.size()); ++p) {
    const PlanStep& step = plan.steps[p];
    tails[step.stream] = p;
    const Node& node = plan.graph->node(step.node);
    // Retire blocks that every stream's latest step has passed: free for good.
    std::erase_if(active, [&](const Block& b) {
      for (int32_t t : tails)
        if (t < 0 || (t != p && !done_before(b.slot, t)))
          return false;  // a stream yet to start
                         // knows of nothing
      return done_before(b.slot, p);
    });
    // Slots the arena does not hold: outputs that are someone else's storage (feeds and
    // fetches are skipped below).
    if (node.op().external_output()) continue;
    for (size_t o = 0; o < step.output_slots.size(); ++o) {
      const int32_t slot = step.output_slots[o];
      const TensorType& type = step.output_types[o];
      const int64_t bytes = static_cast<int64_t>(type.shape.numel() * dtype_size(type.dtype));
      if (fetched[slot] || bytes == 0) continue;
      // Each value is at most 2^48 bytes (Graph::add_node); their sum is kept from overflowing.
      KILN_CHECK(plan.unshared_bytes <= (int64_t{1} << 62) - aligned(bytes), Error,
                 "[memory] the plan's intermediates need more than 2^62 bytes");
      plan.unshared_bytes += aligned(bytes);
      // A piece of a packing: the packed output's buffer is planned with its first piece (it
      // lives until the concatenation's result dies), and each piece goes to its place in it.
      if (const int32_t k = piece_of[slot]; k >= 0) {
        Packing& packing = packings[k];
        if (packing.offset < 0) {
          const TensorType& t = plan.slot_types[packing.out];
          packing.offset = allocate(static_cast<int64_t>(t.shape.numel() * dtype_size(t.dtype)),
                                    packing.out, p, piece_writers[k]);
        }
        plan.slot_offset[slot] = packing.offset + piece_offset[slot];
        plan.packed_into[slot] = packing.out;
        continue;
      }
      if (const int32_t k = packing_of_out[slot]; k >= 0 && packings[k].offset >= 0) {
        plan.slot_offset[slot] = packings[k].offset;  // its buffer, planned with its pieces
        continue;
      }
      // In place: an elementwise op takes over an input buffer of the same size whose every
      // other use is already done (and that no view still needs); an op that may overwrite
      // its input 0 (an all-reduce) takes over that one.
      const bool elementwise = node.op().is_elementwise();
      if (in_place && (elementwise || node.op().may_overwrite_input()) &&
          step.output_slots.size() == 1 && !step.input_slots.empty()) {
        const size_t candidates = elementwise ? step.input_slots.size() : 1;
        for (size_t i = 0; i < candidates; ++i) {
          const int32_t in = step.input_slots[i];
          if (plan.slot_offset[in] < 0 || aliased[in] || fetched[in]) continue;
          const TensorType& it = plan.slot_types[in];
          if (static_cast<int64_t>(it.shape.numel() * dtype_size(it.dtype)) != bytes) continue;
          bool others_done = true;
          for (int32_t u : live.users[in]) others_done &= (u == p || order.before(u, p));
          if (!others_done) continue;
          plan.slot_offset[slot] = plan.slot_offset[in];
          plan.in_place_of[slot] = in;
          for (Block& b : active)
            if (b.slot == in) b.slot = slot;  // the block now lives as long as the output
          break;
        }
        if (plan.slot_offset[slot] >= 0) continue;
      }
      plan.slot_offset[slot] = allocate(bytes, slot, p);
    }
  }
}

void validate_memory_plan(const Plan& plan) {
  const HappensBefore order(plan);
  const Liveness& live = plan.liveness;
  struct Buffer {
    int32_t slot;
    int64_t begin, end;
  };
  std::vector<Buffer> buffers;
  for (int32_t slot = 0; slot < plan.num_slots; ++slot) {
    if (plan.slot_offset.empty() || plan.slot_offset[slot] < 0) continue;
    const TensorType& t = plan.slot_types[slot];
    int64_t bytes = static_cast<int64_t>(t.shape.numel() * dtype_size(t.dtype));
    KILN_CHECK(plan.slot_offset[slot] % kAlignment == 0 &&
                   plan.slot_offset[slot] + bytes <= plan.arena_bytes,
               Error, "[memory] slot ", slot, " at ", plan.slot_offset[slot], " (+", bytes,
               ") is misaligned or outside the arena of ", plan.arena_bytes, " bytes");
    buffers.push_back({slot, plan.slot_offset[slot], plan.slot_offset[slot] + bytes});
  }
  // a's uses all finish before b is produced; where b takes a's buffer over in place (through
  // a chain of in-place steps), b's own step may be one of a's users.
  auto finished_before = [&](int32_t a, int32_t b) {
    // A piece written in place inside a packed output: the concatenation reads it there.
    if (!plan.packed_into.empty() && plan.packed_into[a] == b) return true;
    const int32_t p = live.producer[b];
    bool chain = false;
    for (int32_t at = plan.in_place_of[b]; at >= 0; at = plan.in_place_of[at]) chain |= at == a;
    std::vector<int32_t> uses = live.users[a];
    if (uses.empty()) uses.push_back(live.producer[a]);
    for (int32_t u : uses)
      if (!(order.before(u, p) || (chain && u == p))) return false;
    return true;
  };
  std::sort(buffers.begin(), buffers.end(),
            [](const Buffer& x, const Buffer& y) { return x.begin < y.begin; });
  for (size_t i = 0; i < buffers.size(); ++i)
    for (size_t j = i + 1; j < buffers.size() && buffers[j].begin < buffers[i].end; ++j) {
      const int32_t a = buffers[i].slot, b = buffers[j].slot;
      if (finished_before(a, b) || finished_before(b, a)) continue;
      throw Error(str("[memory] slots ", a, " (",
                      plan.graph->node(plan.steps[live.producer[a]].node).name(), ") and ", b, " (",
                      plan.graph->node(plan.steps[live.producer[b]].node).name(),
                      ") share arena bytes while both may be in use"));
    }
}

}  // namespace kiln
