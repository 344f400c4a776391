/* Fused exact scan of int8 factor rows (lorif_serve.server.kernels.fused).
 *
 * score[b][r] = sum over layers l of s_a(r,l) * s_b(r,l) * sum_k a_k^T H_bl^T b_k
 *
 * where a_k, b_k are the int8 codes of component k of the two factor sides of layer l in
 * row r, s_a, s_b their float32 segment scales (stored at the row's end), and H_bl the
 * preconditioned query b of layer l, laid out (db, da) row-major. The codes are converted
 * to float once per row and layer and every product is accumulated in float32, so this
 * computes the same numbers as the torch path, without writing any intermediate to memory.
 * The vector width comes from GCC vector extensions: 16 lanes where the machine it compiles
 * on (-march=native) has AVX-512, else 8 (the compiler maps them to its registers).
 */
#define _DEFAULT_SOURCE /* syscall(), for the AMX request */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));

#define KB 4 /* components scored together: four independent accumulators per H load */

#define LAYER_KERNEL(NAME, VT, W)                                                          \
    static float NAME(const float *restrict af, const float *restrict bf, int64_t c,       \
                      int64_t da, int64_t db, const float *restrict H)                     \
    {                                                                                      \
        VT total = {0};                                                                    \
        int64_t k = 0;                                                                     \
        for (; k + KB <= c; k += KB) {                                                     \
            const float *b0 = bf + k * db;                                                 \
            for (int64_t v = 0; v < da; v += W) {                                          \
                VT y0 = {0}, y1 = {0}, y2 = {0}, y3 = {0};                                 \
                for (int64_t j = 0; j < db; j++) {                                         \
                    VT h;                                                                  \
                    memcpy(&h, H + j * da + v, sizeof h);                                  \
                    y0 += h * b0[j];                                                       \
                    y1 += h * b0[db + j];                                                  \
                    y2 += h * b0[2 * db + j];                                              \
                    y3 += h * b0[3 * db + j];                                              \
                }                                                                          \
                VT a0, a1, a2, a3;                                                         \
                memcpy(&a0, af + k * da + v, sizeof a0);                                   \
                memcpy(&a1, af + (k + 1) * da + v, sizeof a1);                             \
                memcpy(&a2, af + (k + 2) * da + v, sizeof a2);                             \
                memcpy(&a3, af + (k + 3) * da + v, sizeof a3);                             \
                total += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3;                            \
            }                                                                              \
        }                                                                                  \
        for (; k < c; k++) {                                                               \
            const float *bk = bf + k * db;                                                 \
            int64_t v = 0;                                                                 \
            for (; v + KB * W <= da; v += KB * W) { /* four chains, as above */            \
                VT y0 = {0}, y1 = {0}, y2 = {0}, y3 = {0};                                 \
                for (int64_t j = 0; j < db; j++) {                                         \
                    VT h0, h1, h2, h3;                                                     \
                    memcpy(&h0, H + j * da + v, sizeof h0);                                \
                    memcpy(&h1, H + j * da + v + W, sizeof h1);                            \
                    memcpy(&h2, H + j * da + v + 2 * W, sizeof h2);                        \
                    memcpy(&h3, H + j * da + v + 3 * W, sizeof h3);                        \
                    y0 += h0 * bk[j];                                                      \
                    y1 += h1 * bk[j];                                                      \
                    y2 += h2 * bk[j];                                                      \
                    y3 += h3 * bk[j];                                                      \
                }                                                                          \
                VT a0, a1, a2, a3;                                                         \
                memcpy(&a0, af + k * da + v, sizeof a0);                                   \
                memcpy(&a1, af + k * da + v + W, sizeof a1);                               \
                memcpy(&a2, af + k * da + v + 2 * W, sizeof a2);                           \
                memcpy(&a3, af + k * da + v + 3 * W, sizeof a3);                           \
                total += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3;                            \
            }                                                                              \
            for (; v < da; v += W) {                                                       \
                VT y = {0};                                                                \
                for (int64_t j = 0; j < db; j++) {                                         \
                    VT h;                                                                  \
                    memcpy(&h, H + j * da + v, sizeof h);                                  \
                    y += h * bk[j];                                                        \
                }                                                                          \
                VT a;                                                                      \
                memcpy(&a, af + k * da + v, sizeof a);                                     \
                total += a * y;                                                            \
            }                                                                              \
        }                                                                                  \
        float s = 0.0f;                                                                    \
        for (int i = 0; i < W; i++) s += total[i];                                         \
        return s;                                                                          \
    }

LAYER_KERNEL(layer_w16, v16, 16)
LAYER_KERNEL(layer_w8, v8, 8)

static float layer_scalar(const float *restrict af, const float *restrict bf, int64_t c,
                          int64_t da, int64_t db, const float *restrict H)
{
    float s = 0.0f;
    for (int64_t k = 0; k < c; k++)
        for (int64_t i = 0; i < da; i++) {
            float y = 0.0f;
            for (int64_t j = 0; j < db; j++) y += H[j * da + i] * bf[k * db + j];
            s += af[k * da + i] * y;
        }
    return s;
}

static void to_float(const int8_t *restrict src, float *restrict dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = (float)src[i];
}

/* The float32 layer product at the widest vector width of the machine that da divides into. */
static float layer_float(const float *restrict af, const float *restrict bf, int64_t c,
                         int64_t da, int64_t db, const float *restrict H)
{
#ifdef __AVX512F__ /* without AVX-512 the compiler splits 16 lanes in two, through memory */
    if (da % 16 == 0) return layer_w16(af, bf, c, da, db, H);
#endif
    if (da % 8 == 0) return layer_w8(af, bf, c, da, db, H);
    return layer_scalar(af, bf, c, da, db, H);
}

