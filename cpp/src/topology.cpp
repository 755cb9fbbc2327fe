#include "cplat/topology.hpp"

#include <algorithm>
#include <utility>

#include "cplat/check.hpp"
#include "cplat/plugin.hpp"

namespace cplat {

std::string_view span_limit_name(SpanLimit limit) {
  switch (limit) {
    case SpanLimit::kNone: return "none";
    case SpanLimit::kRack: return "rack";
    case SpanLimit::kSpine: return "spine";
  }
  return "none";
}

std::optional<SpanLimit> span_limit_from_name(std::string_view name) {
  for (int i = 0; i < kNumSpanLimits; ++i) {
    const auto limit = static_cast<SpanLimit>(i);
    if (span_limit_name(limit) == name) return limit;
  }
  return std::nullopt;
}

TopologyIndex TopologyIndex::build(const ClusterState& state) {
  TopologyIndex idx;
  const auto n = static_cast<size_t>(state.num_nodes());
  const std::vector<int32_t>& rack = state.rack_array();
  const std::vector<int32_t>& spine = state.spine_array();
  // Order nodes by (spine, rack, node): equal keys are one rack; a spine's racks are adjacent.
  std::vector<int32_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const auto ua = static_cast<size_t>(a);
    const auto ub = static_cast<size_t>(b);
    if (spine[ua] != spine[ub]) return spine[ua] < spine[ub];
    if (rack[ua] != rack[ub]) return rack[ua] < rack[ub];
    return a < b;
  });
  idx.node_rack.assign(n, 0);
  idx.rack_nodes = order;
  idx.rack_node_begin.clear();
  idx.spine_rack_begin.clear();
  for (size_t i = 0; i < n; ++i) {
    const auto node = static_cast<size_t>(order[i]);
    const bool new_spine = i == 0 || spine[node] != spine[static_cast<size_t>(order[i - 1])];
    const bool new_rack = new_spine || rack[node] != rack[static_cast<size_t>(order[i - 1])];
    if (new_spine) {
      idx.spine_rack_begin.push_back(idx.num_racks);
      ++idx.num_spines;
    }
    if (new_rack) {
      idx.rack_node_begin.push_back(static_cast<int32_t>(i));
      idx.rack_spine.push_back(idx.num_spines - 1);
      idx.spine_racks.push_back(idx.num_racks);
      ++idx.num_racks;
    }
    idx.node_rack[node] = idx.num_racks - 1;
  }
  idx.rack_node_begin.push_back(static_cast<int32_t>(n));
  idx.spine_rack_begin.push_back(idx.num_racks);
  return idx;
}

int32_t tasks_fit(const ClusterState& state, int32_t n, const Request& r, int32_t cap) {
  if (cap <= 0 || !r.valid() || !filter_node(state, n, r).ok()) return 0;
  int64_t k = cap;
  if (r.cpu_milli > 0) k = std::min(k, state.cpu_free(n) / r.cpu_milli);
  if (r.memory_mib > 0) k = std::min(k, state.memory_free(n) / r.memory_mib);
  if (r.wants_gpu()) {
    if (r.is_share()) {
      int64_t shares = 0;
      for (const int32_t f : state.gpu_free_of(n)) shares += f / r.gpu_milli;
      k = std::min(k, shares);
    } else {
      k = std::min<int64_t>(k, state.gpu_whole_free(n) / r.num_gpu);
    }
  }
  return static_cast<int32_t>(std::max<int64_t>(k, 0));
}

GangSpan gang_span(const TopologyIndex& index, std::span<const int32_t> nodes) {
  const auto num_nodes = static_cast<int64_t>(index.node_rack.size());
  for (const int32_t v : nodes) checked_index(v, num_nodes, "node");
  std::vector<int32_t> n(nodes.begin(), nodes.end());
  std::sort(n.begin(), n.end());
  n.erase(std::unique(n.begin(), n.end()), n.end());
  std::vector<int32_t> racks;
  racks.reserve(n.size());
  for (const int32_t v : n) racks.push_back(index.node_rack[static_cast<size_t>(v)]);
  std::sort(racks.begin(), racks.end());
  racks.erase(std::unique(racks.begin(), racks.end()), racks.end());
  std::vector<int32_t> spines;
  spines.reserve(racks.size());
  for (const int32_t k : racks) spines.push_back(index.rack_spine[static_cast<size_t>(k)]);
  std::sort(spines.begin(), spines.end());
  spines.erase(std::unique(spines.begin(), spines.end()), spines.end());
  return {static_cast<int32_t>(spines.size()), static_cast<int32_t>(racks.size()),
          static_cast<int32_t>(n.size())};
}

namespace {

// Whole free devices of one domain (the fullest-fitting domain: fewest free devices that
// still hold the task, lowest id on ties); -1 when no single domain holds the task.
int32_t pick_in_domain(std::span<const int32_t> free, const int32_t* domain, const Request& r,
                       std::span<int32_t> out) {
  std::vector<std::pair<int32_t, int32_t>> counts;  // (domain, free whole devices)
  for (size_t g = 0; g < free.size(); ++g) {
    if (free[g] != kMilliGpu) continue;
    auto it = std::find_if(counts.begin(), counts.end(),
                           [&](const auto& c) { return c.first == domain[g]; });
    if (it == counts.end()) {
      counts.emplace_back(domain[g], 1);
    } else {
      ++it->second;
    }
  }
  int32_t best = -1;
  int32_t best_free = 0;
  for (const auto& [id, cnt] : counts) {
    if (cnt < r.num_gpu) continue;
    if (best < 0 || cnt < best_free || (cnt == best_free && id < best)) {
      best = id;
      best_free = cnt;
    }
  }
  if (best < 0) return -1;
  int32_t got = 0;
  for (size_t g = 0; g < free.size() && got < r.num_gpu; ++g) {
    if (free[g] == kMilliGpu && domain[g] == best) out[static_cast<size_t>(got++)] = static_cast<int32_t>(g);
  }
  return got;
}

}  // namespace

int32_t pick_gpus_island(const ClusterState& state, int32_t n, const Request& r,
                         std::span<int32_t> out) {
  if (!r.wants_gpu() || r.is_share() || r.num_gpu < 2) return -1;
  if (out.size() < static_cast<size_t>(r.num_gpu)) return -1;
  const std::span<const int32_t> free = state.gpu_free_of(n);
  // One NVLink island if possible; else one NUMA domain, so the task's CPUs can be pinned to
  // the domain its GPUs hang off.
  const int32_t got =
      pick_in_domain(free, state.nvlink_array().data() + state.gpu_begin(n), r, out);
  if (got >= 0) return got;
  return pick_in_domain(free, state.numa_array().data() + state.gpu_begin(n), r, out);
}

}  // namespace cplat
