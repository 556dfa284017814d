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
    // The float32 token path (loss_tokens32, see token_f32): the host's float32 bounds and the
    // bands around them (src/loss/row_f32.rs, Float32Bounds), and beta.
    int float32;          // the options are ones the float32 path decides alike (else unused)
    float lo32, hi32, delta32, c32, near_lo, near_hi, near_delta, near_c, beta32;
};

// An unset bound (delta, the dual clip of the other losses) is infinite: nothing is near it.
__device__ __forceinline__ bool near_bound(double r, double bound) {
    return isfinite(bound) && fabs(r - bound) <= 1e-6 * fabs(bound);
}

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
            // e^x - 1 - x from expm1: near x = 0 the KL is about x^2 / 2, and e^x - x - 1 from
            // a rounded e^x would lose its digits to cancellation.
            double em1 = expm1(fmin(x, 709.0));
            *kl = em1 - x;
            *d = -em1;
            break;
        }
        default: {
            double clamped = clampd(x, -20.0, 20.0);
            double em1 = expm1(clamped);
            double y = em1 - clamped;
            *d = clamp_slope(y, -10.0, 10.0) * em1 * -clamp_slope(x, -20.0, 20.0);
            *kl = clampd(y, -10.0, 10.0);
        }
    }
    *sum = estimator == KL_K3 ? -x : *kl + *d;
}

// The float32 path of one token, for the losses and options the CPU's float32 path takes (TRL's
// PPO-clipped family and verl's vanilla loss at token level, the k1, abs, k2 and k3 KL; the host
// decides, p.float32), with the same formulas and the same rule for what it leaves to float64: a
// ratio within 1e-6 (relative) of a clip bound, a log ratio or KL gap beyond float32's exp range
// (vanilla: a log ratio of 20 or more, where verl clamps), a non-finite input, KL or gradient.
// Those return false and take the float64 formulas (token_f64). The ratio is exp(lp - old)
// with the difference taken exactly (TwoSum: its rounding joins as exp(s + tail) = e + e tail),
// so its error is the float32 exp's (2 ulp) plus a rounding, about 3e-7: the 1e-6 band keeps
// every clip decision the float64 path's. Each token's loss and gradient are then within about
// 5e-7 of their own magnitude of the float64 formulas' (as on the CPU float32 path).
struct Token32 {
    float loss, kl, grad;
    bool low, high, lower;
};

__device__ __forceinline__ float exp_of_difference(float a, float b, float* diff) {
    float s = a - b;
    float nb = s - a;
    float ap = s - nb;
    float tail = (a - ap) - (b + nb);
    *diff = s;
    float e = expf(s);
    return fmaf(e, tail, e);
}

// exp(x) - x - 1 given e = exp(x): the Taylor series x^2 (1/2! + ... + x^10/12!) below |x| = 1
// (no cancellation), (e - 1) - x above (at least 0.36 and a quarter of e there).
__device__ __forceinline__ float exp_minus_one_minus_x(float x, float e) {
    float q = 1.0f / 479001600.0f;
    q = fmaf(q, x, 1.0f / 39916800.0f);
    q = fmaf(q, x, 1.0f / 3628800.0f);
    q = fmaf(q, x, 1.0f / 362880.0f);
    q = fmaf(q, x, 1.0f / 40320.0f);
    q = fmaf(q, x, 1.0f / 5040.0f);
    q = fmaf(q, x, 1.0f / 720.0f);
    q = fmaf(q, x, 1.0f / 120.0f);
    q = fmaf(q, x, 1.0f / 24.0f);
    q = fmaf(q, x, 1.0f / 6.0f);
    q = fmaf(q, x, 0.5f);
    return fabsf(x) < 1.0f ? (x * x) * q : (e - 1.0f) - x;
}

// The largest float32 below 20: vanilla's log ratios from 20 on (verl's clamp) go to float64.
#define VANILLA_MAX_GAP32 19.999998f
#define MAX_GAP32 80.0f

