// Shared helpers for the bicycle._C entry points: buffer validation and a parallel loop.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bicycle {
namespace py = pybind11;

// A validated, C-contiguous view of a numpy array (the autograd wiring lives in Python).
template <class T>
struct View {
  T* data;
  int64_t size;
  std::vector<int64_t> shape;
};

inline std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

template <class T>
inline const char* expected_name() {
  if (std::is_same<T, float>::value) return "float32";
  if (std::is_same<T, double>::value) return "float64";
  if (std::is_same<T, uint8_t>::value) return "uint8";
  if (std::is_same<T, int64_t>::value) return "int64";
  if (std::is_same<T, bool>::value) return "bool";
  return "?";
}

// Checks dtype, C-contiguity and (for outputs) writability; messages name the op and the argument.
template <class T>
View<T> view(const py::array& a, const char* op, const char* arg, bool writable = false) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw py::type_error(std::string(op) + ": argument '" + arg + "' has dtype " + dtype_name(a) +
                         ", expected " + expected_name<T>());
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(op) + ": argument '" + arg + "' must be C-contiguous");
  }
  if (writable && !a.writeable()) {
    throw py::value_error(std::string(op) + ": argument '" + arg + "' must be writable");
  }
  View<T> v;
  v.data = static_cast<T*>(const_cast<void*>(a.data()));
  v.size = static_cast<int64_t>(a.size());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) v.shape.push_back(static_cast<int64_t>(a.shape(i)));
  return v;
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

template <class A, class B>
void same_shape(const View<A>& a, const View<B>& b, const char* op, const char* an, const char* bn) {
  if (a.shape != b.shape) {
    throw py::value_error(std::string(op) + ": argument '" + bn + "' has shape " + shape_str(b.shape) +
                          ", expected the shape of '" + an + "' " + shape_str(a.shape));
  }
}

inline int check_threads(int num_threads, const char* op) {
  if (num_threads < 1) {
    throw py::value_error(std::string(op) + ": argument 'num_threads' must be >= 1, got " +
                          std::to_string(num_threads));
  }
  return num_threads;
}

// Runs fn(task) for task in [0, ntasks) on up to num_threads threads (static schedule).
template <class F>
void parallel_for(int64_t ntasks, int num_threads, F&& fn) {
  int nt = static_cast<int>(std::min<int64_t>(num_threads, ntasks));
  if (nt <= 1) {
    for (int64_t t = 0; t < ntasks; ++t) fn(t);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < ntasks; ++t) fn(t);
#else
  std::vector<std::thread> pool;
  for (int w = 0; w < nt; ++w) {
    pool.emplace_back([&, w] {
      for (int64_t t = w; t < ntasks; t += nt) fn(t);
    });
  }
  for (auto& th : pool) th.join();
#endif
}

// Elements per task: big enough to amortise scheduling, small enough to balance two to many cores.
constexpr int64_t kChunk = 1 << 15;

inline int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

}  // namespace bicycle