/* A layer's codes as floats: a into af, b into bf (a dense layer's b is the number 1). */
static void layer_to_float(const int8_t *row, const int64_t *m, float *af, float *bf)
{
    to_float(row + m[0], af, m[2] * m[3]);
    if (m[1] >= 0) to_float(row + m[1], bf, m[2] * m[4]);
    else bf[0] = 1.0f;
}

enum { META = 8, TILE = 8 };

int32_t lorif_kernel_version(void) { return 14; }

/* meta, per layer: a offset, b offset (-1: a dense layer, b = 1), c, da, db,
 * byte offset of the a scale, of the b scale (-1: 1), offset of H in a query's block.
 * work: at least max over layers of c*(da+db) + 1 floats. Rows are processed in tiles,
 * layer by layer inside a tile, so one layer's queries stay in cache across the tile. */
void lorif_scan_int8(const int8_t *rows, int64_t n_rows, int64_t row_bytes,
                     const int64_t *meta, int32_t n_layers, const float *hq, int32_t batch,
                     int64_t hq_stride, float *out, int64_t out_stride, float *work)
{
    for (int64_t t0 = 0; t0 < n_rows; t0 += TILE) {
        const int64_t t1 = t0 + TILE < n_rows ? t0 + TILE : n_rows;
        for (int32_t b = 0; b < batch; b++)
            for (int64_t r = t0; r < t1; r++) out[b * out_stride + r] = 0.0f;
        for (int32_t l = 0; l < n_layers; l++) {
            const int64_t *m = meta + META * l;
            const int64_t c = m[2], da = m[3], db = m[4];
            float *af = work, *bf = work + c * da;
            for (int64_t r = t0; r < t1; r++) {
                const int8_t *row = rows + r * row_bytes;
                float sa = 1.0f, sb = 1.0f;
                if (m[5] >= 0) memcpy(&sa, row + m[5], sizeof sa);
                if (m[6] >= 0) memcpy(&sb, row + m[6], sizeof sb);
                layer_to_float(row, m, af, bf);
                const float scale = sa * sb;
                for (int32_t b = 0; b < batch; b++) {
                    const float *H = hq + b * hq_stride + m[7];
                    out[b * out_stride + r] += layer_float(af, bf, c, da, db, H) * scale;
                }
            }
        }
    }
}

/* ---- the bounded pass: int8 queries, integer dot products ------------------------------
 *
 * Each layer's query is quantized per layer, H = s_H * H8 + dH (H8 int8). Products of int8
 * codes are summed exactly in int32 (AVX-512 VNNI: 64 multiply-adds per instruction, 4x the
 * float32 rate), so the approximate score differs from the exact one only through dH and
 * float32 rounding; both are bounded per row by eps_l * s_a * s_b * sum_k |a_k| |b_k|, with
 * eps_l (per query and layer) computed by the caller. approx[b][r] and margin[b][r] are
 * written; rows whose interval can reach the k-th best are rescored exactly afterwards.
 * Layers the integer path cannot take (widths not multiples of 16 / 4) are scored in float
 * here (the caller gives them eps = the rounding term only).
 */
