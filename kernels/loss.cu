// The fused GRPO-family policy loss: the GPU twin of src/loss/ (same formulas, same torch
// tie rules; per-token math in f64, as the CPU path, so both agree to float32 rounding).
//
// Launch sequence for a (B, T) batch (src/cuda/loss.rs):
//   1. loss_rows    one block per row: mask sum n_i (validated), and the row's log-ratio sums
//                   GSPO and VESPO need;
//   2. loss_batch   one block: the batch's token count and rows with tokens (aggregations that
//                   normalise by them);
//   3. loss_tokens  one block per (row, chunk of LOSS_TOKENS tokens): every token's loss terms
//                   and dL/dlogp, written once, plus the chunk's weighted partial sums;
//   4. loss_finalize_rows  one warp per row: the row's chunk partials summed into its share of
//                   every sum (and, for sequence-level importance sampling, its ratio gradient);
//   5. loss_finalize one block: the rows' shares summed in a fixed order into the loss and the
//                   metrics (then, at sequence level, loss_tokens runs again to write the
//                   gradient with the rows' ratio gradients).
// Every reduction has a fixed shape, so results are bit-identical from run to run.

#define LOSS_BLOCK 256
#define LOSS_ITEMS 4
#define LOSS_TOKENS (LOSS_BLOCK * LOSS_ITEMS)
#define LOSS_PARTIALS 6

// Loss types: LT_GRPO, LT_VANILLA, ... are defined from the loss-type registry
// (src/loss/registry.rs) ahead of this file when it is compiled.

#define KL_K1 0
#define KL_ABS 1
#define KL_K2 2
#define KL_K3 3
#define KL_LOW_VAR 4

#define AGG_ROW_MEAN_OF_TOKEN_MEANS 0
#define AGG_TOKEN_MEAN 1
#define AGG_VERL_TOKEN_MEAN 2
#define AGG_DIVISOR 3
#define AGG_ROW_MEAN_OF_TOKEN_SUMS 4
#define AGG_VALID_ROW_MEAN_OF_TOKEN_SUMS 5
#define AGG_VALID_ROW_MEAN_OF_TOKEN_MEANS 6

// Everything about the loss that is not an array, passed by value.
struct LossParams {
    i64 rows, len;
    int chunks;           // chunks of LOSS_TOKENS per row
    int loss_type, sequence, kl_estimator, bias_correction, advantages_per_token, has_old, has_ref;
    int aggregation;
    int vec;              // every row of every input and of grad starts 16-byte aligned (4-token loads)
    double divisor;       // AGG_DIVISOR
    double beta, lo, hi, delta, epsilon_high, clip_ratio_c;
    double tau_pos, tau_neg, vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg;
    double grad_scale;
};

__device__ __forceinline__ bool near_bound(double r, double bound) { return fabs(r - bound) <= 1e-6 * fabs(bound); }

__device__ __forceinline__ bool is_clipped(int t) {
    return t == LT_GRPO || t == LT_BNPO || t == LT_DR_GRPO || t == LT_DAPO || t == LT_LUSPO;
}

__device__ __forceinline__ double clamp_slope(double x, double lo, double hi) { return flagd(x > lo && x < hi); }

// torch's backward weight of u in min(u, v).
__device__ __forceinline__ double min_weight(double u, double v) { return u < v ? 1.0 : (u == v ? 0.5 : 0.0); }

// rho_i: the row's share of the batch loss (Aggregation::row_weight).
__device__ double row_weight(const LossParams& p, double n, double tokens, double valid_rows) {
    double valid = fmax(valid_rows, 1.0);
    switch (p.aggregation) {
        case AGG_ROW_MEAN_OF_TOKEN_MEANS: return 1.0 / ((double)p.rows * fmax(n, 1.0));
        case AGG_TOKEN_MEAN: return 1.0 / fmax(tokens, 1.0);
        case AGG_VERL_TOKEN_MEAN: return tokens > 0.0 ? 1.0 / tokens : 0.0;
        case AGG_DIVISOR: return 1.0 / p.divisor;
        case AGG_ROW_MEAN_OF_TOKEN_SUMS: return 1.0 / (double)p.rows;
        case AGG_VALID_ROW_MEAN_OF_TOKEN_SUMS: return n > 0.0 ? 1.0 / valid : 0.0;
        default: return n > 0.0 ? 1.0 / (valid * (n + 1e-8)) : 0.0;
    }
}

