// Selective log-softmax, forward and backward: the GPU twin of src/logprob.rs.
//
// One block per row of logits (rows on the grid's x axis, so any number of tokens fits). Rows are
// addressed as (group, row in group) so a (B, T, V) view such as TRL's logits[:, :-1] needs no
// copy: row i starts at (i / group_rows) * group_stride + (i % group_rows) * row_stride. Each
// thread keeps an online log-sum-exp state over its logits - running max m, s = sum e^(z-m),
// t = sum e^(z-m)(z-m) - with f32 exponentials summed in f64, reading 16 bytes at a time when the
// row is aligned; the block then merges the states in a fixed order. logp = (z_y - m) - ln s,
// H = ln s - t/s (shifted, so no cancellation for large logits). A logit of -inf is probability
// 0; NaN and +inf are errors.
//
// The backward recomputes m and s (and t for the entropy) and writes each dlogits element once:
// dz_j = g (1[j=y] - p_j) - gH p_j (ln p_j + H), dlogits_j = dz_j / T (at the target 1 - p_y is
// -expm1(ln p_y), exact for confident tokens). Each element is read and
// written by the same thread after the block's barrier, so dlogits may alias the logits.

#define LOGPROB_BLOCK 256

// The running max m in f32 (the logits' own precision), and the sums s and t in f64: a 152k
// vocabulary puts ~600 terms into each thread's sums, and ln s must stay accurate to 1e-7 for
// log-probabilities of large logits (the CPU path sums in f64 too).
struct Lse {
    float m;
    double s, t;
};

__device__ __forceinline__ void lse_push(Lse& a, float z) {
    if (z > a.m) {
        if (a.s == 0.0) {
            a.s = 1.0;
            a.t = 0.0;
        } else {
            double shift = (double)a.m - (double)z;  // < 0
            double scale = exp(shift);
            a.t = scale * (a.t + shift * a.s);
            a.s = a.s * scale + 1.0;
        }
        a.m = z;
    } else {
        float d = z - a.m;
        double e = (double)expf(d);
        a.s += e;
        a.t += e * (double)d;
    }
}

// Merges b into a (both may be empty: s == 0).
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
    out.t = hi.t + scale * (lo.t + shift * lo.s);
    return out;
}

__device__ __forceinline__ i64 row_offset(i64 i, i64 group_rows, i64 group_stride, i64 row_stride) {
    return (i / group_rows) * group_stride + (i % group_rows) * row_stride;
}

// Visits the row's logits owned by this thread, in a fixed order: 16-byte packs when aligned,
// then the tail one by one.
template <typename T, typename F>
__device__ __forceinline__ void for_each_logit(const T* row, i64 vocab, bool packed, F f) {
    constexpr int VEC = 16 / sizeof(T);
    i64 start = 0;
    if (packed) {
        i64 packs = vocab / VEC;
        const uint4* p = reinterpret_cast<const uint4*>(row);
        for (i64 k = threadIdx.x; k < packs; k += LOGPROB_BLOCK) {
            uint4 pack = p[k];
            const T* e = reinterpret_cast<const T*>(&pack);
#pragma unroll
            for (int q = 0; q < VEC; q++) f(k * VEC + q, e[q]);
        }
        start = packs * VEC;
    }
    for (i64 j = start + threadIdx.x; j < vocab; j += LOGPROB_BLOCK) f(j, row[j]);
}

// The row's merged state (identical in every thread), or s == 0 for a row without a finite
// logit. Reports NaN / +inf logits.
template <typename T>
__device__ Lse row_lse(const T* row, i64 vocab, bool packed, float temperature, i64 row_index, u32* status) {
    __shared__ Lse states[LOGPROB_BLOCK / 32];
    Lse a = {-INFINITY, 0.0, 0.0};
    bool bad = false;
    for_each_logit(row, vocab, packed, [&](i64 j, T x) {
        float z = to_f32(x) / temperature;
        if (z == -INFINITY) return;
        if (!(z < INFINITY)) {
            bad = true;
            return;
        }
        lse_push(a, z);
    });
    if (bad) report(status, STATUS_NONFINITE_INPUT, row_index);
    // Warp merge in a fixed butterfly order, then the warps' states in index order.
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        Lse b;
        b.m = __shfl_xor_sync(0xffffffffu, a.m, offset);
        b.s = __shfl_xor_sync(0xffffffffu, a.s, offset);
        b.t = __shfl_xor_sync(0xffffffffu, a.t, offset);
        // Both lanes of a pair merge the same two states in the same order.
        bool lower = (threadIdx.x & offset) == 0;
        a = lower ? lse_merge(a, b) : lse_merge(b, a);
    }
    if ((threadIdx.x & 31) == 0) states[threadIdx.x / 32] = a;
    __syncthreads();
    Lse total = states[0];
