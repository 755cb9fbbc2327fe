// QueueScheduler: job registration, submit/finish/requeue and cycles. Conversion only: the
// queue checks every index and value (policy names are parsed here).
#include <span>
#include <stdexcept>
#include <string>

#include "cplat/queue.hpp"
#include "cplat/replay.hpp"
#include "pybind.hpp"

namespace cplat::py_bind {

namespace {

QueueOptions make_options(const std::string& order, const std::string& backfill, bool lock_head,
                          bool rlsched_wait, int64_t resolution, int64_t horizon,
                          int32_t max_backfill_jobs, const std::string& preemption,
                          bool random_victims, uint64_t seed, bool topology_aware,
                          const std::string& max_span, int64_t grace_period,
                          int64_t backfill_interval) {
  QueueOptions o;
  o.backfill_interval = backfill_interval;
  o.grace_period = grace_period;
  o.topology_aware = topology_aware;
  const auto span = span_limit_from_name(max_span);
  if (!span) throw std::invalid_argument("unknown span limit: " + max_span);
  o.max_span = *span;
  o.random_victims = random_victims;
  o.seed = seed;
  bool found = false;
  for (int i = 0; i < kNumPreemptionModes; ++i) {
    if (preemption_name(static_cast<Preemption>(i)) == preemption) {
      o.preemption = static_cast<Preemption>(i);
      found = true;
    }
  }
  if (!found) throw std::invalid_argument("unknown preemption mode: " + preemption);
  found = false;
  for (int i = 0; i < kNumQueueOrders; ++i) {
    if (queue_order_name(static_cast<QueueOrder>(i)) == order) {
      o.order = static_cast<QueueOrder>(i);
      found = true;
    }
  }
  if (!found) throw std::invalid_argument("unknown queue order: " + order);
  found = false;
  for (int i = 0; i < kNumBackfillModes; ++i) {
    if (backfill_name(static_cast<BackfillMode>(i)) == backfill) {
      o.backfill = static_cast<BackfillMode>(i);
      found = true;
    }
  }
  if (!found) throw std::invalid_argument("unknown backfill mode: " + backfill);
  o.lock_head = lock_head;
  o.rlsched_wait = rlsched_wait;
  o.calendar_resolution = resolution;
  o.calendar_horizon = horizon;
  o.max_backfill_jobs = max_backfill_jobs;
  return o;
}

constexpr const char* kStateNames[] = {"new", "pending", "running", "done", "cancelled"};

template <typename T>
py::array_t<T> span_array(std::span<const T> s) {
  py::array_t<T> arr(static_cast<py::ssize_t>(s.size()));
  std::copy(s.begin(), s.end(), arr.mutable_data());
  return arr;
}

}  // namespace

void bind_queue(py::module_& m) {
  m.def("queue_order_names", [] {
    std::vector<std::string> out;
    for (int i = 0; i < kNumQueueOrders; ++i) out.emplace_back(queue_order_name(static_cast<QueueOrder>(i)));
    return out;
  });
  m.def("preemption_names", [] {
    std::vector<std::string> out;
    for (int i = 0; i < kNumPreemptionModes; ++i) out.emplace_back(preemption_name(static_cast<Preemption>(i)));
    return out;
  });
  m.def("backfill_names", [] {
    std::vector<std::string> out;
    for (int i = 0; i < kNumBackfillModes; ++i) out.emplace_back(backfill_name(static_cast<BackfillMode>(i)));
    return out;
  });

  py::class_<QueueScheduler>(m, "QueueScheduler")
      .def(py::init([](Engine& engine, const std::string& order, const std::string& backfill,
                       bool lock_head, bool rlsched_wait, int64_t resolution, int64_t horizon,
                       int32_t max_backfill_jobs, const std::string& preemption,
                       bool random_victims, uint64_t seed, bool topology_aware,
                       const std::string& max_span, int64_t grace_period,
                       int64_t backfill_interval) {
             return QueueScheduler(
                 engine, make_options(order, backfill, lock_head, rlsched_wait, resolution,
                                      horizon, max_backfill_jobs, preemption, random_victims,
                                      seed, topology_aware, max_span, grace_period,
                                      backfill_interval));
           }),
           py::arg("engine"), py::arg("order") = "fcfs", py::arg("backfill") = "none",
           py::arg("lock_head") = false, py::arg("rlsched_wait") = false,
           py::arg("calendar_resolution") = 1, py::arg("calendar_horizon") = 0,
           py::arg("max_backfill_jobs") = 0, py::arg("preemption") = "none",
           py::arg("random_victims") = false, py::arg("seed") = 0,
           py::arg("topology_aware") = false, py::arg("max_span") = "none",
           py::arg("grace_period") = 0, py::arg("backfill_interval") = 0,
           py::keep_alive<1, 2>())
      .def(
          "set_quotas",
          [](QueueScheduler& q, const py::object& cohort_in, const py::object& nominal_in,
             const py::object& borrowing_in, const py::object& lending_in,
             const py::object& cohort_parent_in, const py::object& cohort_borrowing_in) {
            // nominal / borrowing / lending: projects x 3 (milli-CPU, MiB, milli-GPU), row-major;
            // the queue checks the lengths and the values.
            q.set_quotas(span_of(column<int32_t>(cohort_in, "cohort")),
                         span_of(column<int64_t>(nominal_in, "nominal")),
                         span_of(column<int64_t>(borrowing_in, "borrowing_limit")),
                         span_of(column<int64_t>(lending_in, "lending_limit")),
                         span_of(column<int32_t>(cohort_parent_in, "cohort_parent")),
                         span_of(column<int64_t>(cohort_borrowing_in, "cohort_borrowing_limit")));
          },
          py::arg("cohort"), py::arg("nominal"), py::arg("borrowing_limit"), py::arg("lending_limit"),
          py::arg("cohort_parent"), py::arg("cohort_borrowing_limit"))
      .def(
          "set_job_meta",
          [](QueueScheduler& q, const py::object& jobs, const py::object& project,
             const py::object& interval, const py::object& cost) {
            q.set_job_meta(span_of(column<int64_t>(jobs, "jobs")),
                           span_of(column<int32_t>(project, "project")),
                           span_of(column<int64_t>(interval, "checkpoint_interval")),
                           span_of(column<int64_t>(cost, "checkpoint_cost")));
          },
          py::arg("jobs"), py::arg("project"), py::arg("checkpoint_interval"),
          py::arg("checkpoint_cost"))
      .def("preempted", [](const QueueScheduler& q) { return to_array(q.preempted()); })
      .def("resized", [](const QueueScheduler& q) { return to_array(q.resized()); })
      .def("terminating", &QueueScheduler::terminating, py::arg("job"))
      .def("tasks_of", &QueueScheduler::tasks_of, py::arg("job"))
      .def(
          "set_min_tasks",
          [](QueueScheduler& q, const py::object& jobs, const py::object& min_tasks) {
            q.set_min_tasks(span_of(column<int64_t>(jobs, "jobs")),
                            span_of(column<int32_t>(min_tasks, "min_tasks")));
          },
          py::arg("jobs"), py::arg("min_tasks"))
      .def(
          "set_exclusive",
          [](QueueScheduler& q, const py::object& jobs, const py::object& exclusive) {
            q.set_exclusive(span_of(column<int64_t>(jobs, "jobs")),
                            span_of(column<uint8_t>(exclusive, "exclusive")));
          },
          py::arg("jobs"), py::arg("exclusive"))
      .def(
          "add_reservation",
          [](QueueScheduler& q, int64_t start, int64_t end, const std::vector<int32_t>& nodes,
             int32_t owner) { return q.add_reservation(Reservation{start, end, nodes, owner}); },
          py::arg("start"), py::arg("end"), py::arg("nodes"), py::arg("owner"))
      .def("lost_work", &QueueScheduler::lost_work, py::arg("job"), py::arg("now"))
      .def("usage", [](const QueueScheduler& q, int64_t project) {
        const auto& u = q.usage(project);
        return std::vector<int64_t>(u.begin(), u.end());
      }, py::arg("project"))
      .def(
          "add_jobs",
          [](QueueScheduler& q, const py::object& submit_in, const py::object& requested_in,
             const py::object& num_tasks_in, const py::object& cpu_in, const py::object& mem_in,
             const py::object& num_gpu_in, const py::object& gpu_milli_in,
             const py::object& models_in, const py::object& priority_in) {
            const In<int64_t> submit = column<int64_t>(submit_in, "submit");
            const In<int64_t> requested = column<int64_t>(requested_in, "requested");
            const In<int32_t> num_tasks = column<int32_t>(num_tasks_in, "num_tasks");
            const In<int64_t> cpu = column<int64_t>(cpu_in, "cpu_milli");
            const In<int64_t> mem = column<int64_t>(mem_in, "memory_mib");
            const In<int32_t> num_gpu = column<int32_t>(num_gpu_in, "num_gpu");
            const In<int32_t> gpu_milli = column<int32_t>(gpu_milli_in, "gpu_milli");
            const In<uint64_t> models = column<uint64_t>(models_in, "models");
            const In<double> priority = column<double>(priority_in, "priority");
            const py::ssize_t n = submit.size();
            if (requested.size() != n || num_tasks.size() != n || cpu.size() != n ||
                mem.size() != n || num_gpu.size() != n || gpu_milli.size() != n ||
                models.size() != n || priority.size() != n) {
              throw std::invalid_argument("job columns must all have the same length");
            }
            std::vector<JobSpec> jobs(static_cast<size_t>(n));
            for (py::ssize_t i = 0; i < n; ++i) {
              jobs[static_cast<size_t>(i)] = {
                  submit.at(i), requested.at(i), num_tasks.at(i),
                  Request{cpu.at(i), mem.at(i), num_gpu.at(i), gpu_milli.at(i), models.at(i)},
                  priority.at(i)};
            }
            return q.add_jobs(jobs);
          },
          py::arg("submit"), py::arg("requested"), py::arg("num_tasks"), py::arg("cpu_milli"),
          py::arg("memory_mib"), py::arg("num_gpu"), py::arg("gpu_milli"), py::arg("models"),
          py::arg("priority"))
      .def("submit", &QueueScheduler::submit, py::arg("job"))
      .def(
          "set_priorities",
          [](QueueScheduler& q, const py::object& jobs, const py::object& values) {
            q.set_priorities(span_of(column<int64_t>(jobs, "jobs")),
                             span_of(column<double>(values, "priorities")));
          },
          py::arg("jobs"), py::arg("priorities"))
      .def("pending_jobs", [](QueueScheduler& q) { return to_array(q.pending_jobs()); })
      .def(
          "submit_many",
          [](QueueScheduler& q, const py::object& jobs) {
            return q.submit_many(span_of(column<int64_t>(jobs, "jobs")));
          },
          py::arg("jobs"))
      .def("cancel", &QueueScheduler::cancel, py::arg("job"))
      .def("finish", &QueueScheduler::finish, py::arg("job"))
      .def(
          "finish_many",
          [](QueueScheduler& q, const py::object& jobs) {
            return q.finish_many(span_of(column<int64_t>(jobs, "jobs")));
          },
          py::arg("jobs"))
      .def("requeue", &QueueScheduler::requeue, py::arg("job"))
      .def(
          "restore",
          [](QueueScheduler& q, int64_t job, int64_t start, const py::object& nodes,
             const py::object& gpus) {
            // C order: a (tasks x num_gpu) device array reads as the flat per-task layout.
            return q.restore(job, start, span_of(column<int32_t>(nodes, "nodes")),
                             span_of(column<int32_t>(gpus, "gpus")));
          },
          py::arg("job"), py::arg("start"), py::arg("nodes"), py::arg("gpus"))
      .def(
          "cycle",
          [](QueueScheduler& q, int64_t now) {
            std::vector<int32_t> started;
            {
              py::gil_scoped_release release;
              started = q.cycle(now);
            }
            return to_array(started);
          },
          py::arg("now"))
      .def("state", [](const QueueScheduler& q, int64_t job) {
        return std::string(kStateNames[static_cast<int>(q.state(job))]);
      }, py::arg("job"))
      .def("reason", [](const QueueScheduler& q, int64_t job) {
        return std::string(code_name(q.reason(job)));
      }, py::arg("job"))
      .def("start_time", &QueueScheduler::start_time, py::arg("job"))
      .def("reservation", &QueueScheduler::reservation, py::arg("job"))
      .def("reservations", [](const QueueScheduler& q) { return to_array(q.reservations()); })
      .def("nodes_of", [](const QueueScheduler& q, int64_t job) { return span_array(q.nodes_of(job)); },
           py::arg("job"))
      .def("gpus_of", [](const QueueScheduler& q, int64_t job) { return span_array(q.gpus_of(job)); },
           py::arg("job"))
      .def_property_readonly("num_jobs", &QueueScheduler::num_jobs)
      .def_property_readonly("num_pending", &QueueScheduler::num_pending)
      .def_property_readonly("num_running", &QueueScheduler::num_running);

  py::class_<Replay>(m, "Replay")
      .def(py::init([](QueueScheduler& q, Engine& e, const py::object& wall,
                       const py::object& wakeups, int64_t horizon, bool track_gpu) {
             const In<int64_t> w = column<int64_t>(wall, "wall");
             const In<int64_t> k = column<int64_t>(wakeups, "wakeups");
             return Replay(q, e, std::vector<int64_t>(w.data(), w.data() + w.size()),
                           std::vector<int64_t>(k.data(), k.data() + k.size()), horizon,
                           track_gpu);
           }),
           py::arg("queue"), py::arg("engine"), py::arg("wall"), py::arg("wakeups"),
           py::arg("horizon"), py::arg("track_gpu"), py::keep_alive<1, 2>(),
           py::keep_alive<1, 3>())
      .def(
          "run",
          [](Replay& r, int64_t finished_goal) {
            py::gil_scoped_release release;
            return r.run(finished_goal);
          },
          py::arg("finished_goal"))
      .def("start", [](const Replay& r) { return to_array(r.start()); })
      .def("end", [](const Replay& r) { return to_array(r.end()); })
      .def("nodes", [](const Replay& r) {
        std::vector<int64_t> offsets;
        std::vector<int32_t> flat = r.nodes(offsets);
        return py::make_tuple(to_array(offsets), to_array(flat));
      })
      .def("gpus", [](const Replay& r) {
        std::vector<int64_t> offsets;
        std::vector<int32_t> flat = r.gpus(offsets);
        return py::make_tuple(to_array(offsets), to_array(flat));
      })
      .def("gpu_series", [](const Replay& r) { return to_array(r.gpu_series()); })
      .def_property_readonly("cycles", &Replay::cycles)
      .def_property_readonly("events", &Replay::events)
      .def_property_readonly("finished", &Replay::finished)
      .def_property_readonly("done", &Replay::done);
}

}  // namespace cplat::py_bind
