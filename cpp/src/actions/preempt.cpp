// QueueScheduler's preemption: who may evict whom, victims by least lost work (per node for
// one-task heads, over the cluster for gangs), eviction with a grace period.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "cplat/check.hpp"
#include "cplat/queue.hpp"
#include "queue_detail.hpp"

namespace cplat {

double QueueScheduler::lost_work(int64_t job, int64_t now) const {
  const size_t j = index(job);
  check_range(now, -kMaxTime, kMaxTime, "now");
  return lost_work_now(static_cast<int32_t>(j), now);
}

double QueueScheduler::lost_work_now(int32_t job, int64_t now) const {
  const auto j = static_cast<size_t>(job);
  if (state_[j] != JobState::kRunning) return 0.0;
  const int64_t elapsed = std::max<int64_t>(0, now - start_[j]);
  const int64_t period = ckpt_interval_[j] > 0 ? ckpt_interval_[j] + ckpt_cost_[j] : 0;
  const int64_t since = period > 0 ? elapsed % period : elapsed;
  const Request& t = task_[j];
  const int64_t size = t.wants_gpu() ? t.total_gpu_milli() : std::max<int64_t>(t.cpu_milli, 1);
  return static_cast<double>(since) * static_cast<double>(size * num_tasks_[j]);
}

bool QueueScheduler::may_evict(int32_t victim, int32_t head, bool head_within_nominal) const {
  const auto v = static_cast<size_t>(victim);
  const auto h = static_cast<size_t>(head);
  if (terminating_[v] != 0) return false;
  const bool by_priority =
      opts_.preemption == Preemption::kPriority || opts_.preemption == Preemption::kBoth;
  if (by_priority && priority_[v] < priority_[h]) return true;
  if (!head_within_nominal) return false;
  const int32_t vp = project_[v];
  const int32_t hp = project_[h];
  if (vp < 0 || vp == hp) return false;
  if (hp < 0 || !quota_.same_root(vp, hp)) return false;
  for (size_t d = 0; d < Calendar::kDims; ++d) {
    if (quota_.borrowing(vp, d)) return true;
  }
  return false;
}

bool QueueScheduler::head_within_nominal(int32_t head) const {
  const bool by_reclaim =
      opts_.preemption == Preemption::kReclaim || opts_.preemption == Preemption::kBoth;
  const int32_t hp = project_[static_cast<size_t>(head)];
  if (!by_reclaim || hp < 0) return false;
  const Vec need = need_of(head);
  const QuotaSpec& q = quota_.quota(hp);
  for (size_t d = 0; d < need.size(); ++d) {
    if (quota_.usage(hp)[d] + need[d] > q.nominal[d]) return false;
  }
  return true;
}

bool QueueScheduler::preempt_on_one_node(int32_t head, int64_t now) {
  // A one-task head: find the node where evicting eligible jobs frees room for it (devices
  // included) at the least lost work, as a scheduler that preempts per node does.
  const ClusterState& st = engine_->state();
  const Request& r = task_[static_cast<size_t>(head)];
  const bool within = head_within_nominal(head);
  // Eligible running jobs per node.
  std::vector<std::vector<int32_t>> on_node(static_cast<size_t>(st.num_nodes()));
  for (const int32_t j : running_) {
    // Jobs this cycle just started are not undone by the same cycle.
    if (start_[static_cast<size_t>(j)] == now || !may_evict(j, head, within)) continue;
    for (const int32_t n : nodes_[static_cast<size_t>(j)]) {
      auto& list = on_node[static_cast<size_t>(n)];
      if (list.empty() || list.back() != j) list.push_back(j);
    }
  }
  double best_cost = std::numeric_limits<double>::infinity();
  std::vector<int32_t> best;
  std::vector<int32_t> dev;
  // The random baseline takes nodes in random order and the first node that works.
  std::vector<int32_t> order(static_cast<size_t>(st.num_nodes()));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  if (opts_.random_victims) {
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[victim_rng_.below(i)]);
  }
  for (const int32_t n : order) {
    if (opts_.random_victims && !best.empty()) break;
    auto& cand = on_node[static_cast<size_t>(n)];
    if (cand.empty() || st.flags(n) != 0) continue;
    if (r.wants_gpu() && (st.gpu_count(n) == 0 ||
                          (r.models != 0 && (st.gpu_model(n) < 0 ||
                                             ((r.models >> st.gpu_model(n)) & 1U) == 0)))) {
      continue;
    }
    if (opts_.random_victims) {
      for (size_t i = cand.size(); i > 1; --i) std::swap(cand[i - 1], cand[victim_rng_.below(i)]);
    } else {
      std::sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) {
        const double ca = lost_work_now(a, now);
        const double cb = lost_work_now(b, now);
        return ca < cb || (ca == cb && a < b);
      });
    }
    int64_t cpu = st.cpu_free(n);
    int64_t mem = st.memory_free(n);
    const std::span<const int32_t> fr = st.gpu_free_of(n);
    dev.assign(fr.begin(), fr.end());
    auto give_back = [&](int32_t j, int sign) {
      const auto jj = static_cast<size_t>(j);
      const Request& t = task_[jj];
      const auto per = static_cast<size_t>(t.wants_gpu() ? t.num_gpu : 0);
      for (size_t i = 0; i < nodes_[jj].size(); ++i) {
        if (nodes_[jj][i] != n) continue;
        cpu += sign * t.cpu_milli;
        mem += sign * t.memory_mib;
        for (size_t g = 0; g < per; ++g) {
          dev[static_cast<size_t>(gpus_[jj][i * per + g])] += sign * t.gpu_milli;
        }
      }
    };
    auto fits = [&] {
      if (cpu < r.cpu_milli || mem < r.memory_mib) return false;
      if (!r.wants_gpu()) return true;
      int32_t ok = 0;
      for (const int32_t f : dev) ok += (f >= r.gpu_milli) ? 1 : 0;
      return ok >= r.num_gpu;
    };
    std::vector<int32_t> chosen;
    double cost = 0.0;
    for (const int32_t j : cand) {
      if (fits() || cost >= best_cost) break;
      give_back(j, +1);
      chosen.push_back(j);
      cost += lost_work_now(j, now);
    }
    if (!fits() || chosen.empty() || cost >= best_cost) continue;
    for (size_t i = chosen.size(); i-- > 0;) {  // drop victims the head does not need
      give_back(chosen[i], -1);
      if (fits()) {
        cost -= lost_work_now(chosen[i], now);
        chosen.erase(chosen.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        give_back(chosen[i], +1);
      }
    }
    if (cost < best_cost) {
      best_cost = cost;
      best = chosen;
    }
  }
  for (const int32_t j : best) {
    evict(j);
  }
  return !best.empty();
}

