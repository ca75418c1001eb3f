// The host side of the CUDA emulation (tests/cuda_emu/README.md): kernel launches as fibers, and the subset of the
// CUDA runtime API the backend calls, synchronously, on one emulated sm_90 device.
//
// Launch: blocks run one after another. The threads of a block are fibers on a pool of stacks; a fiber
// runs until it reaches __syncthreads, a warp exchange (shuffle, mma.sync) or its end, then the scheduler resumes
// the next one in thread order. A barrier that some thread never reaches (it exited, or waits at another barrier)
// is reported as a deadlock, since it is undefined behaviour on the GPU. Once block 0 of a launch finished without
// any thread waiting, the kernel is taken to be free of block-level synchronisation and the remaining blocks run
// their threads as plain calls (elementwise kernels have up to 65536 blocks); a later barrier then aborts.
//
// Memory: device and pinned allocations are host memory filled with 0xFF bytes (NaN as fp32 and as bf16), so a
// kernel reading memory nobody wrote produces NaN, not a plausible zero. Every allocation is registered, and
// copies, memsets and cuBLASLt operands are checked to lie inside a device allocation of the right kind.
#include <cuda_runtime.h>

#include <map>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

#include "emu_memory.h"

namespace emu {

thread_state current;

[[noreturn]] void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "CUDA emulator: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

// ---- fibers ------------------------------------------------------------------------------------------------------

enum { MAX_THREADS = 1024, STACK_BYTES = 256 << 10 };

// Fiber t runs thread t of every block: started once (makecontext, setcontext), it loops over the blocks it is
// resumed for. Switches are _setjmp/_longjmp pairs, which, unlike swapcontext and a fresh context per block, make no
// sigprocmask system call: on VMs with slow system calls those made the emulated training test 10× slower.
// AddressSanitizer builds switch with swapcontext, which ASan follows.
#if defined(__SANITIZE_ADDRESS__)
#define EMU_SWAPCONTEXT 1
#endif

struct fiber {
    ucontext_t context;
    jmp_buf at;   // where it yielded
    bool started;
};

struct barrier {
    unsigned arrived = 0, generation = 0;
};

struct block_state {
    unsigned threads;
    std::vector<thread_state> states;
    std::vector<char> done;
    barrier block_bar;
    std::vector<barrier> warp_bars;
    std::vector<uint64_t> slots[2];          // warp_exchange: one 8-byte slot per thread, double-buffered
    std::vector<uint32_t> slots6[2];         // warp_exchange6: six registers per thread
    std::vector<unsigned char> smem;         // dynamic shared memory
    unsigned long events = 0;                // barrier releases and finished threads (progress)
    bool fibers;                             // false: threads run as plain calls and must not wait
    bool waited = false;                     // some thread of this block waited at a barrier
    const char *kernel;
    void (*body)(void *);
    void *ctx;
};

#ifdef EMU_SWAPCONTEXT
static ucontext_t g_scheduler;
#else
static jmp_buf g_scheduler_jump;
#endif
static char *g_stacks;   // MAX_THREADS stacks, a guard page below each
static fiber g_fibers[MAX_THREADS];
static block_state *g_block;

// The running fiber hands control back to the scheduler until resume() picks it again.
static void yield() {
    fiber &f = g_fibers[current.linear];
#ifdef EMU_SWAPCONTEXT
    swapcontext(&f.context, &g_scheduler);
#else
    if (!_setjmp(f.at)) _longjmp(g_scheduler_jump, 1);
#endif
}

[[noreturn]] static void fiber_entry() {
    for (;;) {   // thread current.linear of the block g_block, then of the next block it is resumed for
        block_state &b = *g_block;
        b.body(b.ctx);
        b.done[current.linear] = 1;
        b.events++;
        yield();
    }
}

// Runs thread t's fiber until it yields (a barrier, or the end of its thread).
static void resume(unsigned t) {
    fiber &f = g_fibers[t];
    if (!f.started) {
        f.started = true;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = g_stacks + (size_t)t * (STACK_BYTES + 4096) + 4096;
        f.context.uc_stack.ss_size = STACK_BYTES;
        f.context.uc_link = nullptr;   // fiber_entry never returns
        makecontext(&f.context, fiber_entry, 0);
#ifdef EMU_SWAPCONTEXT
    }
    swapcontext(&g_scheduler, &f.context);
#else
        if (!_setjmp(g_scheduler_jump)) setcontext(&f.context);
        return;
    }
    if (!_setjmp(g_scheduler_jump)) _longjmp(f.at, 1);
#endif
}

