#include "cplat/framework.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "cplat/check.hpp"

namespace cplat {

Status RejectionCounts::dominant() const {
  size_t best = 0;
  for (size_t c = 1; c < by_code.size(); ++c) {
    if (by_code[c] > by_code[best]) best = c;  // by_code[kOk] stays 0
  }
  switch (static_cast<Code>(best)) {
    case Code::kNodeUnavailable: return {Code::kNodeUnavailable, "NodeState"};
    case Code::kGpuModelMismatch: return {Code::kGpuModelMismatch, "GpuModel"};
    case Code::kInsufficientCpu: return {Code::kInsufficientCpu, "NodeResourcesFit"};
    case Code::kInsufficientMemory: return {Code::kInsufficientMemory, "NodeResourcesFit"};
    case Code::kInsufficientGpu: return {Code::kInsufficientGpu, "GpuShare"};
    default: return {Code::kNoFeasibleNode, "Filter"};
  }
}

Engine::Engine(ClusterState& state, Profile profile, TargetWorkload workload, uint64_t seed)
    : state_(&state), profile_(std::move(profile)), frag_(state, std::move(workload)), rng_(seed) {
  for (const WeightedScorer& s : profile_.scorers) uses_fgd_ = uses_fgd_ || s.kind == ScorerKind::kFgd;
  int64_t weight_sum = 0;
  for (const WeightedScorer& s : profile_.scorers) {
    // Scores are "higher is better"; the single-scorer fast path relies on it. The bound on
    // the sum keeps weighted totals (|raw score| < 2^44 within the node bounds) inside int64.
    if (s.weight <= 0 || s.weight > kMaxWeightSum - weight_sum) {
      throw std::invalid_argument("scorer weights must be positive and sum to at most " +
                                  std::to_string(kMaxWeightSum) + ", got " +
                                  std::to_string(s.weight) + " for " +
                                  std::string(scorer_name(s.kind)));
    }
    weight_sum += s.weight;
    if ((s.kind == ScorerKind::kPython) != (s.external != nullptr)) {
      throw std::invalid_argument(s.kind == ScorerKind::kPython
                                      ? "a python scorer needs a function"
                                      : "only a python scorer takes a function, not " +
                                            std::string(scorer_name(s.kind)));
    }
  }
  if ((uses_fgd_ || profile_.gpu_pick == GpuPick::kFgd) && frag_.workload().empty()) {
    throw std::invalid_argument("the fgd scorer and GPU pick need a non-empty target workload");
  }
  // One cache block per distinct scorer of the profile (python scorers: per function).
  const std::vector<WeightedScorer>& sc = profile_.scorers;
  cache_row_.assign(sc.size(), -1);
  int32_t rows = 0;
  for (size_t i = 0; i < sc.size(); ++i) {
    if (sc[i].kind == ScorerKind::kRandom) continue;
    for (size_t j = 0; j < i && cache_row_[i] < 0; ++j) {
      if (sc[j].kind == sc[i].kind && sc[j].external == sc[i].external) cache_row_[i] = cache_row_[j];
    }
    if (cache_row_[i] < 0) cache_row_[i] = rows++;
  }
  cache_blocks_ = rows;
  // Bound the cache's memory on very large clusters (fewer shapes cached, same answers).
  const size_t per_slot = static_cast<size_t>(std::max(rows, 1)) *
                          static_cast<size_t>(std::max(state.num_nodes(), 1)) * sizeof(CacheEntry);
  shape_slots_ = static_cast<int32_t>(
      std::clamp<size_t>(kCacheBudgetBytes / per_slot, kMinShapeSlots, kShapeSlots));
  score_cache_.assign(static_cast<size_t>(rows) * static_cast<size_t>(shape_slots_) *
                          static_cast<size_t>(state.num_nodes()),
                      CacheEntry{});
  // Fisher-Yates over node ids: a per-seed random node order for rank tie-breaking.
  rank_.resize(static_cast<size_t>(state.num_nodes()));
  for (size_t i = 0; i < rank_.size(); ++i) rank_[i] = static_cast<uint32_t>(i);
  for (size_t i = rank_.size(); i > 1; --i) std::swap(rank_[i - 1], rank_[rng_.below(i)]);
  feasible_.reserve(static_cast<size_t>(state.num_nodes()));
  total_.reserve(static_cast<size_t>(state.num_nodes()));
  part_.reserve(static_cast<size_t>(state.num_nodes()));
}

int32_t Engine::shape_slot(const Request& r) {
  const ShapeKey key{r.cpu_milli, r.num_gpu, r.gpu_milli, r.models};
  ++tick_;
  auto it = shapes_.find(key);
  if (it != shapes_.end()) {
    slot_used_[static_cast<size_t>(it->second)] = tick_;
    return it->second;
  }
  int32_t slot = static_cast<int32_t>(shapes_.size());
  if (slot >= shape_slots_) {
    // Full: recycle the least recently used shape's slot and forget its cached scores.
    slot = static_cast<int32_t>(
        std::min_element(slot_used_.begin(), slot_used_.begin() + shape_slots_) - slot_used_.begin());
    shapes_.erase(slot_key_[static_cast<size_t>(slot)]);
    const auto n = static_cast<size_t>(state_->num_nodes());
    for (int32_t b = 0; b < cache_blocks_; ++b) {
      CacheEntry* row = score_cache_.data() +
                        (static_cast<size_t>(b) * static_cast<size_t>(shape_slots_) + static_cast<size_t>(slot)) * n;
      std::fill(row, row + n, CacheEntry{});
    }
  }
  slot_key_[static_cast<size_t>(slot)] = key;
  slot_used_[static_cast<size_t>(slot)] = tick_;
  shapes_.emplace(key, slot);
  return slot;
}

size_t Engine::filter_feasible(const Request& r) {
  // Same rules as filter_node for valid requests (place() checks validity first), written over
  // the raw columns so the loop has no branches: every node is written to feasible_ and the
  // write position advances only when it fits.
  const ClusterState& st = *state_;
  const auto num_nodes = static_cast<size_t>(st.num_nodes());
  feasible_.resize(num_nodes);
  const uint8_t* flags = st.flags_array().data();
  const int64_t* cpu = st.cpu_free_array().data();
  const int64_t* mem = st.memory_free_array().data();
  const int32_t* model = st.gpu_model_array().data();
  const int32_t* begin = st.gpu_begin_array().data();
  const int32_t* max_free = st.max_free_array().data();
  const int32_t* whole = st.whole_free_array().data();
  int32_t* out = feasible_.data();
  size_t m = 0;
  const bool gpu = r.wants_gpu();
  const bool share = r.is_share();
  const uint64_t models = r.models;
  const int32_t need = share ? r.gpu_milli : r.num_gpu;
  const int32_t* gpu_have = share ? max_free : whole;
  for (size_t n = 0; n < num_nodes; ++n) {
    bool ok = (flags[n] == 0) & (cpu[n] >= r.cpu_milli) & (mem[n] >= r.memory_mib);
    if (gpu) {
      const int32_t md = model[n];
      const bool model_ok =
          (models == 0) | ((md >= 0) & (((models >> (static_cast<uint32_t>(md) & 63U)) & 1U) != 0));
      ok &= (begin[n + 1] > begin[n]) & model_ok & (gpu_have[n] >= need);
    }
    out[m] = static_cast<int32_t>(n);
    m += ok ? 1 : 0;
  }
  feasible_.resize(m);
  return m;
}

void Engine::fill_scores(size_t entry, const Request& r) {
  // Scores depend only on the node's state and the request's shape, and one task changes one
  // node: cache them per (scorer, shape, node) and recompute a node only when its version moved.
  const size_t m = feasible_.size();
  const int32_t* f = feasible_.data();
  int64_t* out = part_.data();
  const ClusterState& st = *state_;
  const WeightedScorer& ws = profile_.scorers[entry];
  if (ws.kind == ScorerKind::kRandom) {
    std::fill(part_.begin(), part_.end(), kMinScore);
    return;
  }
  const int32_t slot = shape_slot(r);
  const int32_t krow = cache_row_[entry];
  if (slot < 0 || krow < 0) {
    for (size_t i = 0; i < m; ++i) out[i] = compute_score(ws, f[i], r).score;
    return;
  }
  CacheEntry* row = score_cache_.data() +
                    (static_cast<size_t>(krow) * static_cast<size_t>(shape_slots_) + static_cast<size_t>(slot)) *
                        static_cast<size_t>(st.num_nodes());
  const uint32_t* version = st.version_array().data();
  for (size_t i = 0; i < m; ++i) {
    CacheEntry& e = row[f[i]];
    if (e.version != version[f[i]]) {
      const FgdChoice c = compute_score(ws, f[i], r);
      e = {version[f[i]], static_cast<int32_t>(c.score), c.gpu};
    }
    out[i] = e.score;
  }
}

FgdChoice Engine::compute_score(const WeightedScorer& s, int32_t n, const Request& r) {
  switch (s.kind) {
    case ScorerKind::kDotProd: return {score_dotprod(*state_, n, r), -1};
    case ScorerKind::kGpuClustering: return {score_gpu_clustering(*state_, n, r), -1};
    case ScorerKind::kGpuPacking: return {score_gpu_packing(*state_, n, r), -1};
    case ScorerKind::kBestFit: return {score_bestfit(*state_, n, r), -1};
    case ScorerKind::kWorstFit: return {score_worstfit(*state_, n, r), -1};
    case ScorerKind::kFgd: return score_fgd(*state_, frag_, n, r);
    case ScorerKind::kPython: return {score_external(s.external, *state_, n, r), -1};
    case ScorerKind::kRandom: break;
  }
  return {kMinScore, -1};
}

namespace {
// Inspection takes shapes place() refuses, but amounts out of bounds would overflow the
// scorers' arithmetic (or the FGD memo's packed keys).
void check_in_bounds(const Request& r) {
  if (!r.in_bounds()) {
    throw std::invalid_argument(
        "request amounts must be within [0, 2^36] milli-CPU and MiB, [0, 65536] devices and "
        "[0, 1000] milli-GPU per device");
  }
}

void check_per_node(size_t got, int32_t nodes, const char* what) {
  if (got != static_cast<size_t>(nodes)) {
    throw std::invalid_argument(std::string(what) + " needs one entry per node (" +
                                std::to_string(nodes) + "), got " + std::to_string(got));
  }
}
}  // namespace

void Engine::filter_all(const Request& r, std::span<uint8_t> codes) const {
  check_per_node(codes.size(), state_->num_nodes(), "filter_all");
  check_in_bounds(r);
  for (int32_t n = 0; n < state_->num_nodes(); ++n) {
    codes[static_cast<size_t>(n)] = static_cast<uint8_t>(filter_node(*state_, n, r).code);
  }
}

void Engine::score_all(const Request& r, ScorerKind kind, std::span<int64_t> out) {
  check_per_node(out.size(), state_->num_nodes(), "score_all");
  check_in_bounds(r);
  WeightedScorer ws{kind, 1};
  if (kind == ScorerKind::kPython) {
    const auto it = std::find_if(profile_.scorers.begin(), profile_.scorers.end(),
                                 [](const WeightedScorer& s) { return s.kind == ScorerKind::kPython; });
    if (it == profile_.scorers.end()) {
      throw std::invalid_argument("score_all: the profile has no python scorer");
    }
    ws = *it;
  }
  for (int32_t n = 0; n < state_->num_nodes(); ++n) {
    out[static_cast<size_t>(n)] =
        filter_node(*state_, n, r).ok() ? compute_score(ws, n, r).score : -1;
  }
}

Status Engine::place(const Request& r, int32_t& node, std::vector<int32_t>& gpus) {
  node = -1;
  gpus.clear();
  last_rejections_ = {};
  if (!r.valid()) return {Code::kInvalidArgument, "Engine"};
  // Filter (fast path: branch-free feasibility; reasons are only counted when nothing fits).
  const size_t m = filter_feasible(r);
  if (m == 0) return count_rejections(r);

  // Score: weighted sum of (normalised) plugin scores.
  part_.resize(m);
  const int64_t* totals = nullptr;
  if (profile_.scorers.size() == 1 && profile_.scorers[0].kind != ScorerKind::kRandom) {
    // One scorer: rank on its raw scores. Min-max normalisation is strictly increasing when
    // the raw range is at most 100, so it changes neither the best node nor the ties; it is
    // applied only when it could merge scores.
    fill_scores(0, r);
    if (normalizes(profile_.scorers[0])) {
      const auto [lo, hi] = std::minmax_element(part_.begin(), part_.end());
      if (*hi - *lo > kMaxScore - kMinScore) normalize_scores(part_);
    }
    totals = part_.data();
  } else {
    total_.assign(m, 0);
    for (size_t k = 0; k < profile_.scorers.size(); ++k) {
      const WeightedScorer& ws = profile_.scorers[k];
      if (ws.kind == ScorerKind::kRandom) {
        std::fill(part_.begin(), part_.end(), kMinScore);
        part_[rng_.below(m)] = kMaxScore;
      } else {
        fill_scores(k, r);
        if (normalizes(ws)) normalize_scores(part_);
      }
      for (size_t i = 0; i < m; ++i) total_[i] += ws.weight * part_[i];
    }
    totals = total_.data();
  }

  // Select: the best total; ties by the profile's rule.
  int64_t best = std::numeric_limits<int64_t>::min();
  size_t pick = 0;
  if (profile_.tie_break == TieBreak::kRank) {
    uint32_t best_rank = std::numeric_limits<uint32_t>::max();
    for (size_t i = 0; i < m; ++i) {
      const uint32_t rank = rank_[feasible_[i]];
      if (totals[i] > best || (totals[i] == best && rank < best_rank)) {
        best = totals[i];
        best_rank = rank;
        pick = i;
      }
    }
  } else {
    uint64_t ties = 0;
    for (size_t i = 0; i < m; ++i) {
      if (totals[i] > best) {
        best = totals[i];
        ties = 1;
      } else if (totals[i] == best) {
        ++ties;
      }
    }
    uint64_t k = ties > 1 ? rng_.below(ties) : 0;
    for (size_t i = 0; i < m; ++i) {
      if (totals[i] == best && k-- == 0) {
        pick = i;
        break;
      }
    }
  }
  const int32_t n = feasible_[pick];

  // Reserve: devices inside the node, then commit.
  gpus.resize(static_cast<size_t>(std::max(r.num_gpu, 0)));
  const int32_t got = pick_gpus(*state_, &frag_, n, r, profile_.gpu_pick, rng_, gpus);
  if (got < 0) return {Code::kInsufficientGpu, "GpuShare"};
  gpus.resize(static_cast<size_t>(got));
  const Status s = state_->allocate(n, r, gpus);
  if (!s.ok()) return s;
  frag_.update(*state_, n);
  node = n;
  return Status::Ok();
}

Status Engine::count_rejections(const Request& r) {
  last_rejections_ = {};
  for (int32_t n = 0; n < state_->num_nodes(); ++n) {
    ++last_rejections_.by_code[static_cast<size_t>(filter_node(*state_, n, r).code)];
  }
  return last_rejections_.dominant();
}

int64_t Engine::gang_score(int32_t n, const Request& r) {
  int64_t total = 0;
  for (const WeightedScorer& ws : profile_.scorers) {
    if (ws.kind != ScorerKind::kRandom) total += ws.weight * compute_score(ws, n, r).score;
  }
  return total;
}

namespace {

// Necessary condition for a gang: the cluster's free totals cover count copies of r. A blocked
// gang is usually rejected here in O(1), before any per-node filtering.
Status aggregate_fits(const ClusterState& st, const Request& r, int32_t count) {
  if (r.cpu_milli * count > st.cpu_free_total()) return {Code::kInsufficientCpu, "NodeResourcesFit"};
  if (r.memory_mib * count > st.memory_free_total()) {
    return {Code::kInsufficientMemory, "NodeResourcesFit"};
  }
  if (r.total_gpu_milli() * count > st.total_gpu_milli() - st.allocated_gpu_milli()) {
    return {Code::kInsufficientGpu, "GpuShare"};
  }
  return Status::Ok();
}

}  // namespace

Status Engine::place_gang(const Request& r, int32_t count, std::vector<int32_t>& nodes,
                          std::vector<int32_t>& gpus) {
  nodes.clear();
  gpus.clear();
  last_rejections_ = {};
  if (!r.valid() || count < 1 || count > kMaxTasks) return {Code::kInvalidArgument, "Engine"};
  if (count == 1) {
    int32_t node = -1;
    const Status s = place(r, node, gpus);
    if (s.ok()) nodes.push_back(node);
    return s;
  }
  const ClusterState& st = *state_;
  if (const Status s = aggregate_fits(st, r, count); !s.ok()) return s;
  const size_t m = filter_feasible(r);
  if (m == 0) return count_rejections(r);
  // Best node first: highest total, then lowest tie-break rank.
  struct Entry {
    int64_t score;
    uint32_t rank;
    int32_t node;
  };
  auto worse = [](const Entry& a, const Entry& b) {
    return a.score < b.score || (a.score == b.score && a.rank > b.rank);
  };
  std::vector<Entry> heap;
  heap.reserve(m);
  for (size_t i = 0; i < m; ++i) {
    const int32_t n = feasible_[i];
    heap.push_back({gang_score(n, r), rank_[static_cast<size_t>(n)], n});
  }
  std::make_heap(heap.begin(), heap.end(), worse);
  std::vector<int32_t> task_gpus(static_cast<size_t>(std::max(r.num_gpu, 0)));
  while (static_cast<int32_t>(nodes.size()) < count && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const int32_t n = heap.back().node;
    heap.pop_back();
    task_gpus.resize(static_cast<size_t>(std::max(r.num_gpu, 0)));
    const int32_t got = pick_gpus(*state_, &frag_, n, r, profile_.gpu_pick, rng_, task_gpus);
    if (got < 0) continue;
    task_gpus.resize(static_cast<size_t>(got));
    if (!state_->allocate(n, r, task_gpus).ok()) continue;
    frag_.update(*state_, n);
    nodes.push_back(n);
    gpus.insert(gpus.end(), task_gpus.begin(), task_gpus.end());
    if (filter_node(*state_, n, r).ok()) {
      heap.push_back({gang_score(n, r), rank_[static_cast<size_t>(n)], n});
      std::push_heap(heap.begin(), heap.end(), worse);
    }
  }
  if (static_cast<int32_t>(nodes.size()) == count) return Status::Ok();
  // Not enough room for the whole gang: give back what was taken.
  const auto per_task = static_cast<size_t>(r.wants_gpu() ? r.num_gpu : 0);
  for (size_t i = nodes.size(); i-- > 0;) {
    const std::span<const int32_t> g(gpus.data() + i * per_task, per_task);
    const Status s = state_->release(nodes[i], r, g);
    CPLAT_ASSERT(s.ok());
    (void)s;
    frag_.update(*state_, nodes[i]);
  }
  nodes.clear();
  gpus.clear();
  const Status why = count_rejections(r);
  return why.code == Code::kNoFeasibleNode ? Status{Code::kGangIncomplete, "Gang"} : why;
}

const TopologyIndex& Engine::topology() {
  if (!topo_.matches(*state_)) topo_ = TopologyIndex::build(*state_);
  return topo_;
}

bool Engine::pick_gang_gpus(int32_t n, const Request& r, std::vector<int32_t>& task_gpus) {
  task_gpus.resize(static_cast<size_t>(std::max(r.num_gpu, 0)));
  int32_t got = pick_gpus_island(*state_, n, r, task_gpus);
  if (got < 0) got = pick_gpus(*state_, &frag_, n, r, profile_.gpu_pick, rng_, task_gpus);
  if (got < 0) return false;
  task_gpus.resize(static_cast<size_t>(got));
  return true;
}

void Engine::rollback_gang(const Request& r, std::vector<int32_t>& nodes, std::vector<int32_t>& gpus) {
  const auto per_task = static_cast<size_t>(r.wants_gpu() ? r.num_gpu : 0);
  for (size_t i = nodes.size(); i-- > 0;) {
    const std::span<const int32_t> g(gpus.data() + i * per_task, per_task);
    const Status s = state_->release(nodes[i], r, g);
    CPLAT_ASSERT(s.ok());
    (void)s;
    frag_.update(*state_, nodes[i]);
  }
  nodes.clear();
  gpus.clear();
}

namespace {

// The fewest domains (by capacity, largest first) whose capacity reaches `need`, with the last
// one swapped for the smallest domain that still completes it (best fit). Ties by index.
// `chosen` gets the domains; returns their total capacity (less than `need` when impossible).
int64_t pick_domains(std::span<const int32_t> candidates, const std::vector<int64_t>& cap,
                     int64_t need, std::vector<int32_t>& chosen) {
  std::vector<int32_t> order;
  order.reserve(candidates.size());
  for (const int32_t d : candidates) {
    if (cap[static_cast<size_t>(d)] > 0) order.push_back(d);
  }
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const int64_t ca = cap[static_cast<size_t>(a)];
    const int64_t cb = cap[static_cast<size_t>(b)];
    return ca > cb || (ca == cb && a < b);
  });
  chosen.clear();
  int64_t sum = 0;
  size_t k = 0;
  while (k < order.size() && sum < need) sum += cap[static_cast<size_t>(order[k++])];
  if (sum < need) {
    chosen.assign(order.begin(), order.end());
    return sum;
  }
  // order[0..k) suffice; the last one may be replaced by a smaller domain further down.
  const int64_t before = sum - cap[static_cast<size_t>(order[k - 1])];
  size_t last = k - 1;
  for (size_t j = k; j < order.size(); ++j) {
    if (before + cap[static_cast<size_t>(order[j])] >= need) last = j;  // sorted: smaller later
  }
  chosen.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k - 1));
  chosen.push_back(order[last]);
  return before + cap[static_cast<size_t>(order[last])];
}

}  // namespace