__device__ __forceinline__ bool token_f32(const LossParams& p, bool vanilla, bool has_kl, float scale, float w,
                                          float lp, float o, float rf, float a, Token32& t) {
    if (!(fabsf(lp) < INFINITY && fabsf(a) < INFINITY && fabsf(o) < INFINITY && fabsf(rf) < INFINITY)) return false;
    float d = 0.0f, r = 1.0f;
    if (p.has_old) r = exp_of_difference(lp, o, &d);
    if (!(fabsf(d) <= (vanilla ? VANILLA_MAX_GAP32 : MAX_GAP32))) return false;
    if (fabsf(r - p.lo32) <= p.near_lo || fabsf(r - p.hi32) <= p.near_hi || fabsf(r - p.delta32) <= p.near_delta ||
        (vanilla && fabsf(r - p.c32) <= p.near_c)) {
        return false;
    }
    // TRL's clipped term with torch's tie and clamp-gradient rules (as policy_term below).
    float c1 = r < p.delta32 ? r : p.delta32;
    float dc1 = r < p.delta32 ? 1.0f : 0.0f;
    float c2 = r < p.lo32 ? p.lo32 : (r > p.hi32 ? p.hi32 : r);
    float dc2 = (r > p.lo32 && r < p.hi32) ? 1.0f : 0.0f;
    float u = c1 * a, v = c2 * a;
    float wu = u < v ? 1.0f : (u == v ? 0.5f : 0.0f);
    float coef = u < v ? c1 : c2;
    float d_ratio = -a * (wu * dc1 + (1.0f - wu) * dc2);
    t.low = c1 < p.lo32 && a < 0.0f;
    t.high = c1 > p.hi32 && a > 0.0f;
    // verl's dual clip: a < 0 and r > c give -a c, with no gradient through r.
    t.lower = vanilla && a < 0.0f && r > p.c32;
    if (t.lower) {
        coef = p.c32;
        d_ratio = 0.0f;
    }
    float d_logp = 0.0f, kl_sum = 0.0f;
    if (has_kl) {
        float x, e = 1.0f;
        if (p.kl_estimator == KL_K3) {
            e = exp_of_difference(rf, lp, &x);
            if (!(fabsf(x) <= MAX_GAP32)) return false;
        } else {
            x = rf - lp;
        }
        float kl, d_kl, kl_plus_d;
        switch (p.kl_estimator) {
            case KL_K1: kl = -x; d_kl = 1.0f; kl_plus_d = 1.0f - x; break;
            case KL_ABS:
                kl = fabsf(x);
                d_kl = (x < 0.0f ? 1.0f : 0.0f) - (x > 0.0f ? 1.0f : 0.0f);
                kl_plus_d = kl + d_kl;
                break;
            case KL_K2: kl = 0.5f * x * x; d_kl = -x; kl_plus_d = kl - x; break;
            default: kl = exp_minus_one_minus_x(x, e); d_kl = 1.0f - e; kl_plus_d = -x; break;
        }
        float bias = p.bias_correction ? 1.0f : 0.0f;
        float kr = bias * r + (1.0f - bias);
        d_logp = p.beta32 * (bias * r * kl_plus_d + (1.0f - bias) * d_kl);
        kl_sum = kl * kr;
    }
    float g = scale * w * (d_logp + d_ratio * r);
    if (!(fabsf(kl_sum) < INFINITY && fabsf(g) < INFINITY)) return false;
    t.loss = p.beta32 * kl_sum - a * coef;
    t.kl = kl_sum;
    t.grad = g;
    return true;
}

// One token's float64 terms: its loss and KL metric terms, the metrics and dL/dr (unweighted),
// and its gradient (weighted, before rounding).
struct Token64 {
    Term term;
    double kl_metric, g;
};

// The float64 formulas of one token (every token of loss_tokens, the tokens the float32 pass
// leaves to loss_tokens32_rest).
__device__ __forceinline__ Token64 token_f64(const LossParams& p, const RowTerms& rt, double scale, double w, double lp,
                                             double o, double rf, double a, double row_common_i) {
    bool has_kl = p.beta != 0.0 && p.has_ref;
    double bias = flagd(p.bias_correction != 0);
    bool vanilla = p.loss_type == LT_VANILLA;
    double ratio_clamp = vanilla ? 20.0 : INFINITY;
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
        if (near_bound(r, p.lo) || near_bound(r, p.hi) || near_bound(r, p.delta) || near_bound(r, p.epsilon_high) ||
            near_bound(r, p.clip_ratio_c)) {
            r = exp_c(d);
        }
        slope = vanilla ? clamp_slope(raw, -20.0, 20.0) : 1.0;
    }
    Token64 out;
    out.term = policy_term(p, rt, r, a, lp, d);
    out.kl_metric = 0.0;
    if (has_kl) {
        double kl, d_kl, kl_plus_d;
        kl_terms(p.kl_estimator, rf - lp, &kl, &d_kl, &kl_plus_d);
        double kr = bias * r + (1.0 - bias);
        out.term.loss += p.beta * kl * kr;
        if (p.sequence) {
            out.term.d_ratio += bias * p.beta * kl;
            out.term.d_logp += p.beta * kr * d_kl;
        } else {
            double corrected = r * (slope * kl_plus_d + (1.0 - slope) * d_kl);
            out.term.d_logp += p.beta * (bias * corrected + (1.0 - bias) * d_kl);
        }
        out.kl_metric = kl * kr;
    }
    if (p.sequence) {
        out.g = scale * w * out.term.d_logp + row_common_i * w;
    } else {
        out.g = scale * w * (out.term.d_logp + out.term.d_ratio * r * slope);
    }
    return out;
}

