// CPU test harness: the exact csrc/metal/*.metal sources compiled as C++20 against tests/metal/shim, driven
// by the same launch plan (csrc/metal/ssd_host.h) as the Objective-C++ glue. Built as a shared library and
// called from Python with ctypes on numpy buffers (tests/metal/shim_build.py). Buffers are fp32 except x, B, C,
// z, y of the forward, which are in_t (SSD_IN_T: float, or half in the half build), as in the glue.
#include <cstring>
#include <string>
#include <vector>

#include <metal_stdlib>

#include "ssd_bwd.metal"  // includes ssd_fwd.metal
#include "state_update.metal"
#include "ssd_host.h"

namespace {

using shim::Dim3;

struct ShimDev {
    using Buf = void*;
    bool reverse = false;
    std::string err;
    std::vector<std::unique_ptr<char[]>> owned;

    Buf null() { return nullptr; }
    Buf alloc(size_t bytes) {  // poisoned: 0xFF bytes read as NaN (float) or -1 (int)
        owned.emplace_back(new char[bytes]);
        std::memset(owned.back().get(), 0xFF, bytes);
        return owned.back().get();
    }

    template <class F>
    void run(const ssd_host::Launch& L, F body) {
        if (!err.empty()) return;
        err = shim::launch(Dim3{(unsigned)L.gx, (unsigned)L.gy, (unsigned)L.gz},
                           Dim3{(unsigned)L.tx, (unsigned)L.ty, (unsigned)L.tz}, reverse,
                           [&](Dim3 g, Dim3 t, unsigned lane, unsigned sg) {
                               body(uint3{g.x, g.y, g.z}, uint3{t.x, t.y, t.z}, lane, sg);
                           });
    }

    void dispatch(const char* name, const ssd_host::Launch& L, std::vector<Buf> b, const void* params, size_t bytes) {
        if (!err.empty()) return;
        auto F = [&](int i) { return (float*)b[i]; };
        auto I = [&](int i) { return (int*)b[i]; };
        auto F2 = [&](int i) { return (float2*)b[i]; };  // the double-float cumsum cs
        auto X = [&](int i) { return (in_t*)b[i]; };
        auto need = [&](size_t n) {
            if (b.size() != n) err = std::string(name) + ": launch plan binds " + std::to_string(b.size()) +
                                     " buffers, kernel takes " + std::to_string(n);
            return err.empty();
        };
        const std::string k = name;
        SsdParams sp{};
        SuParams up{};
        if (k == "ssd_state_update") std::memcpy(&up, params, sizeof(up));
        else std::memcpy(&sp, params, sizeof(sp));
        (void)bytes;
        if (k == "ssd_dt_cumsum" && need(7))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_dt_cumsum(F(0), F(1), F(2), I(3), F(4), F2(5), I(6), sp, g, t);
            });
        else if (k == "ssd_bmm_chunk" && need(3))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned sg) { ssd_bmm_chunk(X(0), X(1), F(2), sp, g, t, sg); });
        else if (k == "ssd_chunk_state" && need(6))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_chunk_state(X(0), X(1), F(2), F2(3), I(4), F(5), sp, g, t);
            });
        else if (k == "ssd_state_pass" && need(5))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_state_pass(F(0), F(1), F2(2), I(3), F(4), sp, g, t);
            });
        else if (k == "ssd_chunk_output" && need(10))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_chunk_output(X(0), X(1), F(2), F(3), F2(4), I(5), F(6), F(7), X(8), X(9), sp, g, t);
            });
        else if (k == "ssd_bwd_gate" && need(7))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_bwd_gate(F(0), X(1), X(2), F(3), F(4), F(5), F(6), sp, g, t);
            });
        else if (k == "ssd_state_pass_bwd" && need(8))
            run(L, [&](uint3 g, uint3 t, unsigned lane, unsigned sg) {
                ssd_state_pass_bwd(F(0), F(1), F(2), F2(3), I(4), F(5), F(6), F(7), sp, g, t, lane, sg);
            });
        else if (k == "ssd_bwd_du" && need(11))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_bwd_du(F(0), X(1), X(2), F(3), F(4), F2(5), I(6), F(7), F(8), F(9), F(10), sp, g, t);
            });
        else if (k == "ssd_bwd_dbdc" && need(12))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_bwd_dbdc(F(0), X(1), X(2), X(3), F(4), F(5), F2(6), I(7), F(8), F(9), F(10), F(11), sp, g, t);
            });
        else if (k == "ssd_bwd_dcs" && need(18))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_bwd_dcs(F(0), X(1), X(2), X(3), F(4), F(5), F(6), F(7), F(8), F(9), F2(10), I(11), F(12), F(13),
                            F(14), F(15), F(16), F(17), sp, g, t);
            });
        else if (k == "ssd_state_update" && need(11))
            run(L, [&](uint3 g, uint3 t, unsigned, unsigned) {
                ssd_state_update(F(0), F(1), F(2), F(3), F(4), F(5), F(6), F(7), F(8), I(9), F(10), up, g, t);
            });
        else if (err.empty())
            err = "unknown kernel " + k;
    }
};

int finish(const ShimDev& dev, char* err, int errlen) {
    if (dev.err.empty()) return 0;
    std::snprintf(err, (size_t)errlen, "%s", dev.err.c_str());
    return 1;
}

}  // namespace

extern "C" {

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
                 float dt_max, int reverse, void* x, void* dt, void* A, void* B, void* C, void* D, void* z,
                 void* dt_bias, void* init, void* seq, void* y, void* final_states, char* err, int errlen) {
    ShimDev dev;
    dev.reverse = reverse;
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
                 float dt_max, int reverse, void* x, void* dt, void* A, void* B, void* C, void* D, void* z,
                 void* dt_bias, void* init, void* seq, void* dy, void* dfinal, void* dx, void* ddt,
                 void* dA_part, void* dB_h, void* dC_h, void* dDx, void* dz, void* dinit, char* err,
                 int errlen) {
    ShimDev dev;
    dev.reverse = reverse;
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
int shim_state_update(int batch, int H, int P, int G, int N, int softplus, int reverse, void* state, void* x,
                      void* dt, void* A, void* B, void* C, void* D, void* z, void* dt_bias, void* idx,
                      void* out, char* err, int errlen) {
    ShimDev dev;
    dev.reverse = reverse;
    SuParams p{batch, H, P, N, G, H / G, D != nullptr, z != nullptr, dt_bias != nullptr, softplus, idx != nullptr};
    ssd_host::state_update(dev, p, state, x, dt, A, B, C, D, z, dt_bias, idx, out);
    return finish(dev, err, errlen);
}

}  // extern "C"
