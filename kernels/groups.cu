// Group-level kernels: SGPO reward diversification and group-normalised advantages (the GPU twins
// of src/rewards.rs and src/advantages.rs), and the token broadcast of advantages.
//
// Groups are either contiguous (row r in group r / group_size) or given as CSR: `order` lists
// the rows group by group and `starts[g]..starts[g+1]` are group g's entries (the host builds
// them from group ids with a stable sort, so members keep row order). One thread owns one group
// and walks its members in order, so every sum has a fixed order. Batches are thousands of rows:
// these kernels are about keeping the data on the device, not about bandwidth.

#define GROUP_BLOCK 256
#define GROUP_STATS 5

struct Groups {
    i64 num_groups;
    i64 group_size;      // > 0: contiguous groups; 0: CSR through order/starts
    const i64* order;
    const i64* starts;
};

__device__ __forceinline__ i64 group_count(const Groups& g, i64 group) {
    return g.group_size > 0 ? g.group_size : g.starts[group + 1] - g.starts[group];
}

__device__ __forceinline__ i64 group_member(const Groups& g, i64 group, i64 k) {
    return g.group_size > 0 ? group * g.group_size + k : g.order[g.starts[group] + k];
}

#define CREDIT_NONE -1.0
#define CREDIT_BAD_VERDICT -2.0
#define CREDIT_BAD_CREDIT -3.0

// A row's credit; CREDIT_NONE for "not judged", CREDIT_BAD_* for an invalid verdict (the caller
// reports it once, after its loop: atomics inside the loops made ptxas spill).
__device__ double row_credit(const i64* first_error, const i64* num_steps, const double* credit, i64 row) {
    if (first_error) {
        i64 k = first_error[row], n = num_steps[row];
        if (n < 0 || k < -2 || (k != -2 && (n == 0 || k >= n))) return CREDIT_BAD_VERDICT;
        if (k == -2) return CREDIT_NONE;
        return k == -1 ? 1.0 : (double)k / (double)n;
    }
    double c = credit[row];
    if (isnan(c)) return CREDIT_NONE;
    if (c >= 0.0 && c <= 1.0) return c;
    return CREDIT_BAD_CREDIT;
}

// The credit rule f(c) (src/credit_rule.rs): rule 0 prefix (c), 1 logistic sigma(beta (c - gamma)).
__device__ __forceinline__ double credit_rule(int rule, double beta, double gamma, double c) {
    // __drcp_rn is 1 / x correctly rounded, as the division is, without its slow-path call.
    return rule == 1 ? __drcp_rn(1.0 + exp(-beta * (c - gamma))) : c;
}

