// Topology: nodes grouped into racks and spines, GPUs grouped into NVLink islands per node.
//
// ClusterState stores a rack and a spine id per node and an NVLink island id per GPU. This
// module turns them into dense domain indices (a rack is the pair (spine, rack), so rack ids may
// be global or numbered per spine), counts how many copies of a task shape each node can hold,
// and measures how many domains a gang spans. The gang placement itself lives in the engine
// (Engine::place_gang_topology), which uses these helpers.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "cplat/cluster.hpp"
#include "cplat/types.hpp"

namespace cplat {

// Hard limit on the domains a gang may span.
enum class SpanLimit : uint8_t {
  kNone,   // any number of spines and racks (still minimised)
  kRack,   // the whole gang inside one rack
  kSpine,  // the whole gang inside one spine
};
inline constexpr int kNumSpanLimits = 3;

[[nodiscard]] std::string_view span_limit_name(SpanLimit limit);
[[nodiscard]] std::optional<SpanLimit> span_limit_from_name(std::string_view name);

// Dense rack and spine indices of a cluster (racks and spines never change after construction).
struct TopologyIndex {
  std::vector<int32_t> node_rack;    // node -> dense rack index
  std::vector<int32_t> rack_spine;   // dense rack -> dense spine index
  std::vector<int32_t> spine_rack_begin;  // CSR: racks of spine s are spine_racks[b[s]..b[s+1])
  std::vector<int32_t> spine_racks;
  std::vector<int32_t> rack_node_begin;   // CSR: nodes of rack k are rack_nodes[b[k]..b[k+1])
  std::vector<int32_t> rack_nodes;
  int32_t num_racks = 0;
  int32_t num_spines = 0;

  [[nodiscard]] static TopologyIndex build(const ClusterState& state);
  [[nodiscard]] bool matches(const ClusterState& state) const {
    return static_cast<int32_t>(node_rack.size()) == state.num_nodes();
  }
};

// How many copies of `r` node n can hold right now (0 when it fails a filter or `r` is not
// valid()), at most `cap`. Unchecked node id: callers loop over the cluster's nodes.
[[nodiscard]] int32_t tasks_fit(const ClusterState& state, int32_t n, const Request& r, int32_t cap);

// Domains spanned by a set of nodes (repeats allowed; std::out_of_range for a node the index
// does not have).
struct GangSpan {
  int32_t spines = 0;
  int32_t racks = 0;
  int32_t nodes = 0;
};
[[nodiscard]] GangSpan gang_span(const TopologyIndex& index, std::span<const int32_t> nodes);

// Whole-device requests of two or more GPUs: write the devices of the NVLink island that holds
// the request most tightly (fewest free devices that still suffice, then the lowest island id;
// lowest device indices inside it) and return r.num_gpu; failing that, the same within one
// NUMA domain; -1 when no single island or domain has room.
int32_t pick_gpus_island(const ClusterState& state, int32_t n, const Request& r,
                         std::span<int32_t> out);

}  // namespace cplat