static void wait(barrier &bar, unsigned expected, const char *what) {
    block_state &b = *current.block;
    if (!b.fibers)
        fail("kernel %s: %s in block (%u,%u,%u) although block 0 never synchronised; the emulator ran this block "
             "without fibers (set HDLM_CUDA_EMU_FIBERS=1)", b.kernel, what, current.bid.x, current.bid.y,
             current.bid.z);
    b.waited = true;
    unsigned generation = bar.generation;
    if (++bar.arrived == expected) {
        bar.arrived = 0;
        bar.generation++;
        b.events++;
        return;
    }
    while (bar.generation == generation) yield();
}

void sync_block() { wait(current.block->block_bar, current.block->threads, "__syncthreads"); }

static unsigned warp_lanes(const block_state &b, unsigned warp) {
    unsigned first = warp * warpSize;
    return b.threads - first < (unsigned)warpSize ? b.threads - first : warpSize;
}

static void check_mask(const block_state &b, unsigned mask) {
    unsigned lanes = warp_lanes(b, current.linear / warpSize);
    unsigned full = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    if (mask != full)
        fail("kernel %s: warp operation with member mask %#x; the emulator supports whole warps only (%#x)",
             b.kernel, mask, full);
}

const uint64_t *warp_exchange(uint64_t mine, unsigned mask) {
    block_state &b = *current.block;
    check_mask(b, mask);
    unsigned warp = current.linear / warpSize, parity = current.exchanges++ & 1;
    b.slots[parity][current.linear] = mine;
    wait(b.warp_bars[warp], warp_lanes(b, warp), "warp exchange");
    return &b.slots[parity][warp * warpSize];
}

const uint32_t *warp_exchange6(const uint32_t mine[6], unsigned mask) {
    block_state &b = *current.block;
    check_mask(b, mask);
    unsigned warp = current.linear / warpSize, parity = current.exchanges++ & 1;
    memcpy(&b.slots6[parity][6 * current.linear], mine, 6 * sizeof(uint32_t));
    wait(b.warp_bars[warp], warp_lanes(b, warp), "mma.sync");
    return &b.slots6[parity][6 * warp * warpSize];
}

void *dynamic_smem() { return current.block->smem.data(); }

static inline float bf16_half(uint32_t w, int high) {
    uint32_t u = high ? (w & 0xffff0000u) : (w << 16);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const uint32_t *warp = warp_exchange6(mine, 0xffffffffu);
    if (warp_lanes(*current.block, current.linear / warpSize) != 32)
        fail("kernel %s: mma.sync in a partial warp", current.block->kernel);
    // A(row, k): lane (row % 8)·4 + (k % 8)/2, register row/8 + 2·(k/8), half k % 2; B(k, n): lane n·4 + (k % 8)/2,
    // register 4 + k/8, half k % 2.
    unsigned lane = current.linear % warpSize;
    for (int r = 0; r < 4; r++) {
        int row = lane / 4 + 8 * (r / 2), col = 2 * (lane % 4) + r % 2;
        float acc = c[r];
        for (int k = 0; k < 16; k++) {
            float x = bf16_half(warp[6 * ((row % 8) * 4 + (k % 8) / 2) + row / 8 + 2 * (k / 8)], k % 2);
            float y = bf16_half(warp[6 * (col * 4 + (k % 8) / 2) + 4 + k / 8], k % 2);
            acc += x * y;
        }
        c[r] = acc;
    }
}

void ldmatrix_x4_b16(uint32_t r[4], const void *row, bool trans) {
    if ((uintptr_t)row % 16)
        fail("kernel %s: ldmatrix row address %p is not 16-byte aligned", current.block->kernel, row);
    const uint64_t *warp = warp_exchange((uint64_t)(uintptr_t)row, 0xffffffffu);
    if (warp_lanes(*current.block, current.linear / warpSize) != 32)
        fail("kernel %s: ldmatrix in a partial warp", current.block->kernel);
    // lane 8i + q addresses row q of matrix i; lane 4g + t receives elements 2t, 2t + 1 of row g (.trans: of column g)
    unsigned lane = current.linear % warpSize, g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t *p = (const uint16_t *)(uintptr_t)warp[8 * i + g];
            lo = p[2 * t];
            hi = p[2 * t + 1];
        } else {
            lo = ((const uint16_t *)(uintptr_t)warp[8 * i + 2 * t])[g];
            hi = ((const uint16_t *)(uintptr_t)warp[8 * i + 2 * t + 1])[g];
        }
        r[i] = (uint32_t)lo | (uint32_t)hi << 16;
    }
}

