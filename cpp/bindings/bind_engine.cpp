// Engine: single and batch placement, inspection, fragmentation views. Conversion only: the
// engine checks every index and value (profile and policy names are parsed here).
#include <stdexcept>
#include <string>
#include <utility>

#include "cplat/framework.hpp"
#include "pybind.hpp"

namespace cplat::py_bind {

namespace {

// Scorers are (name, weight) pairs, and ("python", weight, address, normalize, owner) for a
// compiled function at `address` (the ExternalScoreFn signature; cplat.scorers checks it). The
// owner is not read here: the engine keeps the whole list, and so the owner, alive.
Profile make_profile(const py::sequence& scorers, const std::string& gpu_pick,
                     const std::string& tie_break) {
  Profile p;
  for (const py::handle item : scorers) {
    const auto entry = item.cast<py::tuple>();
    if (entry.size() < 2) throw std::invalid_argument("a scorer is a (name, weight) pair");
    const auto name = entry[0].cast<std::string>();
    const auto kind = scorer_from_name(name);
    if (!kind) throw std::invalid_argument("unknown scorer: " + name);
    WeightedScorer ws{*kind, entry[1].cast<int64_t>()};
    if (*kind == ScorerKind::kPython) {
      if (entry.size() != 5) {
        throw std::invalid_argument(
            "a python scorer is (\"python\", weight, address, normalize, owner)");
      }
      const auto address = entry[2].cast<uintptr_t>();
      if (address == 0) throw std::invalid_argument("a python scorer needs a function address");
      ws.external = reinterpret_cast<ExternalScoreFn>(address);  // NOLINT: C callback address
      ws.normalize = entry[3].cast<bool>();
    } else if (entry.size() != 2) {
      throw std::invalid_argument("scorer " + name + " is a (name, weight) pair");
    }
    p.scorers.push_back(ws);
  }
  const auto pick = gpu_pick_from_name(gpu_pick);
  if (!pick) throw std::invalid_argument("unknown GPU pick: " + gpu_pick);
  p.gpu_pick = *pick;
  if (tie_break == "rank") {
    p.tie_break = TieBreak::kRank;
  } else if (tie_break == "random") {
    p.tie_break = TieBreak::kRandom;
  } else {
    throw std::invalid_argument("unknown tie break: " + tie_break + " (valid: rank, random)");
  }
  return p;
}

Request make_request(int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli, uint64_t models) {
  return Request{cpu, mem, num_gpu, gpu_milli, models};
}

std::vector<Request> make_requests(const py::handle& cpu_in, const py::handle& mem_in,
                                   const py::handle& num_gpu_in, const py::handle& gpu_milli_in,
                                   const py::handle& models_in) {
  const In<int64_t> cpu = column<int64_t>(cpu_in, "cpu_milli");
  const In<int64_t> mem = column<int64_t>(mem_in, "memory_mib");
  const In<int32_t> num_gpu = column<int32_t>(num_gpu_in, "num_gpu");
  const In<int32_t> gpu_milli = column<int32_t>(gpu_milli_in, "gpu_milli");
  const In<uint64_t> models = column<uint64_t>(models_in, "models");
  const py::ssize_t n = cpu.size();
  if (mem.size() != n || num_gpu.size() != n || gpu_milli.size() != n || models.size() != n) {
    throw std::invalid_argument("request columns must all have the same length");
  }
  std::vector<Request> out(static_cast<size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    out[static_cast<size_t>(i)] = make_request(cpu.at(i), mem.at(i), num_gpu.at(i),
                                               gpu_milli.at(i), models.at(i));
  }
  return out;
}

}  // namespace

void bind_engine(py::module_& m) {
  m.def("scorer_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < kNumScorers; ++i) names.emplace_back(scorer_name(static_cast<ScorerKind>(i)));
    return names;
  });
  m.def("gpu_pick_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < kNumGpuPicks; ++i) names.emplace_back(gpu_pick_name(static_cast<GpuPick>(i)));
    return names;
  });

  py::class_<Engine>(m, "Engine")
      .def(py::init([](ClusterState& state, const py::sequence& scorers,
                       const std::string& gpu_pick, const py::object& w_cpu,
                       const py::object& w_num_gpu, const py::object& w_gpu_milli,
                       const py::object& w_models, const py::object& w_weight, uint64_t seed,
                       const std::string& tie_break) {
             return Engine(state, make_profile(scorers, gpu_pick, tie_break),
                           make_workload(w_cpu, w_num_gpu, w_gpu_milli, w_models, w_weight), seed);
           }),
           py::arg("state"), py::arg("scorers"), py::arg("gpu_pick"), py::arg("workload_cpu_milli"),
           py::arg("workload_num_gpu"), py::arg("workload_gpu_milli"), py::arg("workload_models"),
           py::arg("workload_weight"), py::arg("seed"), py::arg("tie_break") = "rank",
           py::keep_alive<1, 2>(), py::keep_alive<1, 3>())
      .def(
          "place",
          [](Engine& e, int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli, uint64_t models) {
            int32_t node = -1;
            std::vector<int32_t> gpus;
            const Status s = e.place(make_request(cpu, mem, num_gpu, gpu_milli, models), node, gpus);
            return py::make_tuple(s, node, gpus);
          },
          py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"), py::arg("gpu_milli"),
          py::arg("models"))
      .def(
          "release",
          [](Engine& e, int32_t node, int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli,
             const std::vector<int32_t>& gpus) {
            return e.release(node, make_request(cpu, mem, num_gpu, gpu_milli, 0), gpus);
          },
          py::arg("node"), py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"),
          py::arg("gpu_milli"), py::arg("gpus"))
      .def(
          "place_batch",
          [](Engine& e, const py::object& cpu, const py::object& mem, const py::object& num_gpu,
             const py::object& gpu_milli, const py::object& models, bool track) {
            const std::vector<Request> reqs = make_requests(cpu, mem, num_gpu, gpu_milli, models);
            BatchResult r;
            {
              py::gil_scoped_release release;
              r = e.place_batch(reqs, track);
            }
            py::dict out;
            out["node"] = to_array(r.node);
            out["code"] = to_array(r.code);
            out["gpu_offsets"] = to_array(r.gpu_offsets);
            out["gpus"] = to_array(r.gpus);
            if (track) {
              out["allocated_gpu_milli"] = to_array(r.allocated_gpu_milli);
              out["frag_milli"] = to_array(r.frag_milli);
            }
            return out;
          },
          py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"), py::arg("gpu_milli"),
          py::arg("models"), py::arg("track") = false)
      .def(
          "filter",
          [](const Engine& e, int64_t cpu, int64_t mem, int32_t num_gpu, int32_t gpu_milli,
             uint64_t models) {
            const Request r = make_request(cpu, mem, num_gpu, gpu_milli, models);
            std::vector<uint8_t> codes(static_cast<size_t>(e.state().num_nodes()));
            e.filter_all(r, codes);
            return to_array(codes);
          },
          py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"), py::arg("gpu_milli"),
          py::arg("models"))
      .def(
          "score",
          [](Engine& e, const std::string& scorer, int64_t cpu, int64_t mem, int32_t num_gpu,
             int32_t gpu_milli, uint64_t models) {
            const auto kind = scorer_from_name(scorer);
            if (!kind) throw std::invalid_argument("unknown scorer: " + scorer);
            std::vector<int64_t> out(static_cast<size_t>(e.state().num_nodes()));
            e.score_all(make_request(cpu, mem, num_gpu, gpu_milli, models), *kind, out);
            return to_array(out);
          },
          py::arg("scorer"), py::arg("cpu_milli"), py::arg("memory_mib"), py::arg("num_gpu"),
          py::arg("gpu_milli"), py::arg("models"))
      .def("last_rejections",
           [](const Engine& e) {
             const auto& c = e.last_rejections().by_code;
             return std::vector<int32_t>(c.begin(), c.end());
           })
      .def_property_readonly("tie_rank", [](py::object self) {
        return readonly_view(self.cast<const Engine&>().tie_rank(), self);
      })
      .def_property_readonly("frag_total", [](const Engine& e) { return e.frag().total(); })
      .def_property_readonly("node_frag", [](py::object self) {
        return readonly_view(self.cast<const Engine&>().frag().node_array(), self);
      })
      .def("node_changed", &Engine::node_changed, py::arg("node"));  // checked by the engine
}

}  // namespace cplat::py_bind