__device__ double vespo_phi(double log_w, double k, double lam) {
    lam = fmax(lam, 1e-4);
    double phi = exp(lam + k * log_w - lam * exp(log_w));
    return isfinite(phi) ? phi : 0.0;
}

// The row-level quantities every token of row i needs. Every thread of every token block
// derives them, so only what the loss uses is computed: the sequence ratio under sequence-level
// importance sampling, the VESPO weights for VESPO (each an exp or three in float64).
struct RowTerms {
    double n, rho, seq_d, seq_ratio, seq_slope, phi_nonneg, phi_neg;
};

__device__ RowTerms row_terms(const LossParams& p, const double* row_stats, const double* batch, i64 i) {
    RowTerms rt;
    rt.n = row_stats[i * 3];
    rt.rho = row_weight(p, rt.n, batch[0], batch[1]);
    rt.seq_d = 0.0;
    rt.seq_ratio = 1.0;
    rt.seq_slope = 1.0;
    if (p.sequence && p.has_old) {
        bool vanilla = p.loss_type == LT_VANILLA;
        double ratio_clamp = vanilla ? 20.0 : INFINITY;
        double seq_log_ratio = row_stats[i * 3 + 1] / fmax(rt.n, 1.0);
        rt.seq_d = clampd(seq_log_ratio, -ratio_clamp, ratio_clamp);
        rt.seq_ratio = exp_c(rt.seq_d);
        rt.seq_slope = vanilla ? clamp_slope(seq_log_ratio, -20.0, 20.0) : 1.0;
    }
    // Read only for VESPO (its per-row metric slot is reported for VESPO alone).
    rt.phi_nonneg = 0.0;
    rt.phi_neg = 0.0;
    if (p.loss_type == LT_VESPO) {
        double log_w = clampd(row_stats[i * 3 + 2], -18.420680743952367, 20.0);  // log(1e-8)
        rt.phi_nonneg = vespo_phi(log_w, p.vespo_k_pos, p.vespo_lambda_pos);
        rt.phi_neg = vespo_phi(log_w, p.vespo_k_neg, p.vespo_lambda_neg);
    }
    return rt;
}

// Four consecutive tokens of a row as float: one 16-byte (float32) or 8-byte (half) load when
// `vec`, else n <= 4 scalar loads (the rest 0).
__device__ __forceinline__ void load4(const float* p, i64 at, int n, bool vec, float* out) {
    if (vec) {
        float4 v = *reinterpret_cast<const float4*>(p + at);
        out[0] = v.x;
        out[1] = v.y;
        out[2] = v.z;
        out[3] = v.w;
        return;
    }
#pragma unroll
    for (int q = 0; q < 4; q++) out[q] = q < n ? p[at + q] : 0.0f;
}
template <typename H>
__device__ __forceinline__ void load4(const H* p, i64 at, int n, bool vec, float* out) {
    if (vec) {
        uint2 v = *reinterpret_cast<const uint2*>(p + at);
        const H* e = reinterpret_cast<const H*>(&v);
#pragma unroll
        for (int q = 0; q < 4; q++) out[q] = to_f32(e[q]);
        return;
    }
#pragma unroll
    for (int q = 0; q < 4; q++) out[q] = q < n ? to_f32(p[at + q]) : 0.0f;
}
__device__ __forceinline__ void load4(const u8* p, i64 at, int n, bool vec, float* out) {
    if (vec) {
        u32 word = *reinterpret_cast<const u32*>(p + at);
#pragma unroll
        for (int q = 0; q < 4; q++) out[q] = (float)((word >> (8 * q)) & 0xffu);
        return;
    }
#pragma unroll
    for (int q = 0; q < 4; q++) out[q] = q < n ? (float)p[at + q] : 0.0f;
}

