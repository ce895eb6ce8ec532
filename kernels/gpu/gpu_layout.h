/* mxep GPU backends: the prepacked weight layout and the kernel parameter
 * block, defined once for C host code, CUDA and HIP.
 *
 * The kernels compute out^T = W . x^T: weight rows are the M side of the
 * tensor-core MMA (operand A, decoded in registers), tokens the N side (operand
 * B, BF16 in shared memory; E4M3 bytes for MXG_W_FP8X). The layout therefore
 * gives each thread of a warp exactly its A-fragment registers of an m16n8k16
 * MMA (the same per-warp fragment that wgmma m64nNk16 takes from registers on
 * Hopper).
 *
 * A matrix [N rows = out, K cols = in] is cut into K chunks of MXG_BK = 64
 * columns (K padded with zeros to K_pad, a multiple of 64) and 16-row groups
 * (rows padded with zeros to N_pad, a multiple of MXG_NPAD). For chunk kc and
 * row group rg, the 32 lanes' pieces follow each other: lane L's piece starts
 * at byte ((kc * N_pad / 16 + rg) * 32 + L) * TB, TB = 16 (MXFP4), 32 (FP8) or
 * 64 (BF16) bytes (mxg_thread_bytes). Lane L = 4 g + t (g = L / 4, t = L % 4)
 * holds, for each of the chunk's four k16 steps s, the fragment registers
 * r = 0..3 of rows (g, g + 8, g, g + 8) and columns (2t, 2t, 2t + 8, 2t + 8)
 * of the step, each register two elements of consecutive columns:
 *   BF16: step s at byte 16 s, register r at + 4 r (two BF16, lower column first);
 *   FP8:  step s at byte 8 s, register r at + 2 r (two E4M3FN bytes);
 *   MXFP4: step s is the 32-bit (little-endian) word s, holding the eight
 *          elements q = r + 4 el (el 0: lower column) of the step's four
 *          registers; bit j of element q's E2M1 code (j = 0 mantissa, 1 and 2
 *          exponent, 3 sign) is bit mxg_fp4_bit(q, j) of the word. The bits are
 *          spread so that a rotate and a mask place a register's two elements
 *          in a BF16x2 (mxg_fp4_pair: 9 logic instructions per word).
 * MXFP4 scales: for chunk kc and row group rg, 32 bytes at
 * (kc * N_pad / 16 + rg) * 32; byte 4 g + h + 2 b is the E8M0 of row g + 8 h
 * of the group for the chunk's 32-block b (one 32-bit word per lane quad).
 * FP8 scales: float [KB][N_pad] per packed row, KB = 1 (per channel or per
 * tensor, applied after the K loop) or ceil(K_pad/128) (128x128 blocks, applied
 * per 128-wide K slice).
 * gate_up rows are packed in 16-row groups of 8 gate rows then the 8 matching
 * up rows (packed row 16 G + r is gate_{8G+r}, 16 G + 8 + r is up_{8G+r}), so
 * that the thread holding row g of a group also holds row g + 8: both halves of
 * one activation. mxg_w_offset / mxg_sc_offset give every element's place; the
 * host prepack and the portable kernels use them, the MMA kernels rely on the
 * same arithmetic. */
#ifndef MXEP_GPU_LAYOUT_H
#define MXEP_GPU_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define MXG_BK 64
#define MXG_NPAD 256

/* MXG_W_FP8X: FP8 weights for the FP8 tensor cores (W8A8 on sm_90: token rows
 * are E4M3 bytes too, the MMAs m16n8k32 / m64nNk32 .e4m3); same bytes per lane as
 * MXG_W_FP8, arranged as those MMAs' A fragments (see below). */
enum { MXG_W_BF16 = 0, MXG_W_FP4 = 1, MXG_W_FP8 = 2, MXG_W_FP8X = 3 };
enum { MXG_EPI_ACT = 0, MXG_EPI_OUT = 1 };
enum { MXG_CFG_S = 0, MXG_CFG_M = 1, MXG_CFG_L = 2 };
enum { MXG_Q_STATIC = 0, MXG_Q_TOKEN = 1, MXG_Q_GROUP128 = 2, MXG_Q_COPY = 3 };
/* Tensor-core instruction of the GEMMs: mma.sync (sm_80+) or wgmma (sm_90a). One
 * device runs every tile configuration with the same one (batch invariance). */
