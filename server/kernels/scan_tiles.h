/* Row tiles and what every bounded pass shares (scan_int8.c includes this in its bounded
 * section, with AVX-512 or with AVX2): the tile layout and its transform, the rows' norms,
 * the requests ahead and the float layers. */
/* ---- row tiles: sixteen rows interleaved, so that vector lanes are rows ------------------
 *
 * A tile holds 16 consecutive rows in the same bytes they occupy row by row. Byte o of row r
 * moves to 16 * o + r, except inside "4-byte" segments (the b codes of a layer whose db is a
 * multiple of 4, and the float scales), where element e = o - o % 4 moves to 16 * e + 4 * r
 * + o % 4. So one 16-byte load is element i of the a codes of 16 rows, one 64-byte load four
 * b codes of 16 rows, and one 64-byte load a scale of 16 rows. */
/* rows per tile, tiles per step; with AMX, tiles per step where a layer has c % 4 != 0 */
enum { RT = 16, QUAD = 4, WIDE = 16 };
/* bytes of each row taken by one vector transpose of the tile transform */
#ifdef __AVX512F__
enum { CHUNK = 64 };
#else
enum { CHUNK = 32 };
#endif

static int four_byte_b(const int64_t *m) { return m[1] >= 0 && m[4] % 4 == 0; }

enum { BYTE = 1, B_CODES = 4, SCALE = 5, INSIDE = 0 };

/* width[o]: B_CODES or SCALE where byte o starts a 4-byte element, INSIDE within one, BYTE
 * elsewhere. Tiles keep b codes with their sign bit flipped (b + 128, the unsigned operand
 * of the integer products), so the scan does not flip them again for every query. */
static void element_widths(const int64_t *meta, int32_t n_layers, int64_t row_bytes,
                           uint8_t *width)
{
    memset(width, BYTE, (size_t)row_bytes);
    for (int32_t l = 0; l < n_layers; l++) {
        const int64_t *m = meta + META * l;
        if (four_byte_b(m))
            for (int64_t o = m[1]; o < m[1] + m[2] * m[4]; o += 4)
                width[o] = B_CODES, width[o + 1] = width[o + 2] = width[o + 3] = INSIDE;
        for (int side = 5; side <= 6; side++)
            if (m[side] >= 0) {
                const int64_t o = m[side];
                width[o] = SCALE, width[o + 1] = width[o + 2] = width[o + 3] = INSIDE;
            }
    }
}

static void copy4(int8_t *dst, const int8_t *src, int flip)
{
    uint32_t w;
    memcpy(&w, src, 4);
    if (flip) w ^= 0x80808080u;
    memcpy(dst, &w, 4);
}

static void gather_row(const int8_t *tile, int64_t r, int64_t row_bytes, const uint8_t *width,
                       int8_t *out)
{
    for (int64_t o = 0; o < row_bytes;) {
        if (width[o] == BYTE) {
            out[o] = tile[16 * o + r];
            o += 1;
        } else {
            copy4(out + o, tile + 16 * o + 4 * r, width[o] == B_CODES);
            o += 4;
        }
    }
}

/* How the tile transform takes the 4 bytes of each 4-aligned slot of a row: as one 4-byte
 * element (flipped or not), as four single bytes, or (an element crossing the slot, or a slot
 * past the last whole 64 bytes) one element at a time in the scalar walk. */
enum { SLOT_WALK = 0, SLOT_WORD = 1, SLOT_FLIP = 2, SLOT_BYTES = 3 };

/* A row's plan for tile_from: its element widths, each slot's class, and the elements left
 * to the scalar walk (their offsets), computed once per call. */
struct tile_plan {
    uint8_t *width, *slot;
    int32_t *walk;
    int64_t n_walk, vector_bytes, row_bytes;
};

static void plan_free(struct tile_plan *plan) { free(plan->width); }

