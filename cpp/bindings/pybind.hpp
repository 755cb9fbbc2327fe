// The only place that includes pybind11: shared helpers for the binding translation units.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "cplat/fragmentation.hpp"

namespace cplat::py_bind {

namespace py = pybind11;

// Read-only NumPy view of a vector owned by `owner` (kept alive by the view).
template <typename T>
py::array_t<T> readonly_view(const std::vector<T>& v, py::handle owner) {
  py::array_t<T> arr({static_cast<py::ssize_t>(v.size())}, {static_cast<py::ssize_t>(sizeof(T))},
                     v.data(), owner);
  arr.attr("setflags")(py::arg("write") = false);
  return arr;
}

// Fresh NumPy array holding a copy of `v`.
template <typename T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> arr(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), arr.mutable_data());
  return arr;
}

// Contiguous 1-D input of an exact dtype (converted if needed).
template <typename T>
using In = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Target workload from column arrays (shared by both binding units).
TargetWorkload make_workload(const In<int64_t>& cpu, const In<int32_t>& num_gpu,
                             const In<int32_t>& gpu_milli, const In<uint64_t>& models,
                             const In<double>& weight);

void bind_cluster(py::module_& m);
void bind_engine(py::module_& m);
void bind_queue(py::module_& m);
void bind_calendar(py::module_& m);
void bind_topology(py::module_& m);

}  // namespace cplat::py_bind
