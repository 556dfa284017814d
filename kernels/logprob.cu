// Selective log-softmax, forward and backward: the GPU twin of src/logprob.rs.
//
// One block per row of logits (rows on the grid's x axis, so any number of tokens fits). Rows are
// addressed as (group, row in group) so a (B, T, V) view such as TRL's logits[:, :-1] needs no
// copy: row i starts at (i / group_rows) * group_stride + (i % group_rows) * row_stride.
//
// Forward: each thread keeps an online log-sum-exp state over its logits - running max m,
// s = sum e^(z-m), t = sum e^(z-m)(z-m) - reading 16 bytes (one "pack": 4 float32 or 8 half
// values) at a time, two packs in flight per thread. Within a pack the exponentials are summed
// in float32 (at most 8 terms <= 1: a few ulp; the terms at the running max, exactly 1, counted
// apart, so a confident row's 1 - p keeps its digits), and each pack's sum is added to the
// thread's float64 state, so the float64 conversions and adds run once per pack, not per logit. The
// block then merges the states in a fixed order. logp = (z_y - m) - ln s, H = ln s - t/s
// (shifted, so no cancellation for large logits). A logit of -inf is probability 0; NaN and +inf
// are errors. z = x * (1/T) with the reciprocal computed once on the host, as the CPU path does.
//
// The forward can save each row's (m, ln s, H) as float32 (12 bytes per row); the backward then
// skips its own pass over the logits and reads them once. Without saved statistics it recomputes
// them. It writes each dlogits element once, 16 bytes at a time where the output rows are
// aligned: dz_j = g (1[j=y] - p_j) - gH p_j (ln p_j + H), dlogits_j = dz_j / T (at the target
// 1 - p_y is -expm1(ln p_y), exact for confident tokens). Each element is read and written by the
// same thread, so dlogits may alias the logits.

#define LOGPROB_BLOCK 256
#define FLT_MAX_ 3.4028234663852886e38f

// The running max m in f32 (the logits' own precision), and the sums s and t in f64: a 152k
// vocabulary puts ~600 terms into each thread's sums, and ln s must stay accurate to 1e-7 for
// log-probabilities of large logits (the CPU path sums in f64 too).
struct Lse {
    float m;
    double s, t;
};

// Adds N scaled logits to the state; false when one of them is NaN or +inf.
template <int N, bool ENTROPY>
__device__ __forceinline__ bool lse_push(Lse& a, const float* z) {
    float pm = -INFINITY;
#pragma unroll
    for (int q = 0; q < N; q++) pm = fmaxf(pm, z[q]);  // fmaxf skips NaN: caught by the sum below
    if (pm == INFINITY) return false;
    if (pm == -INFINITY) {
        bool ok = true;
#pragma unroll
        for (int q = 0; q < N; q++) ok &= z[q] == -INFINITY;
        return ok;
    }
    if (pm > a.m) {
        if (a.s != 0.0) {
            double shift = (double)a.m - (double)pm;  // < 0
            double scale = exp(shift);
            if (ENTROPY) a.t = scale * (a.t + shift * a.s);
            a.s = a.s * scale;
        }
        a.m = pm;
    }
    // The terms at the running max (exactly 1) are counted apart from the others: a confident
    // row's sum is 1 + (a tiny rest), and 1 + rest in float32 would round the rest, which is
    // all of 1 - p at the max, to a few ulp of 1.
    float s = 0.0f, t = 0.0f;
    int ones = 0;
#pragma unroll
    for (int q = 0; q < N; q++) {
        float d = z[q] - a.m;
        float e = expf(d);
        bool at_max = d == 0.0f;
        ones += at_max ? 1 : 0;
        s += at_max ? 0.0f : e;
        // A -inf logit: e = 0 and d = -inf; the clamp keeps 0 * d at 0.
        if (ENTROPY) t = fmaf(e, fmaxf(d, -FLT_MAX_), t);
    }
    if (!(s == s)) return false;  // a NaN logit
    a.s += (double)s + (double)ones;
    if (ENTROPY) a.t += (double)t;
    return true;
}

