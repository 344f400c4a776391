/* The bounded pass's integer products on AMX tiles (Intel Advanced Matrix Extensions).
 *
 * Included by scan_int8.c inside its AVX-512 VNNI section. For one integer layer, one
 * component k of a row tile (16 rows) and sixteen elements i0 .. i0+15 of da, the vector
 * pass forms Y[i][r] = sum_j H8[i][j] (b_r[j] + 128) with one VNNI instruction per four
 * codes of b. Here Y is one 16 x 16 int32 tile, accumulated by TDPBSUD (signed query codes
 * times unsigned b codes) from 64 codes of db at a time:
 *   - A: the query's codes in row-major order, (da rounded up to 16) x (db rounded up to
 *     64) with zeros past da and db (quantize.py lays them out so), 16 rows of 64 bytes;
 *   - B: the tile's b codes, whose 4-byte groups of 16 rows are already the layout AMX
 *     reads for its second operand (64 bytes per group of four codes, one group per row).
 * A partial last K chunk (db not a multiple of 64) is loaded in place: the bytes after the
 * codes (the tile's next elements) meet the query's zero columns and add nothing. Only a
 * chunk whose 1 KB would run past the end of its tile is copied into a scratch tile first,
 * so a load never leaves the tile. (Copying every partial chunk cost ≈ 10 % of the pass at
 * SmolLM2-135M dims, where 4 of a block's 7 layers have db = 72 or 24.) Then, as in the vector pass, each row's score takes
 * sum_i a_r[i] (Y[i][r] - 128 sum_j H8[i][j]), the same integers summed in another order.
 * One TDPBSUD does 16 x 16 x 64 multiply-adds; four tiles' (or components') products
 * share each load of the query's codes.
 */
/* (tile, component) pairs sharing each load of the query's codes; declared with or without
 * AMX, since scan_int8.c steps by it on either side */
enum { AMX_PAIRS = 4 };

#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
#include <sys/syscall.h>
#include <unistd.h>

static int amx_granted;

/* Linux gives a process the tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM,
 * feature XTILEDATA); 1 once granted. */
int32_t lorif_amx_init(void)
{
    if (!amx_granted) amx_granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return amx_granted;
}

struct tile_config {
    uint8_t palette, start;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* every tile register 16 rows of 64 bytes (the configuration is per thread) */
static void amx_begin(void)
{
    struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) config.colsb[t] = 64, config.rows[t] = 16;
    _tile_loadconfig(&config);
}

static void amx_end(void) { _tile_release(); }

static _Thread_local int32_t amx_y[AMX_PAIRS][256] __attribute__((aligned(64)));
static _Thread_local uint8_t amx_pad[AMX_PAIRS][1024] __attribute__((aligned(64)));

/* K chunk kc of a pair's b codes: in place, unless it is a partial last chunk (tail: its
 * bytes) whose 1 KB would run past the tile (inside: 0), which goes through pad */
static inline const uint8_t *b_chunk(const uint8_t *b, int64_t kc, int64_t whole, int64_t tail,
                                     int inside, uint8_t *pad)
{
    if (kc < whole || inside) return b + 1024 * kc;
    memcpy(pad, b + 1024 * kc, (size_t)tail);
    return pad;
}

/* part[.] += sum over count elements i of a_i * (Y_i + nc_i), 16 rows in lanes; in int32
 * four products at a time where db <= INT_SUM_DB (as the vector pass), else in float. */
static inline void amx_products(const int32_t *y, const int8_t *ta, const int32_t *nc,
                                int64_t count, int small, __m512 part[4])
{
    int64_t i = 0;
    for (; small && i + 4 <= count; i += 4) {
        __m512i s = _mm512_setzero_si512();
        for (int u = 0; u < 4; u++) {
            const __m512i yi = _mm512_add_epi32(_mm512_load_si512((const void *)(y + 16 * (i + u))),
                                                _mm512_set1_epi32(nc[i + u]));
            const __m512i ai = _mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)(ta + 16 * (i + u))));
            s = _mm512_add_epi32(s, _mm512_mullo_epi32(ai, yi));
        }
        part[(i / 4) & 3] = _mm512_add_ps(part[(i / 4) & 3], _mm512_cvtepi32_ps(s));
    }
    for (; i < count; i++) {
        const __m512i yi = _mm512_add_epi32(_mm512_load_si512((const void *)(y + 16 * i)),
                                            _mm512_set1_epi32(nc[i]));
        const __m512i ai = _mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)(ta + 16 * i)));
        part[i & 3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai), _mm512_cvtepi32_ps(yi), part[i & 3]);
    }
}