// The passes of loss_tokens. PASS_FLOAT64 (loss_tokens): every token in float64. With the
// float32 path (p.float32, token level only), two kernels: PASS_FLOAT32 (loss_tokens32) computes
// the tokens token_f32 takes, sums them per thread in float32 (at most LOSS_ITEMS terms, widened
// once), writes 0 for the others and counts them in the block's sixth partial (the ratio-gradient
// sum, unused at token level); PASS_REST (loss_tokens32_rest) skips every block whose count is 0
// and computes the counted tokens in float64, adding their sums to the block's partials. Both
// take the same decision per token (token_f32 is deterministic), and the float64 formulas stay
// out of the float32 kernel, whose registers (and so occupancy) they would otherwise set.
#define PASS_FLOAT64 0
#define PASS_FLOAT32 1
#define PASS_REST 2

// write_grad = 0: only the partial sums (first pass of sequence-level importance sampling);
// write_grad = 1: also the gradient (token level: the only pass; sequence level: the second,
// using the row ratio gradients loss_finalize_rows left in row_common, without partial sums).
//
// Each thread owns LOSS_ITEMS consecutive tokens and loads all of their inputs before computing
// any of them (one round trip to memory per thread, not one per token), 16 bytes at a time
// where the rows are aligned.
template <typename T, typename M, int PASS>
__device__ void loss_tokens(const T* logp, const T* old, const T* ref, const float* advantages, const M* mask,
                            LossParams p, const double* row_stats, const double* batch, const double* row_common,
                            int write_grad, float* grad, double* partials, u32* status) {
    __shared__ double scratch[LOSS_PARTIALS * LOSS_BLOCK / 32];
    i64 i = blockIdx.x / p.chunks;
    i64 chunk = blockIdx.x % p.chunks;
    if (i >= p.rows) return;
    // The same value in every thread: the block leaves as a whole.
    if (PASS == PASS_REST && partials[(i64)blockIdx.x * LOSS_PARTIALS + 5] == 0.0) return;
    RowTerms rt = row_terms(p, row_stats, batch, i);
    double scale = rt.rho * p.grad_scale;
    bool has_kl = p.beta != 0.0 && p.has_ref;
    bool vanilla = p.loss_type == LT_VANILLA;
    // A row scale float32 cannot hold closely leaves the whole row to float64 (as on the CPU).
    bool row32 = PASS != PASS_FLOAT64 && (scale == 0.0 || (fabs(scale) >= 1e-30 && fabs(scale) <= 1e30));
    float scale32 = (float)scale;
    double sums[LOSS_PARTIALS] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    float sums32[5] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};  // loss, kl, m0, m1, m2 of float32 tokens
    bool bad_value = false, bad_grad = false;
    i64 t0 = chunk * LOSS_TOKENS + (i64)threadIdx.x * LOSS_ITEMS;
    i64 left = p.len - t0;
    int n = left <= 0 ? 0 : (left >= LOSS_ITEMS ? LOSS_ITEMS : (int)left);
    bool vec = p.vec != 0 && n == LOSS_ITEMS;
    i64 at0 = i * p.len + t0;
    float wv[LOSS_ITEMS], lpv[LOSS_ITEMS], ov[LOSS_ITEMS], rv[LOSS_ITEMS], av[LOSS_ITEMS];
    load4(mask, at0, n, vec, wv);
    load4(logp, at0, n, vec, lpv);
    if (p.has_old) {
        load4(old, at0, n, vec, ov);
    } else {
#pragma unroll
        for (int q = 0; q < LOSS_ITEMS; q++) ov[q] = lpv[q];
    }
    if (has_kl) {
        load4(ref, at0, n, vec, rv);
    } else {
#pragma unroll
        for (int q = 0; q < LOSS_ITEMS; q++) rv[q] = 0.0f;
    }
    if (p.advantages_per_token) {
        load4(advantages, at0, n, vec, av);
    } else {
        float a_row = n > 0 ? advantages[i] : 0.0f;
#pragma unroll
        for (int q = 0; q < LOSS_ITEMS; q++) av[q] = a_row;
    }
    float gv[LOSS_ITEMS] = {0.0f, 0.0f, 0.0f, 0.0f};
    bool rest[LOSS_ITEMS] = {false, false, false, false};  // PASS_REST: tokens it computes