// mode: 0 all_negative, 1 all_incorrect. group_stats[g * 5 ..]: all_negative, diversified,
// judge_missing, credit sum, credited rows.
extern "C" __global__ void __launch_bounds__(GROUP_BLOCK) sgpo_rewards_groups(
    Groups groups, const double* rewards, const i64* first_error, const i64* num_steps, const double* credit,
    const u8* correct, double credit_scale, int mode, int rule, double beta, double gamma, float* out_rewards,
    float* out_credit, u8* out_all_negative, u8* out_diversified, double* group_stats, u32* status) {
    i64 g = (i64)blockIdx.x * GROUP_BLOCK + threadIdx.x;
    if (g >= groups.num_groups) return;
    i64 count = group_count(groups, g);
    bool any_scorable = false, any_correct = false;
    // The group's first offending rows (members come in row order), reported after the loop.
    i64 inf_row = -1, overflow_row = -1, verdict_row = -1, credit_row = -1;
    for (i64 k = 0; k < count; k++) {
        i64 row = group_member(groups, g, k);
        double r = rewards[row];
        if (isinf(r) && inf_row < 0) inf_row = row;
        double c = row_credit(first_error, num_steps, credit, row);
        if (c == CREDIT_BAD_VERDICT && verdict_row < 0) verdict_row = row;
        if (c == CREDIT_BAD_CREDIT && credit_row < 0) credit_row = row;
        out_credit[row] = c < 0.0 ? 0.0f : (float)c;
        out_rewards[row] = (float)r;
        if (isinf((float)r) && !isinf(r) && overflow_row < 0) overflow_row = row;
        out_diversified[row] = 0;
        bool scorable = !isnan(r);
        bool is_correct = correct ? correct[row] != 0 : r > 0.0;
        any_scorable |= scorable;
        any_correct |= scorable && is_correct;
    }
    bool all_negative = any_scorable && !any_correct;
    for (i64 k = 0; k < count; k++) out_all_negative[group_member(groups, g, k)] = all_negative ? 1 : 0;
    bool eligible = mode == 0 ? all_negative : true;
    // Rows to credit: scorable and incorrect. Any of them without a verdict keeps the group GRPO.
    i64 to_credit = 0;
    bool missing = false;
    for (i64 k = 0; k < count; k++) {
        i64 row = group_member(groups, g, k);
        double r = rewards[row];
        bool is_correct = correct ? correct[row] != 0 : r > 0.0;
        if (isnan(r) || is_correct) continue;
        to_credit++;
        if (row_credit(first_error, num_steps, credit, row) < 0.0) missing = true;
    }
    double credit_sum = 0.0, credited = 0.0;
    bool diversified = eligible && to_credit > 0 && !missing;
    if (diversified) {
        for (i64 k = 0; k < count; k++) {
            i64 row = group_member(groups, g, k);
            double r = rewards[row];
            bool is_correct = correct ? correct[row] != 0 : r > 0.0;
            if (isnan(r) || is_correct) continue;
            double c = row_credit(first_error, num_steps, credit, row);
            float value = (float)(r + credit_scale * credit_rule(rule, beta, gamma, c));
            if (isinf(value) && (overflow_row < 0 || row < overflow_row)) overflow_row = row;
            out_rewards[row] = value;
            out_diversified[row] = 1;
            credit_sum += c;
            credited += 1.0;
        }
    }
    if (inf_row >= 0) report(status, STATUS_NONFINITE_REWARD, inf_row);
    if (verdict_row >= 0) report(status, STATUS_BAD_VERDICT, verdict_row);
    if (credit_row >= 0) report(status, STATUS_BAD_CREDIT, credit_row);
    if (overflow_row >= 0) report(status, STATUS_OVERFLOW, overflow_row);
    double* stats = group_stats + g * GROUP_STATS;
    stats[0] = all_negative ? 1.0 : 0.0;
    stats[1] = diversified ? 1.0 : 0.0;
    stats[2] = (eligible && to_credit > 0 && missing) ? 1.0 : 0.0;
    stats[3] = credit_sum;
    stats[4] = credited;
}

// Sums the groups' stats in a fixed order: out = all_negative, diversified, judge_missing groups,
// credit sum, credited rows.
extern "C" __global__ void __launch_bounds__(GROUP_BLOCK) sgpo_rewards_stats(i64 num_groups, const double* group_stats,
                                                                           double* out) {
    __shared__ double scratch[GROUP_STATS * GROUP_BLOCK / 32];
    double acc[GROUP_STATS];
    for (int k = 0; k < GROUP_STATS; k++) {
        acc[k] = 0.0;
        for (i64 g = threadIdx.x; g < num_groups; g += GROUP_BLOCK) acc[k] += group_stats[g * GROUP_STATS + k];
    }
    block_sums<GROUP_BLOCK, GROUP_STATS>(acc, scratch);
    if (threadIdx.x == 0) {
        for (int k = 0; k < GROUP_STATS; k++) out[k] = acc[k];
    }
}

