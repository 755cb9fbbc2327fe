#include "cplat/fragmentation.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>

namespace cplat {

TargetWorkload::TargetWorkload(std::vector<TargetTask> tasks) : tasks_(std::move(tasks)) {
  for (size_t i = 0; i < tasks_.size(); ++i) {
    // A NaN or infinite weight would make every fragmentation value (and the FGD score cast
    // from it) undefined; the bound keeps weighted sums finite.
    const double w = tasks_[i].weight;
    if (!std::isfinite(w) || w < 0.0 || w > kMaxWeight) {
      throw std::invalid_argument("workload weight " + std::to_string(i) +
                                  " must be finite and in [0, 1e9], got " + std::to_string(w));
    }
  }
  cpu_sorted_.reserve(tasks_.size());
  for (const TargetTask& t : tasks_) cpu_sorted_.push_back(t.cpu_milli);
  std::sort(cpu_sorted_.begin(), cpu_sorted_.end());
}

int32_t TargetWorkload::cpu_fit_count(int64_t cpu_free) const {
  return static_cast<int32_t>(
      std::upper_bound(cpu_sorted_.begin(), cpu_sorted_.end(), cpu_free) - cpu_sorted_.begin());
}

double node_fragmentation(const TargetWorkload& workload, int64_t cpu_free, int32_t model,
                          std::span<const int32_t> gpu_free) {
  // The model indexes a 64-bit mask (a shift by 64 or more is undefined).
  if (model < -1 || model >= kMaxGpuModels) {
    throw std::invalid_argument("model must be in [-1, 64), got " + std::to_string(model));
  }
  int64_t idle = 0;
  for (int32_t f : gpu_free) idle += f;
  if (idle == 0) return 0.0;
  double frag = 0.0;
  for (const TargetTask& t : workload.tasks()) {
    // A CPU-only task type cannot use idle GPUs at all, and a node whose model the type
    // excludes cannot serve it: all idle GPU capacity is fragmented for that type.
    const bool gpu_task = t.gpu_milli > 0;
    const bool model_ok = t.models == 0 || (model >= 0 && ((t.models >> model) & 1U) != 0);
    if (!gpu_task || !model_ok) {
      frag += t.weight * static_cast<double>(idle);
      continue;
    }
    int32_t fitting = 0;
    int64_t too_small = 0;
    for (int32_t f : gpu_free) {
      if (f >= t.gpu_milli) {
        ++fitting;
      } else {
        too_small += f;
      }
    }
    const bool gpu_ok = fitting >= std::max(t.num_gpu, 1);
    const bool cpu_ok = cpu_free >= t.cpu_milli;
    frag += t.weight * static_cast<double>((gpu_ok && cpu_ok) ? too_small : idle);
  }
  return frag;
}

FragIndex::FragIndex(const ClusterState& state, TargetWorkload workload)
    : workload_(std::move(workload)) {
  rebuild(state);
}

double FragIndex::evaluate(int64_t cpu_free, int32_t model, std::span<const int32_t> gpu_free) {
  const size_t ngpu = gpu_free.size();
  if (ngpu == 0) return 0.0;
  const int32_t k = workload_.cpu_fit_count(cpu_free);
  if (ngpu > static_cast<size_t>(kMaxGpusPerNodeKey) || model >= 254 || k >= 65535) {
    return node_fragmentation(workload_, cpu_free, model, gpu_free);
  }
  std::array<int32_t, kMaxGpusPerNodeKey> v{};
  std::copy(gpu_free.begin(), gpu_free.end(), v.begin());
  std::sort(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(ngpu), std::greater<>());
  Key key;
  key.a = static_cast<uint64_t>(model + 1) | (static_cast<uint64_t>(ngpu) << 8) |
          (static_cast<uint64_t>(k) << 12) | (static_cast<uint64_t>(v[0]) << 28) |
          (static_cast<uint64_t>(v[1]) << 39) | (static_cast<uint64_t>(v[2]) << 50);
  key.b = static_cast<uint64_t>(v[3]) | (static_cast<uint64_t>(v[4]) << 11) |
          (static_cast<uint64_t>(v[5]) << 22) | (static_cast<uint64_t>(v[6]) << 33) |
          (static_cast<uint64_t>(v[7]) << 44);
  auto it = memo_.find(key);
  if (it != memo_.end()) return it->second;
  // Every state in one memo slot shares the same set of CPU-satisfied task types, so the
  // representative CPU value is irrelevant: evaluate with the real one.
  const double frag = node_fragmentation(workload_, cpu_free, model, gpu_free);
  memo_.emplace(key, frag);
  return frag;
}

void FragIndex::update(const ClusterState& state, int32_t n) {
  if (workload_.empty()) return;
  const double value = evaluate(state.cpu_free(n), state.gpu_model(n), state.gpu_free_of(n));
  total_ += value - node_frag_[n];
  node_frag_[n] = value;
}

void FragIndex::rebuild(const ClusterState& state) {
  node_frag_.assign(static_cast<size_t>(state.num_nodes()), 0.0);
  total_ = 0.0;
  if (workload_.empty()) return;
  for (int32_t n = 0; n < state.num_nodes(); ++n) {
    node_frag_[n] = evaluate(state.cpu_free(n), state.gpu_model(n), state.gpu_free_of(n));
    total_ += node_frag_[n];
  }
}

}  // namespace cplat