template <typename T, typename M>
__device__ void loss_rows(const T* logp, const T* old, const float* advantages, const M* mask, LossParams p,
                          double* row_stats, u32* status) {
    __shared__ double scratch[3 * LOSS_BLOCK / 32];
    i64 i = blockIdx.x;
    if (i >= p.rows) return;
    double n = 0.0, seq = 0.0, vespo = 0.0;
    // The thread's first offending tokens (its tokens come in increasing order), reported once
    // after the loop: the atomics stay out of it.
    i64 bad_mask = -1, bad_value = -1;
    // Only GSPO and VESPO need the row's log-ratio sums: otherwise this pass reads the mask alone.
    bool need_ratio = p.has_old && (p.sequence || p.loss_type == LT_VESPO);
    // Four tokens per thread and step, one load each where the rows are aligned.
    for (i64 t0 = (i64)threadIdx.x * LOSS_ITEMS; t0 < p.len; t0 += LOSS_TOKENS) {
        i64 left = p.len - t0;
        int count = left >= LOSS_ITEMS ? LOSS_ITEMS : (int)left;
        bool vec = p.vec != 0 && count == LOSS_ITEMS;
        i64 at0 = i * p.len + t0;
        float wv[LOSS_ITEMS], lpv[LOSS_ITEMS], ov[LOSS_ITEMS];
        load4(mask, at0, count, vec, wv);
        if (need_ratio) {
            load4(logp, at0, count, vec, lpv);
            load4(old, at0, count, vec, ov);
        }
#pragma unroll
        for (int q = 0; q < LOSS_ITEMS; q++) {
            if (q >= count) break;
            i64 at = at0 + q;
            float w32 = wv[q];
            if (!(w32 >= 0.0f && w32 < INFINITY)) {
                if (bad_mask < 0) bad_mask = at;
                continue;
            }
            double w = w32;
            n += w;
            if (need_ratio && w != 0.0) {
                double d = (double)lpv[q] - (double)ov[q];
                if (!isfinite(d)) {
                    if (bad_value < 0) bad_value = at;
                    continue;
                }
                seq += d * w;
                vespo += clampd(d, -20.0, 20.0) * w;
            }
        }
    }
    if (bad_mask >= 0) report(status, STATUS_BAD_MASK, bad_mask);
    if (bad_value >= 0) report(status, STATUS_NONFINITE_INPUT, bad_value);
    double v[3] = {n, seq, vespo};
    block_sums<LOSS_BLOCK, 3>(v, scratch);
    if (threadIdx.x == 0) {
        row_stats[i * 3] = v[0];
        row_stats[i * 3 + 1] = v[1];
        row_stats[i * 3 + 2] = v[2];
        if (!p.advantages_per_token && !isfinite(advantages[i])) report(status, STATUS_NONFINITE_INPUT, i * p.len);
    }
}

extern "C" __global__ void __launch_bounds__(LOSS_BLOCK) loss_batch(LossParams p, const double* row_stats, double* batch) {
    __shared__ double scratch[2 * LOSS_BLOCK / 32];
    double v[2] = {0.0, 0.0};  // tokens, rows with tokens
    for (i64 i = threadIdx.x; i < p.rows; i += LOSS_BLOCK) {
        double n = row_stats[i * 3];
        v[0] += n;
        v[1] += n > 0.0 ? 1.0 : 0.0;
    }
    block_sums<LOSS_BLOCK, 2>(v, scratch);
    if (threadIdx.x == 0) {
        batch[0] = v[0];
        batch[1] = v[1];
    }
}

// One token's terms: loss, dL/dr, direct dL/dlp, three metric values.
struct Term {
    double loss, d_ratio, d_logp, m0, m1, m2;
};