Status Engine::place_gang_topology(const Request& r, int32_t count, SpanLimit limit,
                                   std::vector<int32_t>& nodes, std::vector<int32_t>& gpus) {
  nodes.clear();
  gpus.clear();
  last_rejections_ = {};
  if (!r.valid() || count < 1 || count > kMaxTasks) return {Code::kInvalidArgument, "Engine"};
  const ClusterState& st = *state_;
  if (const Status s = aggregate_fits(st, r, count); !s.ok()) return s;
  const size_t m = filter_feasible(r);
  if (m == 0) return count_rejections(r);
  const TopologyIndex& topo = topology();

  // Capacity for this shape per feasible node, rack and spine.
  std::vector<int64_t> rack_cap(static_cast<size_t>(topo.num_racks), 0);
  std::vector<int64_t> spine_cap(static_cast<size_t>(topo.num_spines), 0);
  std::vector<int32_t> node_cap(static_cast<size_t>(st.num_nodes()), 0);
  int64_t total = 0;
  for (size_t i = 0; i < m; ++i) {
    const int32_t n = feasible_[i];
    const int32_t c = tasks_fit(st, n, r, count);
    node_cap[static_cast<size_t>(n)] = c;
    const auto k = static_cast<size_t>(topo.node_rack[static_cast<size_t>(n)]);
    rack_cap[k] += c;
    spine_cap[static_cast<size_t>(topo.rack_spine[k])] += c;
    total += c;
  }
  if (total < count) {
    const Status why = count_rejections(r);
    return why.code == Code::kNoFeasibleNode ? Status{Code::kGangIncomplete, "Gang"} : why;
  }

  // Domain choice: fewest spines, then fewest racks, then best fit by capacity.
  std::vector<int32_t> racks;
  std::vector<int32_t> scratch;
  bool found = false;
  int64_t best_sum = 0;
  for (int32_t s = 0; s < topo.num_spines; ++s) {
    if (spine_cap[static_cast<size_t>(s)] < count) continue;
    const std::span<const int32_t> cand(
        topo.spine_racks.data() + topo.spine_rack_begin[static_cast<size_t>(s)],
        static_cast<size_t>(topo.spine_rack_begin[static_cast<size_t>(s) + 1] -
                            topo.spine_rack_begin[static_cast<size_t>(s)]));
    const int64_t sum = pick_domains(cand, rack_cap, count, scratch);
    if (!found || scratch.size() < racks.size() || (scratch.size() == racks.size() && sum < best_sum)) {
      racks.swap(scratch);
      best_sum = sum;
      found = true;
    }
  }
  if (!found) {
    if (limit != SpanLimit::kNone) return {Code::kTopologyLimit, "Topology"};
    std::vector<int32_t> all_spines(static_cast<size_t>(topo.num_spines));
    for (int32_t s = 0; s < topo.num_spines; ++s) all_spines[static_cast<size_t>(s)] = s;
    std::vector<int32_t> spines;
    pick_domains(all_spines, spine_cap, count, spines);
    // The fewest spines are the largest ones plus one that completes them; choose that last
    // spine for the fewest racks (then the tightest fit) rather than by its capacity alone.
    auto add_racks = [&](int32_t s, std::vector<int32_t>& out) {
      for (int32_t j = topo.spine_rack_begin[static_cast<size_t>(s)];
           j < topo.spine_rack_begin[static_cast<size_t>(s) + 1]; ++j) {
        out.push_back(topo.spine_racks[static_cast<size_t>(j)]);
      }
    };
    std::vector<int32_t> base;
    int64_t before = 0;
    for (size_t i = 0; i + 1 < spines.size(); ++i) {
      add_racks(spines[i], base);
      before += spine_cap[static_cast<size_t>(spines[i])];
    }
    std::vector<int32_t> cand;
    for (int32_t s = 0; s < topo.num_spines; ++s) {
      if (before + spine_cap[static_cast<size_t>(s)] < count) continue;
      if (std::find(spines.begin(), spines.end() - 1, s) != spines.end() - 1) continue;
      cand = base;
      add_racks(s, cand);
      const int64_t sum = pick_domains(cand, rack_cap, count, scratch);
      if (racks.empty() || scratch.size() < racks.size() ||
          (scratch.size() == racks.size() && sum < best_sum)) {
        racks.swap(scratch);
        best_sum = sum;
      }
    }
  }
  if (limit == SpanLimit::kRack && racks.size() > 1) return {Code::kTopologyLimit, "Topology"};

  // Fill the chosen racks' nodes best score first, re-scoring a node after each task it takes.
  struct Entry {
    int64_t score;
    uint32_t rank;
    int32_t node;
  };
  auto worse = [](const Entry& a, const Entry& b) {
    return a.score < b.score || (a.score == b.score && a.rank > b.rank);
  };
  std::vector<Entry> heap;
  for (const int32_t k : racks) {
    for (int32_t j = topo.rack_node_begin[static_cast<size_t>(k)];
         j < topo.rack_node_begin[static_cast<size_t>(k) + 1]; ++j) {
      const int32_t n = topo.rack_nodes[static_cast<size_t>(j)];
      if (node_cap[static_cast<size_t>(n)] > 0) {
        heap.push_back({gang_score(n, r), rank_[static_cast<size_t>(n)], n});
      }
    }
  }
  std::make_heap(heap.begin(), heap.end(), worse);
  std::vector<int32_t> task_gpus;
  while (static_cast<int32_t>(nodes.size()) < count && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const int32_t n = heap.back().node;
    heap.pop_back();
    if (!pick_gang_gpus(n, r, task_gpus)) continue;
    if (!state_->allocate(n, r, task_gpus).ok()) continue;
    frag_.update(*state_, n);
    nodes.push_back(n);
    gpus.insert(gpus.end(), task_gpus.begin(), task_gpus.end());
    if (filter_node(*state_, n, r).ok()) {
      heap.push_back({gang_score(n, r), rank_[static_cast<size_t>(n)], n});
      std::push_heap(heap.begin(), heap.end(), worse);
    }
  }
  if (static_cast<int32_t>(nodes.size()) == count) return Status::Ok();
  rollback_gang(r, nodes, gpus);  // capacities are exact, so this is a safety net only
  return {Code::kGangIncomplete, "Gang"};
}

