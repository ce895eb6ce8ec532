/* mxep cpu backend, AMX level: MXFP4 weights on AMX-INT8 tiles (Sapphire Rapids
 * and later), called only when mxi_cpu_detect() found AMX-TILE + AMX-INT8 and
 * got the OS's permission for the tile data (kernels/cpu/cpu.c).
 *
 * Same contract as every level (cpu_internal.h), so the same bits: per block b
 * the integer S_b of each (token, row) comes from tile products whose K is that
 * block's 32 elements, nothing else:
 *   A tiles: up to 16 tokens x 32 bytes, the high (signed) or low (unsigned)
 *            bytes of the tokens' A_k (the qact rows' amx section, rows taken at
 *            a constant stride: run() gives an expert's tokens equally spaced
 *            rows);
 *   B tile:  the block's signed weights W = 2 * E2M1 of 16 rows (and of 8 more in
 *            a second tile: 24 rows per call), 4 consecutive elements per row
 *            and tile row (the VNNI layout TDPB* wants), decoded once per call;
 *   C tiles: C_high += A_high . B (TDPBSSD), C_low += A_low . B (TDPBUSD), fresh
 *            per block; S_b = 256 * C_high + C_low (|S_b| < 2^24: exact).
 * Then acc_j = fma(float(S_b), ws_b * as_b, acc_j) with j = b % 8, 16 rows per
 * vector, accumulator planes [j][token][24 rows] in the scratch, padding blocks
 * with S_b = 0 like the other levels, and the hsum8 tree across the planes.
 *
 * Fewer than MXI_CPU_AMX_MIN tokens, or token rows that are not equally spaced,
 * go to the AVX-512 VNNI kernel (the AMX level implies AVX512-VNNI). */
#include <immintrin.h>
#include <string.h>

#include "../cpu_internal.h"

#define AMX_MT 16               /* tokens per tile */
#define AMX_RB MXI_CPU_AMX_ROWS /* rows per call at most: two B tiles of 16 */

_Static_assert(MXI_CPU_AMX_ROWS == 32, "the AMX kernel handles 32-row items: 16 + 16 rows");

typedef struct {
    uint8_t palette, start_row, rsv[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg_t;

/* Tiles: 0, 1 A high / low (mt tokens x 32 bytes); 2 B of rows 0..15, 3 B of
 * rows 16..31; 4, 5 C high / low of rows 0..15; 6, 7 the same of rows 16..31. */
static void amx_config(unsigned mt)
{
    amx_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = cfg.rows[1] = (uint8_t)mt;
    cfg.colsb[0] = cfg.colsb[1] = 32;
    cfg.rows[2] = cfg.rows[3] = 8;
    cfg.colsb[2] = cfg.colsb[3] = 64;
    cfg.rows[4] = cfg.rows[5] = cfg.rows[6] = cfg.rows[7] = (uint8_t)mt;
    cfg.colsb[4] = cfg.colsb[5] = cfg.colsb[6] = cfg.colsb[7] = 64;
    _tile_loadconfig(&cfg);
}

/* 2 * E2M1 of each code (signed), in both 128-bit lanes. */
static inline __m256i amx_table(void)
{
    return _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12, 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2,
                            -3, -4, -6, -8, -12);
}

/* In-register transpose of 16 x 16 dwords: r[n] dword d -> r[d] dword n. */
static inline void amx_transpose16(__m512i r[16])
{
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    }
}

/* Decodes rows r0 + i (i < nr) into the B tiles: block b's 1024 bytes at
 * bt + 1024 b, rows 0..15 then rows 16..31, each as 8 tile rows of 64 bytes;
 * tile row kk holds elements 4kk..4kk+3 of each row (rows nr..: 0, or not
 * written when nr <= 16: the kernel skips that tile). Per group and q-load,
 * each row gives 16 dwords (block j, elements 8q..8q+7 as tile rows 2q and
 * 2q+1); 16 rows are transposed in registers, so every tile row is one store. */