// Merges b into a (both may be empty: s == 0).
template <bool ENTROPY>
__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
    if (b.s == 0.0) return a;
    if (a.s == 0.0) return b;
    Lse hi = a.m >= b.m ? a : b;
    Lse lo = a.m >= b.m ? b : a;
    double shift = (double)lo.m - (double)hi.m;  // <= 0
    double scale = exp(shift);
    Lse out;
    out.m = hi.m;
    out.s = hi.s + lo.s * scale;
    out.t = ENTROPY ? hi.t + scale * (lo.t + shift * lo.s) : 0.0;
    return out;
}

__device__ __forceinline__ i64 row_offset(i64 i, i64 group_rows, i64 group_stride, i64 row_stride) {
    return (i / group_rows) * group_stride + (i % group_rows) * row_stride;
}

// A 16-byte pack of T and its values as float.
template <typename T>
struct Pack {
    static constexpr int N = 16 / sizeof(T);
    uint4 raw;
    __device__ __forceinline__ void scaled(float inv_t, float* z) const {
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int q = 0; q < N; q++) z[q] = to_f32(e[q]) * inv_t;
    }
};

// The row's merged state (identical in every thread), or s == 0 for a row without a finite
// logit. Reports NaN / +inf logits.
template <typename T, bool ENTROPY>
__device__ Lse row_lse(const T* row, i64 vocab, bool packed, float inv_t, i64 row_index, u32* status) {
    __shared__ Lse states[LOGPROB_BLOCK / 32];
    constexpr int N = Pack<T>::N;
    Lse a = {-INFINITY, 0.0, 0.0};
    bool ok = true;
    i64 start = 0;
    if (packed) {
        i64 packs = vocab / N;
        const uint4* p = reinterpret_cast<const uint4*>(row);
        i64 k = threadIdx.x;
        // Two packs in flight per thread: loads are issued before either is summed.
        for (; k + LOGPROB_BLOCK < packs; k += 2 * LOGPROB_BLOCK) {
            Pack<T> x0, x1;
            x0.raw = p[k];
            x1.raw = p[k + LOGPROB_BLOCK];
            float z[N];
            x0.scaled(inv_t, z);
            ok &= lse_push<N, ENTROPY>(a, z);
            x1.scaled(inv_t, z);
            ok &= lse_push<N, ENTROPY>(a, z);
        }
        if (k < packs) {
            Pack<T> x0;
            x0.raw = p[k];
            float z[N];
            x0.scaled(inv_t, z);
            ok &= lse_push<N, ENTROPY>(a, z);
        }
        start = packs * N;
    }
    for (i64 j = start + threadIdx.x; j < vocab; j += LOGPROB_BLOCK) {
        float z = to_f32(row[j]) * inv_t;
        ok &= lse_push<1, ENTROPY>(a, &z);
    }
    if (!ok) report(status, STATUS_NONFINITE_INPUT, row_index);
    // Warp merge in a fixed butterfly order, then the warps' states in index order.
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        Lse b;
        b.m = __shfl_xor_sync(0xffffffffu, a.m, offset);
        b.s = __shfl_xor_sync(0xffffffffu, a.s, offset);
        b.t = ENTROPY ? __shfl_xor_sync(0xffffffffu, a.t, offset) : 0.0;
        // Both lanes of a pair merge the same two states in the same order.
        bool lower = (threadIdx.x & offset) == 0;
        a = lower ? lse_merge<ENTROPY>(a, b) : lse_merge<ENTROPY>(b, a);
    }
    if ((threadIdx.x & 31) == 0) states[threadIdx.x / 32] = a;
    __syncthreads();
    Lse total = states[0];
#pragma unroll
    for (int w = 1; w < LOGPROB_BLOCK / 32; w++) total = lse_merge<ENTROPY>(total, states[w]);
    __syncthreads();
    return total;
}