#if (defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)) || \
    (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#include <math.h>

#include "scan_tiles.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
/* the vector width of the bounded pass: 512 (VNNI) or 256 (AVX2, whose row pass scores
 * exactly, so its products differ from the tiled pass's) */
int32_t lorif_vector_bits(void) { return 512; }

int32_t lorif_has_bounded(void) { return 1; }

/* Eight (row, component) pairs of one layer share every loaded query vector: a pair's
 * y = H8 b (16 lanes of da per chunk) is accumulated in int32 by VNNI, b's codes broadcast
 * four at a time with their sign bit flipped (b + 128, unsigned: bx); hcorr = 128 * sum_j
 * H8_ij is taken back off exactly. s[q] = sum over lanes of a (masked past da) times y, in
 * float32. Eight independent chains keep the dot-product unit busy; pairs from consecutive
 * rows fill a group when c < 8, so one row's few components do not leave it idle. */
#define GROUP 8

#define DPB(Q) y##Q = _mm512_dpbusd_epi32(y##Q, _mm512_set1_epi32(load4(b##Q + g)), hv)
#define AY(Q)                                                                                  \
    s[Q] = _mm512_fmadd_ps(                                                                    \
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes, a[Q] + 16 * ch))), \
        _mm512_cvtepi32_ps(_mm512_sub_epi32(y##Q, corr)), s[Q])

static inline int32_t load4(const uint8_t *p)
{
    int32_t w;
    memcpy(&w, p, 4);
    return w;
}

static inline void group_vnni(const int8_t *const a[GROUP], const uint8_t *const bx[GROUP],
                              int64_t da, int64_t db, const int8_t *H8, const int32_t *hcorr,
                              __m512 s[GROUP])
{
    const int64_t chunks = (da + 15) / 16, step = chunks * 64;
    const uint8_t *b0 = bx[0], *b1 = bx[1], *b2 = bx[2], *b3 = bx[3];
    const uint8_t *b4 = bx[4], *b5 = bx[5], *b6 = bx[6], *b7 = bx[7];
    for (int q = 0; q < GROUP; q++) s[q] = _mm512_setzero_ps();
    for (int64_t ch = 0; ch < chunks; ch++) {
        __m512i y0 = _mm512_setzero_si512(), y1 = y0, y2 = y0, y3 = y0, y4 = y0, y5 = y0,
                y6 = y0, y7 = y0;
        const int8_t *h = H8 + ch * 64;
        for (int64_t g = 0; g < db; g += 4, h += step) {
            const __m512i hv = _mm512_loadu_si512((const void *)h);
            DPB(0); DPB(1); DPB(2); DPB(3); DPB(4); DPB(5); DPB(6); DPB(7);
        }
        const __m512i corr = _mm512_loadu_si512((const void *)(hcorr + 16 * ch));
        const int64_t left = da - 16 * ch;
        const __mmask16 lanes = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        AY(0); AY(1); AY(2); AY(3); AY(4); AY(5); AY(6); AY(7);
    }
}

/* b codes of n rows (c * db bytes each, at stride row_bytes) with their sign bit flipped */
static void flip_rows(const int8_t *b, int64_t row_bytes, int64_t n, int64_t len, uint8_t *bx)
{
    const __m512i bit = _mm512_set1_epi8((char)0x80);
    for (int64_t r = 0; r < n; r++) {
        const int8_t *src = b + r * row_bytes;
        uint8_t *dst = bx + r * len;
        int64_t i = 0;
        for (; i + 64 <= len; i += 64)
            _mm512_storeu_si512((void *)(dst + i),
                                _mm512_xor_si512(_mm512_loadu_si512((const void *)(src + i)), bit));
        for (; i < len; i++) dst[i] = (uint8_t)src[i] ^ 0x80u;
    }
}

enum { BTILE = 8, SLOTS = BTILE * GROUP + 1 }; /* + one slot for a group's padding */

/* The integer layers of one tile: pairs (r, k) in row-major order, eight at a time. Pair
 * (r, k) adds into slot r * 8 + k % 8, so the eight pairs of a group never share a slot
 * (no chain through memory) and a row's score is the sum of its eight slots. */
static void tile_integer_layer(const int8_t *rows, int64_t nt, int64_t row_bytes,
                               const int64_t *m, const int8_t *H8, int64_t hu_stride,
                               const int32_t *hc, int64_t hc_stride, const float *hs,
                               int32_t n_layers, int32_t batch, uint8_t *bx, __m512 *acc)
{
    const int64_t c = m[2], da = m[3], db = m[4], pairs = nt * c;
    float scale[BTILE];
    for (int64_t r = 0; r < nt; r++) {
        const int8_t *row = rows + r * row_bytes;
        float sa, sb;
        memcpy(&sa, row + m[5], sizeof sa);
        memcpy(&sb, row + m[6], sizeof sb);
        scale[r] = sa * sb;
    }
    flip_rows(rows + m[1], row_bytes, nt, c * db, bx);
    int64_t r = 0, k = 0; /* the pair p0 + q, without a division per pair */
    for (int64_t p0 = 0; p0 < pairs; p0 += GROUP) {
        const int8_t *a[GROUP];
        const uint8_t *b[GROUP];
        int64_t slot[GROUP];
        float sc[GROUP];
        for (int q = 0; q < GROUP; q++) {
            if (p0 + q < pairs) {
                a[q] = rows + r * row_bytes + m[0] + k * da;
                b[q] = bx + (r * c + k) * db;
                slot[q] = r * GROUP + k % GROUP;
                sc[q] = scale[r];
                if (++k == c) k = 0, r++;
            } else { /* padding: pair 0 again, into the spare slot */
                a[q] = a[0], b[q] = b[0], slot[q] = SLOTS - 1, sc[q] = 0.0f;
            }
        }
        for (int32_t bq = 0; bq < batch; bq++) {
            __m512 s[GROUP];
            group_vnni(a, b, da, db, H8 + bq * hu_stride, hc + bq * hc_stride, s);
            const float sh = hs[bq * n_layers];
            __m512 *out = acc + (int64_t)bq * SLOTS;
            for (int q = 0; q < GROUP; q++)
                out[slot[q]] = _mm512_fmadd_ps(s[q], _mm512_set1_ps(sc[q] * sh), out[slot[q]]);
        }
    }
}

/* meta as for lorif_scan_int8; hu: per query, the packed signed H8 of every layer at
 * hu_offsets (-1: the layer is scored in float from hq), laid (db/4, chunks of 16 lanes of
 * da, 16, 4) with zero lanes past da; hcorr at hc_offsets, (chunks * 16) int32 per layer;
 * hscale (B, layers): s_H; eps (B, layers). work: at least BTILE * c * db bytes and
 * c * (da + db) + 1 floats for every layer, plus B * SLOTS * 16 floats, 64-byte aligned. */
void lorif_bounded_int8(const int8_t *rows, int64_t n_rows, int64_t row_bytes,
                        const int64_t *meta, const int64_t *hu_offsets, int32_t n_layers,
                        const float *hq, int64_t hq_stride, const int8_t *hu,
                        int64_t hu_stride, const int32_t *hcorr, const int64_t *hc_offsets,
                        int64_t hc_stride, const float *hscale, const float *eps,
                        int32_t batch, const float *norms, float *approx, float *margin,
                        int64_t out_stride, float *work, int64_t work_floats)
{
    __m512 *acc = (__m512 *)(work + work_floats - (int64_t)batch * SLOTS * 16);
    float *af = work;
    for (int64_t t0 = 0; t0 < n_rows; t0 += BTILE) {
        const int64_t nt = t0 + BTILE < n_rows ? BTILE : n_rows - t0;
        const int8_t *tile = rows + t0 * row_bytes;
        for (int64_t i = 0; i < (int64_t)batch * SLOTS; i++) acc[i] = _mm512_setzero_ps();
        for (int32_t bq = 0; bq < batch; bq++)
            for (int64_t r = 0; r < nt; r++) {
                approx[bq * out_stride + t0 + r] = 0.0f;
                margin[bq * out_stride + t0 + r] = 0.0f;
            }
        for (int32_t l = 0; l < n_layers; l++) {
            const int64_t *m = meta + META * l;
            if (hu_offsets[l] >= 0) {
                tile_integer_layer(tile, nt, row_bytes, m, hu + hu_offsets[l], hu_stride,
                                   hcorr + hc_offsets[l], hc_stride, hscale + l, n_layers,
                                   batch, (uint8_t *)work, acc);
                continue;
            }
            const int64_t c = m[2], da = m[3], db = m[4];
            for (int64_t r = 0; r < nt; r++) {
                const int8_t *row = tile + r * row_bytes;
                float sa = 1.0f, sb = 1.0f;
                if (m[5] >= 0) memcpy(&sa, row + m[5], sizeof sa);
                if (m[6] >= 0) memcpy(&sb, row + m[6], sizeof sb);
                layer_to_float(row, m, af, af + c * da);
                for (int32_t bq = 0; bq < batch; bq++) {
                    const float *H = hq + bq * hq_stride + m[7];
                    approx[bq * out_stride + t0 + r] +=
                        layer_float(af, af + c * da, c, da, db, H) * (sa * sb);
                }
            }
        }
        for (int32_t bq = 0; bq < batch; bq++)
            for (int64_t r = 0; r < nt; r++) {
                const __m512 *slots = acc + (int64_t)bq * SLOTS + r * GROUP;
                __m512 sum = slots[0];
                for (int q = 1; q < GROUP; q++) sum = _mm512_add_ps(sum, slots[q]);
                approx[bq * out_stride + t0 + r] += _mm512_reduce_add_ps(sum);
                margin[bq * out_stride + t0 + r] =
                    row_margin(eps + bq * n_layers, norms + (t0 + r) * n_layers, n_layers);
            }
    }
}

/* y_i += (b + 128) . H8_i over four codes of 16 rows, H8_i broadcast from memory */
#define DPBM(Y, BV, P) __asm__("vpdpbusd %1%{1to16%}, %2, %0" : "+v"(Y) : "m"(*(const int32_t *)(P)), "v"(BV))

/* a 32-bit broadcast straight from memory (the compiler would go through a general
 * register, which costs more than the broadcast itself) */
static inline __m512i bcast4(const void *p)
{
    __m512i v;
    __asm__("vpbroadcastd %1, %0" : "=v"(v) : "m"(*(const int32_t *)p));
    return v;
}
#define PRODUCT(T, A8, Y) \
    T = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(A8)), _mm512_cvtepi32_ps(Y), T)