__device__ Term policy_term(const LossParams& p, const RowTerms& rt, double r, double a, double lp, double d) {
    Term out = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    switch (p.loss_type) {
        case LT_CISPO: {
            double coef = fmin(r, p.epsilon_high);
            out.loss = -coef * a * lp;
            out.d_logp = -coef * a;
            out.m0 = flagd(r > p.epsilon_high && a > 0.0);
            break;
        }
        case LT_SAPO: {
            double tau = a > 0.0 ? p.tau_pos : p.tau_neg;
            double s = 1.0 / (1.0 + exp_token(-tau * (r - 1.0)));
            out.loss = -(s * 4.0 / tau) * a;
            out.d_ratio = -4.0 * a * s * (1.0 - s);
            break;
        }
        case LT_VESPO: {
            double phi = a >= 0.0 ? rt.phi_nonneg : rt.phi_neg;
            out.loss = -phi * a * lp;
            out.d_logp = -phi * a;
            out.m0 = phi;
            break;
        }
        case LT_VANILLA: {
            double l1 = -a * r;
            double l2 = -a * clampd(r, p.lo, p.hi);
            double w1 = min_weight(-l1, -l2);
            double lc = fmax(l1, l2);
            double d_lc = -a * (w1 + (1.0 - w1) * clamp_slope(r, p.lo, p.hi));
            double l3 = -a * p.clip_ratio_c;
            bool negative = a < 0.0;
            double wc = 1.0 - min_weight(l3, lc);
            out.loss = negative ? fmin(l3, lc) : lc;
            out.d_ratio = negative ? wc * d_lc : d_lc;
            out.m0 = flagd(l2 > l1);
            out.m1 = flagd(lc > l3 && negative);
            out.m2 = -d;
            break;
        }
        default: {
            double c1 = fmin(r, p.delta);
            double dc1 = flagd(r < p.delta);
            double c2 = clampd(r, p.lo, p.hi);
            double dc2 = clamp_slope(r, p.lo, p.hi);
            double u = c1 * a, v = c2 * a;
            double wu = min_weight(u, v);
            bool low = c1 < p.lo && a < 0.0;
            bool high = c1 > p.hi && a > 0.0;
            out.loss = -fmin(u, v);
            out.d_ratio = -a * (wu * dc1 + (1.0 - wu) * dc2);
            out.m0 = flagd(low);
            out.m1 = flagd(high);
            out.m2 = flagd(low || high);
        }
    }
    return out;
}

// KL estimate, its derivative in lp, and kl + d without cancellation, from x = ref - lp.
__device__ void kl_terms(int estimator, double x, double* kl, double* d, double* sum) {
    switch (estimator) {
        case KL_K1: *kl = -x; *d = 1.0; break;
        case KL_ABS: *kl = fabs(x); *d = flagd(x < 0.0) - flagd(x > 0.0); break;
        case KL_K2: *kl = 0.5 * x * x; *d = -x; break;
        case KL_K3: {
            double e = exp_token(x);
            *kl = e - x - 1.0;
            *d = 1.0 - e;
            break;
        }
        default: {
            double clamped = clampd(x, -20.0, 20.0);
            double e = exp_token(clamped);
            double y = e - clamped - 1.0;
            // The clamp of y at +-10 is a decision: near it, the float64 exp decides.
            if (fabs(fabs(y) - 10.0) <= 1e-5) {
                e = exp_c(clamped);
                y = e - clamped - 1.0;
            }
            *d = clamp_slope(y, -10.0, 10.0) * (e - 1.0) * -clamp_slope(x, -20.0, 20.0);
            *kl = clampd(y, -10.0, 10.0);
        }
    }
    *sum = estimator == KL_K3 ? -x : *kl + *d;
}

