/* mxep GPU backends: the prepacked weight layout and the kernel parameter
 * block, defined once for C host code, CUDA and HIP.
 *
 * Weights of one matrix [N rows = out, K cols = in] are cut into K chunks of
 * MXG_BK = 64 columns (K padded with zeros to K_pad, a multiple of 64) and rows
 * padded with zeros to N_pad (a multiple of MXG_NPAD). Chunk kc of row n starts
 * at byte (kc * N_pad + n) * RB, RB = 64 * bits / 8 (32 for MXFP4, 64 for FP8,
 * 128 for BF16). Inside a chunk the 32 element pairs (2j, 2j+1) are permuted so
 * that the quarter q (= lane % 4 of an mma.sync m16n8k16 B fragment) owns 8
 * consecutive pairs: pair slot q*8 + s*2 + h holds elements s*16 + h*8 + 2q and
 * +1 (s = k16 step, h = fragment half). A pair is two bytes (E4M3FN) or four
 * bytes (BF16). MXFP4 keeps the same 8 bytes per quarter but as two 32-bit
 * words j = 0, 1 (k16 steps 2j, 2j+1): pair p = (s & 1) * 2 + h has its first
 * element in nibble p and its second in nibble p + 4, so that one shift and
 * two masks place a pair in a BF16x2 register.
 * MXFP4 scales: bytes [K_pad/64][N_pad][2], the E8M0 of the two 32-blocks.
 * FP8 scales: float [KB][N_pad] per packed row, KB = 1 (per channel or per
 * tensor, applied after the K loop) or ceil(K_pad/128) (128x128 blocks, applied
 * per 128-wide K slice).
 * gate_up rows are always packed INTERLEAVED (row 2i gate_i, row 2i+1 up_i) so
 * that one thread holds both halves of an activation in its accumulators. */
#ifndef MXEP_GPU_LAYOUT_H
#define MXEP_GPU_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define MXG_BK 64
#define MXG_NPAD 128

enum { MXG_W_BF16 = 0, MXG_W_FP4 = 1, MXG_W_FP8 = 2 };
enum { MXG_EPI_ACT = 0, MXG_EPI_OUT = 1 };
enum { MXG_CFG_S = 0, MXG_CFG_M = 1, MXG_CFG_L = 2 };
enum { MXG_Q_STATIC = 0, MXG_Q_TOKEN = 1, MXG_Q_GROUP128 = 2 };

static inline size_t mxg_round_up(size_t v, size_t m)
{
    return (v + m - 1) / m * m;
}
/* Rows per m tile (BM) of a tile configuration: 16, 64 or 128. */
static inline int mxg_cfg_bm(int cfg)
{
    return cfg == MXG_CFG_S ? 16 : cfg == MXG_CFG_M ? 64 : 128;
}
static inline size_t mxg_pair_bytes(int wfmt)
{
    return wfmt == MXG_W_FP4 ? 1 : wfmt == MXG_W_FP8 ? 2 : 4;
}

/* One grouped GEMM over all local experts: rows of A are the assignments
 * sorted by expert (expert e owns sorted rows [off[e], off[e] + cnt[e])). */
typedef struct {
    int wfmt;  /* MXG_W_* */
    int flush; /* 1: float scales per 128-wide K slice (block FP8 or per-group activations) */
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
    /* A: bf16 rows, lda elements apart, columns [K, K_pad) zero */
    const uint16_t *a;
    int lda;
    const int32_t *a_rows;    /* sorted row -> row of a; NULL: row = sorted row */
    const float *a_row_scale; /* per sorted row, NULL = 1 */
    const float *a_grp_scale; /* [sorted row][a_grp_n] per 128 columns, NULL = none */
    int a_grp_n;
    /* schedule */
    const int32_t *tile_e, *tile_m0; /* per m tile */
    const int32_t *off, *cnt;        /* per expert */
    int n_mtiles;
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
 * per row and 128 group (GROUP128: written to grp[r * n_grp + g]). */
typedef struct {
    int mode;
    const uint16_t *in;
    int ld_in;
    const int32_t *src_rows;
    uint16_t *out;
    int ld_out;
    int K;
    float *row_scale;
    float *grp;
    int n_grp;
    int n_rows;
} mxg_quant_params_t;

/* out_f32[t][h] += w[a] * float(y[a][h]) over tok_list[tok_off[t] .. tok_off[t+1]) in order. */
typedef struct {
    const uint16_t *y;
    int H;
    const int32_t *tok_off, *tok_list;
    const float *w;
    float *out;
    int n_tokens;
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
#ifdef __cplusplus
}
#endif
#endif
