// One-token decode step (selective_state_update), fp32 state updated in place.
// Layouts (contiguous, fp32): state (S, H, P, N) with S >= batch when indexed; x, dt, z (batch, H, P);
// A (H, P, N); B, C (batch, G, N); D, dt_bias (H, P); idx (batch,) int32, negative = padding row.
#ifndef MAMBA_COMPAT_STATE_UPDATE_METAL
#define MAMBA_COMPAT_STATE_UPDATE_METAL
#include <metal_stdlib>
#include "ssd_params.h"
using namespace metal;

// grid (ceil(P / SSD_SU_TY), H, batch) x threadgroup (SSD_SIMD, SSD_SU_TY): one SIMD-group per (b, h, p);
// its lanes stride over N and simd_sum reduces C . s. Every lane reaches simd_sum (no early return).
kernel void ssd_state_update(device float* state [[buffer(0)]],
                             device const float* x [[buffer(1)]],
                             device const float* dt [[buffer(2)]],
                             device const float* A [[buffer(3)]],
                             device const float* B [[buffer(4)]],
                             device const float* C [[buffer(5)]],
                             device const float* D [[buffer(6)]],
                             device const float* z [[buffer(7)]],
                             device const float* dt_bias [[buffer(8)]],
                             device const int* idx [[buffer(9)]],
                             device float* out [[buffer(10)]],
                             constant SuParams& p [[buffer(11)]],
                             uint3 tg [[threadgroup_position_in_grid]],
                             uint3 tid [[thread_position_in_threadgroup]]) {
    const int pi = tg.x * SSD_SU_TY + tid.y, h = tg.y, b = tg.z, lane = tid.x;
    const int P = p.headdim, N = p.dstate;
    const int g = h / p.heads_per_group;
    const int row = p.has_idx ? idx[b] : b;
    const bool live = pi < P && row >= 0;
    float acc = 0.0f, xv = 0.0f;
    if (live) {
        const int xi = (b * p.nheads + h) * P + pi;
        xv = x[xi];
        float d = dt[xi];
        if (p.has_bias) d += dt_bias[h * P + pi];
        if (p.softplus) d = d > 20.0f ? d : log(1.0f + exp(d));
        device float* s = state + ((row * p.nheads + h) * P + pi) * N;
        const device float* a = A + (h * P + pi) * N;
        const device float* bv = B + (b * p.ngroups + g) * N;
        const device float* cv = C + (b * p.ngroups + g) * N;
        const float dx = d * xv;
        for (int n = lane; n < N; n += SSD_SIMD) {
            const float sn = s[n] * exp(d * a[n]) + dx * bv[n];
            s[n] = sn;
            acc += sn * cv[n];
        }
    }
    const float tot = simd_sum(acc);
    if (lane != 0 || pi >= P) return;
    const int xi = (b * p.nheads + h) * P + pi;
    float o = 0.0f;
    if (row >= 0) {
        o = tot;
        if (p.has_D) o += D[h * P + pi] * xv;
        if (p.has_z) o *= z[xi] / (1.0f + exp(-z[xi]));
    }
    out[xi] = o;
}

#endif  // MAMBA_COMPAT_STATE_UPDATE_METAL
