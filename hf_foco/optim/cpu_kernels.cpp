// Fused multi-tensor optimizer steps for CPU tensors: foco, FOCUS, Signum and Lion (hf_foco/optim/cpu_kernels.py
// builds and loads this file). Each step reads and writes every tensor once, computing in fp32 with ATen's own
// vector types and conversions (round to nearest even), and performs the reference (foreach) path's operations in
// the same order with the same roundings: the results are equal bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/vec_convert.h>
#include <ATen/cpu/vec/functional.h>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <vector>

using at::BFloat16;
using at::Half;
using Vec = at::vec::Vectorized<float>;
constexpr int64_t VL = Vec::size();
constexpr int64_t W = 2 * VL;  // elements per iteration: one full 16-bit vector, two fp32 vectors
constexpr int64_t BLOCK = 32768;
template <bool B> using Bool = std::integral_constant<bool, B>;

// ---- loads/stores of W elements widened to / rounded from fp32 (ATen's own conversions, round to nearest
// even). FULL: the loop body; otherwise n < W elements at a tensor's tail (masked loads/stores).
struct V2 { Vec v[2]; };
template <bool FULL, typename T> inline V2 ld(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (FULL) return {{Vec::loadu(p), Vec::loadu(p + VL)}};
    else return {{Vec::loadu(p, std::min(n, VL)), n > VL ? Vec::loadu(p + VL, n - VL) : Vec(0.f)}};
  } else {
    static_assert(at::vec::Vectorized<T>::size() == W, "a 16-bit vector holds two fp32 vectors");
    auto x = FULL ? at::vec::Vectorized<T>::loadu(p) : at::vec::Vectorized<T>::loadu(p, n);
    auto [a, b] = at::vec::convert_to_float<T>(x);
    return {{a, b}};
  }
}
template <bool FULL, typename T> inline void st(T* p, const V2& x, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (FULL) { x.v[0].store(p); x.v[1].store(p + VL); }
    else { x.v[0].store(p, std::min(n, VL)); if (n > VL) x.v[1].store(p + VL, n - VL); }
  } else {
    auto y = at::vec::convert_from_float<T>(x.v[0], x.v[1]);
    if constexpr (FULL) y.store(p); else y.store(p, n);
  }
}

// ---- arithmetic, matching ATen's kernels operation by operation (the module is built -ffp-contract=off)
// ATen's fmadd for the capability: one rounding with AVX2/AVX512, a*b + c (two) in the default build, as in
// ATen's kernels for lerp and add(alpha=).
inline Vec fma_(const Vec& a, const Vec& b, const Vec& c) { return at::vec::fmadd(a, b, c); }
// torch.sign for floats is (0 < x) - (x < 0): NaN and -0 give +0. sgn_mul(x, c) = sign(x)*c, exact (the
// product of +-1 and c), except that a zero sign gives +0 where the product gives -0 for c < 0: that zero
// is always added to sign(m) or an update in {+0, +-1}, so the sums are equal bit for bit.
#if defined(CPU_CAPABILITY_AVX512)
inline Vec sgn_mul(const Vec& x, float c) {
  __mmask16 nz = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_OQ);  // ordered: NaN -> 0
  return _mm512_maskz_xor_ps(nz, _mm512_set1_ps(c), _mm512_and_ps(x, _mm512_set1_ps(-0.f)));
}
#else
inline Vec sgn_mul(const Vec& x, float c) {
  const Vec zero(0.f), one(1.f);
  return (Vec::blendv(zero, one, zero < x) - Vec::blendv(zero, one, x < zero)) * Vec(c);
}
#endif
inline Vec sgn(const Vec& x) { return sgn_mul(x, 1.f); }
// ATen's lerp: start + w*(end-start) for |w| < 0.5, else end + (w-1)*(end-start), each with one rounding.
template <bool SMALL> inline Vec lerp(const Vec& start, const Vec& end, const Vec& coeff) {
  return fma_(coeff, end - start, SMALL ? start : end);
}
inline Vec lerp(const Vec& start, const Vec& end, const Vec& coeff, bool small) {
  return fma_(coeff, end - start, small ? start : end);
}
inline bool lerp_small(double w) { return std::abs((float)w) < 0.5f; }
inline Vec lerp_coeff(double w) { return Vec(lerp_small(w) ? (float)w : (float)w - 1.0f); }

