// The CUDA emulator: what the kernels need of CUDA C++, for the host's C++ compiler, so the
// kernels themselves (not a re-implementation) run on a machine without a GPU. Compiled ahead of
// common.cuh and a .cu file by src/cuda/emulator.rs (with SGPO_EMULATOR defined), which then calls
// the launch trampolines it generates at the end of the file.
//
// A block's threads are fibers (ucontext) on one OS thread, scheduled round-robin: a thread runs
// until it reaches a barrier (__syncthreads, or a warp shuffle, which is an exchange through a
// per-warp buffer between two warp barriers) or returns. Blocks run one after another. So atomics
// are plain reads and writes, `__shared__` is a static (one block at a time), and results depend
// only on the kernel's own fixed reduction order. What it does not emulate: the device's
// floating-point library (expf, exp, log here are the host's, a few ulp apart), FMA contraction,
// memory-ordering races between threads that skip a barrier, and timing.
//
// A barrier no live thread of the block (or warp) can reach is reported as a deadlock instead of
// hanging; an out-of-bounds access is the host's (a crash, as on the device a fault would be),
// and a misaligned vector access is caught by the undefined-behaviour sanitizer the library is
// built with where the compiler has it (the 16-byte types below carry their alignment).

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

using std::isfinite;
using std::isinf;
using std::isnan;

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

// The running thread's coordinates: set by the scheduler before it resumes a thread.
inline uint3 threadIdx, blockIdx, blockDim, gridDim;

template <typename To, typename From>
inline To emu_bits(From x) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To out;
    memcpy(&out, &x, sizeof(To));
    return out;
}
inline float __int_as_float(int x) { return emu_bits<float>(x); }
inline float __uint_as_float(unsigned x) { return emu_bits<float>(x); }
inline unsigned __float_as_uint(float x) { return emu_bits<unsigned>(x); }
inline int __float_as_int(float x) { return emu_bits<int>(x); }
inline double __drcp_rn(double x) { return 1.0 / x; }

// IEEE half from and to its bits (round to nearest even), as the device's cvt instructions.
inline float emu_f16_to_f32(unsigned short bits) { return (float)emu_bits<_Float16>(bits); }
inline unsigned short emu_f32_to_f16(float x) { return emu_bits<unsigned short>((_Float16)x); }

// One thread at a time runs: atomics need no atomicity.
inline unsigned atomicOr(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p = old | v;
    return old;
}
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
    unsigned long long old = *p;
    if (v > old) *p = v;
    return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
    unsigned old = *p;
    if (v > old) *p = v;
    return old;
}

