// Launches for the emulation of emu.h: every block in turn, its threads as std::threads.
#include "emu.h"
#include <cstring>
thread_local emu_ctx emu;
void emu_launch(emu_dim grid, unsigned threads, size_t smem_bytes, const std::function<void()> &fn) {
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            std::vector<float> smem(smem_bytes / 4, NAN);
            std::vector<float> xch(threads);
            std::vector<uint32_t> mxch(6 * threads);
            pthread_barrier_t bar;
            pthread_barrier_init(&bar, nullptr, threads);
            std::vector<pthread_barrier_t> wb((threads + 31) / 32);
            for (auto &w : wb) pthread_barrier_init(&w, nullptr, 32);
            std::vector<std::thread> th;
            for (unsigned t = 0; t < threads; t++)
                th.emplace_back([&, t] {
                    emu.tid = {t, 0, 0};
                    emu.bid = {bx, by, 0};
                    emu.bdim = {threads, 1, 1};
                    emu.smem = smem.data();
                    emu.block_bar = &bar;
                    emu.warp_bars = wb.data();
                    emu.xch = xch.data();
                    emu.mxch = mxch.data();
                    fn();
                });
            for (auto &x : th) x.join();
            pthread_barrier_destroy(&bar);
            for (auto &w : wb) pthread_barrier_destroy(&w);
        }
}