// stats (optional): float32 (rows, 3) = (m, ln s, H) for the backward.
template <typename T>
__device__ void logprob_forward(const T* logits, i64 rows, i64 vocab, i64 row_stride, i64 group_rows,
                                i64 group_stride, int packed, const i64* targets, float inv_t, float* logp,
                                float* entropy, float* stats, u32* status) {
    i64 i = blockIdx.x;
    if (i >= rows) return;
    const T* row = logits + row_offset(i, group_rows, group_stride, row_stride);
    Lse total = entropy ? row_lse<T, true>(row, vocab, packed != 0, inv_t, i, status)
                        : row_lse<T, false>(row, vocab, packed != 0, inv_t, i, status);
    if (threadIdx.x != 0) return;
    // logp = (z_y - m) - ln s: the shift first, so large logits lose nothing to cancellation.
    double log_s = log(total.s);
    if (total.s == 0.0) {
        report(status, STATUS_EMPTY_ROW, i);
        log_s = NAN;
    }
    i64 y = targets[i];
    if (y < 0 || y >= vocab) {
        report(status, STATUS_BAD_TARGET, i);
        logp[i] = NAN;
    } else {
        logp[i] = (float)((double)(to_f32(row[y]) * inv_t - total.m) - log_s);
    }
    float h = entropy ? (float)(log_s - total.t / total.s) : 0.0f;
    if (entropy) entropy[i] = h;
    if (stats) {
        stats[i * 3] = total.m;
        stats[i * 3 + 1] = (float)log_s;
        stats[i * 3 + 2] = h;
    }
}

// dlogits of one logit.
template <bool ENTROPY>
__device__ __forceinline__ float dlogit(float z, bool target, float m, float log_s, float h, float g, float gh,
                                        float inv_t) {
    float dz;
    if (z == -INFINITY) {
        dz = target ? g : 0.0f;
    } else {
        float logp_j = (z - m) - log_s;
        float p = expf(logp_j);
        // At the target, 1 - p as -expm1(logp): a confident token keeps its small gradient.
        float direct = target ? -expm1f(logp_j) : -p;
        dz = g * direct;
        if (ENTROPY) dz -= gh * p * (logp_j + h);
    }
    return dz * inv_t;
}

template <typename T, bool ENTROPY>
__device__ void backward_row(const T* row, T* out, i64 vocab, bool packed, bool out_packed, i64 y, float m,
                             float log_s, float h, float g, float gh, float inv_t) {
    constexpr int N = Pack<T>::N;
    i64 start = 0;
    if (packed) {
        i64 packs = vocab / N;
        const uint4* p = reinterpret_cast<const uint4*>(row);
        for (i64 k = threadIdx.x; k < packs; k += LOGPROB_BLOCK) {
            Pack<T> x;
            x.raw = p[k];
            float z[N];
            x.scaled(inv_t, z);
            Pack<T> o;
            T* e = reinterpret_cast<T*>(&o.raw);
#pragma unroll
            for (int q = 0; q < N; q++) store(e + q, dlogit<ENTROPY>(z[q], k * N + q == y, m, log_s, h, g, gh, inv_t));
            if (out_packed) {
                reinterpret_cast<uint4*>(out)[k] = o.raw;
            } else {
#pragma unroll
                for (int q = 0; q < N; q++) out[k * N + q] = e[q];
            }
        }
        start = packs * N;
    }
    for (i64 j = start + threadIdx.x; j < vocab; j += LOGPROB_BLOCK) {
        store(out + j, dlogit<ENTROPY>(to_f32(row[j]) * inv_t, j == y, m, log_s, h, g, gh, inv_t));
    }
}