// write_grad = 0: only the partial sums (first pass of sequence-level importance sampling);
// write_grad = 1: also the gradient (token level: the only pass; sequence level: the second,
// using the row ratio gradients loss_finalize left in row_common, without partial sums).
//
// Each thread owns LOSS_ITEMS consecutive tokens and loads all of their inputs before computing
// any of them (one round trip to memory per thread, not one per token), 16 bytes at a time
// where the rows are aligned.
template <typename T, typename M>
__device__ void loss_tokens(const T* logp, const T* old, const T* ref, const float* advantages, const M* mask,
                            LossParams p, const double* row_stats, const double* batch, const double* row_common,
                            int write_grad, float* grad, double* partials, u32* status) {
    __shared__ double scratch[LOSS_PARTIALS * LOSS_BLOCK / 32];
    i64 i = blockIdx.x / p.chunks;
    i64 chunk = blockIdx.x % p.chunks;
    if (i >= p.rows) return;
    RowTerms rt = row_terms(p, row_stats, batch, i);
    double scale = rt.rho * p.grad_scale;
    bool has_kl = p.beta != 0.0 && p.has_ref;
    double bias = flagd(p.bias_correction != 0);
    bool vanilla = p.loss_type == LT_VANILLA;
    double ratio_clamp = vanilla ? 20.0 : INFINITY;
    double sums[LOSS_PARTIALS] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    bool bad_value = false, bad_grad = false;
    i64 t0 = chunk * LOSS_TOKENS + (i64)threadIdx.x * LOSS_ITEMS;
    i64 left = p.len - t0;
    int n = left <= 0 ? 0 : (left >= LOSS_ITEMS ? LOSS_ITEMS : (int)left);
    bool vec = p.vec != 0 && n == LOSS_ITEMS;
    i64 at0 = i * p.len + t0;
    float wv[LOSS_ITEMS], lpv[LOSS_ITEMS], ov[LOSS_ITEMS], rv[LOSS_ITEMS], av[LOSS_ITEMS];
    load4(mask, at0, n, vec, wv);
    load4(logp, at0, n, vec, lpv);
    if (p.has_old) load4(old, at0, n, vec, ov);
    if (has_kl) load4(ref, at0, n, vec, rv);
    if (p.advantages_per_token) {
        load4(advantages, at0, n, vec, av);
    } else {
        float a_row = n > 0 ? advantages[i] : 0.0f;
#pragma unroll
        for (int q = 0; q < LOSS_ITEMS; q++) av[q] = a_row;
    }
    float gv[LOSS_ITEMS] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int q = 0; q < LOSS_ITEMS; q++) {
        if (q >= n) break;
        i64 at = at0 + q;
        float w32 = wv[q];
        bool on = w32 != 0.0f && w32 >= 0.0f && w32 < INFINITY;
        if (!on) continue;
        double w = w32;
        double lp = lpv[q];
        double a = av[q];
        double o = p.has_old ? (double)ov[q] : lp;
        double rf = has_kl ? (double)rv[q] : 0.0;
        if (!isfinite(lp) || !isfinite(a) || !isfinite(o) || !isfinite(rf)) {
            if (!bad_value) report(status, STATUS_NONFINITE_INPUT, at);
            bad_value = true;
            continue;
        }
        double d, r, slope;
        if (p.sequence) {
            d = rt.seq_d;
            r = rt.seq_ratio;
            slope = rt.seq_slope;
        } else {
            double raw = lp - o;
            d = clampd(raw, -ratio_clamp, ratio_clamp);
            r = exp_token(d);
            // Clip decisions compare r with the bounds: within 1e-6 of one (a band wider than
            // exp_token's error), the float64 exp decides, as on the CPU path.
            if (near_bound(r, p.lo) || near_bound(r, p.hi) || near_bound(r, p.delta) ||
                near_bound(r, p.epsilon_high) || near_bound(r, p.clip_ratio_c)) {
                r = exp_c(d);
            }
            slope = vanilla ? clamp_slope(raw, -20.0, 20.0) : 1.0;
        }
        Term term = policy_term(p, rt, r, a, lp, d);
        double kl_metric = 0.0;
        if (has_kl) {
            double kl, d_kl, kl_plus_d;
            kl_terms(p.kl_estimator, rf - lp, &kl, &d_kl, &kl_plus_d);
            double kr = bias * r + (1.0 - bias);
            term.loss += p.beta * kl * kr;
            if (p.sequence) {
                term.d_ratio += bias * p.beta * kl;
                term.d_logp += p.beta * kr * d_kl;
            } else {
                double corrected = r * (slope * kl_plus_d + (1.0 - slope) * d_kl);
                term.d_logp += p.beta * (bias * corrected + (1.0 - bias) * d_kl);
            }
            kl_metric = kl * kr;
        }
        if (write_grad) {
            double g;
            if (p.sequence) {
                g = scale * w * term.d_logp + row_common[i] * w;
            } else {
                g = scale * w * (term.d_logp + term.d_ratio * r * slope);
            }
            float g32 = (float)g;
            if (!(fabsf(g32) < INFINITY)) {
                if (!bad_grad) report(status, STATUS_OVERFLOW, at);
                bad_grad = true;
            }
            gv[q] = g32;
        }
        sums[0] += w * term.loss;
        sums[1] += w * kl_metric;
        sums[2] += w * term.m0;
        sums[3] += w * term.m1;
        sums[4] += w * term.m2;
        sums[5] += w * term.d_ratio;
    }
    if (write_grad) {
        if (vec) {
            float4 v;
            v.x = gv[0];
            v.y = gv[1];
            v.z = gv[2];
            v.w = gv[3];
            *reinterpret_cast<float4*>(grad + at0) = v;
        } else {
#pragma unroll
            for (int q = 0; q < LOSS_ITEMS; q++) {
                if (q < n) grad[at0 + q] = gv[q];
            }
        }
    }
    if (write_grad && p.sequence) return;
    block_sums<LOSS_BLOCK, LOSS_PARTIALS>(sums, scratch);
    if (threadIdx.x == 0) {
#pragma unroll
        for (int k = 0; k < LOSS_PARTIALS; k++) partials[(i64)blockIdx.x * LOSS_PARTIALS + k] = sums[k];
    }
}

