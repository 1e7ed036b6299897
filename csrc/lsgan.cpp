// LSGAN over multi-scale outputs on CPU buffers: loss = SUM_s MEAN((pred_s - target_s)^2), and its gradient
// 2 * (pred_s - target_s) / numel_s * grad. One parallel pass over all segments (scales, or fake + real).
#include "common.h"
#include "vec.h"

namespace bicycle {
namespace {

struct Task {
  int64_t seg, lo, hi;
};

// SUM((p - target)^2) over [lo, hi), staged in rows for the fixed-lane sum.
template <class T>
BICYCLE_SIMD_CLONES double sq_sum(const T* p, T target, int64_t lo, int64_t hi) {
  double acc = 0.0;
  T sq[kRow];
  for (int64_t r = lo; r < hi; r += kRow) {
    const int64_t m = std::min(kRow, hi - r), m8 = (m + 7) & ~int64_t(7);
    for (int64_t i = 0; i < m; ++i) {
      const T d = p[r + i] - target;
      sq[i] = d * d;
    }
    for (int64_t i = m; i < m8; ++i) sq[i] = T(0);
    acc += lane_sum(sq, m8);
  }
  return acc;
}

// Same sum, and g = (p - target) * scale written in the same pass (the forward computes the gradient).
template <class T>
BICYCLE_SIMD_CLONES double sq_sum_grad(const T* p, T* g, T target, T scale, int64_t lo, int64_t hi) {
  double acc = 0.0;
  T sq[kRow];
  for (int64_t r = lo; r < hi; r += kRow) {
    const int64_t m = std::min(kRow, hi - r), m8 = (m + 7) & ~int64_t(7);
    for (int64_t i = 0; i < m; ++i) {
      const T d = p[r + i] - target;
      sq[i] = d * d;
      g[r + i] = d * scale;
    }
    for (int64_t i = m; i < m8; ++i) sq[i] = T(0);
    acc += lane_sum(sq, m8);
  }
  return acc;
}

template <class T>
BICYCLE_SIMD_CLONES void grad_rows(const T* p, T* d, T target, T scale, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) d[i] = (p[i] - target) * scale;
}

template <class T>
std::vector<View<T>> views(const py::list& arrays, const char* op, const char* arg, bool writable) {
  std::vector<View<T>> out;
  for (size_t i = 0; i < arrays.size(); ++i) {
    const std::string name = std::string(arg) + "[" + std::to_string(i) + "]";
    auto v = view<T>(arrays[i].cast<py::array>(), op, name.c_str(), writable);
    if (v.size == 0) throw py::value_error(std::string(op) + ": argument '" + name + "' is empty");
    out.push_back(v);
  }
  return out;
}

template <class T>
std::vector<Task> tasks_of(const std::vector<View<T>>& segs) {
  std::vector<Task> tasks;
  for (size_t s = 0; s < segs.size(); ++s) {
    for (int64_t lo = 0; lo < segs[s].size; lo += kChunk) {
      tasks.push_back({static_cast<int64_t>(s), lo, std::min(segs[s].size, lo + kChunk)});
    }
  }
  return tasks;
}

std::vector<double> targets_of(const py::list& preds, const py::list& targets, const char* op) {
  if (preds.size() == 0) throw py::value_error(std::string(op) + ": argument 'preds' is an empty list");
  if (targets.size() != preds.size()) {
    throw py::value_error(std::string(op) + ": argument 'targets' has " + std::to_string(targets.size()) +
                          " entries, expected one per pred (" + std::to_string(preds.size()) + ")");
  }
  std::vector<double> t;
  for (auto item : targets) t.push_back(item.cast<double>());
  return t;
}

template <class T>
std::vector<View<T>> grad_views(const std::vector<View<T>>& segs, const py::list& outs, const char* op) {
  auto dsts = views<T>(outs, op, "grads_out", true);
  if (dsts.size() != segs.size()) {
    throw py::value_error(std::string(op) + ": argument 'grads_out' has " + std::to_string(dsts.size()) +
                          " entries, expected one per pred (" + std::to_string(segs.size()) + ")");
  }
  for (size_t s = 0; s < segs.size(); ++s) {
    const std::string a = "preds[" + std::to_string(s) + "]", b = "grads_out[" + std::to_string(s) + "]";
    same_shape(segs[s], dsts[s], op, a.c_str(), b.c_str());
  }
  return dsts;
}

template <class T>
double forward_typed(const py::list& preds, const std::vector<double>& targets, const py::object& outs, int nt) {
  const char* op = "lsgan_forward";
  auto segs = views<T>(preds, op, "preds", false);
  std::vector<View<T>> dsts;
  if (!outs.is_none()) dsts = grad_views(segs, outs.cast<py::list>(), op);
  auto tasks = tasks_of(segs);
  std::vector<double> partial(tasks.size(), 0.0);
  {
    py::gil_scoped_release release;
    parallel_for(static_cast<int64_t>(tasks.size()), nt, [&](int64_t k) {
      const Task& t = tasks[k];
      const T target = static_cast<T>(targets[t.seg]);
      if (dsts.empty()) {
        partial[k] = sq_sum(segs[t.seg].data, target, t.lo, t.hi);
      } else {
        const T scale = static_cast<T>(2.0 / static_cast<double>(segs[t.seg].size));
        partial[k] = sq_sum_grad(segs[t.seg].data, dsts[t.seg].data, target, scale, t.lo, t.hi);
      }
    });
  }
  std::vector<double> per_seg(segs.size(), 0.0);
  for (size_t k = 0; k < tasks.size(); ++k) per_seg[tasks[k].seg] += partial[k];
  double loss = 0.0;
  for (size_t s = 0; s < segs.size(); ++s) loss += per_seg[s] / static_cast<double>(segs[s].size);
  return loss;
}

template <class T>
void backward_typed(const py::list& preds, const std::vector<double>& targets, double grad, const py::list& outs,
                    int nt) {
  const char* op = "lsgan_backward";
  auto segs = views<T>(preds, op, "preds", false);
  auto dsts = grad_views(segs, outs, op);
  auto tasks = tasks_of(segs);
  py::gil_scoped_release release;
  parallel_for(static_cast<int64_t>(tasks.size()), nt, [&](int64_t k) {
    const Task& t = tasks[k];
    const T scale = static_cast<T>(2.0 * grad / static_cast<double>(segs[t.seg].size));
    grad_rows(segs[t.seg].data, dsts[t.seg].data, static_cast<T>(targets[t.seg]), scale, t.lo, t.hi);
  });
}

bool first_is_f32(const py::list& preds, const char* op) {
  auto a = preds[0].cast<py::array>();
  if (a.dtype().is(py::dtype::of<float>())) return true;
  if (a.dtype().is(py::dtype::of<double>())) return false;
  throw py::type_error(std::string(op) + ": argument 'preds[0]' has dtype " + dtype_name(a) +
                       ", expected float32 or float64 (convert other dtypes in Python)");
}

}  // namespace