/* Four groups x four elements of da (i0 .. i0+3; da a multiple of 4): per four codes of db,
 * 4 loads of b (16 rows each) and 4 broadcasts of H8 feed 16 integer products from registers
 * (accumulator zmm(4g + i) for group g, element i). The groups are four components of one
 * tile (sa = 16 da, sb = 16 db apart) or one component of four tiles (sa = sb = a tile's
 * bytes apart). Written out in assembly because the compiler, left to itself, shuffles the
 * 16 accumulators between registers on every step. ta, tb: group 0's a (at element i0) and
 * b; h, nc: the query's codes and -corr at i0. by_tile: group g's products go to t[g] (each
 * group its own rows), else element i's to t[i] (the groups share rows). */
#define BLOCK4_LOOP \
    "vpbroadcastd 0(%[nc]), %%zmm0\n\t" \
    "vmovdqa64 %%zmm0, %%zmm4\n\t" \
    "vmovdqa64 %%zmm0, %%zmm8\n\t" \
    "vmovdqa64 %%zmm0, %%zmm12\n\t" \
    "vpbroadcastd 4(%[nc]), %%zmm1\n\t" \
    "vmovdqa64 %%zmm1, %%zmm5\n\t" \
    "vmovdqa64 %%zmm1, %%zmm9\n\t" \
    "vmovdqa64 %%zmm1, %%zmm13\n\t" \
    "vpbroadcastd 8(%[nc]), %%zmm2\n\t" \
    "vmovdqa64 %%zmm2, %%zmm6\n\t" \
    "vmovdqa64 %%zmm2, %%zmm10\n\t" \
    "vmovdqa64 %%zmm2, %%zmm14\n\t" \
    "vpbroadcastd 12(%[nc]), %%zmm3\n\t" \
    "vmovdqa64 %%zmm3, %%zmm7\n\t" \
    "vmovdqa64 %%zmm3, %%zmm11\n\t" \
    "vmovdqa64 %%zmm3, %%zmm15\n\t" \
    "1:\n\t" \
    "vmovdqu64 (%[b]), %%zmm16\n\t" \
    "vmovdqu64 (%[b],%[sb]), %%zmm17\n\t" \
    "vmovdqu64 (%[b],%[sb],2), %%zmm18\n\t" \
    "vmovdqu64 (%[b3]), %%zmm19\n\t" \
    "vpbroadcastd 0(%[h]), %%zmm20\n\t" \
    "vpbroadcastd 4(%[h]), %%zmm21\n\t" \
    "vpbroadcastd 8(%[h]), %%zmm22\n\t" \
    "vpbroadcastd 12(%[h]), %%zmm23\n\t" \
    "vpdpbusd %%zmm20, %%zmm16, %%zmm0\n\t" "vpdpbusd %%zmm21, %%zmm16, %%zmm1\n\t" "vpdpbusd %%zmm22, %%zmm16, %%zmm2\n\t" "vpdpbusd %%zmm23, %%zmm16, %%zmm3\n\t" \
    "vpdpbusd %%zmm20, %%zmm17, %%zmm4\n\t" "vpdpbusd %%zmm21, %%zmm17, %%zmm5\n\t" "vpdpbusd %%zmm22, %%zmm17, %%zmm6\n\t" "vpdpbusd %%zmm23, %%zmm17, %%zmm7\n\t" \
    "vpdpbusd %%zmm20, %%zmm18, %%zmm8\n\t" "vpdpbusd %%zmm21, %%zmm18, %%zmm9\n\t" "vpdpbusd %%zmm22, %%zmm18, %%zmm10\n\t" "vpdpbusd %%zmm23, %%zmm18, %%zmm11\n\t" \
    "vpdpbusd %%zmm20, %%zmm19, %%zmm12\n\t" "vpdpbusd %%zmm21, %%zmm19, %%zmm13\n\t" "vpdpbusd %%zmm22, %%zmm19, %%zmm14\n\t" "vpdpbusd %%zmm23, %%zmm19, %%zmm15\n\t" \
    "addq $64, %[b]\n\t" "addq $64, %[b3]\n\t" "addq %[step], %[h]\n\t" \
    "decq %[n]\n\t" "jnz 1b\n\t"