static bool force_fibers() {
    static int value = -1;
    if (value < 0) value = getenv("HDLM_CUDA_EMU_FIBERS") && atoi(getenv("HDLM_CUDA_EMU_FIBERS")) != 0;
    return value;
}

// HDLM_CUDA_EMU_ORDER=reverse resumes the fibers of a block in descending thread order: a read of shared memory
// that lacks its __syncthreads then sees unwritten data from the threads that the default order runs first.
static bool reverse_order() {
    static int value = -1;
    if (value < 0) value = getenv("HDLM_CUDA_EMU_ORDER") && strcmp(getenv("HDLM_CUDA_EMU_ORDER"), "reverse") == 0;
    return value;
}

static cudaError_t g_last_error = cudaSuccess;
static int g_smem_optin_set;   // largest dynamic shared memory any kernel was opted into

enum { DEVICE_SMEM_DEFAULT = 48 << 10, DEVICE_SMEM_OPTIN = 227 << 10, DEVICE_SMS = 132 };

static void run_block(block_state &b, uint3 bid, const launch_config &cfg) {
    for (unsigned t = 0; t < b.threads; t++) {
        thread_state &s = b.states[t];
        s.tid = {t % cfg.block.x, t / cfg.block.x % cfg.block.y, t / (cfg.block.x * cfg.block.y)};
        s.bid = bid;
        s.bdim = cfg.block;
        s.gdim = cfg.grid;
        s.linear = t;
        s.exchanges = 0;
        s.block = &b;
    }
    if (!b.smem.empty()) memset(b.smem.data(), 0xff, b.smem.size());
    if (!b.fibers) {
        for (unsigned i = 0; i < b.threads; i++) {
            current = b.states[reverse_order() ? b.threads - 1 - i : i];
            b.body(b.ctx);
        }
        return;
    }
    std::fill(b.done.begin(), b.done.end(), 0);
    g_block = &b;
    unsigned live = b.threads;
    while (live) {
        unsigned long before = b.events;
        live = 0;
        for (unsigned i = 0; i < b.threads; i++) {
            unsigned t = reverse_order() ? b.threads - 1 - i : i;
            if (b.done[t]) continue;
            current = b.states[t];
            resume(t);
            b.states[t] = current;
            live += !b.done[t];
        }
        if (live && b.events == before)
            fail("kernel %s: deadlock in block (%u,%u,%u): %u of %u threads wait at a barrier that the others "
                 "(exited or at another barrier) never reach", b.kernel, bid.x, bid.y, bid.z, live, b.threads);
    }
}

void run_grid(const launch_config &cfg, void (*body)(void *), void *ctx, const char *kernel) {
    const dim3 &g = cfg.grid, &k = cfg.block;
    size_t threads = (size_t)k.x * k.y * k.z;
    if (threads == 0 || threads > MAX_THREADS || k.z > 64 || g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 ||
        g.z > 65535 || g.x > 0x7fffffffu) {
        fprintf(stderr, "CUDA emulator: kernel %s launched with grid (%u,%u,%u) block (%u,%u,%u)\n", kernel, g.x, g.y,
                g.z, k.x, k.y, k.z);
        g_last_error = cudaErrorInvalidConfiguration;
        return;
    }
    if (cfg.smem > DEVICE_SMEM_OPTIN || (cfg.smem > DEVICE_SMEM_DEFAULT && cfg.smem > (size_t)g_smem_optin_set)) {
        fprintf(stderr, "CUDA emulator: kernel %s asks for %zu bytes of dynamic shared memory (opted in: %d)\n",
                kernel, cfg.smem, g_smem_optin_set);
        g_last_error = cudaErrorInvalidValue;
        return;
    }
    if (!g_stacks) {
        size_t bytes = (size_t)MAX_THREADS * (STACK_BYTES + 4096);
        void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) fail("cannot map %zu bytes of fiber stacks", bytes);
        g_stacks = (char *)p;
        for (int t = 0; t < MAX_THREADS; t++) mprotect(g_stacks + (size_t)t * (STACK_BYTES + 4096), 4096, PROT_NONE);
    }
    if (tracing())
        fprintf(stderr, "CUDA emulator trace: launch %s grid (%u,%u,%u) block (%u,%u,%u) smem %zu\n", kernel, g.x, g.y,
                g.z, k.x, k.y, k.z, cfg.smem);
    block_state b;
    b.threads = (unsigned)threads;
    b.states.resize(threads);
    b.done.resize(threads);
    b.warp_bars.resize((threads + warpSize - 1) / warpSize);
    for (int p = 0; p < 2; p++) {
        b.slots[p].resize(threads);
        b.slots6[p].resize(6 * threads);
    }
    b.smem.resize(cfg.smem);
    b.kernel = kernel;
    b.body = body;
    b.ctx = ctx;
    b.fibers = true;
    thread_state saved = current;
    for (unsigned z = 0; z < g.z; z++)
        for (unsigned y = 0; y < g.y; y++)
            for (unsigned x = 0; x < g.x; x++) {
                run_block(b, {x, y, z}, cfg);
                if (x == 0 && y == 0 && z == 0 && !b.waited && !force_fibers()) b.fibers = false;
            }
    current = saved;
}