/* K chunk kc of the four pairs' products into tiles 4-7, the query's codes in tile TA */
#define AMX_STEP(TA, kc)                                                          \
    do {                                                                          \
        _tile_loadd(TA, rm + 16 * ch * kpad + 64 * (kc), kpad);                   \
        _tile_loadd(1, b_chunk(b[0], kc, whole, tail, inside[0], amx_pad[0]), 64);           \
        _tile_dpbsud(4, TA, 1);                                                   \
        _tile_loadd(2, b_chunk(b[1], kc, whole, tail, inside[1], amx_pad[1]), 64);           \
        _tile_dpbsud(5, TA, 2);                                                   \
        _tile_loadd(1, b_chunk(b[2], kc, whole, tail, inside[2], amx_pad[2]), 64);           \
        _tile_dpbsud(6, TA, 1);                                                   \
        _tile_loadd(2, b_chunk(b[3], kc, whole, tail, inside[3], amx_pad[3]), 64);           \
        _tile_dpbsud(7, TA, 2);                                                   \
    } while (0)

/* One level of an integer layer over nq tiles into part[j] (four partial sums per tile), as
 * integer_level; rm: this layer's row-major query codes, nc: -128 sum_j H8_ij (da). The
 * pairs (tile j, component k) go four at a time; a group's padding repeats its first pair,
 * whose products are not summed again. */
static void amx_level(const int8_t *quad, int64_t nq, int64_t tile_bytes, const int64_t *m,
                      const int8_t *rm, const int32_t *nc, __m512 part[][4])
{
    const int64_t c = m[2], da = m[3], db = m[4], kpad = (db + 63) / 64 * 64;
    const int64_t chunks = (da + 15) / 16, kchunks = kpad / 64, whole = db / 64;
    const int64_t tail = 16 * (db % 64), pairs = nq * c;
    const int small = db <= INT_SUM_DB;
    for (int64_t j = 0; j < nq; j++)
        for (int q = 0; q < 4; q++) part[j][q] = _mm512_setzero_ps();
    for (int64_t p0 = 0; p0 < pairs; p0 += AMX_PAIRS) {
        const int8_t *a[AMX_PAIRS];
        const uint8_t *b[AMX_PAIRS];
        int64_t tile_of[AMX_PAIRS];
        int inside[AMX_PAIRS];
        const int used = pairs - p0 < AMX_PAIRS ? (int)(pairs - p0) : AMX_PAIRS;
        for (int q = 0; q < AMX_PAIRS; q++) {
            const int64_t p = q < used ? p0 + q : p0, j = p / c, k = p % c;
            const int8_t *tile = quad + j * tile_bytes;
            a[q] = tile + 16 * (m[0] + k * da);
            b[q] = (const uint8_t *)tile + 16 * (m[1] + k * db);
            inside[q] = b[q] + 1024 * kchunks <= (const uint8_t *)tile + tile_bytes;
            tile_of[q] = j;
        }
        for (int64_t ch = 0; ch < chunks; ch++) {
            _tile_zero(4);
            _tile_zero(5);
            _tile_zero(6);
            _tile_zero(7);
            /* two registers for the query's codes, so the next chunk's load overlaps the
             * products of this one */
            for (int64_t kc = 0; kc < kchunks; kc += 2) {
                AMX_STEP(0, kc);
                if (kc + 1 < kchunks) AMX_STEP(3, kc + 1);
            }
            _tile_stored(4, amx_y[0], 64);
            _tile_stored(5, amx_y[1], 64);
            _tile_stored(6, amx_y[2], 64);
            _tile_stored(7, amx_y[3], 64);
            const int64_t count = da - 16 * ch < 16 ? da - 16 * ch : 16;
            for (int q = 0; q < used; q++)
                amx_products(amx_y[q], a[q] + 256 * ch, nc + 16 * ch, count, small,
                             part[tile_of[q]]);
        }
    }
}
#define LORIF_AMX 1
#else
int32_t lorif_amx_init(void) { return 0; }
static void amx_begin(void) {}
static void amx_end(void) {}
static void amx_level(const int8_t *quad, int64_t nq, int64_t tile_bytes, const int64_t *m,
                      const int8_t *rm, const int32_t *nc, __m512 part[][4])
{
    (void)quad, (void)nq, (void)tile_bytes, (void)m, (void)rm, (void)nc, (void)part;
}
#endif
