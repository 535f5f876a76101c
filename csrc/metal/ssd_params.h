// Shared between the MSL kernels (textually prepended to the shader source) and the host code
// (the Objective-C++ glue and the CPU test harness). Plain C: ints and floats only, so the struct has
// the same layout in MSL and C++.
#ifndef MAMBA_COMPAT_SSD_PARAMS_H
#define MAMBA_COMPAT_SSD_PARAMS_H

// Chunk length of the Metal kernels (positions per threadgroup tile). A compile-time constant because
// threadgroup arrays need static sizes; the caller's chunk_size does not change the result (only the
// rounding), so the Metal backend always uses this one. Tests also build with -DSSD_Q=16. A multiple of 8
// (simdgroup 8x8 tiles; then SSD_Q * SSD_BMM_TY is a multiple of 32) and at most 64: the largest
// threadgroup footprint, ssd_bmm_chunk's two (SSD_Q x SSD_BMM_LD) float tiles, is 288 * SSD_Q bytes and
// Apple GPUs allow 32 KB per threadgroup (tests/metal/test_metal_static.py sums every kernel's arrays).
#ifndef SSD_Q
#define SSD_Q 64
#endif
#if SSD_Q % 8 != 0 || SSD_Q < 8 || SSD_Q > 64
#error "SSD_Q must be a multiple of 8 in [8, 64] (threadgroup memory of the kernels <= 32 KB)"
#endif

#define SSD_SIMD 32            // Apple GPU SIMD-group width (checked by the glue at run time)
#define SSD_TI 32              // inner-dimension tile of the chunk matmuls
#define SSD_BMM_TY 4           // bmm: threadgroup (SSD_Q, SSD_BMM_TY) = SSD_BMM_SG SIMD-groups
#define SSD_BMM_SG (SSD_Q * SSD_BMM_TY / SSD_SIMD)
#define SSD_BMM_TILES ((SSD_Q / 8) * (SSD_Q / 8) / SSD_BMM_SG)  // 8x8 output tiles per SIMD-group
#define SSD_BMM_LD (SSD_TI + 4)  // row stride of the bmm tiles (16-byte aligned rows)
#define SSD_CS_TN 32           // chunk_state: threadgroup (SSD_CS_TN, SSD_CS_TY), each thread SSD_CS_PJ rows of p
#define SSD_CS_TY 8
#define SSD_CS_PJ 2
#define SSD_CS_PT (SSD_CS_TY * SSD_CS_PJ)
#define SSD_OP_TY 4            // chunk_output / bwd_du: threadgroup (SSD_Q, SSD_OP_TY), SSD_OP_PJ p's per thread
#define SSD_OP_PJ 4
#define SSD_OP_PT (SSD_OP_TY * SSD_OP_PJ)
#define SSD_EW_T 256           // element-wise kernels and state passing: 1-D threadgroups
#define SSD_DBC_TY 8           // bwd_dbdc: threadgroup (SSD_TI, SSD_DBC_TY)
#define SSD_SU_TY 4            // state_update: threadgroup (SSD_SIMD, SSD_SU_TY), one SIMD-group per p

struct SsdParams {
    int batch, seqlen, nheads, headdim, ngroups, dstate, nchunks, heads_per_group;
    int has_D, D_per_p, has_z, has_bias, has_init, has_seq, softplus, has_limit, has_dfinal;
    int mode;            // chunk_state: 0 = chunk states from (x, B), 1 = d(prev state) from (dy', C)
    int bmm_k, bmm_i;    // bmm_chunk: K slots (groups or heads) and inner length of the rows
    float dt_min, dt_max;
};

struct SuParams {
    int batch, nheads, headdim, dstate, ngroups, heads_per_group;
    int has_D, has_z, has_bias, softplus, has_idx;
};

#endif