// ---- memory ------------------------------------------------------------------------------------------------------

struct allocation {
    size_t bytes;
    bool device;
};
static std::map<uintptr_t, allocation> g_allocations;

// HDLM_CUDA_EMU_POISON=0 fills new memory with zeros instead (to tell reads of unwritten memory from other faults).
static int poison_byte() {
    static int value = -1;
    if (value < 0) value = getenv("HDLM_CUDA_EMU_POISON") && atoi(getenv("HDLM_CUDA_EMU_POISON")) == 0 ? 0 : 0xff;
    return value;
}

static void *allocate(size_t bytes, bool device) {
    void *p = nullptr;
    if (posix_memalign(&p, 256, bytes ? bytes : 1)) return nullptr;
    memset(p, poison_byte(), bytes);
    g_allocations[(uintptr_t)p] = {bytes, device};
    return p;
}

static cudaError_t release(void *p, bool device) {
    if (!p) return cudaSuccess;
    auto it = g_allocations.find((uintptr_t)p);
    if (it == g_allocations.end() || it->second.device != device) {
        fprintf(stderr, "CUDA emulator: %s of %p, which is no %s allocation\n", device ? "cudaFree" : "cudaFreeHost",
                p, device ? "device" : "pinned host");
        return cudaErrorInvalidValue;
    }
    g_allocations.erase(it);
    free(p);
    return cudaSuccess;
}

// The allocation holding [p, p + bytes), or null.
static const allocation *holder(const void *p, size_t bytes) {
    auto it = g_allocations.upper_bound((uintptr_t)p);
    if (it == g_allocations.begin()) return nullptr;
    --it;
    if ((uintptr_t)p + bytes > it->first + it->second.bytes) return nullptr;
    return &it->second;
}

bool is_device_range(const void *p, size_t bytes) {
    const allocation *a = holder(p, bytes);
    return a && a->device;
}

static cudaError_t check_device(const void *p, size_t bytes, const char *call, const char *what) {
    if (bytes == 0 || is_device_range(p, bytes)) return cudaSuccess;
    fprintf(stderr, "CUDA emulator: %s: %s [%p, +%zu bytes) is not inside one device allocation\n", call, what, p,
            bytes);
    return g_last_error = cudaErrorInvalidValue;
}

static cudaError_t copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *call) {
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyDefault) {
        dst_dev = is_device_range(dst, bytes);
        src_dev = is_device_range(src, bytes);
    }
    cudaError_t err = cudaSuccess;
    if (dst_dev) err = check_device(dst, bytes, call, "destination");
    if (!err && src_dev) err = check_device(src, bytes, call, "source");
    if (!err && !dst_dev && bytes && is_device_range(dst, 1)) {
        fprintf(stderr, "CUDA emulator: %s: host destination %p is device memory (wrong cudaMemcpyKind)\n", call, dst);
        err = cudaErrorInvalidValue;
    }
    if (!err && !src_dev && bytes && is_device_range(src, 1)) {
        fprintf(stderr, "CUDA emulator: %s: host source %p is device memory (wrong cudaMemcpyKind)\n", call, src);
        err = cudaErrorInvalidValue;
    }
    if (err) return err;
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}

bool tracing() {
    static int value = -1;
    if (value < 0) value = getenv("HDLM_CUDA_EMU_TRACE") && atoi(getenv("HDLM_CUDA_EMU_TRACE")) != 0;
    return value;
}

