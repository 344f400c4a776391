/* The bounded pass on AVX2 (x86-64 without AVX-512 VNNI: AMD Zen 2 and 3, Intel client
 * cores, Intel servers up to Skylake-SP), over the same row tiles and query codes as the
 * AVX-512 pass, with the same intervals up to float32 rounding (covered by the bound).
 *
 * Included by scan_int8.c after scan_tiles.h. AVX2 has no byte dot product into int32, so
 * four codes of b (unsigned, as tiles store them: b + 128) cannot be multiplied by the
 * query's signed codes as VNNI does: VPMADDUBSW's pairs of 255 * 127 would saturate int16.
 * Both sides are within ±127 (the codes are symmetric), so the b codes are taken back to
 * signed and VPMADDUBSW multiplies |b| by sign(b) * H8: each pair is at most 2 * 127 * 127,
 * below 2^15, and VPMADDWD by ones sums a row's two pairs into int32. The sums are exact,
 * Σ_j H8_ij b_j itself (no +128 to take back: the corrections are not read here). Lanes are
 * rows, eight to a register: a tile's 16 rows are taken as two halves. */

int32_t lorif_has_bounded(void) { return 1; }
int32_t lorif_amx_init(void) { return 0; }

static inline __m256i code_bcast(const int8_t *p)
{
    int32_t w;
    memcpy(&w, p, 4);
    return _mm256_set1_epi32(w);
}

/* y (8 rows) += Σ over four codes of b · H8, exactly (see above) */
static inline __m256i dot4(__m256i y, __m256i babs, __m256i bsig, const int8_t *h, __m256i ones)
{
    const __m256i pairs = _mm256_maddubs_epi16(babs, _mm256_sign_epi8(code_bcast(h), bsig));
    return _mm256_add_epi32(y, _mm256_madd_epi16(pairs, ones));
}

/* Element Q's product of one step: its four codes broadcast into ymm T, then sign(H8, b),
 * times |b| (ymm9) in pairs, the pairs summed (ymm10: ones) and added into y Q. */
#define DOT8(Q, T, OFF)                                                                     \
    "vpbroadcastd " OFF "(%[h]), %%ymm" T "\n\t"                                            \
    "vpsignb %%ymm8, %%ymm" T ", %%ymm" T "\n\t"                                            \
    "vpmaddubsw %%ymm" T ", %%ymm9, %%ymm" T "\n\t"                                         \
    "vpmaddwd %%ymm10, %%ymm" T ", %%ymm" T "\n\t"                                          \
    "vpaddd %%ymm" T ", %[y" Q "], %[y" Q "]\n\t"

/* t[q % 4] += a_{i0+q} · y_{i0+q} for one half tile and eight elements, y_i = Σ_j H8_ij b_j:
 * ta, the half's a codes of element i0 (16 bytes to the next element); tb, its b codes of
 * the component (64 bytes to the next four codes); h, the query's codes of element i0
 * (step bytes to the next four codes of db). The loop is written out in assembly: left to
 * itself, the compiler spilled three of the eight accumulators to the stack and moved the
 * others between registers on every step (≈ 10 % slower, measured side by side). */
static inline void half_block8(const int8_t *ta, const int8_t *tb, int64_t db, const int8_t *h,
                               int64_t step, __m256 t[4])
{
    static const int32_t flip = (int32_t)0x80808080u;
    int64_t n = db / 4;
    __m256i y0, y1, y2, y3, y4, y5, y6, y7;
    if (n == 0) return;
    __asm__(
        "vpxor %[y0], %[y0], %[y0]\n\t" "vpxor %[y1], %[y1], %[y1]\n\t"
        "vpxor %[y2], %[y2], %[y2]\n\t" "vpxor %[y3], %[y3], %[y3]\n\t"
        "vpxor %[y4], %[y4], %[y4]\n\t" "vpxor %[y5], %[y5], %[y5]\n\t"
        "vpxor %[y6], %[y6], %[y6]\n\t" "vpxor %[y7], %[y7], %[y7]\n\t"
        "vpcmpeqw %%ymm10, %%ymm10, %%ymm10\n\t" "vpsrlw $15, %%ymm10, %%ymm10\n\t"
        "vpbroadcastd %[flip], %%ymm11\n\t"
        "1:\n\t"
        "vpxor (%[b]), %%ymm11, %%ymm8\n\t"
        "vpabsb %%ymm8, %%ymm9\n\t"
        DOT8("0", "12", "0") DOT8("1", "13", "4") DOT8("2", "14", "8") DOT8("3", "15", "12")
        DOT8("4", "12", "16") DOT8("5", "13", "20") DOT8("6", "14", "24") DOT8("7", "15", "28")
        "addq $64, %[b]\n\t" "addq %[step], %[h]\n\t"
        "decq %[n]\n\t" "jnz 1b\n\t"
        : [b] "+r"(tb), [h] "+r"(h), [n] "+r"(n), [y0] "=&x"(y0), [y1] "=&x"(y1), [y2] "=&x"(y2),
          [y3] "=&x"(y3), [y4] "=&x"(y4), [y5] "=&x"(y5), [y6] "=&x"(y6), [y7] "=&x"(y7)
        : [step] "r"(step), [flip] "m"(flip)
        : "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
    const __m256i y[8] = {y0, y1, y2, y3, y4, y5, y6, y7};
    for (int q = 0; q < 8; q++) {
        const __m128i a8 = _mm_loadl_epi64((const __m128i *)(ta + 16 * q));
        const __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a8));
        t[q & 3] = _mm256_fmadd_ps(a, _mm256_cvtepi32_ps(y[q]), t[q & 3]);
    }
}

