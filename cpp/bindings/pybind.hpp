// The only place that includes pybind11: shared helpers for the binding translation units.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <span>
#include <limits>
#include <string>
#include <type_traits>
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

// Convert an array-like argument to In<T>. NumPy's forced cast wraps integers that do not fit
// (2**32 + 1 becomes 1 in an int32 column, -1 becomes 2**64 - 1 in a uint64 one) and truncates
// floats, so integer columns take integers only and are range-checked first (TypeError for
// other kinds, ValueError naming the column for a value out of range). An empty input is an
// empty column whatever its dtype (NumPy makes [] float64).
template <typename T>
In<T> column(const py::handle& obj, const char* name) {
  const py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(name) + " must be an array of numbers");
  if (arr.size() > 0) {
    const char kind = arr.dtype().kind();
    const bool integer = kind == 'i' || kind == 'u' || kind == 'b';
    if constexpr (std::is_integral_v<T>) {
      if (!integer) {
        throw py::type_error(std::string(name) + " must hold integers, got dtype " +
                             std::string(py::str(arr.dtype())));
      }
      if (kind != 'b' && !arr.dtype().is(py::dtype::of<T>())) {
        const py::int_ lo(arr.attr("min")());
        const py::int_ hi(arr.attr("max")());
        const py::int_ min(std::numeric_limits<T>::min());
        const py::int_ max(std::numeric_limits<T>::max());
        if (lo < min || hi > max) {
          throw py::value_error(std::string(name) + ": " + std::string(py::str(lo < min ? lo : hi)) +
                                " does not fit " + std::string(py::str(py::dtype::of<T>())));
        }
      }
    } else if (!integer && kind != 'f') {
      throw py::type_error(std::string(name) + " must hold numbers, got dtype " +
                           std::string(py::str(arr.dtype())));
    }
  }
  In<T> out = In<T>::ensure(arr);
  if (!out) throw py::type_error(std::string(name) + " must be an array of numbers");
  return out;
}

template <typename T>
std::span<const T> span_of(const In<T>& a) {
  return {a.data(), static_cast<size_t>(a.size())};
}

// Target workload from column arrays (shared by both binding units).
TargetWorkload make_workload(const py::handle& cpu, const py::handle& num_gpu,
                             const py::handle& gpu_milli, const py::handle& models,
                             const py::handle& weight);

void bind_cluster(py::module_& m);
void bind_engine(py::module_& m);
void bind_queue(py::module_& m);
void bind_calendar(py::module_& m);
void bind_topology(py::module_& m);

}  // namespace cplat::py_bind
