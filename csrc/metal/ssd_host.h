// Host-side launch plan of the Metal kernels, shared by the Objective-C++ glue (ssd_metal.mm) and the
// CPU test harness (tests/metal/harness.cpp), so the tests run exactly the dispatch sequence, grid and
// threadgroup sizes and buffer order that the glue encodes. Plain C++17, no Metal or torch types:
// `Dev` supplies Buf (a device buffer handle), null(), alloc(bytes) and
// dispatch(const char* kernel, Launch, std::vector<Buf> buffers (bound at indices 0..), params, bytes)
// where the params are bound at the index after the last buffer.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "ssd_params.h"

namespace ssd_host {

struct Launch {
    int gx, gy, gz;  // threadgroups in the grid
    int tx, ty, tz;  // threads per threadgroup
};

inline int cdiv(int a, int b) { return (a + b - 1) / b; }

inline SsdParams make_params(int batch, int seqlen, int nheads, int headdim, int ngroups, int dstate, bool has_D,
                             bool D_per_p, bool has_z, bool has_bias, bool has_init, bool has_seq, bool softplus,
                             bool has_limit, float dt_min, float dt_max, bool has_dfinal) {
    SsdParams p{};
    p.batch = batch; p.seqlen = seqlen; p.nheads = nheads; p.headdim = headdim; p.ngroups = ngroups;
    p.dstate = dstate; p.nchunks = cdiv(seqlen, SSD_Q); p.heads_per_group = nheads / ngroups;
    p.has_D = has_D; p.D_per_p = D_per_p; p.has_z = has_z; p.has_bias = has_bias; p.has_init = has_init;
    p.has_seq = has_seq; p.softplus = softplus; p.has_limit = has_limit; p.has_dfinal = has_dfinal;
    p.dt_min = dt_min; p.dt_max = dt_max;
    return p;
}

inline Launch plan_dt_cumsum(const SsdParams& p) { return {p.nchunks, p.nheads, p.batch, SSD_Q, 1, 1}; }
inline Launch plan_bmm(const SsdParams& p, int k) { return {p.nchunks, k, p.batch, SSD_Q, SSD_BMM_TY, 1}; }
inline Launch plan_chunk_state(const SsdParams& p) {
    return {cdiv(p.dstate, SSD_CS_TN), cdiv(p.headdim, SSD_CS_PT), p.batch * p.nheads * p.nchunks, SSD_CS_TN,
            SSD_CS_TY, 1};
}
inline Launch plan_state_pass(const SsdParams& p) {
    return {cdiv(p.headdim * p.dstate, SSD_EW_T), p.nheads, p.batch, SSD_EW_T, 1, 1};
}
inline Launch plan_chunk_output(const SsdParams& p) {
    return {cdiv(p.headdim, SSD_OP_PT), p.nchunks, p.batch * p.nheads, SSD_Q, SSD_OP_TY, 1};
}
inline Launch plan_elementwise(long count) { return {cdiv((int)count, SSD_EW_T), 1, 1, SSD_EW_T, 1, 1}; }
inline Launch plan_state_pass_bwd(const SsdParams& p) { return {p.nheads, p.batch, 1, SSD_EW_T, 1, 1}; }
inline Launch plan_bwd_dbdc(const SsdParams& p) {
    return {cdiv(p.dstate, SSD_TI), p.nchunks, p.batch * p.nheads, SSD_TI, SSD_DBC_TY, 1};
}
inline Launch plan_bwd_dcs(const SsdParams& p) { return {p.nchunks, p.nheads, p.batch, SSD_Q, 1, 1}; }
inline Launch plan_state_update(const SuParams& p) {
    return {cdiv(p.headdim, SSD_SU_TY), p.nheads, p.batch, SSD_SIMD, SSD_SU_TY, 1};
}

// Sizes (elements) of the per-chunk scratch buffers.
inline size_t n_scalars(const SsdParams& p) { return (size_t)p.batch * p.nheads * p.nchunks * SSD_Q; }
inline size_t n_states(const SsdParams& p) {
    return (size_t)p.batch * p.nheads * p.nchunks * p.headdim * p.dstate;
}
inline size_t n_gram(const SsdParams& p, int k) { return (size_t)p.batch * p.nchunks * k * SSD_Q * SSD_Q; }

// The kernels index with 32-bit ints: every buffer the plan touches (inputs, outputs and scratch) must hold
// fewer than 2^31 elements. Returns "" or a message naming the first buffer over the limit and the shape.
inline std::string size_error(const SsdParams& p) {
    const size_t b = p.batch, L = p.seqlen, H = p.nheads, P = p.headdim, G = p.ngroups, N = p.dstate;
    const struct { const char* name; size_t n; } bufs[] = {
        {"x / z / y / dx (batch*L*H*P)", b * L * H * P},
        {"B / C (batch*L*G*N)", b * L * G * N},
        {"dB / dC per head (batch*L*H*N)", b * L * H * N},
        {"dt (batch*L*H)", b * L * H},
        {"per-chunk scalars dtp / cs / rc / dA_part (batch*H*nchunks*Q)", n_scalars(p)},
        {"chunk states / their gradients (batch*H*nchunks*P*N)", n_states(p)},
        {"C.B^T per chunk (batch*nchunks*G*Q*Q)", n_gram(p, p.ngroups)},
        {"dy.x^T per chunk, dux (batch*nchunks*H*Q*Q)", n_gram(p, p.nheads)},
        {"initial / final states (batch*H*P*N)", b * H * P * N},
    };
    for (const auto& e : bufs)
        if (e.n >= (size_t(1) << 31))
            return std::string("buffer ") + e.name + " would hold " + std::to_string(e.n) +
                   " elements (kernels index with 32-bit ints, limit 2^31) for batch=" + std::to_string(p.batch) +
                   " seqlen=" + std::to_string(p.seqlen) + " nheads=" + std::to_string(p.nheads) +
                   " headdim=" + std::to_string(p.headdim) + " ngroups=" + std::to_string(p.ngroups) +
                   " dstate=" + std::to_string(p.dstate) + " (chunk length " + std::to_string(SSD_Q) + ")";
    return "";
}

template <class Buf>
struct SsdInputs {  // fp32 except x/B/C/z (in_t of the library); seq int32; absent = Dev::null()
    Buf x, dt, A, B, C, D, z, dt_bias, init, seq;
};

template <class Buf>
struct Scratch {  // recomputed forward pieces
    Buf dtp, cs, rc, cb, states;
};

template <class Dev>
Scratch<typename Dev::Buf> forward_core(Dev& dev, const SsdParams& p, const SsdInputs<typename Dev::Buf>& in,
                                        typename Dev::Buf final_states) {
    using Buf = typename Dev::Buf;
    Scratch<Buf> s;
    s.dtp = dev.alloc(4 * n_scalars(p));
    s.cs = dev.alloc(8 * n_scalars(p));  // float2: double-float (hi, lo) cumsum
    s.rc = dev.alloc(4 * n_scalars(p));
    s.cb = dev.alloc(4 * n_gram(p, p.ngroups));
    s.states = dev.alloc(4 * n_states(p));
    dev.dispatch("ssd_dt_cumsum", plan_dt_cumsum(p), {in.dt, in.A, in.dt_bias, in.seq, s.dtp, s.cs, s.rc}, &p,
                 sizeof(p));
    SsdParams pc = p;
    pc.bmm_k = p.ngroups;
    pc.bmm_i = p.dstate;
    dev.dispatch("ssd_bmm_chunk", plan_bmm(p, p.ngroups), {in.C, in.B, s.cb}, &pc, sizeof(pc));
    SsdParams ps = p;
    ps.mode = 0;
    dev.dispatch("ssd_chunk_state", plan_chunk_state(p), {in.x, in.B, s.dtp, s.cs, s.rc, s.states}, &ps, sizeof(ps));
    dev.dispatch("ssd_state_pass", plan_state_pass(p), {s.states, in.init, s.cs, s.rc, final_states}, &p, sizeof(p));
    return s;
}

// y (batch, L, H, P) in_t, final_states (batch, H, P, N) fp32.
template <class Dev>
void ssd_forward(Dev& dev, const SsdParams& p, const SsdInputs<typename Dev::Buf>& in, typename Dev::Buf y,
                 typename Dev::Buf final_states) {
    auto s = forward_core(dev, p, in, final_states);
    dev.dispatch("ssd_chunk_output", plan_chunk_output(p),
                 {in.x, in.C, s.cb, s.dtp, s.cs, s.rc, s.states, in.D, in.z, y}, &p, sizeof(p));
}

template <class Buf>
struct SsdGrads {  // raw per-element gradients; the caller reduces them (see mamba_compat/ops/ssd/metal.py)
    Buf dx;       // (batch, L, H, P)
    Buf ddt;      // (batch, L, H): gradient of the raw dt (also, summed, of dt_bias)
    Buf dA_part;  // (batch, H, nchunks, Q): sum -> dA
    Buf dB_h;     // (batch, L, H, N): per-head; sum over the heads of a group -> dB
    Buf dC_h;     // (batch, L, H, N)
    Buf dDx;      // (batch, L, H, P): dy' * x; sum -> dD
    Buf dz;       // (batch, L, H, P) (written when has_z)
    Buf dinit;    // (batch, H, P, N)
};

// Backward; every buffer fp32 (the glue runs it with the float library). dy (batch, L, H, P),
// dfinal (batch, H, P, N) or null.
template <class Dev>
void ssd_backward(Dev& dev, const SsdParams& p, const SsdInputs<typename Dev::Buf>& in, typename Dev::Buf dy,
                  typename Dev::Buf dfinal, const SsdGrads<typename Dev::Buf>& out) {
    using Buf = typename Dev::Buf;
    const size_t nx = (size_t)p.batch * p.seqlen * p.nheads * p.headdim;
    Buf final_states = dev.alloc(4 * (size_t)p.batch * p.nheads * p.headdim * p.dstate);
    auto s = forward_core(dev, p, in, final_states);  // s.states = state entering each chunk
    SsdParams pn = p;  // output without the gate (y' = y_ssm + D x), for dz
    pn.has_z = 0;
    Buf ypre = dev.alloc(4 * nx);
    dev.dispatch("ssd_chunk_output", plan_chunk_output(p),
                 {in.x, in.C, s.cb, s.dtp, s.cs, s.rc, s.states, in.D, dev.null(), ypre}, &pn, sizeof(pn));
    Buf delta = dev.alloc(4 * nx);  // dy' = dy * silu(z)
    dev.dispatch("ssd_bwd_gate", plan_elementwise((long)nx), {dy, in.z, in.x, ypre, delta, out.dz, out.dDx}, &p,
                 sizeof(p));
    Buf gprev = dev.alloc(4 * n_states(p));
    SsdParams ps = p;
    ps.mode = 1;
    dev.dispatch("ssd_chunk_state", plan_chunk_state(p), {delta, in.C, s.dtp, s.cs, s.rc, gprev}, &ps, sizeof(ps));
    Buf dstates = dev.alloc(4 * n_states(p));
    Buf ddecay = dev.alloc(4 * (size_t)p.batch * p.nheads * p.nchunks);
    dev.dispatch("ssd_state_pass_bwd", plan_state_pass_bwd(p),
                 {dstates, gprev, s.states, s.cs, s.rc, dfinal, out.dinit, ddecay}, &p, sizeof(p));
    Buf du = dev.alloc(4 * nx);
    dev.dispatch("ssd_bwd_du", plan_chunk_output(p),
                 {delta, in.x, in.B, s.cb, s.dtp, s.cs, s.rc, dstates, in.D, du, out.dx}, &p, sizeof(p));
    Buf dux = dev.alloc(4 * n_gram(p, p.nheads));
    SsdParams pd = p;
    pd.bmm_k = p.nheads;
    pd.bmm_i = p.headdim;
    dev.dispatch("ssd_bmm_chunk", plan_bmm(p, p.nheads), {delta, in.x, dux}, &pd, sizeof(pd));
    dev.dispatch("ssd_bwd_dbdc", plan_bwd_dbdc(p),
                 {delta, in.x, in.B, in.C, dux, s.dtp, s.cs, s.rc, s.states, dstates, out.dB_h, out.dC_h}, &p,
                 sizeof(p));
    dev.dispatch("ssd_bwd_dcs", plan_bwd_dcs(p),
                 {delta, in.x, in.B, in.C, in.dt, in.A, in.dt_bias, dux, s.cb, s.dtp, s.cs, s.rc, s.states, dstates,
                  du, ddecay, out.ddt, out.dA_part},
                 &p, sizeof(p));
}

// One decode step; every buffer fp32 except idx (int32). state updated in place, out (batch, H, P).
template <class Dev>
void state_update(Dev& dev, const SuParams& p, typename Dev::Buf state, typename Dev::Buf x, typename Dev::Buf dt,
                  typename Dev::Buf A, typename Dev::Buf B, typename Dev::Buf C, typename Dev::Buf D,
                  typename Dev::Buf z, typename Dev::Buf dt_bias, typename Dev::Buf idx, typename Dev::Buf out) {
    dev.dispatch("ssd_state_update", plan_state_update(p), {state, x, dt, A, B, C, D, z, dt_bias, idx, out}, &p,
                 sizeof(p));
}

}  // namespace ssd_host