bool QueueScheduler::preempt_for(int32_t head, int64_t now) {
  if (opts_.grace_period > 0) {
    // Victims already checkpointing will free enough: wait for them, evict no one else.
    Vec soon = available_free();
    const Vec t = terminating_free();
    for (size_t d = 0; d < soon.size(); ++d) soon[d] += t[d];
    const Vec need_now = need_of(head);
    bool any = false;
    for (const int64_t v : t) any = any || v > 0;
    if (any && covers(soon, need_now)) return false;
  }
  // Only when the head lacks capacity (not merely a good arrangement of it), evict the set of
  // eligible running jobs that loses the least work, cheapest first, then drop any victim the
  // head turns out not to need. A job (a whole gang) is always evicted as one unit.
  if (num_tasks_[static_cast<size_t>(head)] == 1) return preempt_on_one_node(head, now);
  const Vec need = need_of(head);
  Vec free = available_free();
  if (covers(free, need)) return false;
  // Elastic jobs that may be preempted shrink (to their minimum) before anyone is evicted.
  const bool within_for_shrink = head_within_nominal(head);
  for (const int32_t j : std::vector<int32_t>(running_.begin(), running_.end())) {
    if (covers(free, need)) break;
    if (!elastic(j) || start_[static_cast<size_t>(j)] == now ||
        !may_evict(j, head, within_for_shrink)) {
      continue;
    }
    const Request& t = task_[static_cast<size_t>(j)];
    int32_t tasks = 0;
    for (size_t d = 0; d < need.size(); ++d) {
      const int64_t per = d == 0 ? t.cpu_milli : d == 1 ? t.memory_mib : t.total_gpu_milli();
      if (per > 0 && need[d] > free[d]) {
        // At most the whole job: the quotient alone may exceed int32.
        const int64_t short_by = std::min<int64_t>((need[d] - free[d] + per - 1) / per, kMaxTasks);
        tasks = std::max<int32_t>(tasks, static_cast<int32_t>(short_by));
      }
    }
    const Vec got = shrink(j, tasks);
    for (size_t d = 0; d < free.size(); ++d) free[d] += got[d];
  }
  if (covers(free, need)) return true;
  const auto h = static_cast<size_t>(head);
  const bool by_priority =
      opts_.preemption == Preemption::kPriority || opts_.preemption == Preemption::kBoth;
  const bool by_reclaim =
      opts_.preemption == Preemption::kReclaim || opts_.preemption == Preemption::kBoth;
  bool head_within_nominal = false;
  const int32_t hp = project_[h];
  if (by_reclaim && hp >= 0) {
    head_within_nominal = true;
    const QuotaSpec& q = quota_.quota(hp);
    for (size_t d = 0; d < need.size(); ++d) {
      head_within_nominal = head_within_nominal && quota_.usage(hp)[d] + need[d] <= q.nominal[d];
    }
  }
  std::vector<std::pair<double, int32_t>> candidates;
  for (const int32_t j : running_) {
    const auto v = static_cast<size_t>(j);
    if (start_[v] == now || terminating_[v] != 0) continue;  // just started, or leaving
    bool eligible = by_priority && priority_[v] < priority_[h];
    if (!eligible && head_within_nominal) {
      const int32_t vp = project_[v];
      if (vp >= 0 && vp != hp && quota_.same_root(vp, hp)) {
        for (size_t d = 0; d < need.size(); ++d) eligible = eligible || quota_.borrowing(vp, d);
      }
    }
    if (eligible) candidates.emplace_back(lost_work_now(j, now), j);
  }
  std::sort(candidates.begin(), candidates.end(), [&](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return start_[static_cast<size_t>(a.second)] > start_[static_cast<size_t>(b.second)] ||
           (start_[static_cast<size_t>(a.second)] == start_[static_cast<size_t>(b.second)] &&
            a.second < b.second);
  });
  if (opts_.random_victims) {
    for (size_t i = candidates.size(); i > 1; --i) {
      std::swap(candidates[i - 1], candidates[victim_rng_.below(i)]);
    }
  }
  std::vector<int32_t> victims;
  for (const auto& [cost, j] : candidates) {
    if (covers(free, need)) break;
    const Vec got = need_of(j);
    for (size_t d = 0; d < free.size(); ++d) free[d] += got[d];
    victims.push_back(j);
  }
  if (!covers(free, need)) return false;
  for (size_t i = victims.size(); i-- > 0;) {
    const Vec got = need_of(victims[i]);
    Vec without = free;
    for (size_t d = 0; d < free.size(); ++d) without[d] -= got[d];
    if (covers(without, need)) {
      free = without;
      victims.erase(victims.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  for (const int32_t j : victims) {
    evict(j);
  }
  return !victims.empty();
}

void QueueScheduler::evict(int32_t job) {
  if (opts_.grace_period > 0) {
    terminating_[static_cast<size_t>(job)] = 1;  // keeps its resources while it checkpoints
    preempted_.push_back(job);
  } else if (requeue(job).ok()) {
    preempted_.push_back(job);
  }
}

Calendar::Vec QueueScheduler::terminating_free() const {
  Vec soon{0, 0, 0};
  for (const int32_t j : running_) {
    if (terminating_[static_cast<size_t>(j)] == 0) continue;
    const Vec got = need_of(j);
    for (size_t d = 0; d < soon.size(); ++d) soon[d] += got[d];
  }
  return soon;
}

}  // namespace cplat
