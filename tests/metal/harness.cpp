// CPU test harness: the exact csrc/metal/*.metal sources compiled as C++20 against tests/metal/shim, driven
// by the same launch plan (csrc/metal/ssd_host.h) as the Objective-C++ glue. Built as a shared library and
// called from Python with ctypes on numpy buffers (tests/metal/shim_build.py). Buffers are fp32 except x, B, C,
// z, y of the forward, which are in_t (SSD_IN_T: float, or half in the half build), as in the glue.
#include <cstring>
#include <type_traits>
#include <string>
#include <vector>

#include <metal_stdlib>

#include "ssd_bwd.metal"  // includes ssd_fwd.metal
#include "state_update.metal"
#include "ssd_host.h"

namespace {

using shim::Dim3;

// The binding rule of the glue (ssd_metal.mm, EncodeDev::dispatch): the plan's buffers at indices
// 0..n-1 (setBuffer:offset:atIndex:i), the params bytes at index n (setBytes:length:atIndex:n).
// check_binding enforces that a kernel's [[buffer(k)]] parameters are exactly these indices, pointers at
// 0..n-1 and the `constant T&` at n with sizeof(T) == bytes; the generated shim_bind.inc then passes every
// parameter by its attribute, as Metal binds them (not by position).
struct BufferParam {
    int index;
    bool is_ref;   // constant T& (set with setBytes) rather than a device pointer
    size_t size;   // sizeof(T) for a reference
};

std::string check_binding(const char* kname, const BufferParam* ps, int count, size_t nbufs, size_t bytes) {
    std::vector<int> seen(nbufs + 1, 0);
    std::string k = kname;
    for (int i = 0; i < count; ++i) {
        const BufferParam& b = ps[i];
        if (b.index < 0 || (size_t)b.index > nbufs)
            return k + ": [[buffer(" + std::to_string(b.index) + ")]] is not bound (the plan binds " +
                   std::to_string(nbufs) + " buffers at 0.." + std::to_string((long)nbufs - 1) + " and the params at " +
                   std::to_string(nbufs) + ")";
        if (seen[b.index]++) return k + ": two parameters declare [[buffer(" + std::to_string(b.index) + ")]]";
        if (b.is_ref != ((size_t)b.index == nbufs))
            return k + ": [[buffer(" + std::to_string(b.index) + ")]] is a " + (b.is_ref ? "constant reference" : "pointer") +
                   " but the glue binds " + (b.is_ref ? "a device buffer" : "the params bytes") + " there";
        if (b.is_ref && b.size != bytes)
            return k + ": the params are " + std::to_string(bytes) + " bytes, the kernel reads " + std::to_string(b.size);
    }
    for (size_t i = 0; i <= nbufs; ++i)
        if (!seen[i]) return k + ": the glue binds index " + std::to_string(i) + " but no parameter declares it";
    return "";
}

struct ShimDev {
    using Buf = void*;
    shim::Schedule sched;  // base schedule; each dispatch gets its own group permutation
    uint64_t launches = 0;
    std::string err;
    std::vector<std::unique_ptr<char[]>> owned;

    Buf null() { return nullptr; }
    Buf alloc(size_t bytes) {  // poisoned: 0xFF bytes read as NaN (float) or -1 (int)
        owned.emplace_back(new char[bytes]);
        std::memset(owned.back().get(), 0xFF, bytes);
        return owned.back().get();
    }

    // body(threadgroup_position_in_grid, thread_position_in_threadgroup, threads_per_threadgroup,
    //      threadgroups_per_grid, thread_index_in_simdgroup, simdgroup_index_in_threadgroup)
    template <class F>
    void run(const ssd_host::Launch& L, F body) {
        if (!err.empty()) return;
        shim::Schedule s = sched;
        ++launches;
        if (s.seed != 0) s.seed = s.seed * 1000003u + launches;
        const uint3 tsz{(uint)L.tx, (uint)L.ty, (uint)L.tz}, gsz{(uint)L.gx, (uint)L.gy, (uint)L.gz};
        err = shim::launch(Dim3{(unsigned)L.gx, (unsigned)L.gy, (unsigned)L.gz},
                           Dim3{(unsigned)L.tx, (unsigned)L.ty, (unsigned)L.tz}, s,
                           [&](Dim3 g, Dim3 t, unsigned lane, unsigned sg) {
                               body(uint3{g.x, g.y, g.z}, uint3{t.x, t.y, t.z}, tsz, gsz, lane, sg);
                           });
    }

    void dispatch(const char* name, const ssd_host::Launch& L, std::vector<Buf> b, const void* params, size_t bytes) {
        if (!err.empty()) return;
        std::vector<void*> table(b.begin(), b.end());
        table.push_back(const_cast<void*>(params));
        const size_t nbufs = b.size();
        const std::string k = name;
        bool bound = false;
#include "shim_bind.inc"
        if (!bound && err.empty()) err = "unknown kernel " + k;
        if (!err.empty() && err.rfind(k, 0) != 0) err = k + ": " + err;  // name the kernel
    }
};

shim::Schedule g_schedule;  // set by shim_schedule(); the entry points' `order` picks the thread order

shim::Schedule schedule(int order) {
    shim::Schedule s = g_schedule;
    s.order = order;
    return s;
}

int finish(const ShimDev& dev, char* err, int errlen) {
    if (dev.err.empty()) return 0;
    std::snprintf(err, (size_t)errlen, "%s", dev.err.c_str());
    return 1;
}

}  // namespace