static int plan_tiles(const int64_t *meta, int32_t n_layers, int64_t row_bytes,
                      struct tile_plan *plan)
{
    const int64_t slots = row_bytes / 4 + 1;
    uint8_t *memory = malloc((size_t)(row_bytes + slots + 4 * row_bytes + 64));
    if (memory == NULL) return 0;
    plan->width = memory;
    plan->slot = memory + row_bytes;
    plan->walk = (int32_t *)(((uintptr_t)(plan->slot + slots) + 3) & ~(uintptr_t)3);
    plan->row_bytes = row_bytes;
    plan->vector_bytes = row_bytes / CHUNK * CHUNK;
    element_widths(meta, n_layers, row_bytes, plan->width);
    const uint8_t *w = plan->width;
    for (int64_t k = 0; 4 * k + 4 <= plan->vector_bytes; k++) {
        const uint8_t *x = w + 4 * k;
        if (x[0] == B_CODES || x[0] == SCALE)
            plan->slot[k] = x[0] == B_CODES ? SLOT_FLIP : SLOT_WORD;
        else
            plan->slot[k] = x[0] == BYTE && x[1] == BYTE && x[2] == BYTE && x[3] == BYTE
                                ? SLOT_BYTES
                                : SLOT_WALK;
    }
    plan->n_walk = 0;
    for (int64_t o = 0; o < row_bytes; o += w[o] == BYTE ? 1 : 4)
        if (o >= plan->vector_bytes || plan->slot[o / 4] == SLOT_WALK)
            plan->walk[plan->n_walk++] = (int32_t)o;
    return 1;
}

#ifdef __AVX512F__
/* Transpose of a 16 x 16 matrix of 32-bit words: v[i] (row i) becomes column i. */
static void transpose16(__m512i v[16])
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* v[4m + c], lane L: word 4L + c of rows 4m..4m+3 */
        v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int c = 0; c < 4; c++) { /* the 128-bit lanes of v[c], v[4+c], v[8+c], v[12+c] */
        const __m512i w0 = _mm512_shuffle_i32x4(v[c], v[4 + c], 0x44);
        const __m512i w1 = _mm512_shuffle_i32x4(v[c], v[4 + c], 0xEE);
        const __m512i w2 = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0x44);
        const __m512i w3 = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0xEE);
        t[c] = _mm512_shuffle_i32x4(w0, w2, 0x88);
        t[4 + c] = _mm512_shuffle_i32x4(w0, w2, 0xDD);
        t[8 + c] = _mm512_shuffle_i32x4(w1, w3, 0x88);
        t[12 + c] = _mm512_shuffle_i32x4(w1, w3, 0xDD);
    }
    for (int i = 0; i < 16; i++) v[i] = t[i];
}

/* The vector part of tile_from: each 64 bytes of the rows is one 16 x 16 word transpose; a slot of four single bytes then has its 16 rows'
 * words regrouped byte by byte (16 rows of byte 0, then of byte 1, …). */