void trace_output(const char *kernel, int index, const void *p, int kind) {
    auto it = g_allocations.upper_bound((uintptr_t)p);
    if (!p || it == g_allocations.begin()) return;
    --it;
    if ((uintptr_t)p >= it->first + it->second.bytes) return;
    size_t bytes = it->first + it->second.bytes - (uintptr_t)p, nans = 0, n = 0;
    if (kind == 0) for (n = 0; n < bytes / 4; n++) nans += isnan(((const float *)p)[n]);
    if (kind == 1) for (n = 0; n < bytes / 8; n++) nans += isnan(((const double *)p)[n]);
    if (kind == 2) for (n = 0; n < bytes / 2; n++) nans += isnan(__bfloat162float(((const __nv_bfloat16 *)p)[n]));
    fprintf(stderr, "CUDA emulator trace: %s argument %d: %zu NaN of %zu\n", kernel, index, nans, n);
}

}   // namespace emu

using namespace emu;

// ---- the runtime API -------------------------------------------------------------------------------------------

extern "C" {

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : (g_last_error = cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    if (device != 0) return g_last_error = cudaErrorInvalidDevice;
    switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = DEVICE_SMEM_OPTIN; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = DEVICE_SMEM_DEFAULT; break;
    case cudaDevAttrMultiProcessorCount: *value = DEVICE_SMS; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = MAX_THREADS; break;
    case cudaDevAttrWarpSize: *value = warpSize; break;
    default: fail("cudaDeviceGetAttribute(%d) is not emulated", (int)attr);
    }
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
    *free_bytes = *total = (size_t)140 << 30;
    return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last_error; }
const char *cudaGetErrorName(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaError (emulated)";
    }
}
const char *cudaGetErrorString(cudaError_t error) { return cudaGetErrorName(error); }

cudaError_t cudaFuncSetAttribute(const void *func, cudaFuncAttribute attr, int value) {
    (void)func;
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) fail("cudaFuncSetAttribute(%d) is not emulated", attr);
    if (value < 0 || value > DEVICE_SMEM_OPTIN) return g_last_error = cudaErrorInvalidValue;
    if (value > g_smem_optin_set) g_smem_optin_set = value;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    *ptr = allocate(bytes, true);
    return *ptr ? cudaSuccess : (g_last_error = cudaErrorMemoryAllocation);
}
cudaError_t cudaMallocAsync(void **ptr, size_t bytes, cudaStream_t) { return cudaMalloc(ptr, bytes); }
cudaError_t cudaFree(void *ptr) { return release(ptr, true); }
cudaError_t cudaFreeAsync(void *ptr, cudaStream_t) { return release(ptr, true); }
cudaError_t cudaMallocHost(void **ptr, size_t bytes) {
    *ptr = allocate(bytes, false);
    return *ptr ? cudaSuccess : (g_last_error = cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void *ptr) { return release(ptr, false); }

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    return copy(dst, src, bytes, kind, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
    return copy(dst, src, bytes, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void *ptr, int value, size_t bytes) {
    cudaError_t err = check_device(ptr, bytes, "cudaMemset", "destination");
    if (!err && bytes) memset(ptr, value, bytes);
    return err;
}
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t) { return cudaMemset(ptr, value, bytes); }

// Streams and events: work runs when it is issued, so every wait is already satisfied.
cudaError_t cudaStreamCreate(cudaStream_t *stream) {
    *stream = (cudaStream_t)allocate(1, false);
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned) { return cudaStreamCreate(stream); }
cudaError_t cudaStreamCreateWithPriority(cudaStream_t *stream, unsigned, int) { return cudaStreamCreate(stream); }
cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest) {   // sm_90's range; streams run in order
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) { return release(stream, false); }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
// An event keeps the host time of its last record (the work before it is done by then) for cudaEventElapsedTime,
// which refuses, as the runtime does, events never recorded or created with cudaEventDisableTiming.
struct emu_event {
    double ms;   // < 0: never recorded
    unsigned flags;
};
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags) {
    emu_event *e = (emu_event *)allocate(sizeof(emu_event), false);
    *e = {-1.0, flags};
    *event = (cudaEvent_t)e;
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventDestroy(cudaEvent_t event) { return release(event, false); }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    ((emu_event *)event)->ms = now.tv_sec * 1e3 + now.tv_nsec * 1e-6;
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    const emu_event *a = (const emu_event *)start, *b = (const emu_event *)end;
    if (a->ms < 0 || b->ms < 0 || ((a->flags | b->flags) & cudaEventDisableTiming))
        return g_last_error = cudaErrorInvalidResourceHandle;
    *ms = (float)(b->ms - a->ms);
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }

}   // extern "C"