void bind_lsgan(py::module_& m) {
  m.def(
      "lsgan_forward",
      [](const py::list& preds, const py::list& targets, int num_threads, const py::object& grads_out) {
        const char* op = "lsgan_forward";
        auto t = targets_of(preds, targets, op);
        check_threads(num_threads, op);
        return first_is_f32(preds, op) ? forward_typed<float>(preds, t, grads_out, num_threads)
                                       : forward_typed<double>(preds, t, grads_out, num_threads);
      },
      py::arg("preds"), py::arg("targets"), py::arg("num_threads") = 1, py::arg("grads_out") = py::none(),
      "SUM over i of MEAN((preds[i] - targets[i])^2); preds: C-contiguous arrays of one float dtype. With "
      "grads_out, also writes the gradient 2 * (preds[i] - targets[i]) / preds[i].size in the same pass.");
  m.def(
      "lsgan_backward",
      [](const py::list& preds, const py::list& targets, double grad, const py::list& grads_out, int num_threads) {
        const char* op = "lsgan_backward";
        auto t = targets_of(preds, targets, op);
        check_threads(num_threads, op);
        if (first_is_f32(preds, op)) {
          backward_typed<float>(preds, t, grad, grads_out, num_threads);
        } else {
          backward_typed<double>(preds, t, grad, grads_out, num_threads);
        }
      },
      py::arg("preds"), py::arg("targets"), py::arg("grad"), py::arg("grads_out"), py::arg("num_threads") = 1,
      "Writes grads_out[i] = 2 * (preds[i] - targets[i]) / preds[i].size * grad.");
}

}  // namespace bicycle