#pragma unroll
    for (int w = 1; w < LOGPROB_BLOCK / 32; w++) total = lse_merge(total, states[w]);
    __syncthreads();
    return total;
}

template <typename T>
__device__ void logprob_forward(const T* logits, i64 rows, i64 vocab, i64 row_stride, i64 group_rows,
                                i64 group_stride, int packed, const i64* targets, float temperature, float* logp, float* entropy,
                                u32* status) {
    i64 i = blockIdx.x;
    if (i >= rows) return;
    const T* row = logits + row_offset(i, group_rows, group_stride, row_stride);
    Lse total = row_lse(row, vocab, packed != 0, temperature, i, status);
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
        logp[i] = (float)((double)(to_f32(row[y]) / temperature - total.m) - log_s);
    }
    if (entropy) entropy[i] = (float)(log_s - total.t / total.s);
}

template <typename T, typename O>
__device__ void logprob_backward(const T* logits, i64 rows, i64 vocab, i64 row_stride, i64 group_rows,
                                 i64 group_stride, int packed, const i64* targets, float temperature, const float* grad_logp,
                                 const float* grad_entropy, O* dlogits, i64 out_stride, u32* status) {
    i64 i = blockIdx.x;
    if (i >= rows) return;
    const T* row = logits + row_offset(i, group_rows, group_stride, row_stride);
    Lse total = row_lse(row, vocab, packed != 0, temperature, i, status);
    if (total.s == 0.0 && threadIdx.x == 0) report(status, STATUS_EMPTY_ROW, i);
    float log_s = (float)log(total.s);
    float h = (float)(log(total.s) - total.t / total.s);
    float g = grad_logp ? grad_logp[i] : 0.0f;
    float gh = grad_entropy ? grad_entropy[i] : 0.0f;
    i64 y = targets[i];
    if ((y < 0 || y >= vocab) && threadIdx.x == 0) report(status, STATUS_BAD_TARGET, i);
    // Every thread has finished reading the row (row_lse ends on a barrier) before any writes.
    // In place (dlogits == logits) the output shares the logits' layout; otherwise it is dense.
    O* out = (const void*)dlogits == (const void*)logits ? dlogits + row_offset(i, group_rows, group_stride, row_stride)
                                                          : dlogits + i * out_stride;
    for_each_logit(row, vocab, packed != 0, [&](i64 j, T x) {
        float z = to_f32(x) / temperature;
        float dz;
        if (z == -INFINITY) {
            dz = j == y ? g : 0.0f;
        } else {
            float logp_j = (z - total.m) - log_s;
            float p = expf(logp_j);
            // At the target, 1 - p as -expm1(logp): a confident token keeps its small gradient.
            float direct = j == y ? -expm1f(logp_j) : -p;
            dz = g * direct - gh * p * (logp_j + h);
        }
        store(out + j, dz / temperature);
    });
}

#define LOGPROB_KERNELS(NAME, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(LOGPROB_BLOCK) logprob_forward_##NAME(             \
        const T* logits, i64 rows, i64 vocab, i64 row_stride, i64 group_rows, i64 group_stride,     \
        int packed, const i64* targets, float temperature, float* logp, float* entropy, u32* status) { \
        logprob_forward<T>(logits, rows, vocab, row_stride, group_rows, group_stride, packed, targets, \
                           temperature, logp, entropy, status);                                     \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(LOGPROB_BLOCK) logprob_backward_##NAME(            \
        const T* logits, i64 rows, i64 vocab, i64 row_stride, i64 group_rows, i64 group_stride,     \
        int packed, const i64* targets, float temperature, const float* grad_logp,                  \
        const float* grad_entropy, T* dlogits, i64 out_stride, u32* status) {                       \
        logprob_backward<T, T>(logits, rows, vocab, row_stride, group_rows, group_stride, packed,   \
                               targets, temperature, grad_logp, grad_entropy, dlogits, out_stride,  \
                               status);                                                             \
    }

LOGPROB_KERNELS(f32, float)
LOGPROB_KERNELS(bf16, bf16_t)
LOGPROB_KERNELS(f16, f16_t)
