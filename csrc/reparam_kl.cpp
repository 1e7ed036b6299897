// reparam_kl on CPU buffers: z = mu + eps * exp(logvar / 2),
// kl = -0.5 * w * SUM(1 + logvar - mu^2 - exp(logvar)), with the backward in one pass.
// Free bits (f > 0, [N, nz] inputs): m_j = -0.5 / N * SUM_i (1 + logvar - mu^2 - exp(logvar))_ij,
// kl = w * N * SUM_j max(m_j, f), active_j = (m_j >= f) (the tie passes through); the backward multiplies the
// KL gradients of column j by active_j. The f = 0 functions above are untouched by it.
#include <cmath>

#include "common.h"
#include "vec.h"

namespace bicycle {
namespace {

// exp(logvar) is taken as s * s (s = exp(logvar / 2)): one exp per element, within 2 ulp.
// Writes z over [lo, hi) and returns SUM(1 + logvar - mu^2 - exp(logvar)) there.
template <class T>
BICYCLE_SIMD_CLONES double forward_rows(const T* mu, const T* lv, const T* eps, T* z, int64_t lo, int64_t hi) {
  double acc = 0.0;
  T term[kRow];
  for (int64_t r = lo; r < hi; r += kRow) {
    const int64_t m = std::min(kRow, hi - r), m8 = (m + 7) & ~int64_t(7);
    const T *pm = mu + r, *pl = lv + r, *pe = eps + r;
    T* pz = z + r;
    for (int64_t i = 0; i < m; ++i) {
      const T s = exp_vec(T(0.5) * pl[i]);
      pz[i] = pm[i] + pe[i] * s;
      term[i] = T(1) + pl[i] - pm[i] * pm[i] - s * s;
    }
    for (int64_t i = m; i < m8; ++i) term[i] = T(0);
    acc += lane_sum(term, m8);
  }
  return acc;
}

template <class T>
double forward_impl(const T* mu, const T* lv, const T* eps, T* z, int64_t n, double w, int nt) {
  std::vector<double> partial(num_chunks(n), 0.0);
  py::gil_scoped_release release;
  parallel_for(num_chunks(n), nt, [&](int64_t c) {
    partial[c] = forward_rows(mu, lv, eps, z, c * kChunk, std::min(n, (c + 1) * kChunk));
  });
  double total = 0.0;  // summed in chunk order: the result does not depend on the thread count
  for (double p : partial) total += p;
  return -0.5 * w * total;
}

// d z / d mu = 1, d z / d logvar = eps s / 2, d z / d eps = s; d kl / d mu = w mu, d kl / d logvar = w (s^2 - 1) / 2.
template <class T, bool HasGz, bool HasDeps>
BICYCLE_SIMD_CLONES void backward_loop(const T* mu, const T* lv, const T* eps, const T* gz, T a, T b, T* dmu, T* dlv, T* deps,
                   int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    const T s = exp_vec(T(0.5) * lv[i]);
    const T g = HasGz ? gz[i] : T(0);
    dmu[i] = g + a * mu[i];
    dlv[i] = T(0.5) * g * eps[i] * s + b * (s * s - T(1));
    if (HasDeps) deps[i] = g * s;
  }
}

template <class T>
void backward_impl(const T* mu, const T* lv, const T* eps, const T* gz, double gkl, double w, T* dmu, T* dlv,
                   T* deps, int64_t n, int nt) {
  const T a = static_cast<T>(gkl * w), b = static_cast<T>(0.5 * gkl * w);
  py::gil_scoped_release release;
  parallel_for(num_chunks(n), nt, [&](int64_t c) {
    const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
    if (gz && deps) {
      backward_loop<T, true, true>(mu, lv, eps, gz, a, b, dmu, dlv, deps, lo, hi);
    } else if (gz) {
      backward_loop<T, true, false>(mu, lv, eps, gz, a, b, dmu, dlv, deps, lo, hi);
    } else if (deps) {
      backward_loop<T, false, true>(mu, lv, eps, gz, a, b, dmu, dlv, deps, lo, hi);  // deps = 0
    } else {
      backward_loop<T, false, false>(mu, lv, eps, gz, a, b, dmu, dlv, deps, lo, hi);
    }
  });
}

template <class T>
double forward_typed(const py::array& mu, const py::array& lv, const py::array& eps, const py::array& z, double w,
                     int nt) {
  const char* op = "reparam_kl_forward";
  auto vm = view<T>(mu, op, "mu"), vl = view<T>(lv, op, "logvar"), ve = view<T>(eps, op, "eps");
  auto vz = view<T>(z, op, "z_out", true);
  same_shape(vm, vl, op, "mu", "logvar");
  same_shape(vm, ve, op, "mu", "eps");
  same_shape(vm, vz, op, "mu", "z_out");
  return forward_impl<T>(vm.data, vl.data, ve.data, vz.data, vm.size, w, nt);
}

template <class T>
void backward_typed(const py::array& mu, const py::array& lv, const py::array& eps, const py::object& gz, double gkl,
                    double w, const py::array& dmu, const py::array& dlv, const py::object& deps, int nt) {
  const char* op = "reparam_kl_backward";
  auto vm = view<T>(mu, op, "mu"), vl = view<T>(lv, op, "logvar"), ve = view<T>(eps, op, "eps");
  auto vdm = view<T>(dmu, op, "dmu_out", true), vdl = view<T>(dlv, op, "dlogvar_out", true);
  same_shape(vm, vl, op, "mu", "logvar");
  same_shape(vm, ve, op, "mu", "eps");
  same_shape(vm, vdm, op, "mu", "dmu_out");
  same_shape(vm, vdl, op, "mu", "dlogvar_out");
  const T* pgz = nullptr;
  T* pde = nullptr;
  if (!gz.is_none()) {
    auto vg = view<T>(gz.cast<py::array>(), op, "grad_z");
    same_shape(vm, vg, op, "mu", "grad_z");
    pgz = vg.data;
  }
  if (!deps.is_none()) {
    auto vd = view<T>(deps.cast<py::array>(), op, "deps_out", true);
    same_shape(vm, vd, op, "mu", "deps_out");
    pde = vd.data;
  }
  backward_impl<T>(vm.data, vl.data, ve.data, pgz, gkl, w, vdm.data, vdl.data, pde, vm.size, nt);
}

// ---- free bits: per-column sums over row chunks (each chunk's partial in its own slot, summed in chunk
// order: the result does not depend on the thread count), then the floor per column.
inline int64_t rows_per_chunk(int64_t nz) { return std::max<int64_t>(1, kChunk / std::max<int64_t>(nz, 1)); }

template <class T>
double forward_free_bits_impl(const T* mu, const T* lv, const T* eps, T* z, T* active, int64_t rows, int64_t nz,
                              double w, double f, int nt) {
  const int64_t rpc = rows_per_chunk(nz), nchunks = (rows + rpc - 1) / rpc;
  std::vector<double> partial(static_cast<size_t>(nchunks * nz), 0.0);
  std::vector<double> colsum(static_cast<size_t>(nz), 0.0);
  {
    py::gil_scoped_release release;
    parallel_for(nchunks, nt, [&](int64_t c) {
      double* acc = partial.data() + c * nz;
      const int64_t r1 = std::min(rows, (c + 1) * rpc);
      for (int64_t r = c * rpc; r < r1; ++r) {
        const int64_t o = r * nz;
        for (int64_t j = 0; j < nz; ++j) {
          const T s = exp_vec(T(0.5) * lv[o + j]);
          z[o + j] = mu[o + j] + eps[o + j] * s;
          acc[j] += static_cast<double>(T(1) + lv[o + j] - mu[o + j] * mu[o + j] - s * s);
        }
      }
    });
  }
  for (int64_t c = 0; c < nchunks; ++c)
    for (int64_t j = 0; j < nz; ++j) colsum[j] += partial[c * nz + j];
  double total = 0.0;
  for (int64_t j = 0; j < nz; ++j) {
    const double m = colsum[j] * -0.5 / static_cast<double>(rows);
    const bool keep = m >= f;  // the tie passes through
    active[j] = keep ? T(1) : T(0);
    total += keep ? m : f;
  }
  return total * (w * static_cast<double>(rows));
}

template <class T>
void backward_free_bits_impl(const T* mu, const T* lv, const T* eps, const T* gz, double gkl, double w,
                             const T* active, T* dmu, T* dlv, T* deps, int64_t rows, int64_t nz, int nt) {
  std::vector<T> a(static_cast<size_t>(nz)), b(static_cast<size_t>(nz));
  for (int64_t j = 0; j < nz; ++j) {
    a[j] = static_cast<T>(gkl * w) * active[j];
    b[j] = static_cast<T>(0.5 * gkl * w) * active[j];
  }
  const int64_t rpc = rows_per_chunk(nz), nchunks = (rows + rpc - 1) / rpc;
  py::gil_scoped_release release;
  parallel_for(nchunks, nt, [&](int64_t c) {
    const int64_t r1 = std::min(rows, (c + 1) * rpc);
    for (int64_t r = c * rpc; r < r1; ++r) {
      const int64_t o = r * nz;
      for (int64_t j = 0; j < nz; ++j) {
        const int64_t i = o + j;
        const T s = exp_vec(T(0.5) * lv[i]);
        const T g = gz ? gz[i] : T(0);
        dmu[i] = g + a[j] * mu[i];
        dlv[i] = T(0.5) * g * eps[i] * s + b[j] * (s * s - T(1));
        if (deps) deps[i] = g * s;
      }
    }
  });
}

template <class T>
View<T> rows_by_dims(const py::array& mu, const char* op) {
  auto vm = view<T>(mu, op, "mu");
  if (vm.shape.size() != 2) {
    throw py::value_error(std::string(op) + ": argument 'mu' has shape " + shape_str(vm.shape) +
                          ", expected [N, nz] for free bits");
  }
  return vm;
}

template <class T>
View<T> active_view(const py::array& active, const View<T>& vm, const char* op, bool writable) {
  auto va = view<T>(active, op, writable ? "active_out" : "active", writable);
  if (va.shape != std::vector<int64_t>{vm.shape[1]}) {
    throw py::value_error(std::string(op) + ": argument '" + (writable ? "active_out" : "active") + "' has shape " +
                          shape_str(va.shape) + ", expected [" + std::to_string(vm.shape[1]) + "] (mu's nz)");
  }
  return va;
}

template <class T>
double forward_free_bits_typed(const py::array& mu, const py::array& lv, const py::array& eps, const py::array& z,
                               const py::array& active, double w, double f, int nt) {
  const char* op = "reparam_kl_forward_free_bits";
  auto vm = rows_by_dims<T>(mu, op);
  auto vl = view<T>(lv, op, "logvar"), ve = view<T>(eps, op, "eps");
  auto vz = view<T>(z, op, "z_out", true);
  same_shape(vm, vl, op, "mu", "logvar");
  same_shape(vm, ve, op, "mu", "eps");
  same_shape(vm, vz, op, "mu", "z_out");
  auto va = active_view<T>(active, vm, op, true);
  return forward_free_bits_impl<T>(vm.data, vl.data, ve.data, vz.data, va.data, vm.shape[0], vm.shape[1], w, f, nt);
}

template <class T>
void backward_free_bits_typed(const py::array& mu, const py::array& lv, const py::array& eps, const py::object& gz,
                              double gkl, double w, const py::array& dmu, const py::array& dlv,
                              const py::object& deps, const py::array& active, int nt) {
  const char* op = "reparam_kl_backward";
  auto vm = rows_by_dims<T>(mu, op);
  auto vl = view<T>(lv, op, "logvar"), ve = view<T>(eps, op, "eps");
  auto vdm = view<T>(dmu, op, "dmu_out", true), vdl = view<T>(dlv, op, "dlogvar_out", true);
  same_shape(vm, vl, op, "mu", "logvar");
  same_shape(vm, ve, op, "mu", "eps");
  same_shape(vm, vdm, op, "mu", "dmu_out");
  same_shape(vm, vdl, op, "mu", "dlogvar_out");
  auto va = active_view<T>(active, vm, op, false);
  const T* pgz = nullptr;
  T* pde = nullptr;
  if (!gz.is_none()) {
    auto vg = view<T>(gz.cast<py::array>(), op, "grad_z");
    same_shape(vm, vg, op, "mu", "grad_z");
    pgz = vg.data;
  }
  if (!deps.is_none()) {
    auto vd = view<T>(deps.cast<py::array>(), op, "deps_out", true);
    same_shape(vm, vd, op, "mu", "deps_out");
    pde = vd.data;
  }
  backward_free_bits_impl<T>(vm.data, vl.data, ve.data, pgz, gkl, w, va.data, vdm.data, vdl.data, pde, vm.shape[0],
                             vm.shape[1], nt);
}

bool is_f32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()); }
bool is_f64(const py::array& a) { return a.dtype().is(py::dtype::of<double>()); }