// dlogits rows are addressed by their own layout (out_row_stride, out_group_rows,
// out_group_stride: dense, the logits' own in place, or any layout whose rows are disjoint, such
// as the matching view of a full-size gradient). out_packed: dlogits rows start on 16-byte
// boundaries (then written 16 bytes at a time).
template <typename T>
__device__ void logprob_backward(const T* logits, i64 rows, i64 vocab, i64 row_stride, i64 group_rows,
                                 i64 group_stride, int packed, const i64* targets, float inv_t, const float* stats,
                                 const float* grad_logp, const float* grad_entropy, T* dlogits,
                                 i64 out_row_stride, i64 out_group_rows, i64 out_group_stride, int out_packed,
                                 u32* status) {
    i64 i = blockIdx.x;
    if (i >= rows) return;
    const T* row = logits + row_offset(i, group_rows, group_stride, row_stride);
    float m, log_s, h = 0.0f;
    if (stats) {
        m = stats[i * 3];
        log_s = stats[i * 3 + 1];
        h = stats[i * 3 + 2];
    } else {
        Lse total = grad_entropy ? row_lse<T, true>(row, vocab, packed != 0, inv_t, i, status)
                                 : row_lse<T, false>(row, vocab, packed != 0, inv_t, i, status);
        if (total.s == 0.0 && threadIdx.x == 0) report(status, STATUS_EMPTY_ROW, i);
        m = total.m;
        log_s = (float)log(total.s);
        if (grad_entropy) h = (float)(log(total.s) - total.t / total.s);
    }
    float g = grad_logp ? grad_logp[i] : 0.0f;
    float gh = grad_entropy ? grad_entropy[i] : 0.0f;
    i64 y = targets[i];
    if (threadIdx.x == 0) {
        if (y < 0 || y >= vocab) report(status, STATUS_BAD_TARGET, i);
        // Checked here rather than by the host, which would have to wait for the stream.
        if (!(fabsf(g) < INFINITY) || !(fabsf(gh) < INFINITY)) report(status, STATUS_NONFINITE_INPUT, i);
    }
    // Without saved statistics every thread has finished reading the row (row_lse ends on a
    // barrier) before any writes; with them each element is read and written by one thread.
    T* out = dlogits + row_offset(i, out_group_rows, out_group_stride, out_row_stride);
    bool vec_out = packed != 0 && out_packed != 0;
    if (grad_entropy) {
        backward_row<T, true>(row, out, vocab, packed != 0, vec_out, y, m, log_s, h, g, gh, inv_t);
    } else {
        backward_row<T, false>(row, out, vocab, packed != 0, vec_out, y, m, log_s, h, g, gh, inv_t);
    }
}

#define LOGPROB_KERNELS(NAME, T)                                                                        \
    extern "C" __global__ void __launch_bounds__(LOGPROB_BLOCK) logprob_forward_##NAME(                 \
        const T* logits, i64 rows, i64 vocab, i64 row_stride, i64 group_rows, i64 group_stride,         \
        int packed, const i64* targets, float inv_t, float* logp, float* entropy, float* stats,         \
        u32* status) {                                                                                  \
        logprob_forward<T>(logits, rows, vocab, row_stride, group_rows, group_stride, packed, targets,  \
                           inv_t, logp, entropy, stats, status);                                        \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(LOGPROB_BLOCK) logprob_backward_##NAME(                \
        const T* logits, i64 rows, i64 vocab, i64 row_stride, i64 group_rows, i64 group_stride,         \
        int packed, const i64* targets, float inv_t, const float* stats, const float* grad_logp,        \
        const float* grad_entropy, T* dlogits, i64 out_row_stride, i64 out_group_rows,                  \
        i64 out_group_stride, int out_packed, u32* status) {                                            \
        logprob_backward<T>(logits, rows, vocab, row_stride, group_rows, group_stride, packed, targets,  \
                            inv_t, stats, grad_logp, grad_entropy, dlogits, out_row_stride,             \
                            out_group_rows, out_group_stride, out_packed, status);                      \
    }

LOGPROB_KERNELS(f32, float)
LOGPROB_KERNELS(bf16, bf16_t)
LOGPROB_KERNELS(f16, f16_t)