static void amx_decode(const mxi_cpu_mat_t *m, size_t r0, size_t nr, uint8_t *bt)
{
    const __m256i tab = amx_table(), lo4 = _mm256_set1_epi8(0x0F);
    /* dword d of a row's vector: block base[d / 4] + (d % 4) / 2, tile row 2q + d % 2 */
    static const unsigned base[4] = {0, 4, 2, 6};
    for (size_t i0 = 0; i0 < nr; i0 += 16) {
        for (size_t g = 0; g < m->ng; g++) {
            const unsigned nj = g + 1 < m->ng ? 8 : m->tail;
            /* the weights are read once, here: the same group of the next item's rows into L2 */
            for (size_t i = i0; i < i0 + 16 && i < nr; i++) {
                const char *pf = (const char *)(m->data + (r0 + i + AMX_RB) * m->row_stride + 128 * g);
                _mm_prefetch(pf, _MM_HINT_T1);
                _mm_prefetch(pf + 64, _MM_HINT_T1);
            }
            for (unsigned q = 0; q < 4; q++) {
                __m512i r[16];
                for (size_t n = 0; n < 16; n++) {
                    if (i0 + n >= nr) {
                        r[n] = _mm512_setzero_si512();
                        continue;
                    }
                    const uint8_t *row = m->data + (r0 + i0 + n) * m->row_stride;
                    __m256i x = _mm256_loadu_si256((const __m256i *)(row + mxi_cpu_q4_qoff(m, g, q)));
                    __m256i wl = _mm256_shuffle_epi8(tab, _mm256_and_si256(x, lo4));
                    __m256i wh = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(x, 4), lo4));
                    /* per 128-bit lane L, 8 bytes per block = elements 8q..8q+7:
                     * unpacklo: blocks 4L, 4L+1; unpackhi: blocks 4L+2, 4L+3 */
                    r[n] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi8(wl, wh)),
                                              _mm256_unpackhi_epi8(wl, wh), 1);
                }
                amx_transpose16(r);
                for (unsigned d = 0; d < 16; d++) {
                    const unsigned j = base[d / 4] + (d % 4) / 2;
                    if (j < nj)
                        _mm512_storeu_si512((void *)(bt + 1024 * (8 * g + j) + 32 * i0 + 64 * (2 * q + d % 2)), r[d]);
                }
            }
        }
    }
}

/* ws of an E8M0 byte, as mxi_cpu_q4_ws (inlined: a call per row and block
 * cost more than the rest of the decode). */
static inline float amx_ws(uint8_t b)
{
    uint32_t u = b >= 15 ? (uint32_t)(b - 14) << 23 : 1u << (b + 8);
    u = b == 0xFF ? 0x7FC00000u : u;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* 8 lanes' hsum8 tree across the planes: ((p0+p4)+(p2+p6)) + ((p1+p5)+(p3+p7)). */
static inline __m512 amx_tree(const float *p, size_t ps, __mmask16 k)
{
#define AMX_LD(o) _mm512_maskz_loadu_ps(k, p + (o)*ps)
    __m512 a = _mm512_add_ps(AMX_LD(0), AMX_LD(4)), b = _mm512_add_ps(AMX_LD(2), AMX_LD(6));
    __m512 c = _mm512_add_ps(AMX_LD(1), AMX_LD(5)), d = _mm512_add_ps(AMX_LD(3), AMX_LD(7));
#undef AMX_LD
    return _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d));
}

/* The tile products of one block for one token tile (a: its A rows, at stride
 * qs; b: its B tiles) into cb: C high and low of rows 0..15 (16 int32 per
 * token), then of rows 16..31 when two. */
static inline void amx_products(const int8_t *a, ptrdiff_t qs, const uint8_t *b, int two, int32_t *cb)
{
    _tile_loadd(0, a, qs);
    _tile_loadd(1, a + 32, qs);
    _tile_loadd(2, b, 64);
    _tile_zero(4);
    _tile_zero(5);
    _tile_dpbssd(4, 0, 2);
    _tile_dpbusd(5, 1, 2);
    if (two) {
        _tile_loadd(3, b + 512, 64);
        _tile_zero(6);
        _tile_zero(7);
        _tile_dpbssd(6, 0, 3);
        _tile_dpbusd(7, 1, 3);
    }
    _tile_stored(4, cb, 64);
    _tile_stored(5, cb + 256, 64);
    if (two) {
        _tile_stored(6, cb + 512, 64);
        _tile_stored(7, cb + 768, 64);
    }
}

/* The contract's float step of block b for mt tokens (rows q0 + u qs): p[u][i]
 * = fma(float(S), ws[i] * as_b, p[u][i]) with S = 256 C_high + C_low (0 for a
 * padding block), the planes starting at +0 (first); 16 rows per vector. */
