// Runtime of the Metal shim: launches a grid of threadgroups, one std::thread per simulated thread of a
// group, and runs the group's threads one at a time between synchronization points (a cooperative,
// deterministic schedule; order forward or reverse). Synchronization points are barriers with a key
// (the whole group, or one SIMD-group of 32 lanes) and a kind (threadgroup_barrier, simd exchange, end of
// the kernel); a phase whose arrivals disagree in kind (divergent control flow) or a schedule where no
// thread can run (deadlock) aborts the launch with a message.
#pragma once
#include <functional>
#include <memory>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace shim {

constexpr int kSimd = 32;
enum Kind { K_BARRIER = 1, K_SIMD_A = 2, K_SIMD_B = 3, K_END = 4 };

struct Abort {};

struct Group {
    int n = 0;
    bool reverse = false;
    std::vector<std::unique_ptr<std::counting_semaphore<1 << 20>>> sem;
    std::vector<int> state;  // 0 ready, 1 waiting, 2 done
    std::vector<int> wkey;
    std::vector<int> count, kind, members;  // per key: 0 = group, 1 + s = simd-group s
    std::vector<float> slots;               // simd exchange, one per thread
    bool failed = false;
    std::string error;
};

inline thread_local Group* tl_group = nullptr;
inline thread_local int tl_me = 0;

inline void fail(Group& g, const std::string& why) {
    if (!g.failed) {
        g.failed = true;
        g.error = why;
    }
    for (int i = 0; i < g.n; ++i)
        if (i != tl_me && g.state[i] != 2) g.sem[i]->release();
    throw Abort{};
}

inline int next_ready(Group& g, int me) {
    for (int k = 1; k <= g.n; ++k) {
        int j = g.reverse ? ((me - k) % g.n + g.n) % g.n : (me + k) % g.n;
        if (g.state[j] == 0) return j;
    }
    return -1;
}

// Hand the baton to the next ready thread and sleep until it comes back.
inline void pass_baton(Group& g, int me) {
    int j = next_ready(g, me);
    if (j < 0) fail(g, "deadlock: no simulated thread can run (a barrier or simd function not reached by all threads)");
    if (j == me) return;
    g.sem[j]->release();
    g.sem[me]->acquire();
    if (g.failed) throw Abort{};
}

inline void arrive(int key, int kind) {
    Group& g = *tl_group;
    const int me = tl_me;
    if (g.count[key] == 0) g.kind[key] = kind;
    else if (g.kind[key] != kind)
        fail(g, "divergent synchronization: threads of one " + std::string(key == 0 ? "threadgroup" : "simd-group") +
                    " reached different barriers / simd functions / kernel end (kinds " +
                    std::to_string(g.kind[key]) + " vs " + std::to_string(kind) + ")");
    g.count[key] += 1;
    g.state[me] = 1;
    g.wkey[me] = key;
    if (g.count[key] == g.members[key]) {
        for (int i = 0; i < g.n; ++i)
            if (g.state[i] == 1 && g.wkey[i] == key) g.state[i] = 0;
        g.count[key] = 0;
    }
    pass_baton(g, me);
}

inline void group_barrier() { arrive(0, K_BARRIER); }
inline int simd_key() { return 1 + tl_me / kSimd; }
inline void simd_barrier() { arrive(simd_key(), K_SIMD_A); }
inline void simd_barrier_b() { arrive(simd_key(), K_SIMD_B); }

template <class F>
inline float simd_reduce(float v, F op) {
    Group& g = *tl_group;
    g.slots[tl_me] = v;
    arrive(simd_key(), K_SIMD_A);
    const int s0 = (tl_me / kSimd) * kSimd, s1 = std::min(g.n, s0 + kSimd);
    float r = g.slots[s0];
    for (int i = s0 + 1; i < s1; ++i) r = op(r, g.slots[i]);
    arrive(simd_key(), K_SIMD_B);  // nobody overwrites a slot before every lane has read
    return r;
}

inline float simd_shuffle(float v, unsigned lane) {
    Group& g = *tl_group;
    g.slots[tl_me] = v;
    arrive(simd_key(), K_SIMD_A);
    const int s0 = (tl_me / kSimd) * kSimd;
    float r = g.slots[s0 + (int)lane];
    arrive(simd_key(), K_SIMD_B);
    return r;
}

struct Dim3 {
    unsigned x, y, z;
};

// Run fn(group_pos, thread_pos, lane, simdgroup) over the grid; threadgroups one after another.
// Returns "" or the error.
inline std::string launch(Dim3 grid, Dim3 tg, bool reverse,
                          const std::function<void(Dim3, Dim3, unsigned, unsigned)>& fn) {
    Group g;
    g.n = (int)(tg.x * tg.y * tg.z);
    g.reverse = reverse;
    const int nsg = (g.n + kSimd - 1) / kSimd;
    g.count.assign(1 + nsg, 0);
    g.kind.assign(1 + nsg, 0);
    g.members.assign(1 + nsg, 0);
    g.members[0] = g.n;
    for (int s = 0; s < nsg; ++s) g.members[1 + s] = std::min(kSimd, g.n - s * kSimd);
    g.state.assign(g.n, 0);
    g.wkey.assign(g.n, 0);
    g.slots.assign(g.n, 0.0f);
    for (int i = 0; i < g.n; ++i) g.sem.emplace_back(new std::counting_semaphore<1 << 20>(0));
    auto body = [&](int me) {
        tl_group = &g;
        tl_me = me;
        g.sem[me]->acquire();
        try {
            if (g.failed) throw Abort{};
            const Dim3 t{(unsigned)(me % tg.x), (unsigned)((me / tg.x) % tg.y), (unsigned)(me / (tg.x * tg.y))};
            for (unsigned gz = 0; gz < grid.z; ++gz)
                for (unsigned gy = 0; gy < grid.y; ++gy)
                    for (unsigned gx = 0; gx < grid.x; ++gx) {
                        fn(Dim3{gx, gy, gz}, t, (unsigned)(me % kSimd), (unsigned)(me / kSimd));
                        arrive(0, K_END);  // the group's threads all finish before the next group starts
                    }
        } catch (Abort&) {
        } catch (std::exception& e) {
            g.failed = true;
            g.error = e.what();
            for (int i = 0; i < g.n; ++i)
                if (i != me && g.state[i] != 2) g.sem[i]->release();
        }
        g.state[me] = 2;
        if (g.failed) return;  // fail() already woke everybody
        int j = next_ready(g, me);
        if (j >= 0) {
            g.sem[j]->release();
            return;
        }
        bool stuck = false;
        for (int i = 0; i < g.n; ++i) stuck = stuck || g.state[i] != 2;
        if (stuck) {  // a thread finished while others wait at a barrier
            g.failed = true;
            g.error = "deadlock: a simulated thread finished while others wait at a barrier";
            for (int i = 0; i < g.n; ++i)
                if (g.state[i] != 2) g.sem[i]->release();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(g.n);
    for (int i = 0; i < g.n; ++i) threads.emplace_back(body, i);
    g.sem[reverse ? g.n - 1 : 0]->release();
    for (auto& t : threads) t.join();
    return g.failed ? g.error : std::string();
}

}  // namespace shim