/* The same for one element (da's last elements past a multiple of eight) */
static inline void half_block1(const int8_t *ta, const int8_t *tb, int64_t db, const int8_t *h,
                               int64_t step, __m256 t[4])
{
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256i y = _mm256_setzero_si256();
    for (int64_t g = 0; g < db; g += 4, h += step) {
        const __m256i bsig =
            _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(tb + 16 * g)), flip);
        y = dot4(y, _mm256_abs_epi8(bsig), bsig, h, ones);
    }
    const __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)ta)));
    t[0] = _mm256_fmadd_ps(a, _mm256_cvtepi32_ps(y), t[0]);
}

/* One integer layer's products over a tile: sums[h] = the per-row Σ_k Σ_i a_i (H8 b)_i of
 * rows 8h .. 8h + 7 (before the scales). h8: the query's codes of the layer. */
static void avx2_tile_layer(const int8_t *tile, const int64_t *m, const int8_t *h8,
                            __m256 sums[2])
{
    const int64_t c = m[2], da = m[3], db = m[4], step = ((da + 15) / 16) * 64;
    for (int half = 0; half < 2; half++) {
        __m256 t[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
        for (int64_t k = 0; k < c; k++) {
            const int8_t *ta = tile + 16 * (m[0] + k * da) + 8 * half;
            const int8_t *tb = tile + 16 * (m[1] + k * db) + 32 * half;
            int64_t i0 = 0;
            for (; i0 + 8 <= da; i0 += 8) half_block8(ta + 16 * i0, tb, db, h8 + 4 * i0, step, t);
            for (; i0 < da; i0++) half_block1(ta + 16 * i0, tb, db, h8 + 4 * i0, step, t);
        }
        sums[half] = _mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3]));
    }
}

/* acc[h] += (products with h8, plus those with fine / 128 where fine != NULL) · s_a s_b s_H */
static void avx2_integer_layer(const int8_t *tile, const int64_t *m, const int8_t *h8,
                               const int8_t *fine, float sh, __m256 acc[2])
{
    __m256 sums[2], rest[2];
    avx2_tile_layer(tile, m, h8, sums);
    if (fine != NULL) avx2_tile_layer(tile, m, fine, rest);
    for (int half = 0; half < 2; half++) {
        __m256 s = sums[half];
        if (fine != NULL) s = _mm256_fmadd_ps(rest[half], _mm256_set1_ps(1.0f / 128), s);
        const __m256 sa = _mm256_loadu_ps((const float *)(tile + 16 * m[5]) + 8 * half);
        const __m256 sb = _mm256_loadu_ps((const float *)(tile + 16 * m[6]) + 8 * half);
        const __m256 scale = _mm256_mul_ps(_mm256_mul_ps(sa, sb), _mm256_set1_ps(sh));
        acc[half] = _mm256_fmadd_ps(s, scale, acc[half]);
    }
}

/* A tile's 16 scores added into approx from row0 on, each row's margin set to Σ_l eps_l ·
 * norms[row][l] */
static void avx2_finish_tile(const __m256 acc[2], int64_t row0, const float *eps,
                             const float *norms, int32_t n_layers, float *approx, float *margin)
{
    float lanes[RT];
    _mm256_storeu_ps(lanes, acc[0]);
    _mm256_storeu_ps(lanes + 8, acc[1]);
    finish_lanes(lanes, row0, eps, norms, n_layers, approx, margin);
}

/* Rows in stored order (a tail shorter than a tile, or diagnostics): each row scored
 * exactly in float32 by the exact kernel, its margin the same bound as the tiled pass's, so
 * the interval holds the exact score however it is computed. Arguments as the AVX-512
 * build's lorif_bounded_int8. */
void lorif_bounded_int8(const int8_t *rows, int64_t n_rows, int64_t row_bytes,
                        const int64_t *meta, const int64_t *hu_offsets, int32_t n_layers,
                        const float *hq, int64_t hq_stride, const int8_t *hu,
                        int64_t hu_stride, const int32_t *hcorr, const int64_t *hc_offsets,
                        int64_t hc_stride, const float *hscale, const float *eps,
                        int32_t batch, const float *norms, float *approx, float *margin,
                        int64_t out_stride, float *work, int64_t work_floats)
{
    (void)hu_offsets, (void)hu, (void)hu_stride, (void)hcorr, (void)hc_offsets;
    (void)hc_stride, (void)hscale, (void)work_floats;
    lorif_scan_int8(rows, n_rows, row_bytes, meta, n_layers, hq, batch, hq_stride, approx,
                    out_stride, work);
    for (int32_t bq = 0; bq < batch; bq++)
        for (int64_t r = 0; r < n_rows; r++)
            margin[bq * out_stride + r] =
                row_margin(eps + bq * n_layers, norms + r * n_layers, n_layers);
}

