// Shared by every kernel source: element loads, the status word, fixed-order block reductions.
// Prepended to each .cu file by src/cuda/source.rs (NVRTC gets no include path), so it uses no
// CUDA headers: half and bfloat16 are converted from their bits here.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// No <math.h> under NVRTC: the IEEE special values from their bits (the emulator has the host's).
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)
#endif

// Element types by their bits: the kernels read torch storage as raw memory.
struct bf16_t { u16 bits; };
struct f16_t { u16 bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16_t x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16_t x) {
#ifdef SGPO_EMULATOR
    return emu_f16_to_f32(x.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
#endif
}
// A uint8 mask is a weight like any other (2 counts twice, as on the CPU); bools are 0/1 bytes.
__device__ __forceinline__ float to_f32(u8 x) { return (float)x; }

// Round to nearest even, as torch's .to(bfloat16) does; NaN stays a quiet NaN.
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(bf16_t* p, float x) {
    u32 u = __float_as_uint(x);
    u16 bits;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        bits = (u16)((u >> 16) | 0x40u);
    } else {
        bits = (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    p->bits = bits;
}
__device__ __forceinline__ void store(f16_t* p, float x) {
#ifdef SGPO_EMULATOR
    p->bits = emu_f32_to_f16(x);
#else
    u16 bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(x));
    p->bits = bits;
#endif
}

// The status word every launch sequence writes its input errors into; the host reads it after
// the launches (one 16-byte copy) and raises the error the CPU path would raise. Bits say what
// went wrong; the second word keeps the complement of the smallest offending flat index
// (atomicMax of ~index: deterministic), so an all-zero buffer - which torch makes on the device
// without a host-to-device copy - is a clean status.
// The bits (STATUS_NONFINITE_INPUT, STATUS_OVERFLOW, ...) are defined from src/cuda/status.rs
// ahead of this file when a source is compiled.

__device__ __forceinline__ void report(u32* status, u32 bit, i64 where) {
    atomicOr(status, bit);
    // Indices fit 63 bits; where = -1 (no index) leaves the slot as it is.
    atomicMax((u64*)(status + 2), ~(u64)where);
}

// Fixed-order block reductions: each warp folds its lanes with the same shuffle tree, then thread
// 0 folds the warps' results in warp order. The shape depends only on the block size, so results
// are the same on every run (no atomics on floating-point values), and it costs one barrier for
// any number of values. The results are valid in thread 0 only. `scratch` holds K * BLOCK / 32
// values and may be reused after the call (it ends on a barrier). `Op::fold(a, b)` combines two
// values: SumOp adds, MaxOp takes fmax (NaN loses to any number).
struct SumOp {
    static __device__ __forceinline__ double fold(double a, double b) { return a + b; }
};
struct MaxOp {
    static __device__ __forceinline__ double fold(double a, double b) { return fmax(a, b); }
};

template <int BLOCK, int K, typename Op>
__device__ __forceinline__ void block_reduce(double* v, double* scratch) {
    constexpr int WARPS = BLOCK / 32;
#pragma unroll
    for (int k = 0; k < K; k++) {
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) v[k] = Op::fold(v[k], __shfl_down_sync(0xffffffffu, v[k], offset));
    }
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int k = 0; k < K; k++) scratch[k * WARPS + threadIdx.x / 32] = v[k];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
        for (int k = 0; k < K; k++) {
            double total = scratch[k * WARPS];
            for (int w = 1; w < WARPS; w++) total = Op::fold(total, scratch[k * WARPS + w]);
            v[k] = total;
        }
    }
    __syncthreads();
}

template <int BLOCK, int K>
__device__ __forceinline__ void block_sums(double* v, double* scratch) {
    block_reduce<BLOCK, K, SumOp>(v, scratch);
}

template <int BLOCK, int K>
__device__ __forceinline__ void block_maxes(double* v, double* scratch) {
    block_reduce<BLOCK, K, MaxOp>(v, scratch);
}

__device__ __forceinline__ double clampd(double x, double lo, double hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}
__device__ __forceinline__ double flagd(bool c) { return c ? 1.0 : 0.0; }

// The CPU path's exponential (src/exp.rs) clamps its argument to [-708, 709], so a huge log
// ratio gives a huge finite ratio (and 0 * ratio = 0 at a clip) instead of inf and NaN.
__device__ __forceinline__ double exp_c(double x) { return exp(fmin(fmax(x, -708.0), 709.0)); }

// exp(x) for the per-token terms: the float32 exponential of x rounded to float32, times
// 1 + (x - xf) to fold the argument's rounding back in (exp(x) = exp(xf) exp(x - xf), and
// |x - xf| <= 2^-24 |x|). Relative error about 2 float32 ulp (2.4e-7) for |x| < 80, where GPUs
// run it at several times the speed of the float64 exp; beyond that (or for NaN) exp_c.
__device__ __forceinline__ double exp_token(double x) {
    if (!(fabs(x) < 80.0)) return exp_c(x);
    float xf = (float)x;
    double e = (double)expf(xf);
    return e + e * (x - (double)xf);
}