void check_float(const py::array& a, const char* op) {
  if (!is_f32(a) && !is_f64(a)) {
    throw py::type_error(std::string(op) + ": argument 'mu' has dtype " + dtype_name(a) +
                         ", expected float32 or float64 (convert other dtypes in Python)");
  }
}

}  // namespace

void bind_reparam_kl(py::module_& m) {
  m.def(
      "reparam_kl_forward",
      [](const py::array& mu, const py::array& logvar, const py::array& eps, const py::array& z_out, double kl_weight,
         int num_threads) {
        check_float(mu, "reparam_kl_forward");
        check_threads(num_threads, "reparam_kl_forward");
        if (is_f32(mu)) return forward_typed<float>(mu, logvar, eps, z_out, kl_weight, num_threads);
        return forward_typed<double>(mu, logvar, eps, z_out, kl_weight, num_threads);
      },
      py::arg("mu"), py::arg("logvar"), py::arg("eps"), py::arg("z_out"), py::arg("kl_weight"),
      py::arg("num_threads") = 1,
      "Writes z = mu + eps * exp(logvar / 2) into z_out and returns the weighted KL sum. All [N, nz], "
      "C-contiguous, one float dtype.");
  m.def(
      "reparam_kl_backward",
      [](const py::array& mu, const py::array& logvar, const py::array& eps, const py::object& grad_z, double grad_kl,
         double kl_weight, const py::array& dmu_out, const py::array& dlogvar_out, const py::object& deps_out,
         int num_threads, const py::object& active) {
        check_float(mu, "reparam_kl_backward");
        check_threads(num_threads, "reparam_kl_backward");
        if (!active.is_none()) {  // free bits: the KL gradients of column j times active[j]
          const py::array act = active.cast<py::array>();
          if (is_f32(mu)) {
            backward_free_bits_typed<float>(mu, logvar, eps, grad_z, grad_kl, kl_weight, dmu_out, dlogvar_out,
                                            deps_out, act, num_threads);
          } else {
            backward_free_bits_typed<double>(mu, logvar, eps, grad_z, grad_kl, kl_weight, dmu_out, dlogvar_out,
                                             deps_out, act, num_threads);
          }
          return;
        }
        if (is_f32(mu)) {
          backward_typed<float>(mu, logvar, eps, grad_z, grad_kl, kl_weight, dmu_out, dlogvar_out, deps_out,
                                num_threads);
        } else {
          backward_typed<double>(mu, logvar, eps, grad_z, grad_kl, kl_weight, dmu_out, dlogvar_out, deps_out,
                                 num_threads);
        }
      },
      py::arg("mu"), py::arg("logvar"), py::arg("eps"), py::arg("grad_z"), py::arg("grad_kl"), py::arg("kl_weight"),
      py::arg("dmu_out"), py::arg("dlogvar_out"), py::arg("deps_out") = py::none(), py::arg("num_threads") = 1,
      py::arg("active") = py::none(),
      "Gradients of (z, kl) w.r.t. mu, logvar (and eps when deps_out is given) in one pass; grad_z may be None. "
      "active: None, or the [nz] mask from reparam_kl_forward_free_bits (then mu is [N, nz]).");
  m.def(
      "reparam_kl_forward_free_bits",
      [](const py::array& mu, const py::array& logvar, const py::array& eps, const py::array& z_out,
         const py::array& active_out, double kl_weight, double free_bits, int num_threads) {
        const char* op = "reparam_kl_forward_free_bits";
        check_float(mu, op);
        check_threads(num_threads, op);
        if (!(free_bits >= 0.0) || std::isinf(free_bits)) {
          throw py::value_error(std::string(op) + ": argument 'free_bits' must be finite and >= 0, got " +
                                std::to_string(free_bits));
        }
        if (is_f32(mu)) {
          return forward_free_bits_typed<float>(mu, logvar, eps, z_out, active_out, kl_weight, free_bits, num_threads);
        }
        return forward_free_bits_typed<double>(mu, logvar, eps, z_out, active_out, kl_weight, free_bits, num_threads);
      },
      py::arg("mu"), py::arg("logvar"), py::arg("eps"), py::arg("z_out"), py::arg("active_out"), py::arg("kl_weight"),
      py::arg("free_bits"), py::arg("num_threads") = 1,
      "Free bits: writes z into z_out and active_out[j] = (m_j >= free_bits) (1 or 0) and returns "
      "kl_weight * N * SUM_j max(m_j, free_bits), m_j the batch-mean KL of dimension j. mu: [N, nz].");
}

}  // namespace bicycle