/* The bounded pass over whole tiles, one at a time (the AVX-512 build's arguments; the
 * corrections and the AMX codes are not read). */
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
    (void)ncorr, (void)nc_offsets, (void)nc_stride, (void)fine_nc, (void)rm, (void)fine_rm;
    (void)rm_offsets, (void)rm_stride;
    const int64_t tile_bytes = RT * row_bytes, tiles = n_rows / RT;
    struct tile_plan plan;
    if (scratch != NULL && !plan_tiles(meta, n_layers, row_bytes, &plan)) {
        for (int32_t bq = 0; bq < batch; bq++) /* no memory: every row left undecided */
            for (int64_t r = 0; r < n_rows; r++)
                approx[bq * out_stride + r] = 0.0f, margin[bq * out_stride + r] = INFINITY;
        return;
    }
    __m256 *acc = (__m256 *)(work + work_floats - (int64_t)batch * SLOTS * 16);
    for (int64_t t = 0; t < tiles; t++) {
        const int8_t *tile = rows + t * tile_bytes;
        const int8_t *ahead = scratch == NULL && t + 2 < tiles ? tile + 2 * tile_bytes : NULL;
        if (scratch != NULL) {
            tile_from(scratch, tile, &plan);
            tile = scratch;
        }
        for (int64_t i = 0; i < 2 * (int64_t)batch; i++) acc[i] = _mm256_setzero_ps();
        for (int32_t bq = 0; bq < batch; bq++)
            for (int64_t r = 0; r < RT; r++) approx[bq * out_stride + t * RT + r] = 0.0f;
        for (int32_t l = 0; l < n_layers; l++) {
            const int64_t *m = meta + META * l;
            prefetch_tile(ahead, m);
            for (int32_t bq = 0; bq < batch; bq++) {
                if (h8_offsets[l] >= 0) {
                    const int8_t *codes = h8 + bq * h8_stride + h8_offsets[l];
                    const int8_t *rest = levels == 2 ? fine + bq * h8_stride + h8_offsets[l] : NULL;
                    avx2_integer_layer(tile, m, codes, rest, hscale[bq * n_layers + l], acc + 2 * bq);
                } else {
                    float_layer(tile, m, hq + bq * hq_stride + m[7], work,
                                approx + bq * out_stride + t * RT);
                }
            }
        }
        for (int32_t bq = 0; bq < batch; bq++)
            avx2_finish_tile(acc + 2 * bq, t * RT, eps + (int64_t)bq * n_layers, norms, n_layers,
                             approx + bq * out_stride, margin + bq * out_stride);
    }
    if (scratch != NULL) plan_free(&plan);
}

/* The second query level over listed tiles (the AVX-512 build's lorif_refine_tiles). */
void lorif_refine_tiles(const int8_t *rows, int64_t row_bytes, const int64_t *tiles,
                        int64_t n_tiles, const uint8_t *want, int32_t batch,
                        const int64_t *meta, const int64_t *h8_offsets, int32_t n_layers,
                        const int8_t *fine, int64_t h8_stride, const int32_t *fine_nc,
                        const int64_t *nc_offsets, int64_t nc_stride, const float *hscale,
                        const float *fine_eps, const float *norms, float *approx,
                        float *margin, int64_t out_stride, const int8_t *fine_rm,
                        const int64_t *rm_offsets, int64_t rm_stride)
{
    (void)fine_nc, (void)nc_offsets, (void)nc_stride, (void)fine_rm, (void)rm_offsets;
    (void)rm_stride;
    const int64_t tile_bytes = RT * row_bytes;
    for (int64_t i = 0; i < n_tiles; i++) {
        const int8_t *tile = rows + tiles[i] * tile_bytes;
        const int8_t *next = i + 1 < n_tiles ? rows + tiles[i + 1] * tile_bytes : NULL;
        for (int32_t l = 0; l < n_layers && next != NULL; l++) /* while this one is scored */
            if (h8_offsets[l] >= 0) prefetch_tile(next, meta + META * l);
        for (int32_t bq = 0; bq < batch; bq++) {
            if (!want[i * batch + bq]) continue;
            __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int32_t l = 0; l < n_layers; l++) {
                if (h8_offsets[l] < 0) continue;
                const int8_t *codes = fine + bq * h8_stride + h8_offsets[l];
                avx2_integer_layer(tile, meta + META * l, codes, NULL,
                                   hscale[bq * n_layers + l] / 128, acc);
            }
            avx2_finish_tile(acc, tiles[i] * RT, fine_eps + (int64_t)bq * n_layers, norms,
                             n_layers, approx + bq * out_stride, margin + bq * out_stride);
        }
    }
}
