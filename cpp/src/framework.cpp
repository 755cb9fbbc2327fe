#include "cplat/framework.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

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
  if ((uses_fgd_ || profile_.gpu_pick == GpuPick::kFgd) && frag_.workload().empty()) {
    throw std::invalid_argument("the fgd scorer and GPU pick need a non-empty target workload");
  }
  if (uses_fgd_) {
    fgd_cache_.assign(static_cast<size_t>(state.num_nodes()) * kShapeSlots, CacheEntry{});
  }
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
  auto it = shapes_.find(key);
  if (it != shapes_.end()) return it->second;
  if (static_cast<int32_t>(shapes_.size()) >= kShapeSlots) return -1;
  const auto slot = static_cast<int32_t>(shapes_.size());
  shapes_.emplace(key, slot);
  return slot;
}

FgdChoice Engine::fgd_cached(int32_t n, const Request& r) {
  const int32_t slot = shape_slot(r);
  if (slot < 0) return score_fgd(*state_, frag_, n, r);
  CacheEntry& e = fgd_cache_[static_cast<size_t>(n) * kShapeSlots + static_cast<size_t>(slot)];
  if (e.version != state_->version(n)) {
    const FgdChoice c = score_fgd(*state_, frag_, n, r);
    e = {state_->version(n), static_cast<int32_t>(c.score), c.gpu};
  }
  return {e.score, e.gpu};
}

int64_t Engine::raw_score(ScorerKind kind, int32_t n, const Request& r) {
  switch (kind) {
    case ScorerKind::kDotProd: return score_dotprod(*state_, n, r);
    case ScorerKind::kGpuClustering: return score_gpu_clustering(*state_, n, r);
    case ScorerKind::kGpuPacking: return score_gpu_packing(*state_, n, r);
    case ScorerKind::kBestFit: return score_bestfit(*state_, n, r);
    case ScorerKind::kWorstFit: return score_worstfit(*state_, n, r);
    case ScorerKind::kFgd: return fgd_cached(n, r).score;
    case ScorerKind::kRandom: return kMinScore;  // drawn per task, see place()
  }
  return kMinScore;
}

void Engine::filter_all(const Request& r, std::span<uint8_t> codes) const {
  for (int32_t n = 0; n < state_->num_nodes(); ++n) {
    codes[static_cast<size_t>(n)] = static_cast<uint8_t>(filter_node(*state_, n, r).code);
  }
}

void Engine::score_all(const Request& r, ScorerKind kind, std::span<int64_t> out) {
  for (int32_t n = 0; n < state_->num_nodes(); ++n) {
    out[static_cast<size_t>(n)] = filter_node(*state_, n, r).ok() ? raw_score(kind, n, r) : -1;
  }
}

Status Engine::place(const Request& r, int32_t& node, std::vector<int32_t>& gpus) {
  node = -1;
  gpus.clear();
  if (r.cpu_milli < 0 || r.memory_mib < 0 || r.num_gpu < 0 || r.gpu_milli < 0 ||
      r.gpu_milli > kMilliGpu || (r.num_gpu > 1 && r.gpu_milli < kMilliGpu && r.gpu_milli > 0)) {
    return {Code::kInvalidArgument, "Engine"};
  }
  // Filter.
  feasible_.clear();
  last_rejections_ = {};
  const int32_t num_nodes = state_->num_nodes();
  for (int32_t n = 0; n < num_nodes; ++n) {
    const Status s = filter_node(*state_, n, r);
    if (s.ok()) {
      feasible_.push_back(n);
    } else {
      ++last_rejections_.by_code[static_cast<size_t>(s.code)];
    }
  }
  if (feasible_.empty()) return last_rejections_.dominant();

  // Score: weighted sum of (normalised) plugin scores.
  const size_t m = feasible_.size();
  total_.assign(m, 0);
  for (const WeightedScorer& ws : profile_.scorers) {
    part_.resize(m);
    if (ws.kind == ScorerKind::kRandom) {
      std::fill(part_.begin(), part_.end(), kMinScore);
      part_[rng_.below(m)] = kMaxScore;
    } else {
      for (size_t i = 0; i < m; ++i) part_[i] = raw_score(ws.kind, feasible_[i], r);
      if (scorer_normalizes(ws.kind)) normalize_scores(part_);
    }
    for (size_t i = 0; i < m; ++i) total_[i] += ws.weight * part_[i];
  }

  // Select: the best total; ties by the profile's rule.
  int64_t best = std::numeric_limits<int64_t>::min();
  size_t pick = 0;
  if (profile_.tie_break == TieBreak::kRank) {
    for (size_t i = 0; i < m; ++i) {
      if (total_[i] > best || (total_[i] == best && rank_[feasible_[i]] < rank_[feasible_[pick]])) {
        best = total_[i];
        pick = i;
      }
    }
  } else {
    uint64_t ties = 0;
    for (size_t i = 0; i < m; ++i) {
      if (total_[i] > best) {
        best = total_[i];
        ties = 1;
      } else if (total_[i] == best) {
        ++ties;
      }
    }
    uint64_t k = ties > 1 ? rng_.below(ties) : 0;
    for (size_t i = 0; i < m; ++i) {
      if (total_[i] == best && k-- == 0) {
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

Status Engine::release(int32_t node, const Request& r, std::span<const int32_t> gpus) {
  const Status s = state_->release(node, r, gpus);
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