// The slots of `out` (OUT_LOSS, OUT_KL, OUT_CLIP_LOW_MEAN, ...) are defined from the loss-type
// registry (src/loss/registry.rs), which also tells the host which slots each loss type reports.

// The finalize runs in two kernels. loss_finalize_rows, one warp per row, sums the row's chunk
// partials (the lanes take the chunks in turn, then a fixed shuffle tree) and writes the row's
// share of every sum and extreme to row_out; loss_finalize, one block, sums those in a fixed
// order. Each row's chunks are read in parallel by its warp, not one after another by one
// thread: the single-block loop over rows and chunks it replaces waited on memory once per
// chunk and row.
#define FIN_SUMS 10
// Per row: the FIN_SUMS sums (loss_weighted, kl, m0, m1, m2, clip_row[3], cispo_row, phi_row),
// then the row's low and high extremes (NaN: the row has none).
#define FIN_ROW (FIN_SUMS + 2)  // FINALIZE_ROW in src/cuda/loss.rs
#define FIN_ROWS_PER_BLOCK (LOSS_BLOCK / 32)

extern "C" __global__ void __launch_bounds__(LOSS_BLOCK) loss_finalize_rows(LossParams p, const float* advantages,
                                                                          const double* row_stats, const double* batch,
                                                                          const double* partials, double* row_common,
                                                                          double* row_out) {
    i64 i = (i64)blockIdx.x * FIN_ROWS_PER_BLOCK + threadIdx.x / 32;
    // Whole warps leave together, and nothing below waits for the block.
    if (i >= p.rows) return;
    int lane = threadIdx.x & 31;
    double row[LOSS_PARTIALS] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int c = lane; c < p.chunks; c += 32) {
#pragma unroll
        for (int k = 0; k < LOSS_PARTIALS; k++) row[k] += partials[(i * p.chunks + c) * LOSS_PARTIALS + k];
    }
#pragma unroll
    for (int k = 0; k < LOSS_PARTIALS; k++) {
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) row[k] += __shfl_down_sync(0xffffffffu, row[k], offset);
    }
    if (lane != 0) return;
    RowTerms rt = row_terms(p, row_stats, batch, i);
    double out[FIN_ROW];
#pragma unroll
    for (int k = 0; k < FIN_ROW; k++) out[k] = 0.0;
    out[0] = rt.rho * row[0];
    out[1] = row[1];
    out[2] = row[2];
    out[3] = row[3];
    out[4] = row[4];
    bool per_row = !p.advantages_per_token;
    if (per_row) {
        double a = advantages[i];
        double shown = fmin(rt.seq_ratio, p.delta);
        bool low = shown < p.lo && a < 0.0;
        bool high = shown > p.hi && a > 0.0;
        out[5] = flagd(low);
        out[6] = flagd(high);
        out[7] = flagd(low || high);
        out[8] = flagd(rt.seq_ratio > p.epsilon_high && a > 0.0);
        out[9] = a >= 0.0 ? rt.phi_nonneg : rt.phi_neg;
    }
    double low_min = NAN, high_max = NAN;
    if (p.sequence && per_row) {
        low_min = out[5];
        high_max = out[6];
    } else if (rt.n > 0.0) {
        low_min = row[2] / rt.n;
        high_max = row[3] / rt.n;
    }
    out[FIN_SUMS] = low_min;
    out[FIN_SUMS + 1] = high_max;
#pragma unroll
    for (int k = 0; k < FIN_ROW; k++) row_out[i * FIN_ROW + k] = out[k];
    if (p.sequence) {
        // d log w_i / d lp_t = M_t / max(n, 1): the row's ratio gradient, spread over its tokens.
        row_common[i] = rt.rho * p.grad_scale * row[5] * rt.seq_ratio * rt.seq_slope / fmax(rt.n, 1.0);
    }
}