// Sample standard deviation of the non-NaN rewards (two passes), NaN below two values.
extern "C" __global__ void __launch_bounds__(GROUP_BLOCK) batch_std(const double* rewards, i64 rows, double* out) {
    __shared__ double scratch[2 * GROUP_BLOCK / 32];
    __shared__ double shared_mean;
    double v[2] = {0.0, 0.0};  // count, sum
    for (i64 i = threadIdx.x; i < rows; i += GROUP_BLOCK) {
        double r = rewards[i];
        if (!isnan(r)) {
            v[0] += 1.0;
            v[1] += r;
        }
    }
    block_sums<GROUP_BLOCK, 2>(v, scratch);
    if (threadIdx.x == 0) shared_mean = v[1] / v[0];
    __syncthreads();
    double mean = shared_mean;
    double centred[1] = {0.0};
    for (i64 i = threadIdx.x; i < rows; i += GROUP_BLOCK) {
        double r = rewards[i];
        if (!isnan(r)) centred[0] += (r - mean) * (r - mean);
    }
    block_sums<GROUP_BLOCK, 1>(centred, scratch);
    if (threadIdx.x == 0) out[0] = v[0] < 2.0 ? NAN : sqrt(centred[0] / (v[0] - 1.0));
}

// scale: 0 group, 1 batch, 2 none; singleton: 0 zero, 1 unit.
extern "C" __global__ void __launch_bounds__(GROUP_BLOCK) group_advantages(Groups groups, const double* rewards,
                                                                         int scale, double eps, int singleton,
                                                                         const double* batch_std, float* out,
                                                                         u32* status) {
    i64 g = (i64)blockIdx.x * GROUP_BLOCK + threadIdx.x;
    if (g >= groups.num_groups) return;
    i64 count = group_count(groups, g);
    double n = 0.0, sum = 0.0;
    // Members are in row order: the first offending member is the group's smallest index, and
    // reporting once after the loop keeps the atomics out of it.
    i64 bad_row = -1;
    for (i64 k = 0; k < count; k++) {
        i64 row = group_member(groups, g, k);
        double r = rewards[row];
        if (isinf(r) && bad_row < 0) bad_row = row;
        if (!isnan(r)) {
            n += 1.0;
            sum += r;
        }
    }
    if (bad_row >= 0) report(status, STATUS_NONFINITE_REWARD, bad_row);
    double mean = n > 0.0 ? sum / n : NAN;
    double std = NAN;
    if (n >= 2.0) {
        double centred = 0.0;
        for (i64 k = 0; k < count; k++) {
            double r = rewards[group_member(groups, g, k)];
            if (!isnan(r)) centred += (r - mean) * (r - mean);
        }
        std = sqrt(centred / (n - 1.0));
    }
    double divisor;
    if (n == 1.0 && singleton == 1) {
        mean = 0.0;
        divisor = scale == 2 ? 1.0 : 1.0 + eps;
    } else {
        divisor = scale == 0 ? std + eps : (scale == 1 ? batch_std[0] + eps : 1.0);
    }
    i64 overflow_row = -1;
    for (i64 k = 0; k < count; k++) {
        i64 row = group_member(groups, g, k);
        double a = (rewards[row] - mean) / divisor;
        if (isnan(a)) {
            out[row] = 0.0f;
            continue;
        }
        float a32 = (float)a;
        if (isinf(a32) && overflow_row < 0) overflow_row = row;
        out[row] = a32;
    }
    if (overflow_row >= 0) report(status, STATUS_OVERFLOW, overflow_row);
}

// The token broadcast out[i, t] = a_i * mask[i, t]: one block per (row, chunk of
// TOKEN_CHUNK tokens); each thread takes TOKEN_STEPS groups of four tokens, GROUP_BLOCK groups
// apart, and loads all of their masks before it stores anything (several loads in flight per
// thread, and the row's setup paid once per sixteen tokens). Where `vec` says the mask and the
// output are co-aligned, a row's tokens from its first 16-byte boundary of `out` on are read 4
// (or 16) bytes and written 16 bytes at a time; the row's head before that boundary and its tail
// are scalar. The row's advantage is read once per thread and checked once per row.
#define TOKEN_ITEMS 4
#define TOKEN_STEPS 4
#define TOKEN_CHUNK (GROUP_BLOCK * TOKEN_ITEMS * TOKEN_STEPS)