#define PRODUCT4(A, Y, T)                                                      \
    "vpmovsxbd " A ", %%zmm16\n\t" "vcvtdq2ps %%zmm16, %%zmm16\n\t"             \
    "vcvtdq2ps %%zmm" Y ", %%zmm" Y "\n\t" "vfmadd231ps %%zmm" Y ", %%zmm16, %[t" T "]\n\t"
/* group g's four products: element i of its a (16 bytes apart) times accumulator Yi into Ti */
#define PRODUCTS(A, Y0, Y1, Y2, Y3, T0, T1, T2, T3) \
    PRODUCT4(A, Y0, T0) PRODUCT4("16" A, Y1, T1) PRODUCT4("32" A, Y2, T2) PRODUCT4("48" A, Y3, T3)
#define BY_ELEMENT \
    PRODUCTS("(%[a])", "0", "1", "2", "3", "0", "1", "2", "3") \
    PRODUCTS("(%[a],%[sa])", "4", "5", "6", "7", "0", "1", "2", "3") \
    PRODUCTS("(%[a],%[sa],2)", "8", "9", "10", "11", "0", "1", "2", "3") \
    PRODUCTS("(%[a3])", "12", "13", "14", "15", "0", "1", "2", "3")
#define BY_TILE \
    PRODUCTS("(%[a])", "0", "1", "2", "3", "0", "0", "0", "0") \
    PRODUCTS("(%[a],%[sa])", "4", "5", "6", "7", "1", "1", "1", "1") \
    PRODUCTS("(%[a],%[sa],2)", "8", "9", "10", "11", "2", "2", "2", "2") \
    PRODUCTS("(%[a3])", "12", "13", "14", "15", "3", "3", "3", "3")
/* The same products summed in int32 first (db <= INT_SUM_DB: four products of |a| <= 128
 * and |y| <= 127 * 128 * db stay below 2^31), each sum of four converted and added once:
 * 13 vector operations per four products instead of 16. */
enum { INT_SUM_DB = 256 };
#define IPRODUCT(A, Y) "vpmovsxbd " A ", %%zmm16\n\t" "vpmulld %%zmm16, %%zmm" Y ", %%zmm" Y "\n\t"
#define IPRODUCTS(A, Y0, Y1, Y2, Y3) \
    IPRODUCT(A, Y0) IPRODUCT("16" A, Y1) IPRODUCT("32" A, Y2) IPRODUCT("48" A, Y3)
#define ISUM(Y0, Y1, Y2, Y3, T)                                                                 \
    "vpaddd %%zmm" Y1 ", %%zmm" Y0 ", %%zmm" Y0 "\n\t" "vpaddd %%zmm" Y3 ", %%zmm" Y2 ", %%zmm" Y2 "\n\t" \
    "vpaddd %%zmm" Y2 ", %%zmm" Y0 ", %%zmm" Y0 "\n\t" "vcvtdq2ps %%zmm" Y0 ", %%zmm" Y0 "\n\t"       \
    "vaddps %%zmm" Y0 ", %[t" T "], %[t" T "]\n\t"
#define IPRODUCTS_ALL \
    IPRODUCTS("(%[a])", "0", "1", "2", "3") IPRODUCTS("(%[a],%[sa])", "4", "5", "6", "7") \
    IPRODUCTS("(%[a],%[sa],2)", "8", "9", "10", "11") IPRODUCTS("(%[a3])", "12", "13", "14", "15")
#define IBY_ELEMENT IPRODUCTS_ALL \
    ISUM("0", "4", "8", "12", "0") ISUM("1", "5", "9", "13", "1") \
    ISUM("2", "6", "10", "14", "2") ISUM("3", "7", "11", "15", "3")
#define IBY_TILE IPRODUCTS_ALL \
    ISUM("0", "1", "2", "3", "0") ISUM("4", "5", "6", "7", "1") \
    ISUM("8", "9", "10", "11", "2") ISUM("12", "13", "14", "15", "3")
#define BLOCK4_OPERANDS                                                                      \
    : [b] "+r"(b), [b3] "+r"(b3), [h] "+r"(h), [n] "+r"(n), [t0] "+v"(t0), [t1] "+v"(t1),   \
      [t2] "+v"(t2), [t3] "+v"(t3)                                                          \
    : [a] "r"(ta), [a3] "r"(a3), [sa] "r"(sa), [sb] "r"(sb), [step] "r"(step), [nc] "r"(nc) \
    : "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17", "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23", "cc", "memory"

static inline void block4(const int8_t *ta, const int8_t *tb, int64_t sa, int64_t sb,
                          int64_t db, const int8_t *h, int64_t step, const int32_t *nc,
                          __m512 t[4], int by_tile)
{
    const int8_t *a3 = ta + 3 * sa, *b3 = tb + 3 * sb, *b = tb;
    int64_t n = db / 4;
    __m512 t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3];
    if (db <= INT_SUM_DB && by_tile)
        __asm__ volatile(BLOCK4_LOOP IBY_TILE BLOCK4_OPERANDS);
    else if (db <= INT_SUM_DB)
        __asm__ volatile(BLOCK4_LOOP IBY_ELEMENT BLOCK4_OPERANDS);
    else if (by_tile)
        __asm__ volatile(BLOCK4_LOOP BY_TILE BLOCK4_OPERANDS);
    else
        __asm__ volatile(BLOCK4_LOOP BY_ELEMENT BLOCK4_OPERANDS);
    t[0] = t0, t[1] = t1, t[2] = t2, t[3] = t3;
}