enum { MXG_MMA_SYNC = 0, MXG_MMA_WGMMA = 1 };

static inline size_t mxg_round_up(size_t v, size_t m)
{
    return (v + m - 1) / m * m;
}
/* Tokens per m tile (BM) of a tile configuration: 16, 64 or 256. */
static inline int mxg_cfg_bm(int cfg)
{
    return cfg == MXG_CFG_S ? 16 : cfg == MXG_CFG_M ? 64 : 256;
}
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MXG_HD __host__ __device__
#else
#define MXG_HD
#endif
/* Bytes one lane holds per 64-wide chunk of a 16-row group (a constant
 * expression for the kernels' templates; mxg_thread_bytes for everyone else). */
#define MXG_THREAD_BYTES(wfmt) ((wfmt) == MXG_W_FP4 ? 16 : ((wfmt) == MXG_W_FP8 || (wfmt) == MXG_W_FP8X) ? 32 : 64)
static inline MXG_HD size_t mxg_thread_bytes(int wfmt)
{
    return MXG_THREAD_BYTES(wfmt);
}
/* Weights with FP8 bytes (E4M3FN), either arrangement. */
static inline MXG_HD int mxg_wfmt_fp8(int wfmt)
{
    return wfmt == MXG_W_FP8 || wfmt == MXG_W_FP8X;
}
/* Byte offset of element (n, k) inside one expert's packed matrix of N_pad rows;
 * for MXFP4 it is the offset of the element's 32-bit step word and *shift_p
 * the element's index q (0..7) in it (its bits: mxg_fp4_bit). */
static inline MXG_HD size_t mxg_w_offset(int wfmt, int N_pad, int n, int k, int *shift_p)
{
    const int rg = n >> 4, g = n & 7, hh = (n >> 3) & 1, kc = k >> 6;
    const int x = wfmt == MXG_W_FP8X;
    /* lane quad t: columns 2t, 2t + 1 (+ 8) of each k16 step, or (FP8X) 4t .. 4t + 3 (+ 16) of each k32 step */
    const int t4 = x ? (k >> 2) & 3 : (k >> 1) & 3;
    const size_t base =
        (((size_t)kc * (size_t)(N_pad >> 4) + (size_t)rg) * 32 + (size_t)(g * 4 + t4)) * mxg_thread_bytes(wfmt);
    *shift_p = 0;
    if (x) {
        /* k32 step s2 of the chunk at byte 16 s2; register r = hh + 2 kh at + 4 r holds
         * columns 4 t .. 4 t + 3 (+ 16 kh) of the step, lower column in the low byte */
        const int s2 = (k >> 5) & 1, kh = (k >> 4) & 1, b = k & 3;
        return base + (size_t)s2 * 16 + (size_t)(hh + 2 * kh) * 4 + (size_t)b;
    }
    const int s = (k >> 4) & 3, kh = (k >> 3) & 1, el = k & 1;
    const int r = hh + 2 * kh;
    if (wfmt == MXG_W_FP4) {
        *shift_p = r + 4 * el;
        return base + (size_t)s * 4;
    }
    if (wfmt == MXG_W_FP8)
        return base + (size_t)s * 8 + (size_t)r * 2 + (size_t)el;
    return base + (size_t)s * 16 + (size_t)r * 4 + (size_t)el * 2;
}
/* MXFP4 bit placement inside a step word. Register r's BF16x2 wants its
 * elements' magnitude bits (mantissa, exponent) at bits 6, 7, 8 and the sign at
 * 15 (lower column; + 16 for the upper one): the BF16 of value * 2^-126, exact
 * (codes 0 and 1 land on the BF16 subnormals). Register r's bits are stored
 * rotated right by rot(r): 6, 2 and 28 for r = 0..2, so one rotate and one mask
 * place them; register 3 takes the remaining bits, its mantissa bits rotated by
 * 8 and the rest in place (no four rotations of one 8-bit pattern tile 32
 * bits). Element q = r + 4 el, code bit j (0 mantissa, 1-2 exponent, 3 sign). */