// ---- driver: every tensor cut into blocks of BLOCK elements; torch's threads take blocks from a shared
// counter (a dynamic schedule: on a shared machine a descheduled thread does not hold the others up).
template <typename F>
void for_blocks(const std::vector<int64_t>& numels, F body) {
  std::vector<int64_t> owner, start;
  for (size_t i = 0; i < numels.size(); i++)
    for (int64_t s = 0; s < numels[i]; s += BLOCK) { owner.push_back(i); start.push_back(s); }
  const int64_t nblocks = (int64_t)owner.size();
  auto run = [&](int64_t b) { body(owner[b], start[b], std::min(BLOCK, numels[owner[b]] - start[b])); };
  const int64_t nthreads = std::min<int64_t>(at::get_num_threads(), nblocks);
  if (nthreads <= 1 || at::in_parallel_region()) {
    for (int64_t b = 0; b < nblocks; b++) run(b);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < nblocks;) run(b);
  });
}
// One block of one row: the vector body over full iterations, then the tail.
template <typename Body> inline void walk(int64_t len, const Body& body) {
  int64_t i = 0;
  for (; i + W <= len; i += W) body(i, W, Bool<true>{});
  if (i < len) body(i, len - i, Bool<false>{});
}
// Calls f(P*) with a null pointer of the parameter's element type.
template <typename F> inline void dispatch(at::ScalarType t, F f) {
  switch (t) {
    case at::kFloat: f((float*)nullptr); break;
    case at::kBFloat16: f((BFloat16*)nullptr); break;
    case at::kHalf: f((Half*)nullptr); break;
    default: TORCH_CHECK(false, "fused step: fp32/bf16/fp16 parameters only, got ", t);
  }
}
template <typename F> inline void bools(bool a, bool b, F f) {
  if (a) { if (b) f(Bool<true>{}, Bool<true>{}); else f(Bool<true>{}, Bool<false>{}); }
  else { if (b) f(Bool<false>{}, Bool<true>{}); else f(Bool<false>{}, Bool<false>{}); }
}
static std::vector<int64_t> check_rows(const std::vector<std::vector<at::Tensor>>& cols,
                                       const std::vector<at::ScalarType>& state_dtypes, const char* who) {
  // cols: params, grads, then the states; a grad has its parameter's dtype, the states the given dtypes.
  std::vector<int64_t> numels;
  for (auto& c : cols) TORCH_CHECK(c.size() == cols[0].size(), who, ": tensor lists differ in length");
  for (size_t i = 0; i < cols[0].size(); i++) {
    for (size_t j = 0; j < cols.size(); j++) {
      const at::Tensor& t = cols[j][i];
      TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.numel() == cols[0][i].numel(), who,
                  ": contiguous CPU tensors of equal sizes in a row");
      TORCH_CHECK(t.scalar_type() == (j < 2 ? cols[0][i].scalar_type() : state_dtypes[j - 2]), who,
                  ": unexpected dtype ", t.scalar_type());
    }
    numels.push_back(cols[0][i].numel());
  }
  return numels;
}

// ---------------------------------------------------------------- foco (bf16 momentum, fp16 pull)
void foco_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> exp_avgs,
               std::vector<at::Tensor> pulls, double keep, double lr, double beta1, double gamma,
               double weight_decay) {
  auto numels = check_rows({params, grads, exp_avgs, pulls}, {at::kBFloat16, at::kHalf}, "foco_step");
  const Vec c1 = lerp_coeff(1 - beta1), vkeep((float)keep), vwd((float)weight_decay), vneg_lr((float)(-lr));
  const float neg_gamma = (float)(-gamma);
  bools(weight_decay != 0, lerp_small(1 - beta1), [&](auto decay, auto small) {
    for_blocks(numels, [&](int64_t r, int64_t s, int64_t len) {
      dispatch(params[r].scalar_type(), [&](auto* type) {
        using P = std::remove_pointer_t<decltype(type)>;
        P* p = params[r].data_ptr<P>() + s;
        const P* g = grads[r].data_ptr<P>() + s;
        BFloat16* m = exp_avgs[r].data_ptr<BFloat16>() + s;
        Half* e = pulls[r].data_ptr<Half>() + s;
        walk(len, [&](int64_t i, int64_t n, auto full) {
          constexpr bool F = decltype(full)::value;
          V2 theta = ld<F>(p + i, n), grad = ld<F>(g + i, n), mom = ld<F>(m + i, n), pull = ld<F>(e + i, n);
          for (int h = 0; h < 2; h++) {
            Vec m32 = lerp<decltype(small)::value>(mom.v[h], grad.v[h], c1);
            Vec theta_hat = fma_(pull.v[h], vkeep, theta.v[h]);
            Vec update = sgn_mul(pull.v[h], neg_gamma) + sgn(m32);
            if constexpr (decltype(decay)::value) update = fma_(theta_hat, vwd, update);
            Vec new_theta = fma_(update, vneg_lr, theta.v[h]);
            mom.v[h] = m32;
            pull.v[h] = theta_hat - new_theta;
            theta.v[h] = new_theta;
          }
          st<F>(p + i, theta, n);
          st<F>(m + i, mom, n);
          st<F>(e + i, pull, n);
        });
      });
    });
  });
}