template <typename M>
__device__ __forceinline__ float token_value(float a, M m, i64 at, u32* status) {
    float w = to_f32(m);
    // A uint8 weight is always a valid, finite weight.
    if (sizeof(M) == 4 && !(w >= 0.0f && w < INFINITY)) report(status, STATUS_BAD_MASK, at);
    float value = a * w;
    if (isinf(value)) report(status, STATUS_OVERFLOW, at);
    return value;
}

// Four mask values from one aligned load.
__device__ __forceinline__ void load4(const u8* p, u8* m) {
    u32 word = *reinterpret_cast<const u32*>(p);
#pragma unroll
    for (int q = 0; q < 4; q++) m[q] = (u8)(word >> (8 * q));
}
__device__ __forceinline__ void load4(const float* p, float* m) {
    float4 v = *reinterpret_cast<const float4*>(p);
    m[0] = v.x;
    m[1] = v.y;
    m[2] = v.z;
    m[3] = v.w;
}

template <typename M>
__device__ void token_advantages(const float* advantages, const M* mask, i64 rows, i64 len, i64 chunks, int vec,
                                 float* out, u32* status) {
    i64 i = blockIdx.x / chunks;
    i64 chunk = blockIdx.x % chunks;
    if (i >= rows) return;
    float a = advantages[i];
    if (chunk == 0 && threadIdx.x == 0 && !(fabsf(a) < INFINITY)) report(status, STATUS_NONFINITE_INPUT, i);
    i64 base = i * len;
    // Tokens before the row's first 16-byte boundary of `out` (mask and out are co-aligned).
    i64 head = vec ? (TOKEN_ITEMS - base % TOKEN_ITEMS) % TOKEN_ITEMS : 0;
    if (head > len) head = len;
    if (chunk == 0 && threadIdx.x < head) {
        i64 at = base + threadIdx.x;
        out[at] = token_value(a, mask[at], at, status);
    }
    i64 first = head + chunk * TOKEN_CHUNK + (i64)threadIdx.x * TOKEN_ITEMS;
    M m[TOKEN_STEPS][TOKEN_ITEMS];
#pragma unroll
    for (int k = 0; k < TOKEN_STEPS; k++) {
        i64 t0 = first + (i64)k * GROUP_BLOCK * TOKEN_ITEMS;
        if (vec && t0 + TOKEN_ITEMS <= len) load4(mask + base + t0, m[k]);
    }
#pragma unroll
    for (int k = 0; k < TOKEN_STEPS; k++) {
        i64 t0 = first + (i64)k * GROUP_BLOCK * TOKEN_ITEMS;
        if (vec && t0 + TOKEN_ITEMS <= len) {
            i64 at = base + t0;
            float4 v;
            v.x = token_value(a, m[k][0], at, status);
            v.y = token_value(a, m[k][1], at + 1, status);
            v.z = token_value(a, m[k][2], at + 2, status);
            v.w = token_value(a, m[k][3], at + 3, status);
            *reinterpret_cast<float4*>(out + at) = v;
        } else {
#pragma unroll
            for (int q = 0; q < TOKEN_ITEMS; q++) {
                i64 t = t0 + q;
                if (t < len) out[base + t] = token_value(a, mask[base + t], base + t, status);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(GROUP_BLOCK) token_advantages_u8(const float* advantages, const u8* mask,
                                                                            i64 rows, i64 len, i64 chunks, int vec,
                                                                            float* out, u32* status) {
    token_advantages<u8>(advantages, mask, rows, len, chunks, vec, out, status);
}

extern "C" __global__ void __launch_bounds__(GROUP_BLOCK) token_advantages_f32(const float* advantages,
                                                                             const float* mask, i64 rows, i64 len,
                                                                             i64 chunks, int vec, float* out,
                                                                             u32* status) {
    token_advantages<float>(advantages, mask, rows, len, chunks, vec, out, status);
}