static inline MXG_HD int mxg_fp4_bit(int q, int j)
{
    const int r = q & 3, el = q >> 2;
    const int target = (j < 3 ? 6 + j : 15) + 16 * el;
    const int rot = r == 0 ? 6 : r == 1 ? 2 : r == 2 ? 28 : (j == 0 ? 8 : 0);
    return (target - rot) & 31;
}
static inline MXG_HD uint32_t mxg_rotl32(uint32_t w, int n)
{
    return (w << n) | (w >> ((32 - n) & 31));
}
/* Register r (0..3) of a step word w as BF16x2 bits of value * 2^-126. */
static inline MXG_HD uint32_t mxg_fp4_pair(uint32_t w, int r)
{
    if (r == 0)
        return mxg_rotl32(w, 6) & 0x81c081c0u;
    if (r == 1)
        return mxg_rotl32(w, 2) & 0x81c081c0u;
    if (r == 2)
        return mxg_rotl32(w, 28) & 0x81c081c0u;
    return (w & 0x81808180u) | (mxg_rotl32(w, 8) & 0x00400040u);
}

/* Byte offset of the E8M0 scale of row n, 32-block blk (= k / 32). */
static inline MXG_HD size_t mxg_sc_offset(int N_pad, int n, int blk)
{
    const int rg = n >> 4, g = n & 7, hh = (n >> 3) & 1, kc = blk >> 1, b = blk & 1;
    return ((size_t)kc * (size_t)(N_pad >> 4) + (size_t)rg) * 32 + (size_t)(g * 4 + hh + 2 * b);
}
/* Token rows read by the decode kernel (tile configuration S) have their
 * columns permuted inside each 64-column chunk, so that the 16 columns lane
 * quad t takes for the chunk's four k16 steps (B fragments: columns 2t, 2t + 1,
 * 2t + 8, 2t + 9 of each step) are 32 contiguous bytes: column c of a chunk
 * (step s = c / 16, half kh = c / 8 % 2, t = c / 2 % 4, el = c % 2) is stored at
 * 16 t + 4 s + 2 kh + el. The producers of those rows (the quantizer / copy
 * kernel for GEMM1, GEMM1's decode epilogue for GEMM2) write this order, pad
 * columns included (zeros); the other configurations keep the natural order. */
static inline MXG_HD int mxg_tok_pos(int c)
{
    const int q = c & 63, s = q >> 4, kh = (q >> 3) & 1, t = (q >> 1) & 3, el = q & 1;
    return (c & ~63) | (16 * t + 4 * s + 2 * kh + el);
}

/* The same for FP8 token rows (MXG_W_FP8X, decode kernel): lane quad t takes, for
 * the chunk's two k32 steps s, columns 4t .. 4t + 3 and 16 + 4t .. 16 + 4t + 3 of
 * the step (B fragments of m16n8k32): 16 contiguous bytes. Column c of a chunk
 * (s = c / 32, kh = c / 16 % 2, t = c / 4 % 4, b = c % 4) is stored at byte
 * 16 t + 8 s + 4 kh + b. */
static inline MXG_HD int mxg_tok_pos8(int c)
{
    const int q = c & 63, s = q >> 5, kh = (q >> 4) & 1, t = (q >> 2) & 3, b = q & 3;
    return (c & ~63) | (16 * t + 8 * s + 4 * kh + b);
}

/* Packed GEMM1 row n -> (activation index i, 0 gate / 1 up). */
static inline MXG_HD int mxg_gateup_index(int n, int *up_p)
{
    *up_p = (n >> 3) & 1;
    return (n >> 4) * 8 + (n & 7);
}

/* K segments: a GEMM whose K is cut sums K chunks [0, kseg) and [kseg, KC) (KC =
 * K_pad / MXG_BK) each in K order from zero and adds the two sums, in every tile
 * configuration, so that a configuration may run the two segments in parallel
 * (the decode kernel at one token per expert does: two warps per row group) and
 * still give the others' bits. kseg is a multiple of 24 chunks, so that it starts
 * a group of every decode kernel's register ring (4, 6, 8 or 12 chunks) and a
 * 128-wide K slice; 0 (one segment) when K has at most 24 chunks (1536). */
static inline MXG_HD int mxg_kseg(int KC)
{
    const int k = 24 * ((KC + 24) / 48);
    return k > 0 && k < KC ? k : 0;
}