static inline void amx_float_step(const int32_t *cb, int real, int first, const float *ws, const uint8_t *q0,
                                  ptrdiff_t qs, size_t b, unsigned mt, int two, float *p)
{
    const __m512 w0 = _mm512_loadu_ps(ws), w1 = _mm512_loadu_ps(ws + 16);
    for (unsigned u = 0; u < mt; u++, p += AMX_RB) {
        const __m512 as = _mm512_set1_ps(MXI_QACT_AS(q0 + (ptrdiff_t)u * qs)[b]);
        for (int h = 0; h < 1 + two; h++) {
            __m512i s = _mm512_setzero_si512();
            if (real)
                s = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(cb + 512 * h + 16 * u), 8),
                                     _mm512_load_si512(cb + 512 * h + 256 + 16 * u));
            __m512 sc = _mm512_mul_ps(h ? w1 : w0, as);
            __m512 acc = first ? _mm512_setzero_ps() : _mm512_loadu_ps(p + 16 * h);
            _mm512_storeu_ps(p + 16 * h, _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc));
        }
    }
}

void mxi_cpu_q4_amx(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                    size_t ldc, void *tile)
{
    const size_t nr = r1 - r0, nb = m->nb, nbp = 8 * m->ng;
    if (nt == 0 || nr == 0)
        return;
    int even = nt >= MXI_CPU_AMX_MIN && nr <= AMX_RB;
    const ptrdiff_t qs = nt > 1 ? qa[1] - qa[0] : 0;
    for (size_t t = 2; even && t < nt; t++)
        even = qa[t] - qa[t - 1] == qs;
    if (!even) { /* streaming takes any rows; tiled, at most MXI_CPU_ROW_BLOCK (its scratch) */
        const size_t step = nt < MXI_CPU_Q4Z_STREAM_MAX ? nr : MXI_CPU_ROW_BLOCK;
        for (size_t a = r0; a < r1; a += step)
            mxi_cpu_q4_avx512vnni(m, a, a + step < r1 ? a + step : r1, qa, nt, c + (a - r0), ldc, tile);
        return;
    }
    /* scratch (MXI_CPU_AMX_TILE_BYTES): B tiles (1024 nbp), ws of [block][32
     * rows] (128 nbp), two sets of C tiles (4 KB each); then the accumulator
     * planes [8][nt][32] */
    uint8_t *bt = (uint8_t *)tile;
    float *ws = (float *)(bt + 1024 * nbp);
    int32_t *cbuf = (int32_t *)(bt + 1152 * nbp); /* [2][1024] */
    float *part = (float *)(bt + MXI_CPU_AMX_TILE_BYTES(nbp));
    const size_t ps = nt * AMX_RB; /* plane stride, floats */
    amx_decode(m, r0, nr, bt);
    for (size_t i = 0; i < AMX_RB; i++) {
        const uint8_t *sb = m->scales + (r0 + (i < nr ? i : nr - 1)) * m->scale_stride;
        for (size_t b = 0; b < nbp; b++)
            ws[AMX_RB * b + i] = amx_ws(sb[b]);
    }
    const int two = nr > 16;
    /* steps (token tile, block), token tiles outer (their planes stay in L1);
     * the float step of each runs one step later, so the vector loads of its C
     * tiles do not wait on the tile stores just issued */
    unsigned cur = 0;
    size_t pt0 = 0, pb = 0; /* the step whose float step is pending */
    int pending = 0, buf = 0;
    for (size_t t0 = 0;; t0 += AMX_MT) {
        const int more = t0 < nt;
        for (size_t b = 0; b < (more ? nbp : 1); b++) {
            if (more) {
                const unsigned mt = nt - t0 < AMX_MT ? (unsigned)(nt - t0) : AMX_MT;
                if (mt != cur) {
                    amx_config(mt);
                    cur = mt;
                }
                if (b < nb)
                    amx_products(MXI_QACT_AMX(qa[t0], nbp) + 64 * b, qs, bt + 1024 * b, two, cbuf + 1024 * buf);
            }
            if (pending) {
                const unsigned mt = nt - pt0 < AMX_MT ? (unsigned)(nt - pt0) : AMX_MT;
                amx_float_step(cbuf + 1024 * (buf ^ 1), pb < nb, pb < 8, ws + AMX_RB * pb, qa[pt0], qs, pb, mt, two,
                               part + (pb % 8) * ps + pt0 * AMX_RB);
            }
            pending = more;
            pt0 = t0;
            pb = b;
            buf ^= 1;
        }
        if (!more)
            break;
    }
    _tile_release();
    const __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xFFFFu : (1u << nr) - 1u);
    const __mmask16 m1 = (__mmask16)(nr > 16 ? (1u << (nr - 16)) - 1u : 0u);
    for (size_t t = 0; t < nt; t++) {
        const float *p = part + t * AMX_RB;
        _mm512_mask_storeu_ps(c + t * ldc, m0, amx_tree(p, ps, m0));
        if (m1)
            _mm512_mask_storeu_ps(c + t * ldc + 16, m1, amx_tree(p + 16, ps, m1));
    }
}