extern "C" {

// Group order and residency of the following calls: seed 0 = grid order, else a seeded permutation per
// launch; `resident` groups in flight at once, interleaved at barriers.
void shim_schedule(unsigned long long seed, int resident) {
    g_schedule.seed = seed;
    g_schedule.resident = resident;
}

// The shim's float -> bfloat conversion (metal_stdlib), for tests of its rounding.
void shim_to_bfloat(const float* in, uint16_t* out, int n) {
    for (int i = 0; i < n; ++i) out[i] = bfloat(in[i]).bits;
}

// kind of the input type in_t: 0 float, 1 half, 2 bfloat
int shim_in_kind() {
    if (sizeof(in_t) == 4) return 0;
    return std::is_same_v<in_t, bfloat> ? 2 : 1;
}

int shim_chunk_len() { return SSD_Q; }

int shim_in_size() { return (int)sizeof(in_t); }  // 4: float build, 2: half build

// The glue's size check (ssd_host::size_error) for a shape, without allocating anything: 0 = accepted,
// 1 = refused with the message in err.
int shim_size_error(long batch, long L, long H, long P, long G, long N, char* err, int errlen) {
    SsdParams p = ssd_host::make_params((int)batch, (int)L, (int)H, (int)P, (int)G, (int)N, false, true, false,
                                        false, false, false, false, false, 0.0f, 0.0f, false);
    const std::string e = ssd_host::size_error(p);
    std::snprintf(err, (size_t)errlen, "%s", e.c_str());
    return e.empty() ? 0 : 1;
}

// D is (H, P) (callers expand a per-head D); absent tensors are NULL.
int shim_ssd_fwd(int batch, int L, int H, int P, int G, int N, int softplus, int has_limit, float dt_min,
                 float dt_max, int order, void* x, void* dt, void* A, void* B, void* C, void* D, void* z,
                 void* dt_bias, void* init, void* seq, void* y, void* final_states, char* err, int errlen) {
    ShimDev dev;
    dev.sched = schedule(order);
    SsdParams p = ssd_host::make_params(batch, L, H, P, G, N, D, true, z, dt_bias, init, seq, softplus, has_limit,
                                        dt_min, dt_max, false);
    ssd_host::SsdInputs<void*> in{x, dt, A, B, C, D, z, dt_bias, init, seq};
    if (dev.err.empty()) dev.err = ssd_host::size_error(p);
    if (dev.err.empty()) ssd_host::ssd_forward(dev, p, in, y, final_states);
    return finish(dev, err, errlen);
}

// Outputs: dx, dDx, dz (batch, L, H, P); ddt (batch, L, H); dA_part (batch, H, nchunks, Q);
// dB_h, dC_h (batch, L, H, N); dinit (batch, H, P, N).
int shim_ssd_bwd(int batch, int L, int H, int P, int G, int N, int softplus, int has_limit, float dt_min,
                 float dt_max, int order, void* x, void* dt, void* A, void* B, void* C, void* D, void* z,
                 void* dt_bias, void* init, void* seq, void* dy, void* dfinal, void* dx, void* ddt,
                 void* dA_part, void* dB_h, void* dC_h, void* dDx, void* dz, void* dinit, char* err,
                 int errlen) {
    ShimDev dev;
    dev.sched = schedule(order);
    if (sizeof(in_t) != 4) dev.err = "the backward runs with the float library (in_t = float) only";
    SsdParams p = ssd_host::make_params(batch, L, H, P, G, N, D, true, z, dt_bias, init, seq, softplus, has_limit,
                                        dt_min, dt_max, dfinal);
    ssd_host::SsdInputs<void*> in{x, dt, A, B, C, D, z, dt_bias, init, seq};
    ssd_host::SsdGrads<void*> g{dx, ddt, dA_part, dB_h, dC_h, dDx, dz, dinit};
    if (dev.err.empty()) dev.err = ssd_host::size_error(p);
    if (dev.err.empty()) ssd_host::ssd_backward(dev, p, in, dy, dfinal, g);
    return finish(dev, err, errlen);
}

// state (S, H, P, N) updated in place; x, dt, z (batch, H, P); A (H, P, N); B, C (batch, G, N);
// D, dt_bias (H, P); idx (batch,) or NULL; out (batch, H, P).
int shim_state_update(int batch, int H, int P, int G, int N, int softplus, int order, void* state, void* x,
                      void* dt, void* A, void* B, void* C, void* D, void* z, void* dt_bias, void* idx,
                      void* out, char* err, int errlen) {
    ShimDev dev;
    dev.sched = schedule(order);
    SuParams p{batch, H, P, N, G, H / G, D != nullptr, z != nullptr, dt_bias != nullptr, softplus, idx != nullptr};
    ssd_host::state_update(dev, p, state, x, dt, A, B, C, D, z, dt_bias, idx, out);
    return finish(dev, err, errlen);
}

}  // extern "C"
