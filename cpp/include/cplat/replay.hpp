// Replay: the simulator's event loop in native code, for the runs that need nothing else.
//
// The Python replay (python/cplat/sim/replay.py) handles node failures, preemption, elastic
// jobs, queue-sort plugins, periodic ticks and the decision log. A run with none of these is
// a plain loop: at each instant, finish the jobs whose run ends now, submit the jobs that
// arrive now, run one scheduling cycle and plan the started jobs' ends. This class runs that
// loop over a QueueScheduler with the same event order as the Python loop (finishes in the
// order their events were planned, then the wake-ups, then the arrivals in (submit, index)
// order, then one cycle), so the start times are the same.
#pragma once

#include <cstdint>
#include <queue>
#include <vector>

#include "cplat/framework.hpp"
#include "cplat/queue.hpp"

namespace cplat {

class Replay {
 public:
  // `queue` holds jobs 0..n-1 registered and none submitted; `wall` is each job's run time
  // (seconds, >= 0, at most kMaxTime); `wakeups` are instants to schedule at besides events
  // (reservation ends); `horizon` stops the replay after that time (-1: run to the end);
  // `track_gpu` records (time, allocated milli-GPU, fragmented milli-GPU) after every cycle.
  // Throws std::invalid_argument for a `wall` of another length or a value out of range, or a
  // job already submitted. The queue and the engine must outlive the replay.
  Replay(QueueScheduler& queue, Engine& engine, std::vector<int64_t> wall,
         std::vector<int64_t> wakeups, int64_t horizon, bool track_gpu);

  // Replay until `finished_goal` jobs have finished in all (then return false, to be called
  // again) or until the end (true).
  bool run(int64_t finished_goal);

  [[nodiscard]] const std::vector<int64_t>& start() const { return start_; }
  [[nodiscard]] const std::vector<int64_t>& end() const { return end_; }
  // Nodes (one per task) and devices of each job's start, flat, with per-job offsets (n + 1).
  [[nodiscard]] std::vector<int32_t> nodes(std::vector<int64_t>& offsets) const;
  [[nodiscard]] std::vector<int32_t> gpus(std::vector<int64_t>& offsets) const;
  [[nodiscard]] int64_t cycles() const { return cycles_; }
  [[nodiscard]] int64_t events() const { return popped_; }
  [[nodiscard]] int64_t finished() const { return finished_; }
  [[nodiscard]] bool done() const { return done_; }
  // (time, allocated milli-GPU, fragmented milli-GPU) per cycle, flat.
  [[nodiscard]] const std::vector<double>& gpu_series() const { return gpu_series_; }

 private:
  struct Event {
    int64_t time;
    int32_t kind;  // 0: a job's end, 4: a wake-up (the Python loop's Kind order)
    int64_t seq;
    int32_t job;
    bool operator>(const Event& o) const {
      if (time != o.time) return time > o.time;
      if (kind != o.kind) return kind > o.kind;
      return seq > o.seq;
    }
  };
  void push(int64_t time, int32_t kind, int32_t job);
  void started_now(int64_t now);
  std::vector<int32_t> flatten(bool devices, std::vector<int64_t>& offsets) const;

  QueueScheduler* queue_;
  Engine* engine_;
  std::vector<int64_t> wall_;
  int64_t horizon_;
  bool track_gpu_;
  std::vector<int32_t> order_;  // arrivals in (submit, index) order
  size_t next_arrival_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events_;
  int64_t seq_ = 0;
  int64_t popped_ = 0;
  int64_t cycles_ = 0;
  int64_t finished_ = 0;
  bool done_ = false;
  std::vector<int64_t> start_, end_;
  // Placements in start order: job, then its nodes and devices, flat.
  std::vector<int32_t> placed_job_;
  std::vector<int64_t> placed_node_at_, placed_gpu_at_;
  std::vector<int32_t> placed_nodes_, placed_gpus_;
  std::vector<int32_t> finishing_;
  std::vector<int64_t> batch_;
  std::vector<double> gpu_series_;
};

}  // namespace cplat