/* One grouped GEMM over all local experts: rows of A are the assignments
 * sorted by expert (expert e owns sorted rows [off[e], off[e] + cnt[e])). */
typedef struct {
    int wfmt;   /* MXG_W_* */
    int mma;    /* MXG_MMA_* */
    int pdl;    /* 1: launched as a programmatic dependent of the previous kernel (sm_90) */
    int flush;  /* 1: float scales per 128-wide K slice (block FP8 or per-group activations) */
    int sc_big; /* MXFP4: 1 when some E8M0 scale is above 2^1 (or NaN): the decode needs a second multiply */
    int l2pf;   /* decode kernel (S) on sm_90: before waiting for the previous kernel, each warp asks
                 * for the rest of its weights into L2 (set where they fit half the L2: bench/RESULTS.md) */
    int kseg;   /* first K chunk of the second K segment (mxg_kseg), 0: one segment */
    /* the tensor-core kernels (M, L) with kseg: each CTA keeps its first segment's sums in its
     * slot of stash (the CTA's tile of FP32, slots in launch order: stash_floats at least the grid's
     * CTAs times the tile) */
    float *stash;
    size_t stash_floats;
    const uint8_t *w;
    size_t w_estride; /* bytes per expert */
    const uint8_t *sc;
    size_t sc_estride; /* MXFP4 E8M0 bytes per expert */
    const float *wsf;
    size_t wsf_estride; /* FP8 float scales per expert, NULL = 1 */
    int wsf_kb;         /* rows of wsf: 1 or ceil(K_pad/128) */
    const float *bias;
    size_t bias_estride; /* [N_pad] per expert (zeros when the model has none) */
    int N, N_pad, K_pad;
    /* A: bf16 rows, lda elements apart, columns [K, K_pad) zero (MXG_W_FP8X: E4M3
     * bytes, lda bytes apart) */
    const uint16_t *a;
    int lda;
    const int32_t *a_rows;    /* sorted row -> row of a; NULL: row = sorted row */
    int a_nat;                /* decode kernel (S): the rows' columns are in natural order, not mxg_tok_pos
                               * order (BF16 rows only; the other configurations always read natural order) */
    const float *a_row_scale; /* per sorted row, NULL = 1 */
    const float *a_grp_scale; /* [sorted row][a_grp_n] per 128 columns, NULL = none */
    int a_grp_n;
    /* schedule */
    const int32_t *tile_e, *tile_m0; /* per m tile */
    const int32_t *off, *cnt;        /* per expert */
    int n_mtiles;
    int tile_rows; /* the most rows of an m tile with tokens (at most BM; the decode kernel's shared token rows) */
    /* epilogue */
    int epi, act;
    float limit, alpha;
    uint16_t *out;
    int ldo;
    const int32_t *out_rows; /* EPI_OUT: sorted row -> output row */
} mxg_gemm_params_t;

/* Activation quantization to E4M3 values (kept as BF16 for the MMA):
 * rows sorted; input row r is in[src_rows ? src_rows[r] : r] (ld_in), output
 * row r at out + r * ld_out; scales per row (STATIC: read; TOKEN: written) or
 * per row and 128 group (GROUP128: written to grp[r * n_grp + g]); COPY copies
 * the BF16 values. perm_in / perm_out: the rows are in mxg_tok_pos order;
 * pad_out > K: columns [K, pad_out) of the output are written as zeros.
 * out8 (instead of out): the E4M3 bytes themselves, ld_out bytes apart, for the
 * FP8 tensor cores (perm_out: mxg_tok_pos8 order). */
typedef struct {
    int mode;
    const uint16_t *in;
    int ld_in;
    const int32_t *src_rows;
    uint16_t *out;
    uint8_t *out8;
    int ld_out;
    int K;
    float *row_scale;
    float *grp;
    int n_grp;
    int n_rows;
    int pdl;
    int perm_in, perm_out, pad_out;
} mxg_quant_params_t;

/* out_f32[t][h] += w[a] * float(y[a][h]) over tok_list[tok_off[t] .. tok_off[t+1]) in order. */
typedef struct {
    const uint16_t *y;
    int H;
    const int32_t *tok_off, *tok_list;
    const float *w;
    float *out;
    int n_tokens;
    int pdl;
} mxg_combine_params_t;