static void tile_vectors(int8_t *dst, const int8_t *src, const struct tile_plan *plan)
{
    const int64_t row_bytes = plan->row_bytes;
    const __m512i flip = _mm512_set1_epi32((int32_t)0x80808080u);
#ifdef __AVX512VBMI__
    static const int8_t order[64] = {0, 4, 8,  12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60,
                                     1, 5, 9,  13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61,
                                     2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42, 46, 50, 54, 58, 62,
                                     3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47, 51, 55, 59, 63};
    const __m512i bytes = _mm512_loadu_si512((const void *)order);
#endif
    for (int64_t o = 0; o < plan->vector_bytes; o += 64) {
        __m512i v[16];
        for (int r = 0; r < 16; r++) v[r] = _mm512_loadu_si512((const void *)(src + r * row_bytes + o));
        transpose16(v);
        for (int k = 0; k < 16; k++) {
            const uint8_t kind = plan->slot[o / 4 + k];
            int8_t *out = dst + 16 * (o + 4 * k);
            if (kind == SLOT_WORD)
                _mm512_storeu_si512((void *)out, v[k]);
            else if (kind == SLOT_FLIP)
                _mm512_storeu_si512((void *)out, _mm512_xor_si512(v[k], flip));
#ifdef __AVX512VBMI__
            else if (kind == SLOT_BYTES)
                _mm512_storeu_si512((void *)out, _mm512_permutexvar_epi8(bytes, v[k]));
#else
            else if (kind == SLOT_BYTES)
                for (int b = 0; b < 4; b++)
                    for (int r = 0; r < RT; r++) out[16 * b + r] = src[r * row_bytes + o + 4 * k + b];
#endif
        }
    }
}
#else
/* Transpose of an 8 x 8 matrix of 32-bit words: v[i] (row i) becomes column i. */
static void transpose8(__m256i v[8])
{
    __m256i t[8];
    for (int i = 0; i < 8; i += 2) { /* t[i], lane L: words 4L, 4L + 1 of rows i, i + 1 */
        t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) { /* v[i + c], lane L: word 4L + c of rows i .. i + 3 */
        v[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        v[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        v[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        v[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        t[c] = _mm256_permute2x128_si256(v[c], v[4 + c], 0x20);
        t[4 + c] = _mm256_permute2x128_si256(v[c], v[4 + c], 0x31);
    }
    for (int i = 0; i < 8; i++) v[i] = t[i];
}

/* 16 rows' words (lo: rows 0-7, hi: rows 8-15) regrouped byte by byte into out (64 bytes) */
static void store_bytes(int8_t *out, __m256i lo, __m256i hi)
{
    const __m256i in_lane = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i across = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    /* per register: qword b = byte b of its 8 rows */
    lo = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(lo, in_lane), across);
    hi = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(hi, in_lane), across);
    const __m256i even = _mm256_unpacklo_epi64(lo, hi), odd = _mm256_unpackhi_epi64(lo, hi);
    _mm256_storeu_si256((__m256i *)out, _mm256_permute2x128_si256(even, odd, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 32), _mm256_permute2x128_si256(even, odd, 0x31));
}

/* The vector part of tile_from: each 32 bytes of the rows is two 8 x 8 word transposes
 * (rows 0-7, rows 8-15). */
static void tile_vectors(int8_t *dst, const int8_t *src, const struct tile_plan *plan)
{
    const int64_t row_bytes = plan->row_bytes;
    const __m256i flip = _mm256_set1_epi32((int32_t)0x80808080u);
    for (int64_t o = 0; o < plan->vector_bytes; o += 32) {
        __m256i lo[8], hi[8];
        for (int r = 0; r < 8; r++) {
            lo[r] = _mm256_loadu_si256((const __m256i *)(src + r * row_bytes + o));
            hi[r] = _mm256_loadu_si256((const __m256i *)(src + (r + 8) * row_bytes + o));
        }
        transpose8(lo);
        transpose8(hi);
        for (int k = 0; k < 8; k++) {
            const uint8_t kind = plan->slot[o / 4 + k];
            int8_t *out = dst + 16 * (o + 4 * k);
            if (kind == SLOT_BYTES) {
                store_bytes(out, lo[k], hi[k]);
            } else if (kind == SLOT_WORD || kind == SLOT_FLIP) {
                const __m256i x = kind == SLOT_FLIP ? flip : _mm256_setzero_si256();
                _mm256_storeu_si256((__m256i *)out, _mm256_xor_si256(lo[k], x));
                _mm256_storeu_si256((__m256i *)(out + 32), _mm256_xor_si256(hi[k], x));
            }
        }
    }
}
#endif

/* One tile (16 rows of src, row_bytes apart) into dst in the tile layout: the whole
 * CHUNK bytes of the rows by vector transposes, the rest element by element. */
static void tile_from(int8_t *dst, const int8_t *src, const struct tile_plan *plan)
{
    const int64_t row_bytes = plan->row_bytes;
    tile_vectors(dst, src, plan);
    for (int64_t i = 0; i < plan->n_walk; i++) {
        const int64_t o = plan->walk[i];
        if (plan->width[o] == BYTE)
            for (int64_t r = 0; r < RT; r++) dst[16 * o + r] = src[r * row_bytes + o];
        else
            for (int64_t r = 0; r < RT; r++)
                copy4(dst + 16 * o + 4 * r, src + r * row_bytes + o, plan->width[o] == B_CODES);
    }
}

/* Rearrange n_tiles * 16 rows into tiles, in place (tmp: 16 * row_bytes bytes). meta:
 * every layer of the row, as for lorif_scan_int8. Returns 0 where the plan's memory could
 * not be had (nothing is changed then). */
int32_t lorif_tile_rows(int8_t *rows, int64_t n_tiles, int64_t row_bytes, const int64_t *meta,
                        int32_t n_layers, int8_t *tmp)
{
    struct tile_plan plan;
    if (!plan_tiles(meta, n_layers, row_bytes, &plan)) return 0;
    for (int64_t t = 0; t < n_tiles; t++) {
        int8_t *tile = rows + t * RT * row_bytes;
        memcpy(tmp, tile, (size_t)(RT * row_bytes));
        tile_from(tile, tmp, &plan);
    }
    plan_free(&plan);
    return 1;
}

/* Rows (ascending or not) back in row order: those below n_tiled from their tiles, the
 * rest (the tail after the last whole tile) as stored. */
void lorif_untile_rows(const int8_t *rows, int64_t n_tiled, int64_t row_bytes,
                       const int64_t *meta, int32_t n_layers, const int64_t *which, int64_t n,
                       int8_t *out, uint8_t *width)
{
    element_widths(meta, n_layers, row_bytes, width);
    for (int64_t i = 0; i < n; i++) {
        const int64_t w = which[i];
        if (w < n_tiled)
            gather_row(rows + (w / RT) * RT * row_bytes, w % RT, row_bytes, width,
                       out + i * row_bytes);
        else
            memcpy(out + i * row_bytes, rows + w * row_bytes, (size_t)row_bytes);
    }
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


/* A row's margin, Σ_l eps_l · norms[l] (its norms: one per layer) */
static inline float row_margin(const float *eps, const float *norms, int32_t n_layers)
{
    float bound = 0.0f;
    for (int32_t l = 0; l < n_layers; l++) bound += eps[l] * norms[l];
    return bound;
}

/* A tile's 16 scores (lanes) added into approx from row0 on, and each row's margin set
 * (one query's approx, margin and eps). */
static void finish_lanes(const float lanes[RT], int64_t row0, const float *eps,
                         const float *norms, int32_t n_layers, float *approx, float *margin)
{
    for (int64_t r = 0; r < RT; r++) {
        approx[row0 + r] += lanes[r];
        margin[row0 + r] = row_margin(eps, norms + (row0 + r) * n_layers, n_layers);
    }
}

/* Ask for bytes [p, p + n) of the next tile while this one is scored: one core's own
 * demand misses cannot keep enough reads in flight to stream at the memory's rate. */
static inline void prefetch_bytes(const int8_t *p, int64_t n)
{
    for (int64_t o = 0; o < n; o += 64) __asm__ volatile("prefetcht1 %0" : : "m"(p[o]));
}

/* Layer m's bytes of one tile (the same tile of the next quad, read in order), asked for
 * tile by tile so that the requests spread over the pass instead of arriving in bursts. */
static void prefetch_tile(const int8_t *next, const int64_t *m)
{
    if (next == NULL) return;
    prefetch_bytes(next + 16 * m[0], 16 * m[2] * m[3]);
    if (m[1] >= 0) prefetch_bytes(next + 16 * m[1], 16 * m[2] * m[4]);
    prefetch_bytes(next + 16 * m[5], 64);
    if (m[6] >= 0) prefetch_bytes(next + 16 * m[6], 64);
}

/* The bytes of the NEAR layers after layer m in a tile (as the row stores them, taking
 * layer m's size for theirs), asked for into L1 while layer m is scored. The far requests
 * (prefetch_tile) leave a tile in L2; from there the demand misses of one core, each
 * waiting on the products before it, made a pass over DRAM-resident rows ≈ 40 % slower than
 * over rows already in cache. The layers just ahead are asked for again at every layer
 * (most are in L1 by then, and a request that finds its line there is cheap): measured
 * side by side, asking once for one layer 2, 3, 4 or 6 layers ahead gained ≈ 10 %, asking
 * for the 3 layers ahead every time ≈ 20 %, 5 no more than 3. */
enum { NEAR = 3 };
static void prefetch_next_layers(const int8_t *tile, const int64_t *m)
{
    const int64_t first = m[1] >= 0 && m[1] < m[0] ? m[1] : m[0];
    const int64_t span = 16 * m[2] * (m[3] + (m[1] >= 0 ? m[4] : 0));
    const int8_t *next = tile + 16 * first + span;
    for (int64_t o = 0; o < NEAR * span; o += 64) __asm__ volatile("prefetcht0 %0" : : "m"(next[o]));
}

/* A layer the integer pass does not take, in float: each row's codes gathered from the tile
 * (the b codes of 4-byte groups are stored flipped). out: the tile's 16 scores. */
static void float_layer(const int8_t *tile, const int64_t *m, const float *H, float *work,
                        float *out)
{
    const int64_t c = m[2], da = m[3], db = m[4];
    float *af = work, *bf = work + c * da;
    for (int64_t r = 0; r < RT; r++) {
        float sa = 1.0f, sb = 1.0f;
        if (m[5] >= 0) memcpy(&sa, tile + 16 * m[5] + 4 * r, 4);
        if (m[6] >= 0) memcpy(&sb, tile + 16 * m[6] + 4 * r, 4);
        for (int64_t x = 0; x < c * da; x++) af[x] = (float)tile[16 * (m[0] + x) + r];
        if (m[1] < 0)
            bf[0] = 1.0f;
        else if (four_byte_b(m))
            for (int64_t x = 0; x < c * db; x++)
                bf[x] = (float)(int8_t)(tile[16 * (m[1] + x - x % 4) + 4 * r + x % 4] ^ 0x80);
        else
            for (int64_t x = 0; x < c * db; x++) bf[x] = (float)tile[16 * (m[1] + x) + r];
        out[r] += layer_float(af, bf, c, da, db, H) * (sa * sb);
    }
}