Status Engine::place_gang_on(const Request& r, std::span<const int32_t> on,
                             std::vector<int32_t>& gpus) {
  gpus.clear();
  last_rejections_ = {};
  if (!r.valid() || on.empty() || on.size() > static_cast<size_t>(kMaxTasks)) {
    return {Code::kInvalidArgument, "Engine"};
  }
  std::vector<int32_t> done;
  done.reserve(on.size());
  std::vector<int32_t> task_gpus;
  for (const int32_t n : on) {
    if (n < 0 || n >= state_->num_nodes()) {
      rollback_gang(r, done, gpus);
      return {Code::kInvalidArgument, "Engine"};
    }
    Status s = filter_node(*state_, n, r);
    if (s.ok() && !pick_gang_gpus(n, r, task_gpus)) s = {Code::kInsufficientGpu, "GpuShare"};
    if (s.ok()) s = state_->allocate(n, r, task_gpus);
    if (!s.ok()) {
      rollback_gang(r, done, gpus);
      return s;
    }
    frag_.update(*state_, n);
    done.push_back(n);
    gpus.insert(gpus.end(), task_gpus.begin(), task_gpus.end());
  }
  return Status::Ok();
}

void Engine::node_changed(int64_t n) {
  frag_.update(*state_, static_cast<int32_t>(checked_index(n, state_->num_nodes(), "node")));
}

