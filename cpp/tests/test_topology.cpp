// Unit tests for topology: domain indices, per-node gang capacity, NVLink island GPU choice and
// the engine's topology-aware gang placement. Same minimal harness as test_core.cpp: the last
// line printed is always "N passed, M failed".

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <set>
#include <span>
#include <vector>

#include "cplat/cluster.hpp"
#include "cplat/framework.hpp"
#include "cplat/topology.hpp"
#include "cplat/types.hpp"

namespace {

using namespace cplat;

int g_passed = 0;
int g_failed = 0;

#define CHECK(cond)                                                  \
  do {                                                               \
    if (cond) {                                                      \
      ++g_passed;                                                    \
    } else {                                                         \
      ++g_failed;                                                    \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                \
  } while (0)

// spines x racks_per_spine x nodes_per_rack nodes of 32 cores, 256 GiB, 8 GPUs; rack ids global.
std::vector<NodeSpec> fat_tree(int32_t spines, int32_t racks, int32_t nodes, int32_t gpus = 8) {
  std::vector<NodeSpec> out;
  for (int32_t s = 0; s < spines; ++s) {
    for (int32_t k = 0; k < racks; ++k) {
      for (int32_t n = 0; n < nodes; ++n) out.push_back({32000, 262144, gpus, 0, s * racks + k, s});
    }
  }
  return out;
}

Profile bestfit() {
  Profile p;
  p.scorers = {{ScorerKind::kBestFit, 1}};
  return p;
}

void test_index_and_span() {
  const auto specs = fat_tree(2, 3, 2);
  const ClusterState st(specs);
  const TopologyIndex idx = TopologyIndex::build(st);
  CHECK(idx.num_spines == 2);
  CHECK(idx.num_racks == 6);
  CHECK(idx.node_rack[0] == 0 && idx.node_rack[1] == 0 && idx.node_rack[2] == 1);
  CHECK(idx.rack_spine[2] == 0 && idx.rack_spine[3] == 1);
  const std::vector<int32_t> nodes{0, 1, 1, 2, 7};
  const GangSpan s = gang_span(idx, nodes);
  CHECK(s.spines == 2 && s.racks == 3 && s.nodes == 4);
  // Rack ids numbered per spine are still distinct racks.
  std::vector<NodeSpec> local = specs;
  for (auto& n : local) n.rack %= 3;
  const ClusterState st2(local);
  CHECK(TopologyIndex::build(st2).num_racks == 6);
}

void test_tasks_fit() {
  const std::vector<NodeSpec> specs{{32000, 1000, 8, 0, 0, 0}, {8000, 1000, 0, -1, 0, 0}};
  ClusterState st(specs);
  CHECK(tasks_fit(st, 0, Request{4000, 100, 2, 1000, 0}, 100) == 4);
  CHECK(tasks_fit(st, 0, Request{16000, 100, 1, 1000, 0}, 100) == 2);
  CHECK(tasks_fit(st, 0, Request{1000, 10, 1, 300, 0}, 100) == 8 * 3);
  CHECK(tasks_fit(st, 0, Request{1000, 100, 1, 300, 0}, 5) == 5);
  CHECK(tasks_fit(st, 1, Request{1000, 100, 1, 1000, 0}, 100) == 0);
  CHECK(tasks_fit(st, 1, Request{1000, 300, 0, 0, 0}, 100) == 3);
  st.set_flags(0, kNodeCordoned);
  CHECK(tasks_fit(st, 0, Request{4000, 100, 2, 1000, 0}, 100) == 0);
}

void test_island_pick() {
  const std::vector<NodeSpec> specs{{64000, 1000, 8, 0, 0, 0}};
  ClusterState st(specs);
  for (int32_t g = 0; g < 8; ++g) st.nvlink_array()[static_cast<size_t>(g)] = g / 4;
  // Take GPUs 0 and 5: island 0 keeps 3 free, island 1 keeps 3 free.
  const std::vector<int32_t> one{0};
  const std::vector<int32_t> five{5};
  CHECK(st.allocate(0, Request{0, 0, 1, 1000, 0}, one).ok());
  CHECK(st.allocate(0, Request{0, 0, 1, 1000, 0}, five).ok());
  std::vector<int32_t> out(4);
  CHECK(pick_gpus_island(st, 0, Request{0, 0, 3, 1000, 0}, out) == 3);
  CHECK(out[0] == 1 && out[1] == 2 && out[2] == 3);
  // No island holds 4: all devices share NUMA domain 0 (the default), so that domain does.
  CHECK(pick_gpus_island(st, 0, Request{0, 0, 4, 1000, 0}, out) == 4);
  for (int32_t g = 0; g < 8; ++g) st.numa_array()[static_cast<size_t>(g)] = g / 4;
  CHECK(pick_gpus_island(st, 0, Request{0, 0, 4, 1000, 0}, out) == -1);
  // Engine: a 2-GPU task on a node with islands {0:1 free, 1:3 free} after more allocations.
  const std::vector<int32_t> two{1, 2};
  CHECK(st.allocate(0, Request{0, 0, 2, 1000, 0}, two).ok());
  CHECK(pick_gpus_island(st, 0, Request{0, 0, 2, 1000, 0}, out) == 2);
  CHECK(out[0] == 4 && out[1] == 6);
}

void test_gang_prefers_one_rack_then_spine() {
  // 2 spines x 2 racks x 4 nodes x 8 GPUs. Pre-load rack 0 so it has 2 free 8-GPU slots.
  const auto specs = fat_tree(2, 2, 4);
  ClusterState st(specs);
  Engine e(st, bestfit(), TargetWorkload{}, 7);
  const Request full{8000, 1024, 8, 1000, 0};
  std::vector<int32_t> gpus8{0, 1, 2, 3, 4, 5, 6, 7};
  CHECK(st.allocate(0, full, gpus8).ok());
  CHECK(st.allocate(1, full, gpus8).ok());
  for (int32_t n = 0; n < 2; ++n) e.node_changed(n);
  std::vector<int32_t> nodes, gpus;
  // 3 tasks: rack 0 holds 2 only, so another rack with 4 free nodes takes all 3.
  CHECK(e.place_gang_topology(full, 3, SpanLimit::kRack, nodes, gpus).ok());
  CHECK(nodes.size() == 3);
  GangSpan s = gang_span(e.topology(), nodes);
  CHECK(s.racks == 1 && s.spines == 1);
  CHECK(gpus.size() == 24);
  // 2 tasks: best fit is rack 0 (exactly 2 free).
  std::vector<int32_t> nodes2;
  CHECK(e.place_gang_topology(full, 2, SpanLimit::kRack, nodes2, gpus).ok());
  CHECK(std::all_of(nodes2.begin(), nodes2.end(), [](int32_t n) { return n == 2 || n == 3; }));
  // Now free per rack: r0 0, r1 1, r2 4, r3 4. 8 tasks need a whole spine (spine 1).
  CHECK(e.place_gang_topology(full, 8, SpanLimit::kSpine, nodes, gpus).ok());
  s = gang_span(e.topology(), nodes);
  CHECK(s.spines == 1 && s.racks == 2);
  CHECK(std::all_of(nodes.begin(), nodes.end(), [](int32_t n) { return n >= 8; }));
  CHECK(st.check_invariants());
}

void test_gang_limits_and_rollback() {
  const auto specs = fat_tree(2, 2, 2);  // 8 nodes, 2 per rack, 4 per spine
  ClusterState st(specs);
  Engine e(st, bestfit(), TargetWorkload{}, 3);
  const Request full{8000, 1024, 8, 1000, 0};
  std::vector<int32_t> nodes, gpus;
  Status s = e.place_gang_topology(full, 3, SpanLimit::kRack, nodes, gpus);
  CHECK(s.code == Code::kTopologyLimit);
  CHECK(nodes.empty() && st.allocated_gpu_milli() == 0);
  s = e.place_gang_topology(full, 5, SpanLimit::kSpine, nodes, gpus);
  CHECK(s.code == Code::kTopologyLimit);
  s = e.place_gang_topology(full, 9, SpanLimit::kNone, nodes, gpus);
  CHECK(!s.ok() && s.code != Code::kTopologyLimit);
  CHECK(st.allocated_gpu_milli() == 0);
  s = e.place_gang_topology(full, 5, SpanLimit::kNone, nodes, gpus);
  CHECK(s.ok());
  const GangSpan sp = gang_span(e.topology(), nodes);
  CHECK(sp.spines == 2 && sp.racks == 3);
  CHECK(code_name(Code::kTopologyLimit) == "topology_limit");
  CHECK(static_cast<int>(Code::kTopologyLimit) < kNumCodes);
  // place_gang_on: all or nothing.
  std::vector<int32_t> on{0, 0};  // node 0 is taken by the 5-gang or not; try a full node twice
  const size_t before = static_cast<size_t>(st.allocated_gpu_milli());
  s = e.place_gang_on(full, on, gpus);
  CHECK(!s.ok());
  CHECK(static_cast<size_t>(st.allocated_gpu_milli()) == before);
  CHECK(st.check_invariants());
}

void test_topology_blind_unchanged() {
  // The topology-blind gang keeps its behaviour: it only follows scores and ranks.
  const auto specs = fat_tree(2, 2, 2);
  ClusterState a(specs), b(specs);
  Engine ea(a, bestfit(), TargetWorkload{}, 11), eb(b, bestfit(), TargetWorkload{}, 11);
  const Request half{4000, 1024, 4, 1000, 0};
  std::vector<int32_t> na, nb, ga, gb;
  CHECK(ea.place_gang(half, 5, na, ga).ok());
  CHECK(eb.place_gang(half, 5, nb, gb).ok());
  CHECK(na == nb && ga == gb);
}

}  // namespace

int main() {
  test_index_and_span();
  test_tasks_fit();
  test_island_pick();
  test_gang_prefers_one_rack_then_spine();
  test_gang_limits_and_rollback();
  test_topology_blind_unchanged();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