/* One component over a tile, sixteen elements of da at a time, each product's H8 code
 * broadcast from memory (c < 4, or the components past the last multiple of 4). */
static inline void tile_component(const int8_t *ta, const int8_t *tb, int64_t da, int64_t db,
                                  const int8_t *h8, int64_t step, const int32_t *nc,
                                  __m512 t[4])
{
    int64_t i0 = 0;
    for (; i0 + 16 <= da; i0 += 16) {
        __m512i y[16];
        _Pragma("GCC unroll 16") for (int q = 0; q < 16; q++) y[q] = bcast4(nc + i0 + q);
        const int8_t *h = h8 + 4 * i0;
        for (int64_t g = 0; g < db; g += 4, h += step) {
            const __m512i bv = _mm512_loadu_si512((const void *)(tb + 16 * g));
            _Pragma("GCC unroll 16") for (int q = 0; q < 16; q++) DPBM(y[q], bv, h + 4 * q);
        }
        _Pragma("GCC unroll 16") for (int q = 0; q < 16; q++)
            PRODUCT(t[q & 3], _mm_loadu_si128((const void *)(ta + 16 * (i0 + q))), y[q]);
    }
    for (; i0 < da; i0++) {
        __m512i y = bcast4(nc + i0);
        const int8_t *h = h8 + 4 * i0;
        for (int64_t g = 0; g < db; g += 4, h += step)
            DPBM(y, _mm512_loadu_si512((const void *)(tb + 16 * g)), h);
        PRODUCT(t[i0 & 3], _mm_loadu_si128((const void *)(ta + 16 * i0)), y);
    }
}

/* One integer layer over a tile: the per-row sum over components and elements of
 * a_i * (H8 (b + 128) - corr)_i, in four partial sums t. h8: the packed query ((db/4,
 * lanes, 4): the codes of elements i and i+1 are 4 bytes apart); nc: -corr (da) int32. */
static void tile_layer(const int8_t *tile, const int64_t *m, const int8_t *h8,
                       const int32_t *nc, __m512 t[4])
{
    const int64_t c = m[2], da = m[3], db = m[4], step = ((da + 15) / 16) * 64;
    const int8_t *ta = tile + 16 * m[0], *tb = tile + 16 * m[1];
    int64_t k = 0;
    for (; k + 4 <= c && da % 4 == 0 && db > 0; k += 4)
        for (int64_t i0 = 0; i0 < da; i0 += 4)
            block4(ta + 16 * (k * da + i0), tb + 16 * k * db, 16 * da, 16 * db, db, h8 + 4 * i0,
                   step, nc + i0, t, 0);
    for (; k < c; k++)
        tile_component(ta + 16 * k * da, tb + 16 * k * db, da, db, h8, step, nc, t);
}
#include "scan_amx.h"

/* One level of an integer layer over nq tiles, into part[j] (four partial sums per tile).
 * With c a multiple of 4 the register block runs over a tile's components; otherwise (c = 1
 * at SmolLM2 dims) over one component of four tiles, so each loaded query code still feeds
 * four rows' vectors. rm (not NULL): the layer's row-major codes, for the AMX products. */
static void integer_level(const int8_t *quad, int64_t nq, int64_t tile_bytes, const int64_t *m,
                          const int8_t *h8, const int32_t *nc, const int8_t *rm,
                          __m512 part[][4], int64_t ahead, int64_t dist, int near)
{
    const int64_t c = m[2], da = m[3], db = m[4], step = ((da + 15) / 16) * 64;
    /* With AMX: up to WIDE tiles, four at a time, so the query's codes of a layer are read
     * from L1 after the first four. No requests ahead: asking for the next tiles (into L2)
     * or the next layers (into L1) as the vector pass does made it 10-30 % slower here. */
    if (rm != NULL) {
        for (int64_t s = 0; s < nq; s += AMX_PAIRS)
            amx_level(quad + s * tile_bytes, nq - s < AMX_PAIRS ? nq - s : AMX_PAIRS, tile_bytes, m,
                      rm, nc, part + s);
        return;
    }
    for (int64_t j = 0; j < QUAD; j++)
        for (int q = 0; q < 4; q++) part[j][q] = _mm512_setzero_ps();
    if (c % 4 && nq == QUAD && da % 4 == 0 && db > 0) {
        for (int64_t j = 0; j < ahead; j++) prefetch_tile(quad + (dist + j) * tile_bytes, m);
        for (int64_t j = 0; j < QUAD && near; j++) prefetch_next_layers(quad + j * tile_bytes, m);
        for (int64_t k = 0; k < c; k++)
            for (int64_t i0 = 0; i0 < da; i0 += 4) {
                __m512 t[4] = {part[0][0], part[1][0], part[2][0], part[3][0]};
                block4(quad + 16 * (m[0] + k * da + i0), quad + 16 * (m[1] + k * db), tile_bytes,
                       tile_bytes, db, h8 + 4 * i0, step, nc + i0, t, 1);
                for (int64_t j = 0; j < QUAD; j++) part[j][0] = t[j];
            }
    } else {
        for (int64_t j = 0; j < nq; j++) {
            if (j < ahead) prefetch_tile(quad + (dist + j) * tile_bytes, m);
            if (near) prefetch_next_layers(quad + j * tile_bytes, m);
            tile_layer(quad + j * tile_bytes, m, h8, nc, part[j]);
        }
    }
}

static __m512 sum4(const __m512 p[4])
{
    return _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3]));
}