#pragma unroll
    for (int q = 0; q < LOSS_ITEMS; q++) {
        if (q >= n) break;
        float w32 = wv[q];
        bool on = w32 != 0.0f && w32 >= 0.0f && w32 < INFINITY;
        if (!on) continue;
        if (PASS != PASS_FLOAT64) {
            Token32 t;
            bool took = row32 && token_f32(p, vanilla, has_kl, scale32, w32, lpv[q], ov[q], rv[q], av[q], t);
            if (PASS == PASS_FLOAT32) {
                if (!took) {
                    sums[5] += 1.0;
                    continue;
                }
                gv[q] = t.grad;
                sums32[0] += w32 * t.loss;
                sums32[1] += w32 * t.kl;
                if (vanilla) {
                    sums32[2] += (t.low || t.high) ? w32 : 0.0f;
                    sums32[3] += t.lower ? w32 : 0.0f;
                    // ppo_kl's -log ratio, in float64 as the float64 path takes it.
                    sums[4] += (double)w32 * ((double)ov[q] - (double)lpv[q]);
                } else {
                    sums32[2] += t.low ? w32 : 0.0f;
                    sums32[3] += t.high ? w32 : 0.0f;
                    sums32[4] += (t.low || t.high) ? w32 : 0.0f;
                }
                continue;
            }
            if (took) continue;
            rest[q] = true;
        }
        i64 at = at0 + q;
        double w = w32;
        double lp = lpv[q];
        double a = av[q];
        double o = ov[q];
        double rf = rv[q];
        if (!isfinite(lp) || !isfinite(a) || !isfinite(o) || !isfinite(rf)) {
            if (!bad_value) report(status, STATUS_NONFINITE_INPUT, at);
            bad_value = true;
            continue;
        }
        Token64 tok = token_f64(p, rt, scale, w, lp, o, rf, a, p.sequence && write_grad ? row_common[i] : 0.0);
        if (write_grad) {
            float g32 = (float)tok.g;
            if (!(fabsf(g32) < INFINITY)) {
                if (!bad_grad) report(status, STATUS_OVERFLOW, at);
                bad_grad = true;
            }
            gv[q] = g32;
        }
        sums[0] += w * tok.term.loss;
        sums[1] += w * tok.kl_metric;
        sums[2] += w * tok.term.m0;
        sums[3] += w * tok.term.m1;
        sums[4] += w * tok.term.m2;
        sums[5] += w * tok.term.d_ratio;
    }
    if (PASS == PASS_FLOAT32) {
#pragma unroll
        for (int k = 0; k < 5; k++) sums[k] += (double)sums32[k];
    }
    if (write_grad) {
        if (PASS == PASS_REST) {
            // Only the tokens this pass computed: the float32 pass wrote the others.
#pragma unroll
            for (int q = 0; q < LOSS_ITEMS; q++) {
                if (rest[q]) grad[at0 + q] = gv[q];
            }
        } else if (vec) {
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
        double* out = partials + (i64)blockIdx.x * LOSS_PARTIALS;
        if (PASS == PASS_REST) {
            // After the float32 pass's sums, in a fixed order; the count stays (token level:
            // loss_finalize_rows does not read it).
#pragma unroll
            for (int k = 0; k < 5; k++) out[k] += sums[k];
        } else {
#pragma unroll
            for (int k = 0; k < LOSS_PARTIALS; k++) out[k] = sums[k];
        }
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

// One token kernel: KERNEL_NAME runs loss_tokens' PASS.
#define LOSS_TOKENS_KERNEL(KERNEL_NAME, T, M, PASS)                                                       \
    extern "C" __global__ void __launch_bounds__(LOSS_BLOCK) KERNEL_NAME(                                 \
        const T* logp, const T* old, const T* ref, const float* advantages, const M* mask, LossParams p,   \
        const double* row_stats, const double* batch, const double* row_common, int write_grad,           \
        float* grad, double* partials, u32* status) {                                                     \
        loss_tokens<T, M, PASS>(logp, old, ref, advantages, mask, p, row_stats, batch, row_common,        \
                                write_grad, grad, partials, status);                                      \
    }

#define LOSS_KERNELS(NAME, T, M)                                                                          \
    extern "C" __global__ void __launch_bounds__(LOSS_BLOCK) loss_rows_##NAME(                            \
        const T* logp, const T* old, const float* advantages, const M* mask, LossParams p, double* row_stats, \
        u32* status) {                                                                                    \
        loss_rows<T, M>(logp, old, advantages, mask, p, row_stats, status);                               \
    }                                                                                                     \
    LOSS_TOKENS_KERNEL(loss_tokens_##NAME, T, M, PASS_FLOAT64)                                            \
    LOSS_TOKENS_KERNEL(loss_tokens32_##NAME, T, M, PASS_FLOAT32)                                          \
    LOSS_TOKENS_KERNEL(loss_tokens32_rest_##NAME, T, M, PASS_REST)

LOSS_KERNELS(f32_u8, float, u8)
LOSS_KERNELS(f32_f32, float, float)
LOSS_KERNELS(bf16_u8, bf16_t, u8)
LOSS_KERNELS(bf16_f32, bf16_t, float)
LOSS_KERNELS(f16_u8, f16_t, u8)
LOSS_KERNELS(f16_f32, f16_t, float)