// ---------------------------------------------------------------- FOCUS (fp32 momentum and parameter EMA)
void focus_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> exp_avgs,
                std::vector<at::Tensor> param_avgs, double correction, double lr, double beta1, double beta2,
                double gamma, double weight_decay, bool paper_order) {
  auto numels = check_rows({params, grads, exp_avgs, param_avgs}, {at::kFloat, at::kFloat}, "focus_step");
  const Vec c1 = lerp_coeff(1 - beta1), c2 = lerp_coeff(1 - beta2), vcorr((float)correction),
      vneg_lr((float)(-lr)), vneg_lr_wd((float)(-lr * weight_decay));
  const float fgamma = (float)gamma;
  const bool decay = weight_decay != 0, small2 = lerp_small(1 - beta2);
  bools(decay && paper_order, lerp_small(1 - beta1), [&](auto paper_decay, auto small) {
    for_blocks(numels, [&](int64_t r, int64_t s, int64_t len) {
      dispatch(params[r].scalar_type(), [&](auto* type) {
        using P = std::remove_pointer_t<decltype(type)>;
        P* p = params[r].data_ptr<P>() + s;
        const P* g = grads[r].data_ptr<P>() + s;
        float* m = exp_avgs[r].data_ptr<float>() + s;
        float* pb = param_avgs[r].data_ptr<float>() + s;
        walk(len, [&](int64_t i, int64_t n, auto full) {
          constexpr bool F = decltype(full)::value;
          V2 theta = ld<F>(p + i, n), grad = ld<F>(g + i, n), mom = ld<F>(m + i, n), pbar = ld<F>(pb + i, n);
          for (int h = 0; h < 2; h++) {
            Vec& th = theta.v[h];
            mom.v[h] = lerp<decltype(small)::value>(mom.v[h], grad.v[h], c1);
            pbar.v[h] = lerp(pbar.v[h], th, c2, small2);
            Vec phat = pbar.v[h] / vcorr;
            if constexpr (decltype(paper_decay)::value) th = fma_(phat, vneg_lr_wd, th);
            Vec update = sgn_mul(th * vcorr - pbar.v[h], fgamma) + sgn(mom.v[h]);
            th = fma_(update, vneg_lr, th);
            if (decay && !paper_order) th = fma_(phat, vneg_lr_wd, th);
          }
          st<F>(p + i, theta, n);
          st<F>(m + i, mom, n);
          st<F>(pb + i, pbar, n);
        });
      });
    });
  });
}

// ---------------------------------------------------------------- Signum and Lion (fp32 momentum)
void sign_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> exp_avgs,
               double lr, double beta1, double beta2, double weight_decay, bool lion) {
  // Signum: m <- lerp(m, g, 1-beta1); theta <- theta*(1-lr*wd) - lr*sign(m)          (beta2 unused)
  // Lion:   c = lerp(m, g, 1-beta1); theta <- theta*(1-lr*wd) - lr*sign(c); m <- lerp(m, g, 1-beta2)
  auto numels = check_rows({params, grads, exp_avgs}, {at::kFloat}, "sign_step");
  const Vec c1 = lerp_coeff(1 - beta1), c2 = lerp_coeff(1 - beta2), vneg_lr((float)(-lr)),
      vshrink((float)(1 - lr * weight_decay));
  const bool decay = weight_decay != 0, small2 = lerp_small(1 - beta2);
  bools(lion, lerp_small(1 - beta1), [&](auto is_lion, auto small) {
    for_blocks(numels, [&](int64_t r, int64_t s, int64_t len) {
      dispatch(params[r].scalar_type(), [&](auto* type) {
        using P = std::remove_pointer_t<decltype(type)>;
        P* p = params[r].data_ptr<P>() + s;
        const P* g = grads[r].data_ptr<P>() + s;
        float* m = exp_avgs[r].data_ptr<float>() + s;
        walk(len, [&](int64_t i, int64_t n, auto full) {
          constexpr bool F = decltype(full)::value;
          V2 theta = ld<F>(p + i, n), grad = ld<F>(g + i, n), mom = ld<F>(m + i, n);
          for (int h = 0; h < 2; h++) {
            Vec c = lerp<decltype(small)::value>(mom.v[h], grad.v[h], c1);
            if (decay) theta.v[h] = theta.v[h] * vshrink;
            theta.v[h] = fma_(sgn(c), vneg_lr, theta.v[h]);
            if constexpr (decltype(is_lion)::value) mom.v[h] = lerp(mom.v[h], grad.v[h], c2, small2);
            else mom.v[h] = c;
          }
          st<F>(p + i, theta, n);
          st<F>(m + i, mom, n);
        });
      });
    });
  });
}