extern "C" __global__ void __launch_bounds__(LOSS_BLOCK) loss_finalize(LossParams p, const double* batch,
                                                                     const double* row_out, double* out,
                                                                     u32* status) {
    __shared__ double scratch[FIN_SUMS * LOSS_BLOCK / 32];
    double acc[FIN_SUMS];
#pragma unroll
    for (int k = 0; k < FIN_SUMS; k++) acc[k] = 0.0;
    double low_min = NAN, high_max = NAN;  // fmin/fmax skip NaN: NaN means "no row yet"
    for (i64 i = threadIdx.x; i < p.rows; i += LOSS_BLOCK) {
        const double* row = row_out + i * FIN_ROW;
#pragma unroll
        for (int k = 0; k < FIN_SUMS; k++) acc[k] += row[k];
        low_min = fmin(low_min, row[FIN_SUMS]);
        high_max = fmax(high_max, row[FIN_SUMS + 1]);
    }
    block_sums<LOSS_BLOCK, FIN_SUMS>(acc, scratch);
    // min/max: NaN-skipping folds, reduced with +-inf standing for "no row".
    double extremes[2] = {isnan(low_min) ? -INFINITY : -low_min, isnan(high_max) ? -INFINITY : high_max};
    block_maxes<LOSS_BLOCK, 2>(extremes, scratch);
    if (threadIdx.x != 0) return;
    bool per_row = !p.advantages_per_token;
    double lm = -extremes[0], hm = extremes[1];
    double tokens = batch[0];
    double rows = (double)p.rows;
    double token_mean_div = fmax(tokens, 1.0);
    double loss = acc[0];
    out[OUT_LOSS] = loss;
    if (!isfinite(loss) || fabs(loss) > 3.4028234663852886e38) report(status, STATUS_OVERFLOW, -1);
    out[OUT_KL] = acc[1] / token_mean_div;
    bool seq_rows = p.sequence && per_row;
    out[OUT_CLIP_LOW_MEAN] = seq_rows ? acc[5] / rows : acc[2] / token_mean_div;
    out[OUT_CLIP_HIGH_MEAN] = seq_rows ? acc[6] / rows : acc[3] / token_mean_div;
    out[OUT_CLIP_REGION_MEAN] = seq_rows ? acc[7] / rows : acc[4] / token_mean_div;
    out[OUT_CLIP_LOW_MIN] = lm == INFINITY ? NAN : lm;
    out[OUT_CLIP_HIGH_MAX] = hm == -INFINITY ? NAN : hm;
    out[OUT_CISPO] = seq_rows ? acc[8] / rows : acc[2] / token_mean_div;
    out[OUT_VESPO_PHI] = per_row ? acc[9] / rows : acc[2] / token_mean_div;
    out[OUT_PG_CLIPFRAC] = tokens > 0.0 ? acc[2] / tokens : 0.0;
    out[OUT_PG_CLIPFRAC_LOWER] = tokens > 0.0 ? acc[3] / tokens : 0.0;
    out[OUT_PPO_KL] = tokens > 0.0 ? acc[4] / tokens : 0.0;
}

#define LOSS_KERNELS(NAME, T, M)                                                                          \
    extern "C" __global__ void __launch_bounds__(LOSS_BLOCK) loss_rows_##NAME(                            \
        const T* logp, const T* old, const float* advantages, const M* mask, LossParams p, double* row_stats, \
        u32* status) {                                                                                    \
        loss_rows<T, M>(logp, old, advantages, mask, p, row_stats, status);                               \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(LOSS_BLOCK) loss_tokens_##NAME(                           \
        const T* logp, const T* old, const T* ref, const float* advantages, const M* mask, LossParams p,   \
        const double* row_stats, const double* batch, const double* row_common, int write_grad,           \
        float* grad, double* partials, u32* status) {                                                     \
        loss_tokens<T, M>(logp, old, ref, advantages, mask, p, row_stats, batch, row_common, write_grad,  \
                          grad, partials, status);                                                        \
    }

LOSS_KERNELS(f32_u8, float, u8)
LOSS_KERNELS(f32_f32, float, float)
LOSS_KERNELS(bf16_u8, bf16_t, u8)
LOSS_KERNELS(bf16_f32, bf16_t, float)
LOSS_KERNELS(f16_u8, f16_t, u8)
LOSS_KERNELS(f16_f32, f16_t, float)