/* An integer layer over nq tiles: acc[j] += (per-row products) * s_a * s_b * s_H; with a
 * second level (fine != NULL), the products with H8' / 128 are added first (exact: a
 * power of two). ahead, dist: the far requests (prefetch_tile); near: the first query's
 * turn, which asks for the tiles' next layers (prefetch_next_layers). */
static void integer_layer(const int8_t *quad, int64_t nq, int64_t tile_bytes, const int64_t *m,
                          const int8_t *h8, const int32_t *nc, const int8_t *fine,
                          const int32_t *fine_nc, const int8_t *rm, const int8_t *fine_rm,
                          float sh, __m512 acc[], int64_t ahead, int64_t dist, int near)
{
    __m512 part[WIDE][4], rest[WIDE][4];
    integer_level(quad, nq, tile_bytes, m, h8, nc, rm, part, ahead, dist, near);
    if (fine != NULL)
        integer_level(quad, nq, tile_bytes, m, fine, fine_nc, fine_rm, rest, 0, dist, 0);
    for (int64_t j = 0; j < nq; j++) {
        const int8_t *tile = quad + j * tile_bytes;
        __m512 t = sum4(part[j]);
        if (fine != NULL) t = _mm512_fmadd_ps(sum4(rest[j]), _mm512_set1_ps(1.0f / 128), t);
        const __m512 sa = _mm512_loadu_ps((const float *)(tile + 16 * m[5]));
        const __m512 sb = _mm512_loadu_ps((const float *)(tile + 16 * m[6]));
        acc[j] = _mm512_fmadd_ps(t, _mm512_mul_ps(_mm512_mul_ps(sa, sb), _mm512_set1_ps(sh)),
                                 acc[j]);
    }
}

/* A tile's 16 scores acc added into approx from row0 on, and each row's margin set to
 * sum_l eps_l * norms[row][l] (one query's approx, margin and eps). */
static void finish_tile(__m512 acc, int64_t row0, const float *eps, const float *norms,
                        int32_t n_layers, float *approx, float *margin)
{
    float lanes[RT];
    _mm512_storeu_ps(lanes, acc);
    finish_lanes(lanes, row0, eps, norms, n_layers, approx, margin);
}

/* The bounded pass over whole tiles, four at a time (n_rows a multiple of 16; rows: the
 * first tile's start). Arguments as lorif_bounded_int8, except the corrections: ncorr
 * (B, Σ da) int32, -128 * Σ_j H8_ij, at nc_offsets. work: c * (da + db) + 1 floats per
 * layer (the float layers). levels 2: the second level's codes fine (as h8) and their
 * corrections fine_nc (as ncorr) are added; eps must then be the two-level bound's.
 * rm (not NULL, AMX builds): both levels' codes again in row-major order (rm, fine_rm, at
 * rm_offsets, rm_stride bytes per query), and the products are taken on AMX tiles. */
void lorif_bounded_tiles(const int8_t *rows, int64_t n_rows, int64_t row_bytes,
                         const int64_t *meta, const int64_t *h8_offsets, int32_t n_layers,
                         const float *hq, int64_t hq_stride, const int8_t *h8,
                         int64_t h8_stride, const int32_t *ncorr, const int64_t *nc_offsets,
                         int64_t nc_stride, const float *hscale, const float *eps,
                         int32_t batch, const float *norms, float *approx, float *margin,
                         int64_t out_stride, float *work, int64_t work_floats,
                         const int8_t *fine, const int32_t *fine_nc, int32_t levels,
                         const int8_t *rm, const int8_t *fine_rm, const int64_t *rm_offsets,
                         int64_t rm_stride, int8_t *scratch)
{
    const int64_t tile_bytes = RT * row_bytes;
    /* scratch (not NULL): the rows are in stored order, and each step's tiles are first
     * made in scratch (WIDE tiles' bytes), where they stay in cache while scored */
    struct tile_plan plan;
    if (scratch != NULL && !plan_tiles(meta, n_layers, row_bytes, &plan)) {
        for (int32_t bq = 0; bq < batch; bq++) /* no memory: every row left undecided */
            for (int64_t r = 0; r < n_rows; r++)
                approx[bq * out_stride + r] = 0.0f, margin[bq * out_stride + r] = INFINITY;
        return;
    }
    if (rm != NULL) amx_begin();
    /* Four tiles at a time only where a layer needs them (c not a multiple of 4; sixteen
     * with AMX): else tile by tile, which reads the index in order; the tiles dist on are
     * asked for ahead. */
    int64_t group = 1;
    for (int32_t l = 0; l < n_layers; l++) {
        const int64_t *m = meta + META * l;
        if (h8_offsets[l] >= 0 && m[2] % 4 && m[3] % 4 == 0) group = QUAD;
        if (h8_offsets[l] >= 0 && m[2] % 4 && rm != NULL) group = WIDE;
    }
    const int64_t dist = group == 1 ? 2 : group, tiles = n_rows / RT;
    /* Every query's partial sums of the current tiles: layer by layer, the queries take
     * turns over one layer's bytes of the tiles, which stay in L1 between them. */
    __m512 *acc = (__m512 *)(work + work_floats - (int64_t)batch * SLOTS * 16);
    for (int64_t t0 = 0; t0 < n_rows; t0 += group * RT) {
        const int64_t left = (n_rows - t0) / RT, nq = left < group ? left : group;
        const int8_t *quad = rows + t0 * row_bytes;
        if (scratch != NULL) {
            for (int64_t j = 0; j < nq; j++)
                tile_from(scratch + j * tile_bytes, quad + j * tile_bytes, &plan);
            quad = scratch;
        }
        const int64_t later = tiles - (t0 / RT + dist); /* tiles j < later have one dist on */
        /* the first query's turn asks for them (not from scratch, which is made in time) */
        const int64_t ahead = later <= 0 || scratch != NULL ? 0 : (later < nq ? later : nq);
        for (int64_t i = 0; i < (int64_t)batch * group; i++) acc[i] = _mm512_setzero_ps();
        for (int32_t bq = 0; bq < batch; bq++)
            for (int64_t r = 0; r < nq * RT; r++) approx[bq * out_stride + t0 + r] = 0.0f;
        for (int32_t l = 0; l < n_layers; l++) {
            const int64_t *m = meta + META * l;
            for (int32_t bq = 0; bq < batch; bq++) {
                const int64_t asks = bq == 0 ? ahead : 0;
                if (h8_offsets[l] >= 0) {
                    const int two = levels == 2;
                    const int64_t at = bq * rm_stride + (rm != NULL ? rm_offsets[l] : 0);
                    integer_layer(quad, nq, tile_bytes, m, h8 + bq * h8_stride + h8_offsets[l],
                                  ncorr + bq * nc_stride + nc_offsets[l],
                                  two ? fine + bq * h8_stride + h8_offsets[l] : NULL,
                                  two ? fine_nc + bq * nc_stride + nc_offsets[l] : NULL,
                                  rm != NULL ? rm + at : NULL,
                                  rm != NULL && two ? fine_rm + at : NULL,
                                  hscale[bq * n_layers + l], acc + bq * group, asks, dist, bq == 0);
                    continue;
                }
                for (int64_t j = 0; j < nq; j++) {
                    if (j < asks) prefetch_tile(quad + (dist + j) * tile_bytes, m);
                    float_layer(quad + j * tile_bytes, m, hq + bq * hq_stride + m[7], work,
                                approx + bq * out_stride + t0 + j * RT);
                }
            }
        }
        for (int32_t bq = 0; bq < batch; bq++)
            for (int64_t j = 0; j < nq; j++)
                finish_tile(acc[bq * group + j], t0 + j * RT, eps + (int64_t)bq * n_layers, norms,
                            n_layers, approx + bq * out_stride, margin + bq * out_stride);
    }
    if (rm != NULL) amx_end();
    if (scratch != NULL) plan_free(&plan);
}