Status Engine::release(int32_t node, const Request& r, std::span<const int32_t> gpus) {
  const Status s = state_->release(node, r, gpus);
  if (s.ok()) frag_.update(*state_, node);
  return s;
}

Status Engine::allocate_on(int32_t node, const Request& r, std::span<const int32_t> gpus) {
  // ClusterState::allocate validates the node, the request and the devices and changes nothing
  // on failure; it bumps the node's version, which invalidates the node's cached scores.
  const Status s = state_->allocate(node, r, gpus);
  if (s.ok()) frag_.update(*state_, node);
  return s;
}

BatchResult Engine::place_batch(std::span<const Request> requests, bool track) {
  BatchResult out;
  const size_t count = requests.size();
  out.node.resize(count);
  out.code.resize(count);
  out.gpu_offsets.resize(count + 1);
  out.gpu_offsets[0] = 0;
  if (track) {
    out.allocated_gpu_milli.resize(count);
    out.frag_milli.resize(count);
  }
  std::vector<int32_t> gpus;
  for (size_t i = 0; i < count; ++i) {
    int32_t node = -1;
    const Status s = place(requests[i], node, gpus);
    out.node[i] = node;
    out.code[i] = static_cast<uint8_t>(s.code);
    out.gpus.insert(out.gpus.end(), gpus.begin(), gpus.end());
    out.gpu_offsets[i + 1] = static_cast<int64_t>(out.gpus.size());
    if (track) {
      out.allocated_gpu_milli[i] = state_->allocated_gpu_milli();
      out.frag_milli[i] = frag_.total();
    }
  }
  return out;
}

}  // namespace cplat
