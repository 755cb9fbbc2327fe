// Argument checks of the public entry points.
//
// Every public method that takes an index or a value from outside (the Python bindings, C++
// callers) validates it here, once, at the entry point: std::out_of_range for an index or id
// (IndexError in Python), std::invalid_argument for a bad value (ValueError). Messages name the
// argument and the valid range. Hot loops never call these; internal invariants stay
// CPLAT_ASSERTs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace cplat {

[[noreturn]] inline void throw_index(std::string_view what, int64_t value, int64_t size) {
  std::string msg(what);
  msg += ' ';
  msg += std::to_string(value);
  msg += " out of range [0, " + std::to_string(size) + ")";
  if (size <= 0) msg += ": there are none";
  throw std::out_of_range(msg);
}

// `value` as an index into `size` elements, or std::out_of_range naming `what`.
inline size_t checked_index(int64_t value, int64_t size, std::string_view what) {
  if (value < 0 || value >= size) throw_index(what, value, size);
  return static_cast<size_t>(value);
}

// std::invalid_argument unless lo <= value <= hi.
inline void check_range(int64_t value, int64_t lo, int64_t hi, std::string_view what) {
  if (value < lo || value > hi) {
    throw std::invalid_argument(std::string(what) + " must be in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "], got " + std::to_string(value));
  }
}

}  // namespace cplat