namespace emu {

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr int MAX_BLOCK = 1024;

struct Barrier {
    int live = 0, arrived = 0;
    unsigned long long generation = 0;
};

struct Scheduler {
    ucontext_t home;
    std::vector<ucontext_t> contexts;
    std::vector<std::vector<char>> stacks;
    std::vector<bool> done;
    std::vector<int> shuffle_phase;  // per thread: which of the warp's two buffers is next
    Barrier block;
    std::vector<Barrier> warps;
    // Two exchange buffers per warp, 32 lanes of 8 bytes each.
    std::vector<unsigned long long> exchange;
    int threads = 0, current = 0;
    bool progress = false;
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
};

inline Scheduler& scheduler() {
    static Scheduler s;
    return s;
}

inline void yield() {
    Scheduler& s = scheduler();
    swapcontext(&s.contexts[s.current], &s.home);
}

// Arrive at `b` and wait until every live member has arrived (members that returned no longer
// count, as exited threads do not on the device).
inline void arrive(Barrier& b) {
    Scheduler& s = scheduler();
    s.progress = true;
    unsigned long long generation = b.generation;
    if (++b.arrived == b.live) {
        b.arrived = 0;
        b.generation++;
        return;
    }
    while (b.generation == generation) yield();
}

inline void leave(Barrier& b) {
    b.live--;
    if (b.arrived > 0 && b.arrived == b.live) {
        b.arrived = 0;
        b.generation++;
    }
}

inline void entry() {
    Scheduler& s = scheduler();
    s.body(s.body_arg);
    s.done[s.current] = true;
    s.progress = true;
    leave(s.block);
    leave(s.warps[s.current / 32]);
    // Returns to `home` through uc_link.
}

// Runs `body` once per thread of every block of the grid. Returns null or a failure message.
inline const char* run_grid(uint3 grid, unsigned block, void (*body)(void*), void* arg) {
    Scheduler& s = scheduler();
    if (block == 0 || block > (unsigned)MAX_BLOCK) return "block size out of range";
    s.threads = (int)block;
    s.contexts.resize(block);
    s.stacks.resize(block);
    s.done.assign(block, false);
    s.body = body;
    s.body_arg = arg;
    int warps = (int)((block + 31) / 32);
    blockDim = {block, 1, 1};
    gridDim = grid;
    for (unsigned z = 0; z < grid.z; z++) {
        for (unsigned y = 0; y < grid.y; y++) {
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = {x, y, z};
                s.block = Barrier{(int)block, 0, 0};
                s.warps.assign(warps, Barrier{});
                for (int w = 0; w < warps; w++) s.warps[w].live = (w + 1) * 32 <= (int)block ? 32 : (int)block - w * 32;
                s.exchange.assign((size_t)warps * 64, 0);
                s.shuffle_phase.assign(block, 0);
                for (unsigned t = 0; t < block; t++) {
                    s.done[t] = false;
                    if (s.stacks[t].empty()) s.stacks[t].resize(STACK_BYTES);
                    getcontext(&s.contexts[t]);
                    s.contexts[t].uc_stack.ss_sp = s.stacks[t].data();
                    s.contexts[t].uc_stack.ss_size = STACK_BYTES;
                    s.contexts[t].uc_link = &s.home;
                    makecontext(&s.contexts[t], entry, 0);
                }
                int left = (int)block;
                while (left > 0) {
                    s.progress = false;
                    for (unsigned t = 0; t < block; t++) {
                        if (s.done[t]) continue;
                        s.current = (int)t;
                        threadIdx = {t, 0, 0};
                        swapcontext(&s.home, &s.contexts[t]);
                        if (s.done[t]) left--;
                    }
                    // A full round in which no thread arrived anywhere or returned: every live
                    // thread waits at a barrier the others cannot reach.
                    if (!s.progress && left > 0) return "deadlock: threads wait at a barrier the others never reach";
                }
            }
        }
    }
    return nullptr;
}

template <typename T>
inline T shuffle(T v, int source_lane) {
    static_assert(sizeof(T) <= 8, "shuffles move up to 8 bytes");
    Scheduler& s = scheduler();
    int t = (int)threadIdx.x, warp = t / 32, lane = t % 32;
    int& phase = s.shuffle_phase[t];
    unsigned long long* buffer = &s.exchange[((size_t)warp * 2 + phase) * 32];
    memcpy(&buffer[lane], &v, sizeof(T));
    // The next shuffle writes the other buffer; a thread can only write this one again after
    // the following barrier, by which time every lane has read it.
    arrive(s.warps[warp]);
    phase ^= 1;
    T out = v;
    if (source_lane >= 0 && source_lane < 32 && warp * 32 + source_lane < s.threads) memcpy(&out, &buffer[source_lane], sizeof(T));
    return out;
}

template <typename F, typename... A, size_t... I>
inline void call(F f, void** params, std::index_sequence<I...>) {
    f(*static_cast<A*>(params[I])...);
}

template <typename... A>
struct Launch {
    void (*kernel)(A...);
    void** params;
    static void run(void* self) {
        Launch* l = static_cast<Launch*>(self);
        call<void (*)(A...), A...>(l->kernel, l->params, std::index_sequence_for<A...>{});
    }
};

// cuLaunchKernel's convention: one pointer per parameter.
template <typename... A>
inline const char* launch(void (*kernel)(A...), void** params, unsigned gx, unsigned gy, unsigned gz,
                          unsigned block) {
    Launch<A...> l{kernel, params};
    return run_grid(uint3{gx, gy, gz}, block, &Launch<A...>::run, &l);
}

}  // namespace emu

inline void __syncthreads() { emu::arrive(emu::scheduler().block); }

template <typename T>
inline T __shfl_down_sync(unsigned, T v, int offset) {
    int lane = (int)(threadIdx.x % 32);
    return emu::shuffle(v, lane + offset < 32 ? lane + offset : lane);
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    return emu::shuffle(v, (int)(threadIdx.x % 32) ^ mask);
}

// Generated after the source by src/cuda/emulator.rs, once per kernel.
#define SGPO_EMULATOR_KERNEL(NAME)                                                                            \
    extern "C" const char* sgpo_emulate_##NAME(void** params, unsigned gx, unsigned gy, unsigned gz,           \
                                               unsigned block) {                                            \
        return emu::launch(NAME, params, gx, gy, gz, block);                                                \
    }
