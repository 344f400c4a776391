/* Fused exact scan of int8 factor rows (lorif_serve.server.kernels.fused).
 *
 * score[b][r] = sum over layers l of s_a(r,l) * s_b(r,l) * sum_k a_k^T H_bl^T b_k
 *
 * where a_k, b_k are the int8 codes of component k of the two factor sides of layer l in
 * row r, s_a, s_b their float32 segment scales (stored at the row's end), and H_bl the
 * preconditioned query b of layer l, laid out (db, da) row-major. The codes are converted
 * to float once per row and layer and every product is accumulated in float32, so this
 * computes the same numbers as the torch path, without writing any intermediate to memory.
 * The vector width comes from GCC vector extensions: the compiler maps it to the widest
 * registers of the machine it compiles on (-march=native).
 */
#include <stdint.h>
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
            for (int64_t v = 0; v < da; v += W) {                                          \
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

/* The float32 layer product at the widest vector width da divides into. */
static float layer_float(const float *restrict af, const float *restrict bf, int64_t c,
                         int64_t da, int64_t db, const float *restrict H)
{
    if (da % 16 == 0) return layer_w16(af, bf, c, da, db, H);
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

int32_t lorif_kernel_version(void) { return 6; }

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
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
#include <immintrin.h>
#include <math.h>

int32_t lorif_has_bounded(void) { return 1; }

/* A layer's 16 partial sums (reduced once per row, not once per layer). bx: the b codes of
 * all components with their sign bit flipped (b + 128, unsigned), padded with 0x80 (code 0)
 * to a multiple of 8 components; hcorr: 128 * sum_j H8_ij per lane, which the unsigned b adds
 * to every y and which is taken back off (exactly, in int32). KV components are in flight per
 * loaded H vector: KV independent accumulator chains. Short chains (small db) are bound by
 * per-layer overhead, long ones by the dot-product latency, hence two widths. */
#define LAYER_VNNI(NAME, KV)                                                                  \
    static __m512 NAME(const int8_t *A, const uint8_t *bx, int64_t c, int64_t da, int64_t db,  \
                       const int8_t *H8, const int32_t *hcorr)                                 \
    {                                                                                         \
        __m512 t0 = _mm512_setzero_ps(), t1 = t0;                                             \
        for (int64_t k = 0; k < c; k += KV) {                                                 \
            const int64_t kn = c - k < KV ? c - k : KV;                                       \
            const uint8_t *b0 = bx + k * db;                                                  \
            for (int64_t v = 0; v < da; v += 16) {                                            \
                __m512i y[KV];                                                                \
                for (int q = 0; q < KV; q++) y[q] = _mm512_setzero_si512();                   \
                for (int64_t g = 0; g < db; g += 4) {                                         \
                    const __m512i h = _mm512_loadu_si512((const void *)(H8 + (g * da + 4 * v))); \
                    _Pragma("GCC unroll 8") for (int q = 0; q < KV; q++)                      \
                    {                                                                         \
                        int32_t w;                                                            \
                        memcpy(&w, b0 + q * db + g, 4);                                       \
                        y[q] = _mm512_dpbusd_epi32(y[q], _mm512_set1_epi32(w), h);            \
                    }                                                                         \
                }                                                                             \
                const __m512i corr = _mm512_loadu_si512((const void *)(hcorr + v));           \
                for (int64_t q = 0; q < kn; q++) {                                            \
                    const __m128i a8 = _mm_loadu_si128((const void *)(A + (k + q) * da + v)); \
                    const __m512 a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(a8));            \
                    const __m512 yq = _mm512_cvtepi32_ps(_mm512_sub_epi32(y[q], corr));       \
                    if (q & 1) t1 = _mm512_fmadd_ps(a, yq, t1);                               \
                    else t0 = _mm512_fmadd_ps(a, yq, t0);                                     \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        return _mm512_add_ps(t0, t1);                                                         \
    }

LAYER_VNNI(layer_vnni2, 2)
LAYER_VNNI(layer_vnni8, 8)

static void flip_codes(const int8_t *b, uint8_t *bx, int64_t c, int64_t db)
{
    const int64_t n = c * db, padded = ((c + 7) / 8) * 8 * db;
    for (int64_t i = 0; i < n; i++) bx[i] = (uint8_t)b[i] ^ 0x80u;
    for (int64_t i = n; i < padded; i++) bx[i] = 0x80u;
}

static float code_norm(const int8_t *x, int64_t n)
{
    int32_t s = 0;
    for (int64_t i = 0; i < n; i++) s += (int32_t)x[i] * x[i];
    return sqrtf((float)s);
}

/* norms[r][l] = s_a * s_b * sum_k |a_k| |b_k| (query-independent: computed once per index) */
void lorif_row_norms(const int8_t *rows, int64_t n_rows, int64_t row_bytes, const int64_t *meta,
                     int32_t n_layers, float *norms)
{
    for (int64_t r = 0; r < n_rows; r++) {
        const int8_t *row = rows + r * row_bytes;
        for (int32_t l = 0; l < n_layers; l++) {
            const int64_t *m = meta + META * l;
            const int64_t c = m[2], da = m[3], db = m[4];
            float sa = 1.0f, sb = 1.0f, norm = 0.0f;
            if (m[5] >= 0) memcpy(&sa, row + m[5], sizeof sa);
            if (m[6] >= 0) memcpy(&sb, row + m[6], sizeof sb);
            for (int64_t k = 0; k < c; k++) {
                const float nb = m[1] >= 0 ? code_norm(row + m[1] + k * db, db) : 1.0f;
                norm += code_norm(row + m[0] + k * da, da) * nb;
            }
            norms[r * n_layers + l] = norm * sa * sb;
        }
    }
}

/* meta as for lorif_scan_int8; hu: per query, the packed signed H8 of every layer at
 * hu_meta offsets (-1: the layer is scored in float from hq); hscale (B, layers): s_H;
 * eps (B, layers). */
void lorif_bounded_int8(const int8_t *rows, int64_t n_rows, int64_t row_bytes,
                        const int64_t *meta, const int64_t *hu_offsets, int32_t n_layers,
                        const float *hq, int64_t hq_stride, const int8_t *hu,
                        int64_t hu_stride, const int32_t *hcorr, const int64_t *hc_offsets,
                        int64_t hc_stride, const float *hscale, const float *eps,
                        int32_t batch, const float *norms, float *approx, float *margin,
                        int64_t out_stride, float *work)
{
    __m512 acc[batch];
    for (int64_t r = 0; r < n_rows; r++) {
        const int8_t *row = rows + r * row_bytes;
        for (int32_t b = 0; b < batch; b++) {
            acc[b] = _mm512_setzero_ps();
            approx[b * out_stride + r] = 0.0f;
            margin[b * out_stride + r] = 0.0f;
        }
        for (int32_t l = 0; l < n_layers; l++) {
            const int64_t *m = meta + META * l;
            const int64_t c = m[2], da = m[3], db = m[4];
            float sa = 1.0f, sb = 1.0f;
            if (m[5] >= 0) memcpy(&sa, row + m[5], sizeof sa);
            if (m[6] >= 0) memcpy(&sb, row + m[6], sizeof sb);
            const float scale = sa * sb;
            const float norm = norms[r * n_layers + l];
            const int integer = hu_offsets[l] >= 0;
            float *af = work, *bf = work + c * da;
            uint8_t *bx = (uint8_t *)work;
            if (integer) {
                flip_codes(row + m[1], bx, c, db);
            } else {
                layer_to_float(row, m, af, bf);
            }
            for (int32_t b = 0; b < batch; b++) {
                if (integer) {
                    const int8_t *H8 = hu + b * hu_stride + hu_offsets[l];
                    const int32_t *hc = hcorr + b * hc_stride + hc_offsets[l];
                    const __m512 t = db >= 32 ? layer_vnni8(row + m[0], bx, c, da, db, H8, hc)
                                              : layer_vnni2(row + m[0], bx, c, da, db, H8, hc);
                    const float s = scale * hscale[b * n_layers + l];
                    acc[b] = _mm512_fmadd_ps(t, _mm512_set1_ps(s), acc[b]);
                } else {
                    const float *H = hq + b * hq_stride + m[7];
                    approx[b * out_stride + r] += layer_float(af, bf, c, da, db, H) * scale;
                }
                margin[b * out_stride + r] += eps[b * n_layers + l] * norm;
            }
        }
        for (int32_t b = 0; b < batch; b++)
            approx[b * out_stride + r] += _mm512_reduce_add_ps(acc[b]);
    }
}
#else
int32_t lorif_has_bounded(void) { return 0; }
#endif
