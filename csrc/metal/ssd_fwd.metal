// SSD forward, chunked (Mamba-2 "Listing 1" in four steps), one threadgroup per chunk tile:
//   ssd_dt_cumsum    dt processing + within-chunk cumulative log-decay and reset counts (threadgroup scan)
//   ssd_bmm_chunk    per-chunk Gram matrices, e.g. CB[t,s] = C_t . B_s (threadgroup tiles over the inner dim)
//   ssd_chunk_state  each chunk's own end state S_c = sum_s w_s x_s B_s^T (threadgroup tiles of x and B)
//   ssd_state_pass   inter-chunk recurrence H_c = decay_c H_{c-1} + S_c (parallel over state elements)
//   ssd_chunk_output y = intra-chunk (CB masked by decays) + C . H_{c-1} + D x, gated by silu(z)
// Layouts (contiguous): x, z, y (batch, L, H, P); dt (batch, L, H); B, C (batch, L, G, N);
// per-chunk scalars (batch, H, nchunks, Q); states (batch, H, nchunks, P, N); all arithmetic in fp32.
// The cumulative log decay cs is a double-float (hi, lo) pair (float2): its fp32 `hi` alone loses the
// segment sums cs_t - cs_s when |dt*A| is large (cs in the thousands, differences of order one), so every
// difference is taken as ssd_seg(a, b) = (a.hi - b.hi) + (a.lo - b.lo); exp of an absolute cs uses hi.
// This needs IEEE float addition (no reassociation): the glue compiles the library with fast math off.
#ifndef MAMBA_COMPAT_SSD_FWD_METAL
#define MAMBA_COMPAT_SSD_FWD_METAL
#include <metal_stdlib>
#include <metal_simdgroup_matrix>  // simdgroup_float8x8 (Metal 2.3+, Apple7 GPUs)
#include "ssd_params.h"
using namespace metal;

#ifndef SSD_IN_T
#define SSD_IN_T float
#endif
typedef SSD_IN_T in_t;

inline float ssd_softplus(float v) { return v > 20.0f ? v : log(1.0f + exp(v)); }

inline float ssd_sigmoid(float v) { return 1.0f / (1.0f + exp(-v)); }

// Double-float addition (Knuth's two-sum, then a fast renormalization): (a.x + a.y) + (b.x + b.y) to about
// 2^-44 relative, in IEEE fp32 arithmetic.
inline float2 ssd_dd_add(float2 a, float2 b) {
    const float s = a.x + b.x;
    const float bb = s - a.x;
    const float e = (a.x - (s - bb)) + (b.x - bb) + a.y + b.y;
    const float hi = s + e;
    return float2(hi, e - (hi - s));
}

// The segment sum cs_a - cs_b of two double-float cumsums (the log decay from position b to a).
inline float ssd_seg(float2 a, float2 b) { return (a.x - b.x) + (a.y - b.y); }

// Index of per-chunk scalar (dtp, cs, rc) for (b, h, c, t).
inline int ssd_sidx(constant SsdParams& p, int b, int h, int c, int t) {
    return ((b * p.nheads + h) * p.nchunks + c) * SSD_Q + t;
}