#ifdef __cplusplus
extern "C" {
#endif
/* Launchers (kernels/gpu/moe_kernels.cu): they only enqueue work on `stream`
 * (never the legacy default stream) and return 0 or the runtime's error code
 * of the launch; errors of the kernels themselves show at the next sync. */
int mxi_gpu_gemm_launch(const mxg_gemm_params_t *p, int cfg, void *stream);
int mxi_gpu_quant_launch(const mxg_quant_params_t *p, void *stream);
int mxi_gpu_combine_launch(const mxg_combine_params_t *p, void *stream);
/* BM of a tile configuration. */
int mxi_gpu_cfg_bm(int cfg);
/* The MXEP_CUDA_* settings of the kernels (MXEP_CUDA_DEC, _L, _LF, _QTHREADS)
 * and of the cuda backend (_MMA, _PDL, _TOKCOPY, _L2PF, _FP8MMA): 0 when each is
 * unset, empty or one of the values it takes; else -1, and msg (cap bytes)
 * names the variable, its value and the values it takes. */
int mxi_gpu_check_settings(char *msg, size_t cap);
/* mxgpu_bench --probe: reads n_experts matrices of NG 16-row groups x KC chunks
 * of 512 bytes (expert_bytes apart) with the MXFP4 decode kernel's grid and
 * nothing else; variant 0/1: the packed (chunk-major) layout with a ring of
 * 6/12 chunks, 2/3: each row group's chunks contiguous, 6/12; out: NG * 32 *
 * n_experts words. CUDA only (HIP builds return -1). */
int mxi_gpu_read_probe(const void *w, size_t expert_bytes, int n_experts, int NG, int KC, int variant, uint32_t *out,
                       void *stream);
/* mxgpu_bench: reads `bytes` of buf (a multiple of 16, on the device) on the
 * stream with cached loads, which leaves the L2 holding clean lines of buf and
 * nothing of what the timed work reads. Writes *sink only if the words' XOR is
 * `never` (pass a value it is not). 0 or the runtime's error code. */
int mxi_gpu_l2_flush(const void *buf, size_t bytes, uint32_t never, uint32_t *sink, void *stream);
/* mxgpu_bench --trace: the layer's timeline. on = 1 clears the notes and turns
 * the trace on (after the stream's earlier work: call it with the device idle);
 * on = 0 turns it off and copies the notes into out[MXG_TR_SLOTS][6]: per slot
 * the first and last CTA start, input ready (past griddepcontrol.wait) and end,
 * %globaltimer ns (a slot no CTA noted keeps first = ~0, last = 0), and, when
 * sm_out is not NULL, into sm_out[MXG_TR_SLOTS][MXG_TR_MAXSM] how many of the
 * slot's CTAs started on each SM. Slots: the quantizer or copy of GEMM1's input,
 * GEMM1, GEMM2's quantizer, GEMM2, the combine. 0 or the runtime's error code;
 * HIP builds return -1. */
enum { MXG_TR_Q1 = 0, MXG_TR_G1 = 1, MXG_TR_Q2 = 2, MXG_TR_G2 = 3, MXG_TR_COMB = 4, MXG_TR_SLOTS = 5 };
enum { MXG_TR_MAXSM = 256 };
int mxi_gpu_trace(int on, unsigned long long *out, unsigned *sm_out);
/* 1 when the kernels the current device runs were built for sm_90 or later,
 * so that they wait for the kernel before them (griddepcontrol.wait) and may be
 * launched as dependents; 0 when the device runs older PTX (e.g. the
 * compute_80 PTX JIT-compiled on a newer GPU that has no machine code in this
 * build), where that wait compiles to nothing, and in HIP builds. */
int mxi_gpu_has_griddep(void);
/* The current device's loaded kernels: MXG_FEAT_* bits (wgmma compiled in: sm_90a
 * code; FP8 mma.sync: sm_89+ code), or -1 with the cudaError_t in *err_p when the
 * probe failed (cudaErrorNoKernelImageForDevice: no code in this build for the
 * device, CMAKE_CUDA_ARCHITECTURES; else out of memory and the like). One tiny
 * launch. */
enum { MXG_FEAT_WGMMA = 1, MXG_FEAT_FP8MMA = 2 };
int mxi_gpu_arch_feats(int *err_p);
#ifdef __cplusplus
}
#endif
#endif