/* The second query level over listed tiles, after a one-level pass: for each tile in tiles
 * (indices from rows) and each query bq with want[i * batch + bq] set, approx[bq][r] += the
 * products with H8' / 128 of the tile's 16 rows (the integer layers; float layers were
 * exact already) and margin[bq][r] = the two-level bound sum_l fine_eps_l * norms[r][l].
 * The caller lists only the tiles holding a row that one level leaves undecided for some
 * query, so the second level costs in proportion to them; tile-major order reads each
 * listed tile once for all its queries. Arguments as lorif_bounded_tiles. */
void lorif_refine_tiles(const int8_t *rows, int64_t row_bytes, const int64_t *tiles,
                        int64_t n_tiles, const uint8_t *want, int32_t batch,
                        const int64_t *meta, const int64_t *h8_offsets, int32_t n_layers,
                        const int8_t *fine, int64_t h8_stride, const int32_t *fine_nc,
                        const int64_t *nc_offsets, int64_t nc_stride, const float *hscale,
                        const float *fine_eps, const float *norms, float *approx,
                        float *margin, int64_t out_stride, const int8_t *fine_rm,
                        const int64_t *rm_offsets, int64_t rm_stride)
{
    const int64_t tile_bytes = RT * row_bytes;
    if (fine_rm != NULL) amx_begin();
    for (int64_t i = 0; i < n_tiles; i++) {
        const int8_t *tile = rows + tiles[i] * tile_bytes;
        const int8_t *next = i + 1 < n_tiles ? rows + tiles[i + 1] * tile_bytes : NULL;
        for (int32_t l = 0; l < n_layers && next != NULL; l++) /* while this one is scored */
            if (h8_offsets[l] >= 0) prefetch_tile(next, meta + META * l);
        for (int32_t bq = 0; bq < batch; bq++) {
            if (!want[i * batch + bq]) continue;
            const float *sh = hscale + (int64_t)bq * n_layers, *fe = fine_eps + (int64_t)bq * n_layers;
            __m512 acc = _mm512_setzero_ps();
            for (int32_t l = 0; l < n_layers; l++) {
                const int64_t *m = meta + META * l;
                if (h8_offsets[l] < 0) continue;
                __m512 part[QUAD][4];
                const int8_t *rm =
                    fine_rm != NULL ? fine_rm + bq * rm_stride + rm_offsets[l] : NULL;
                integer_level(tile, 1, tile_bytes, m, fine + bq * h8_stride + h8_offsets[l],
                              fine_nc + bq * nc_stride + nc_offsets[l], rm, part, 0, 0, 0);
                const __m512 sa = _mm512_loadu_ps((const float *)(tile + 16 * m[5]));
                const __m512 sb = _mm512_loadu_ps((const float *)(tile + 16 * m[6]));
                const __m512 s = _mm512_mul_ps(_mm512_mul_ps(sa, sb), _mm512_set1_ps(sh[l] / 128));
                acc = _mm512_fmadd_ps(sum4(part[0]), s, acc);
            }
            finish_tile(acc, tiles[i] * RT, fe, norms, n_layers, approx + bq * out_stride,
                        margin + bq * out_stride);
        }
    }
    if (fine_rm != NULL) amx_end();
}
#else /* AVX2 (with or without AVX-512F: Skylake-SP has no VNNI) */
enum { SLOTS = 8 * 8 + 1 }; /* per-query accumulators (16 floats each) the caller makes room for */
int32_t lorif_vector_bits(void) { return 256; }
#include "scan_avx2.h"
#endif
#else
int32_t lorif_has_bounded(void) { return 0; }
int32_t lorif_amx_init(void) { return 0; }
int32_t lorif_vector_bits(void) { return 0; }
#endif
