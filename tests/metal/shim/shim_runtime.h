// Runtime of the Metal shim: launches a grid of threadgroups and runs them on std::threads, one per
// simulated GPU thread, ONE THREAD AT A TIME between synchronization points (a cooperative, deterministic
// schedule). Synchronization points are barriers with a key (a whole threadgroup, or one SIMD-group of 32
// lanes) and a kind (threadgroup_barrier, simd exchange, end of the kernel); a phase whose arrivals
// disagree in kind (divergent control flow) or a schedule where no thread can run (deadlock) aborts the
// launch with a message.
//
// The schedule (Schedule below) is seeded and varies what a GPU may vary:
//   - group order: the grid's threadgroups are dealt out in a shuffled order (a new permutation per launch);
//   - residency: `resident` groups are in flight at once, their threads interleaved at every barrier, so a
//     group never runs alone between two of its barriers;
//   - thread order: the baton goes to the next thread (forward), the previous one (reverse), or a random
//     ready thread (random), at every synchronization point.
// Threadgroup memory (tg_array, which shim_build.py substitutes for every `threadgroup T name[..];`) is
// allocated per group when the group first declares it, filled with 0xFF bytes (NaN as float / half /
// bfloat, -1 as int), bounds-checked on every index, and framed by canaries that are checked when the group
// ends, so an uninitialised read, an index past a tile's end, or a pointer write past it is caught.
//
// Device memory (dptr, which shim_build.py substitutes for every `device T*`): every element written during a
// launch is recorded with its writer, its group and the group's device-fence epoch, which advances when a
// threadgroup_barrier whose flags include mem_device completes. A read (or write) of an element another
// thread wrote fails unless that thread is of the same group and a mem_device barrier came in between:
// Metal orders device memory between the threads of a group only through such a barrier, and between the
// groups of one dispatch not at all. (Writes are still visible at once; what is modelled is the rule, not
// a stale cache.)
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace shim {

constexpr int kSimd = 32;
enum Kind { K_BARRIER = 1, K_SIMD_A = 2, K_SIMD_B = 3, K_END = 4 };
enum Order { O_FORWARD = 0, O_REVERSE = 1, O_RANDOM = 2 };

struct Schedule {
    int order = O_FORWARD;  // thread order within the running set
    uint64_t seed = 0;      // 0: groups in grid order (x fastest); else a seeded permutation per launch
    int resident = 1;       // groups in flight at once, interleaved at barriers
};

struct Abort {};

struct Dim3 {
    unsigned x, y, z;
};

inline uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

constexpr size_t kCanary = 64;  // bytes of 0xFF before and after every threadgroup array

struct TgBlock {
    std::unique_ptr<unsigned char[]> mem;
    size_t bytes = 0;
    const char* name = "";
};

struct Resident {               // one threadgroup in flight
    long pos = -1;              // index into Group::order, -1 = none left
    long epoch = 0;             // mem_device barriers completed by this group
    std::map<int, TgBlock> tg;  // its threadgroup arrays, by declaration site
};

struct DevWrite {  // the last write of a device element in this launch
    int writer;    // simulated thread
    long group;    // Resident::pos of its group
    long epoch;    // its group's epoch at the write
};

struct Group {
    int n = 0;         // threads per threadgroup
    int m = 1;         // resident groups
    int total = 0;     // n * m simulated threads
    int nkeys = 0;     // keys per resident group: 1 (the group) + its SIMD-groups
    int order = O_FORWARD;
    uint64_t rng = 0;
    std::vector<Dim3> grid_order;  // the threadgroups in the order they are dealt out
    long next_pos = 0;
    std::vector<Resident> res;
    std::vector<std::unique_ptr<std::counting_semaphore<1 << 20>>> sem;
    std::vector<int> state;  // 0 ready, 1 waiting, 2 done
    std::vector<int> wkey;
    std::vector<int> count, kind, members;  // per key r * nkeys + (0 = group, 1 + s = simd-group s)
    std::vector<int> fence;                 // per key: a mem_device flag seen at the pending barrier
    std::vector<float> slots;               // simd exchange, one per thread
    std::unordered_map<const void*, DevWrite> dev;  // device elements written in this launch
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
    for (int i = 0; i < g.total; ++i)
        if (i != tl_me && g.state[i] != 2) g.sem[i]->release();
    throw Abort{};
}

inline int next_ready(Group& g, int me) {
    if (g.order == O_RANDOM) {
        int ready = 0;
        for (int i = 0; i < g.total; ++i) ready += g.state[i] == 0;
        if (ready == 0) return -1;
        int k = (int)(splitmix(g.rng) % (uint64_t)ready);
        for (int i = 0; i < g.total; ++i)
            if (g.state[i] == 0 && k-- == 0) return i;
    }
    for (int k = 1; k <= g.total; ++k) {
        int j = g.order == O_REVERSE ? ((me - k) % g.total + g.total) % g.total : (me + k) % g.total;
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

inline int resident_of(const Group& g, int me) { return me / g.n; }
inline int local_of(const Group& g, int me) { return me % g.n; }

inline std::string pos_str(const Group& g, int r) {
    const Dim3 p = g.grid_order[(size_t)g.res[r].pos];
    return "(" + std::to_string(p.x) + ", " + std::to_string(p.y) + ", " + std::to_string(p.z) + ")";
}

// The end of a group: check the canaries of its threadgroup arrays, free them, deal out the next group.
inline void end_group(Group& g, int r) {
    Resident& R = g.res[r];
    for (auto& [slot, b] : R.tg) {
        const unsigned char* m = b.mem.get();
        for (size_t i = 0; i < kCanary; ++i)
            if (m[i] != 0xFF || m[kCanary + b.bytes + i] != 0xFF)
                fail(g, std::string("threadgroup array '") + b.name + "' of group " + pos_str(g, r) +
                            ": written " + (m[i] != 0xFF ? "before its start" : "past its end") +
                            " (canary overwritten)");
    }
    R.tg.clear();
    R.pos = g.next_pos < (long)g.grid_order.size() ? g.next_pos++ : -1;
    R.epoch = 0;
}

inline void arrive(int key, int kind, bool device_fence = false) {
    Group& g = *tl_group;
    const int me = tl_me;
    if (g.count[key] == 0) g.kind[key] = kind;
    else if (g.kind[key] != kind)
        fail(g, "divergent synchronization: threads of one " +
                    std::string(key % g.nkeys == 0 ? "threadgroup" : "simd-group") +
                    " reached different barriers / simd functions / kernel end (kinds " +
                    std::to_string(g.kind[key]) + " vs " + std::to_string(kind) + ")");
    g.count[key] += 1;
    g.state[me] = 1;
    g.wkey[me] = key;
    g.fence[key] |= device_fence;
    if (g.count[key] == g.members[key]) {
        if (kind == K_END) end_group(g, key / g.nkeys);
        if (kind == K_BARRIER && g.fence[key]) g.res[key / g.nkeys].epoch += 1;
        g.fence[key] = 0;
        for (int i = 0; i < g.total; ++i)
            if (g.state[i] == 1 && g.wkey[i] == key) g.state[i] = 0;
        g.count[key] = 0;
    }
    pass_baton(g, me);
}

inline int group_key() { return resident_of(*tl_group, tl_me) * tl_group->nkeys; }
inline int simd_key() {
    const Group& g = *tl_group;
    return resident_of(g, tl_me) * g.nkeys + 1 + local_of(g, tl_me) / kSimd;
}
inline void group_barrier(bool device_fence) { arrive(group_key(), K_BARRIER, device_fence); }
inline void simd_barrier() { arrive(simd_key(), K_SIMD_A); }
inline void simd_barrier_b() { arrive(simd_key(), K_SIMD_B); }

inline int simd_first_lane() {  // global thread id of lane 0 of the caller's SIMD-group
    const Group& g = *tl_group;
    return resident_of(g, tl_me) * g.n + (local_of(g, tl_me) / kSimd) * kSimd;
}
inline int simd_width() {
    const Group& g = *tl_group;
    return std::min(kSimd, g.n - (local_of(g, tl_me) / kSimd) * kSimd);
}

template <class F>
inline float simd_reduce(float v, F op) {
    Group& g = *tl_group;
    g.slots[tl_me] = v;
    arrive(simd_key(), K_SIMD_A);
    const int s0 = simd_first_lane(), s1 = s0 + simd_width();
    float r = g.slots[s0];
    for (int i = s0 + 1; i < s1; ++i) r = op(r, g.slots[i]);
    arrive(simd_key(), K_SIMD_B);  // nobody overwrites a slot before every lane has read
    return r;
}

inline float simd_shuffle(float v, unsigned lane) {
    Group& g = *tl_group;
    g.slots[tl_me] = v;
    arrive(simd_key(), K_SIMD_A);
    float r = g.slots[simd_first_lane() + (int)lane];
    arrive(simd_key(), K_SIMD_B);
    return r;
}

// ---- threadgroup memory ------------------------------------------------------------------------------

// A bounds-checked view of a threadgroup array T[D0][D...]: indexing checks every subscript and the last
// one yields T& (so `&tile[r][c]` is a plain pointer, as in MSL).
template <class T, int... D>
struct TgRef;

template <class T, int D0, int... D>
struct TgRef<T, D0, D...> {
    T* p;
    const char* name;
    static constexpr long stride = (1L * ... * D);
    decltype(auto) operator[](long i) const {
        if (i < 0 || i >= D0)
            fail(*tl_group, std::string("threadgroup array '") + name + "': index " + std::to_string(i) +
                                " out of [0, " + std::to_string(D0) + ")");
        if constexpr (sizeof...(D) == 0) return (p[i]);
        else return TgRef<T, D...>{p + i * stride, name};
    }
};

// The storage of the declaration at `slot` for the caller's group: allocated and poisoned by the first of
// its threads that reaches the declaration, shared by all of them, freed when the group ends.
template <class T, int... D>
inline TgRef<T, D...> tg_array(int slot, const char* name) {
    static_assert(sizeof...(D) > 0 && ((D > 0) && ...), "threadgroup arrays need static positive sizes");
    Group& g = *tl_group;
    Resident& R = g.res[resident_of(g, tl_me)];
    auto it = R.tg.find(slot);
    if (it == R.tg.end()) {
        TgBlock b;
        b.bytes = sizeof(T) * (size_t)(1L * ... * D);
        b.mem.reset(new unsigned char[b.bytes + 2 * kCanary]);
        std::memset(b.mem.get(), 0xFF, b.bytes + 2 * kCanary);
        b.name = name;
        it = R.tg.emplace(slot, std::move(b)).first;
    }
    return TgRef<T, D...>{reinterpret_cast<T*>(it->second.mem.get() + kCanary), name};
}

// ---- device memory -----------------------------------------------------------------------------------

inline std::string thread_str(const Group& g, int me) {
    return "thread " + std::to_string(local_of(g, me)) + " of group " + pos_str(g, resident_of(g, me));
}

// The caller touches device element a (write: it stores there). Fails where Metal gives no ordering.
inline void device_access(const void* a, bool write) {
#ifdef SHIM_NO_DEVICE_CHECK  // (tests of the schedule alone)
    (void)a, (void)write;
    return;
#endif
    Group& g = *tl_group;
    const int me = tl_me;
    const Resident& R = g.res[resident_of(g, me)];
    auto it = g.dev.find(a);
    if (it != g.dev.end()) {
        const DevWrite& w = it->second;
        const char* what = write ? "writes" : "reads";
        if (w.group != R.pos)
            fail(g, thread_str(g, me) + " " + what + " a device element that another threadgroup of the same "
                                        "dispatch wrote (threadgroups are not ordered)");
        if (w.writer != me && w.epoch == R.epoch)
            fail(g, thread_str(g, me) + " " + what + " a device element written by thread " +
                        std::to_string(local_of(g, w.writer)) +
                        " of its group with no threadgroup_barrier(mem_flags::mem_device) in between");
    }
    if (write) g.dev[a] = DevWrite{me, R.pos, R.epoch};
}

template <class T>
struct dref {  // an element of a writable device buffer
    T* a;
    operator T() const {
        device_access(a, false);
        return *a;
    }
    const dref& operator=(const T& v) const {
        device_access(a, true);
        *a = v;
        return *this;
    }
    const dref& operator=(const dref& o) const { return *this = (T)o; }
};

// `device T*` of the kernels: pointer arithmetic as usual, every element access checked by device_access.
template <class T>
struct dptr {
    T* p = nullptr;
    dptr() = default;
    explicit dptr(void* v) : p(static_cast<T*>(v)) {}
    dptr(T* q) : p(q) {}
    template <class U, class = std::enable_if_t<std::is_same_v<const U, T>>>
    dptr(dptr<U> o) : p(o.p) {}
    dptr operator+(long i) const { return dptr(p + i); }
    dptr operator-(long i) const { return dptr(p - i); }
    auto operator[](long i) const {
        if constexpr (std::is_const_v<T>) {
            device_access(p + i, false);
            return std::remove_const_t<T>(p[i]);
        } else {
            return dref<T>{p + i};
        }
    }
};

// ---- launch ------------------------------------------------------------------------------------------

// Run fn(group_pos, thread_pos, lane, simdgroup) over the grid under schedule s. Returns "" or the error.
inline std::string launch(Dim3 grid, Dim3 tg, const Schedule& s,
                          const std::function<void(Dim3, Dim3, unsigned, unsigned)>& fn) {
    Group g;
    g.n = (int)(tg.x * tg.y * tg.z);
    g.order = s.order;
    g.rng = s.seed * 0x2545F4914F6CDD1Dull + 1;
    for (unsigned gz = 0; gz < grid.z; ++gz)
        for (unsigned gy = 0; gy < grid.y; ++gy)
            for (unsigned gx = 0; gx < grid.x; ++gx) g.grid_order.push_back(Dim3{gx, gy, gz});
    if (s.seed != 0)  // Fisher-Yates with our own generator (std::shuffle differs between standard libraries)
        for (size_t i = g.grid_order.size(); i > 1; --i) std::swap(g.grid_order[i - 1], g.grid_order[splitmix(g.rng) % i]);
    const long ngroups = (long)g.grid_order.size();
    g.m = (int)std::max(1L, std::min<long>(std::max(1, s.resident), ngroups));
    g.total = g.n * g.m;
    const int nsg = (g.n + kSimd - 1) / kSimd;
    g.nkeys = 1 + nsg;
    g.count.assign(g.m * g.nkeys, 0);
    g.kind.assign(g.m * g.nkeys, 0);
    g.fence.assign(g.m * g.nkeys, 0);
    g.members.assign(g.m * g.nkeys, 0);
    for (int r = 0; r < g.m; ++r) {
        g.members[r * g.nkeys] = g.n;
        for (int sg = 0; sg < nsg; ++sg) g.members[r * g.nkeys + 1 + sg] = std::min(kSimd, g.n - sg * kSimd);
    }
    g.res.resize(g.m);
    for (int r = 0; r < g.m; ++r) g.res[r].pos = r < ngroups ? r : -1;
    g.next_pos = std::min<long>(g.m, ngroups);
    g.state.assign(g.total, 0);
    g.wkey.assign(g.total, 0);
    g.slots.assign(g.total, 0.0f);
    for (int i = 0; i < g.total; ++i) g.sem.emplace_back(new std::counting_semaphore<1 << 20>(0));
    auto body = [&](int me) {
        tl_group = &g;
        tl_me = me;
        g.sem[me]->acquire();
        const int r = resident_of(g, me), lo = local_of(g, me);
        try {
            if (g.failed) throw Abort{};
            const Dim3 t{(unsigned)(lo % tg.x), (unsigned)((lo / tg.x) % tg.y), (unsigned)(lo / (tg.x * tg.y))};
            while (g.res[r].pos >= 0) {
                fn(g.grid_order[(size_t)g.res[r].pos], t, (unsigned)(lo % kSimd), (unsigned)(lo / kSimd));
                arrive(r * g.nkeys, K_END);  // all of the group's threads finish before it is replaced
            }
        } catch (Abort&) {
        } catch (std::exception& e) {
            g.failed = true;
            g.error = e.what();
            for (int i = 0; i < g.total; ++i)
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
        for (int i = 0; i < g.total; ++i) stuck = stuck || g.state[i] != 2;
        if (stuck) {  // a thread finished while others wait at a barrier
            g.failed = true;
            g.error = "deadlock: a simulated thread finished while others wait at a barrier";
            for (int i = 0; i < g.total; ++i)
                if (g.state[i] != 2) g.sem[i]->release();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(g.total);
    for (int i = 0; i < g.total; ++i) threads.emplace_back(body, i);
    g.sem[s.order == O_REVERSE ? g.total - 1 : 0]->release();
    for (auto& t : threads) t.join();
    return g.failed ? g.error : std::string();
}

}  // namespace shim