// grid (nchunks, H, batch) x threadgroup (SSD_Q): dtp = processed dt (0 past the end), cs = inclusive
// cumsum of dtp*A within the chunk (double-float, each step of the scan a ssd_dd_add), rc = number of seq_idx changes within the chunk up to t.
kernel void ssd_dt_cumsum(device const float* dt [[buffer(0)]],
                          device const float* A [[buffer(1)]],
                          device const float* dt_bias [[buffer(2)]],
                          device const int* seq_idx [[buffer(3)]],
                          device float* dtp [[buffer(4)]],
                          device float2* cs [[buffer(5)]],
                          device int* rc [[buffer(6)]],
                          constant SsdParams& p [[buffer(7)]],
                          uint3 tg [[threadgroup_position_in_grid]],
                          uint3 tid [[thread_position_in_threadgroup]]) {
    threadgroup float2 sa[2][SSD_Q];
    threadgroup int sr[2][SSD_Q];
    const int c = tg.x, h = tg.y, b = tg.z, t = tid.x;
    const int l = c * SSD_Q + t;
    float v = 0.0f;
    int chg = 0;
    if (l < p.seqlen) {
        v = dt[(b * p.seqlen + l) * p.nheads + h];
        if (p.has_bias) v += dt_bias[h];
        if (p.softplus) v = ssd_softplus(v);
        if (p.has_limit) v = min(max(v, p.dt_min), p.dt_max);
        if (p.has_seq && l > 0) chg = seq_idx[b * p.seqlen + l] != seq_idx[b * p.seqlen + l - 1] ? 1 : 0;
    }
    sa[0][t] = float2(v * A[h], 0.0f);
    sr[0][t] = chg;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    int cur = 0;
    for (int off = 1; off < SSD_Q; off <<= 1) {  // Hillis-Steele inclusive scan, double-buffered
        float2 a = sa[cur][t];
        int r = sr[cur][t];
        if (t >= off) {
            a = ssd_dd_add(sa[cur][t - off], a);
            r += sr[cur][t - off];
        }
        sa[1 - cur][t] = a;
        sr[1 - cur][t] = r;
        cur = 1 - cur;
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    const int o = ssd_sidx(p, b, h, c, t);
    dtp[o] = v;
    cs[o] = sa[cur][t];
    rc[o] = sr[cur][t];
}

// grid (nchunks, K, batch) x threadgroup (SSD_Q, SSD_BMM_TY):
// out[b, c, k, t, s] = sum_i row[b, c*Q+t, k, i] * col[b, c*Q+s, k, i]; rows/cols laid out (batch, L, K, I).
// Used for CB = C.B^T (K = groups, I = dstate) and, in the backward, dy'.x^T (K = heads, I = headdim).
// The (Q x Q) result is (Q/8)^2 tiles of 8x8; each SIMD-group owns SSD_BMM_TILES of them and accumulates
// them with simdgroup_matrix multiply-accumulates over threadgroup tiles of SSD_TI inner elements.
kernel void ssd_bmm_chunk(device const in_t* row [[buffer(0)]],
                          device const in_t* col [[buffer(1)]],
                          device float* out [[buffer(2)]],
                          constant SsdParams& p [[buffer(3)]],
                          uint3 tg [[threadgroup_position_in_grid]],
                          uint3 tid [[thread_position_in_threadgroup]],
                          uint sgi [[simdgroup_index_in_threadgroup]]) {
    threadgroup float rt[SSD_Q][SSD_BMM_LD];
    threadgroup float ct[SSD_Q][SSD_BMM_LD];
    const int c = tg.x, k = tg.y, b = tg.z;
    const int lin = tid.y * SSD_Q + tid.x, nthr = SSD_Q * SSD_BMM_TY;
    const int K = p.bmm_k, I = p.bmm_i;
    simdgroup_float8x8 acc[SSD_BMM_TILES];
    for (int j = 0; j < SSD_BMM_TILES; ++j) acc[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (int i0 = 0; i0 < I; i0 += SSD_TI) {
        for (int e = lin; e < SSD_Q * SSD_TI; e += nthr) {
            const int r = e / SSD_TI, i = e % SSD_TI;
            const int l = c * SSD_Q + r;
            const bool ok = l < p.seqlen && i0 + i < I;
            const int g = ((b * p.seqlen + l) * K + k) * I + i0 + i;
            rt[r][i] = ok ? float(row[g]) : 0.0f;
            ct[r][i] = ok ? float(col[g]) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int j = 0; j < SSD_BMM_TILES; ++j) {
            const int tile = (int)sgi + j * SSD_BMM_SG, ti = tile / (SSD_Q / 8), tj = tile % (SSD_Q / 8);
            for (int kk = 0; kk < SSD_TI; kk += 8) {
                simdgroup_float8x8 a, bt;
                simdgroup_load(a, &rt[ti * 8][kk], SSD_BMM_LD);
                simdgroup_load(bt, &ct[tj * 8][kk], SSD_BMM_LD, ulong2(0, 0), true);  // col tile, transposed
                simdgroup_multiply_accumulate(acc[j], a, bt, acc[j]);
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    device float* o = out + ((b * p.nchunks + c) * K + k) * SSD_Q * SSD_Q;
    for (int j = 0; j < SSD_BMM_TILES; ++j) {
        const int tile = (int)sgi + j * SSD_BMM_SG, ti = tile / (SSD_Q / 8), tj = tile % (SSD_Q / 8);
        simdgroup_store(acc[j], o + ti * 8 * SSD_Q + tj * 8, SSD_Q);
    }
}

// grid (ceil(N / SSD_CS_TN), ceil(P / SSD_CS_PT), batch*H*nchunks) x threadgroup (SSD_CS_TN, SSD_CS_TY):
// out[b, h, c, p, n] = sum_s w_s X[b, c*Q+s, h, p] Y[b, c*Q+s, g(h), n] with
//   mode 0 (forward chunk state): X = x, Y = B, w_s = dtp_s exp(cs_last - cs_s) [rc_s == rc_last]
//   mode 1 (backward, gradient of the state entering the chunk): X = dy', Y = C, w_s = exp(cs_s) [rc_s == 0]
kernel void ssd_chunk_state(device const in_t* X [[buffer(0)]],
                            device const in_t* Y [[buffer(1)]],
                            device const float* dtp [[buffer(2)]],
                            device const float2* cs [[buffer(3)]],
                            device const int* rc [[buffer(4)]],
                            device float* out [[buffer(5)]],
                            constant SsdParams& p [[buffer(6)]],
                            uint3 tg [[threadgroup_position_in_grid]],
                            uint3 tid [[thread_position_in_threadgroup]]) {
    threadgroup float xs[SSD_Q][SSD_CS_PT];
    threadgroup float ys[SSD_Q][SSD_CS_TN];
    const int n0 = tg.x * SSD_CS_TN, p0 = tg.y * SSD_CS_PT;
    const int bhc = tg.z, c = bhc % p.nchunks, bh = bhc / p.nchunks, h = bh % p.nheads, b = bh / p.nheads;
    const int g = h / p.heads_per_group;
    const int tx = tid.x, ty = tid.y, lin = ty * SSD_CS_TN + tx, nthr = SSD_CS_TN * SSD_CS_TY;
    const int P = p.headdim, N = p.dstate, G = p.ngroups;
    const int base = ssd_sidx(p, b, h, c, 0);
    const float2 cs_last = cs[base + SSD_Q - 1];
    const int rc_last = rc[base + SSD_Q - 1];
    for (int e = lin; e < SSD_Q * SSD_CS_PT; e += nthr) {
        const int s = e / SSD_CS_PT, pp = e % SSD_CS_PT, l = c * SSD_Q + s;
        xs[s][pp] = (l < p.seqlen && p0 + pp < P) ? float(X[((b * p.seqlen + l) * p.nheads + h) * P + p0 + pp]) : 0.0f;
    }
    for (int e = lin; e < SSD_Q * SSD_CS_TN; e += nthr) {
        const int s = e / SSD_CS_TN, nn = e % SSD_CS_TN, l = c * SSD_Q + s;
        float w;
        if (p.mode == 0) w = rc[base + s] == rc_last ? dtp[base + s] * exp(ssd_seg(cs_last, cs[base + s])) : 0.0f;
        else w = rc[base + s] == 0 ? exp(cs[base + s].x) : 0.0f;
        ys[s][nn] = (l < p.seqlen && n0 + nn < N) ? w * float(Y[((b * p.seqlen + l) * G + g) * N + n0 + nn]) : 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float acc[SSD_CS_PJ];
    for (int j = 0; j < SSD_CS_PJ; ++j) acc[j] = 0.0f;
    for (int s = 0; s < SSD_Q; ++s) {
        const float yv = ys[s][tx];
        for (int j = 0; j < SSD_CS_PJ; ++j) acc[j] += xs[s][ty + j * SSD_CS_TY] * yv;
    }
    const int n = n0 + tx;
    for (int j = 0; j < SSD_CS_PJ; ++j) {
        const int pidx = p0 + ty + j * SSD_CS_TY;
        if (n < N && pidx < P) out[(((b * p.nheads + h) * p.nchunks + c) * P + pidx) * N + n] = acc[j];
    }
}

// grid (ceil(P*N / SSD_EW_T), H, batch) x threadgroup (SSD_EW_T): the only sequential loop, over chunks.
// In place: states[c] holds S_c on entry and the state entering chunk c (H_{c-1}) on exit.
kernel void ssd_state_pass(device float* states [[buffer(0)]],
                           device const float* init [[buffer(1)]],
                           device const float2* cs [[buffer(2)]],
                           device const int* rc [[buffer(3)]],
                           device float* final_states [[buffer(4)]],
                           constant SsdParams& p [[buffer(5)]],
                           uint3 tg [[threadgroup_position_in_grid]],
                           uint3 tid [[thread_position_in_threadgroup]]) {
    const int PN = p.headdim * p.dstate;
    const int e = tg.x * SSD_EW_T + tid.x, h = tg.y, b = tg.z;
    if (e >= PN) return;  // no barriers in this kernel
    const int bh = b * p.nheads + h;
    float hs = p.has_init ? init[bh * PN + e] : 0.0f;
    for (int c = 0; c < p.nchunks; ++c) {
        const int idx = (bh * p.nchunks + c) * PN + e;
        const float sc = states[idx];
        states[idx] = hs;
        const int last = ssd_sidx(p, b, h, c, SSD_Q - 1);
        const float decay = rc[last] == 0 ? exp(cs[last].x) : 0.0f;
        hs = decay * hs + sc;
    }
    final_states[bh * PN + e] = hs;
}

// grid (ceil(P / SSD_OP_PT), nchunks, batch*H) x threadgroup (SSD_Q, SSD_OP_TY): thread (t, ty) computes
// y[t, p] for p = p0 + ty + j*SSD_OP_TY:
//   y = sum_{s<=t} CB[t,s] exp(cs_t - cs_s) [rc_t == rc_s] dtp_s x[s,p] + exp(cs_t) [rc_t == 0] C_t . H_{c-1}[p]
//       + D x[t,p];  y *= silu(z[t,p]) when has_z.
kernel void ssd_chunk_output(device const in_t* x [[buffer(0)]],
                             device const in_t* C [[buffer(1)]],
                             device const float* cb [[buffer(2)]],
                             device const float* dtp [[buffer(3)]],
                             device const float2* cs [[buffer(4)]],
                             device const int* rc [[buffer(5)]],
                             device const float* prev [[buffer(6)]],
                             device const float* D [[buffer(7)]],
                             device const in_t* z [[buffer(8)]],
                             device in_t* y [[buffer(9)]],
                             constant SsdParams& p [[buffer(10)]],
                             uint3 tg [[threadgroup_position_in_grid]],
                             uint3 tid [[thread_position_in_threadgroup]]) {
    threadgroup float us[SSD_Q][SSD_OP_PT];
    threadgroup float2 css[SSD_Q];
    threadgroup int rcs[SSD_Q];
    threadgroup float ct[SSD_Q][SSD_TI + 1];
    threadgroup float ht[SSD_OP_PT][SSD_TI + 1];
    const int p0 = tg.x * SSD_OP_PT, c = tg.y, bh = tg.z, h = bh % p.nheads, b = bh / p.nheads;
    const int g = h / p.heads_per_group;
    const int t = tid.x, ty = tid.y, lin = ty * SSD_Q + t, nthr = SSD_Q * SSD_OP_TY;
    const int P = p.headdim, N = p.dstate, G = p.ngroups, l = c * SSD_Q + t;
    const int base = ssd_sidx(p, b, h, c, 0);
    for (int e = lin; e < SSD_Q * SSD_OP_PT; e += nthr) {
        const int s = e / SSD_OP_PT, pp = e % SSD_OP_PT, ls = c * SSD_Q + s;
        us[s][pp] = (ls < p.seqlen && p0 + pp < P)
                        ? dtp[base + s] * float(x[((b * p.seqlen + ls) * p.nheads + h) * P + p0 + pp]) : 0.0f;
    }
    if (ty == 0) {
        css[t] = cs[base + t];
        rcs[t] = rc[base + t];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float acc[SSD_OP_PJ], off[SSD_OP_PJ];
    for (int j = 0; j < SSD_OP_PJ; ++j) acc[j] = off[j] = 0.0f;
    device const float* cbrow = cb + ((b * p.nchunks + c) * G + g) * SSD_Q * SSD_Q + t * SSD_Q;
    const float2 cst = css[t];
    const int rct = rcs[t];
    for (int s = 0; s <= t; ++s) {  // intra-chunk (diagonal block)
        const float coef = rcs[s] == rct ? cbrow[s] * exp(ssd_seg(cst, css[s])) : 0.0f;
        for (int j = 0; j < SSD_OP_PJ; ++j) acc[j] += coef * us[s][ty + j * SSD_OP_TY];
    }
    const device float* hp = prev + ((b * p.nheads + h) * p.nchunks + c) * P * N;
    for (int n0 = 0; n0 < N; n0 += SSD_TI) {  // state entering the chunk (off-diagonal blocks)
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int e = lin; e < SSD_Q * SSD_TI; e += nthr) {
            const int s = e / SSD_TI, nn = e % SSD_TI, ls = c * SSD_Q + s;
            ct[s][nn] = (ls < p.seqlen && n0 + nn < N) ? float(C[((b * p.seqlen + ls) * G + g) * N + n0 + nn]) : 0.0f;
        }
        for (int e = lin; e < SSD_OP_PT * SSD_TI; e += nthr) {
            const int pp = e / SSD_TI, nn = e % SSD_TI;
            ht[pp][nn] = (p0 + pp < P && n0 + nn < N) ? hp[(p0 + pp) * N + n0 + nn] : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int nn = 0; nn < SSD_TI; ++nn) {
            const float cv = ct[t][nn];
            for (int j = 0; j < SSD_OP_PJ; ++j) off[j] += cv * ht[ty + j * SSD_OP_TY][nn];
        }
    }
    if (l >= p.seqlen) return;  // after the last barrier
    const float wo = rct == 0 ? exp(cst.x) : 0.0f;
    for (int j = 0; j < SSD_OP_PJ; ++j) {
        const int pidx = p0 + ty + j * SSD_OP_TY;
        if (pidx >= P) continue;
        const int xi = ((b * p.seqlen + l) * p.nheads + h) * P + pidx;
        float v = acc[j] + wo * off[j];
        if (p.has_D) v += D[h * P + pidx] * float(x[xi]);
        if (p.has_z) {
            const float zv = float(z[xi]);
            v *= zv * ssd_sigmoid(zv);
        }
        y[xi] = in_t(v);
    }
}

#endif  // MAMBA_COMPAT_SSD_FWD_METAL
