/* Matrix products of a few input rows with weights read once, for x86 CPUs with AVX2 and FMA (model/native.py
 * compiles this file on the machine that runs it), and, at the end, a few tokens of decoding through every layer of
 * a network in one call built on them (clozelm_step).
 *
 * y[m, rows] = x[m, k] times the weight [rows, k] transposed. fp32 and bf16 weights (in fp32 arithmetic) are stored
 * blocked, [n / 8][k / 8][8 rows][8 columns]: the 64 numbers one step of the inner loop multiplies are contiguous,
 * so the whole weight is one sequential stream that the hardware prefetcher follows (row-major, 8 rows read side by
 * side are 8 short streams, and an int8 product read that way ran at less than half the speed). n is padded with
 * zero rows to a multiple of 8 by the packing; k must be a multiple of 8 (of 32 for int8 and int4).
 *
 * On CPUs with AVX-512 BF16, bf16 weights times rows that are bf16 numbers (a bf16 network's) go through vdpbf16ps
 * instead: exact products of pairs, summed in fp32 (clozelm_product_bf16).
 *
 * int8 (clozelm_product_int8): codes q with an fp32 scale s per row, w = q * s. Blocked [n / 8][k / 32][8 rows][32
 * columns]. The input row is rounded to 16-bit integers per group of 32 columns (a step of the group's largest
 * magnitude / 32767), so that each group of a weight row is two integer multiply-adds (vpmaddwd), one conversion and
 * one fma for the group's step (widening every code to fp32 instead, two conversions and an fma per 8 weights, made
 * the kernel bound by its arithmetic). On CPUs with AVX-512 VNNI the row is rounded once, as int4's below, and its
 * bytes multiply 64 codes in one vpdpbusd, summed in integers over the whole row. k must be a multiple of 32.
 *
 * int4 (clozelm_product_int4): 4-bit codes q in 0..15 with a bf16 scale s and zero z per row and group of 32
 * columns, w = (q - 8) * s + z (model/packed.py's int4 format). Blocked [n / 8][k / 32][2 halves][8 rows][8 bytes], the
 * rows in the order 0, 1, 4, 5, 2, 3, 6, 7, byte b of half j holding column 8j + b in its low nibble and column 16 +
 * 8j + b in its high one; the scales and zeros beside it, [n / 8][k / 32][8 scales, 8 zeros]. The input row is rounded
 * to 16-bit integers (a step of the row's largest magnitude / 32639: finer, but for rows with a far outlier, than the
 * bf16 row torch's int4 kernel multiplies) and split into two bytes, so that the codes multiply it in multiply-adds of
 * bytes with no conversion: a load of codes times 8 columns of the row is one instruction per byte of the row's
 * integers (vpmaddubsw on 4 rows, VNNI's vpdpbusd on all 8), and a group takes one conversion and one fma for its 8
 * scales and one for the zeros' part (widening every code to fp32 instead made the kernel bound by its arithmetic,
 * slower than torch's). k must be a multiple of 32.
 *
 * Every kernel takes the same arguments: x [m, k] in fp32 or bf16, y [m, rows] written in fp32 or bf16 (the weight's
 * rows, n of them padded to a multiple of 8), and a bias [rows] in fp32 or bf16 or none, added in fp32 before y is
 * rounded; `flags` says which are bf16. One call does what a Linear layer's forward does, so that a token's few
 * dozen products each cost one call from Python and no further operations on their outputs.
 *
 * With more than one input row, each block of 8 weight rows is read from memory once and again from the cache
 * for the other rows. Threads: OpenMP, which resolves to the runtime torch has loaded already (the same
 * libgomp.so.1), so torch.set_num_threads holds here too.
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { X_BF16 = 1, BIAS_BF16 = 2, Y_BF16 = 4 };  /* the flags: which of x, bias and y are bf16 (else fp32) */

static inline float bf16_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* rounded to nearest even, a NaN to the quiet NaN torch gives */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return f != f ? 0x7fc0 : (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* x [m, k] as fp32: x itself, or a copy of a bf16 x in *owned (freed by the caller); NULL where memory ran out */
static const float *rows_in_f32(const void *x, int64_t m, int64_t k, int64_t flags, float **owned) {
    *owned = NULL;
    if (!(flags & X_BF16)) return (const float *)x;
    float *copy = malloc(m * k * sizeof(float));
    if (copy)
        for (int64_t i = 0; i < m * k; i++) copy[i] = bf16_to_f32(((const uint16_t *)x)[i]);
    return *owned = copy;
}

/* y[i, row0 + r] for the r < 8 below `rows`: the sum r plus the bias, in fp32 or bf16 */
static inline void put8(void *y, int64_t i, int64_t row0, int64_t rows, __m256 sums, const void *bias,
                        int64_t flags) {
    float s[8];
    _mm256_storeu_ps(s, sums);
    const int count = rows - row0 < 8 ? (int)(rows - row0) : 8;
    for (int r = 0; r < count; r++) {
        float v = s[r];
        if (bias)
            v += flags & BIAS_BF16 ? bf16_to_f32(((const uint16_t *)bias)[row0 + r]) : ((const float *)bias)[row0 + r];
        if (flags & Y_BF16) ((uint16_t *)y)[i * rows + row0 + r] = f32_to_bf16(v);
        else ((float *)y)[i * rows + row0 + r] = v;
    }
}

/* every element of y NaN: what a kernel gives where memory for its input rows ran out */
static void all_nan(void *y, int64_t count, int64_t flags) {
    for (int64_t i = 0; i < count; i++) {
        if (flags & Y_BF16) ((uint16_t *)y)[i] = 0x7fc0;
        else ((float *)y)[i] = NAN;
    }
}

/* The 8 sums of the 8 accumulators, as one vector: lane i holds the sum of a[i]'s lanes. */
static inline __m256 sums8(const __m256 *a) {
    __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
    __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
    __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

static inline __m256 from_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* 8 floats rounded to bf16 as f32_to_bf16 rounds each, stored at p */
static inline void store_bf16_8(uint16_t *p, __m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

/* How far ahead of its reads a kernel asks for the weights (bytes), for fp32 weights and for the narrower ones (bf16,
 * int8, int4), set by model/native.py for the machine class: on some CPUs the hardware prefetcher alone leaves a
 * single-row product's stream well below the memory's rate, more so for the narrower formats, which spend more
 * instructions a byte (docs/performance.md). 0: no prefetching. */
enum { FP32_WEIGHTS, NARROWER_WEIGHTS };
static int64_t prefetch_ahead[2] = {0, 0};

/* sets one (a negative count leaves it), returns its setting; -1 for a kind other than these two */
int64_t clozelm_set_prefetch(int64_t weights, int64_t bytes) {
    if (weights != FP32_WEIGHTS && weights != NARROWER_WEIGHTS) return -1;
    prefetch_ahead[weights] = bytes >= 0 ? bytes : prefetch_ahead[weights];
    return prefetch_ahead[weights];
}

/* the cache lines `bytes` from p on, `ahead` bytes further on (a hint: an address past the end never faults); nothing
 * where it is 0, so that CPUs which do not prefetch spend no instruction on it */
static inline void prefetch(const void *p, int64_t bytes, int64_t ahead) {
    if (!ahead) return;
    for (int64_t c = 0; c < bytes; c += 64) _mm_prefetch((const char *)p + ahead + c, _MM_HINT_T0);
}

/* The kernels' forms for CPUs with AVX-512 (16-lane helpers for the passes bound by their arithmetic; VNNI's
 * integer multiply-adds for int8 and int4 products), and the switch the tests use to run the 8-lane forms, which every
 * x86 CPU native.c runs on takes, on them too. */
static int narrow_only = 0;  /* 1: the 8-lane code everywhere (tests run both) */

static inline int wide_lanes(void) {
    return !narrow_only && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

/* 8: the 8-lane code on every CPU; 16: the 16-lane code where the CPU has AVX-512 (the default); returns the lanes
 * used now */
int clozelm_set_lanes(int lanes) {
    narrow_only = lanes == 8;
    return wide_lanes() ? 16 : 8;
}

/* whether the int8 and int4 products take VNNI's vpdpbusd (on 8 lanes: AVX-512 VL's form of it) */
static inline int vnni_products(void) {
    return wide_lanes() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
}

/* whether bf16 products whose rows are bf16 numbers take AVX-512 BF16's vdpbf16ps */
static inline int bf16_dot_products(void) { return wide_lanes() && __builtin_cpu_supports("avx512bf16"); }

#define AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))
#define VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))
#define BF16_DOTS __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16")))

void clozelm_product_f32(const float *w, const void *unused, const void *x_in, void *y, int64_t m, int64_t n, int64_t k,
                         const void *bias, int64_t rows, int64_t flags) {
    (void)unused;  /* the signature of the quantized kernels, which take scales */
    float *owned;
    const float *x = rows_in_f32(x_in, m, k, flags, &owned);
    if (!x) { all_nan(y, m * rows, flags); return; }
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < n / 8; block++) {
        const float *wb = w + block * 8 * k;
        for (int64_t i = 0; i < m; i++) {
            const float *xi = x + i * k, *p = wb;
            __m256 a[8];
            for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
            for (int64_t j = 0; j < k; j += 8, p += 64) {
                prefetch(p, 256, prefetch_ahead[FP32_WEIGHTS]);
                const __m256 xv = _mm256_loadu_ps(xi + j);
                for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8 * r), xv, a[r]);
            }
            put8(y, i, block * 8, rows, sums8(a), bias, flags);
        }
    }
    free(owned);
}

/* bf16 weights times rows of bf16 numbers (x rounded to bf16 changes nothing) on CPUs with AVX-512 BF16: vdpbf16ps
 * multiplies 32 weights (a 64-byte load, 4 rows' 8 columns) by the row's 8 columns in every 128-bit lane and adds each
 * lane's pair of exact products to it in fp32, where the fp32 form takes 4 fmas and 2 conversions for them: several
 * input rows (a token's draft) go twice as fast or more, one row reads its weights with fewer instructions. R input
 * rows at once (xs: their bf16 numbers, sums[r] row i0 + r's), each weight load serving all of them; two chains a row
 * and half of the weight rows (even and odd column blocks), so that a single row's sums do not wait on one another.
 * vdpbf16ps flushes subnormal numbers to zero (bf16 ones below 1.2e-38), the fp32 form does not. */
BF16_DOTS static inline __attribute__((always_inline)) void bf16_rows_dots(const uint16_t *wb, const uint16_t *xs,
                                                                          int64_t i0, int64_t k, __m256 *sums,
                                                                          const int R) {
    __m512 acc[4][4];  /* [row][rows 0-3 even block, 4-7 even, 0-3 odd, 4-7 odd]; R <= 4 */
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {
        const uint16_t *p = wb + 8 * j;
        prefetch(p, 256, prefetch_ahead[NARROWER_WEIGHTS]);
        __m512i w[4];
        for (int c = 0; c < 4; c++) w[c] = _mm512_loadu_si512(p + 32 * c);
        for (int r = 0; r < R; r++) {
            const uint16_t *x = xs + (i0 + r) * k + j;
            const __m512i even = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)x));
            const __m512i odd = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(x + 8)));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)w[0], (__m512bh)even);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)w[1], (__m512bh)even);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], (__m512bh)w[2], (__m512bh)odd);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], (__m512bh)w[3], (__m512bh)odd);
        }
    }
    if (j < k) {  /* k an odd multiple of 8: the last block of 8 columns */
        const uint16_t *p = wb + 8 * j;
        const __m512i w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 32);
        for (int r = 0; r < R; r++) {
            const __m512i x = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xs + (i0 + r) * k + j)));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)w0, (__m512bh)x);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)w1, (__m512bh)x);
        }
    }
    /* each weight row's sum is in 4 adjacent lanes: fold them, then take lanes 0, 4, 8, 12 of both halves */
    const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    for (int r = 0; r < R; r++) {
        __m512 h[2];
        for (int c = 0; c < 2; c++) {
            const __m512 v = _mm512_add_ps(acc[r][c], acc[r][c + 2]);
            const __m512 pairs = _mm512_add_ps(v, _mm512_permute_ps(v, 0xb1));
            h[c] = _mm512_add_ps(pairs, _mm512_permute_ps(pairs, 0x4e));
        }
        sums[r] = _mm512_castps512_ps256(_mm512_permutex2var_ps(h[0], firsts, h[1]));
    }
}
BF16_DOTS static void bf16_rows_dots1(const uint16_t *wb, const uint16_t *xs, int64_t i0, int64_t k, __m256 *sums) {
    bf16_rows_dots(wb, xs, i0, k, sums, 1);
}
BF16_DOTS static void bf16_rows_dots2(const uint16_t *wb, const uint16_t *xs, int64_t i0, int64_t k, __m256 *sums) {
    bf16_rows_dots(wb, xs, i0, k, sums, 2);
}
BF16_DOTS static void bf16_rows_dots4(const uint16_t *wb, const uint16_t *xs, int64_t i0, int64_t k, __m256 *sums) {
    bf16_rows_dots(wb, xs, i0, k, sums, 4);
}

/* x [m, k] (fp32 or bf16, as `flags` says) as bf16 numbers, where every one of them is one: x itself where it is bf16,
 * else a copy in *owned (freed by the caller); NULL where one is not, or where memory ran out */
static const uint16_t *rows_as_bf16(const void *x, int64_t m, int64_t k, int64_t flags, uint16_t **owned) {
    *owned = NULL;
    if (flags & X_BF16) return (const uint16_t *)x;
    uint16_t *out = malloc(m * k * sizeof(uint16_t));
    const uint32_t *u = (const uint32_t *)x;
    for (int64_t i = 0; out && i < m * k; i++) {
        if (u[i] & 0xffff) { free(out); return NULL; }
        out[i] = (uint16_t)(u[i] >> 16);
    }
    return *owned = out;
}

/* bf16 weights: a load takes two rows' 8 columns, each 32-bit lane a pair of columns (2c, 2c + 1) of one row; the odd
 * column is the lane with its low half cleared and the even one the lane shifted up by 16 bits, both fp32 as they
 * stand (widening each bf16 to a lane of its own takes a shuffle per 8 weights, and where the weights come from the
 * cache, as for a draft's rows, the kernel is bound by its operations). So each input row is taken with the even and
 * the odd columns of each 8 apart, each 4 twice (once per row of a load); the lanes' halves sum rows 2r and 2r + 1. */
void clozelm_product_bf16(const uint16_t *w, const void *unused, const void *x_in, void *y, int64_t m, int64_t n,
                          int64_t k, const void *bias, int64_t rows, int64_t flags) {
    (void)unused;
    uint16_t *copied = NULL;
    const uint16_t *xs = bf16_dot_products() ? rows_as_bf16(x_in, m, k, flags, &copied) : NULL;
    if (xs) {
#pragma omp parallel for schedule(static)
        for (int64_t block = 0; block < n / 8; block++)
            for (int64_t i = 0; i < m;) {
                __m256 sums[4];
                const int64_t count = m - i >= 4 ? 4 : m - i >= 2 ? 2 : 1;
                (count == 4 ? bf16_rows_dots4 : count == 2 ? bf16_rows_dots2 : bf16_rows_dots1)(w + block * 8 * k, xs,
                                                                                                 i, k, sums);
                for (int64_t r = 0; r < count; r++, i++) put8(y, i, block * 8, rows, sums[r], bias, flags);
            }
        free(copied);
        return;
    }
    float *owned;
    const float *x = rows_in_f32(x_in, m, k, flags, &owned);
    float *apart = x ? malloc(2 * m * k * sizeof(float)) : NULL;
    if (!apart) { free(owned); all_nan(y, m * rows, flags); return; }
    const __m256i evens = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6), odds = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
    for (int64_t j = 0; j < m * k; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        _mm256_storeu_ps(apart + 2 * j, _mm256_permutevar8x32_ps(v, evens));
        _mm256_storeu_ps(apart + 2 * j + 8, _mm256_permutevar8x32_ps(v, odds));
    }
    const __m256i high = _mm256_set1_epi32((int)0xffff0000);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < n / 8; block++) {
        const uint16_t *wb = w + block * 8 * k;
        for (int64_t i = 0; i < m; i++) {
            const float *xi = apart + 2 * i * k;
            const uint16_t *p = wb;
            __m256 even[4], odd[4];
            for (int r = 0; r < 4; r++) even[r] = odd[r] = _mm256_setzero_ps();
            for (int64_t j = 0; j < k; j += 8, p += 64) {
                prefetch(p, 128, prefetch_ahead[NARROWER_WEIGHTS]);
                const __m256 xe = _mm256_loadu_ps(xi + 2 * j), xo = _mm256_loadu_ps(xi + 2 * j + 8);
                for (int r = 0; r < 4; r++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 16 * r));
                    even[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), xe, even[r]);
                    odd[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), xo, odd[r]);
                }
            }
            __m256 s[4];
            for (int r = 0; r < 4; r++) s[r] = _mm256_add_ps(even[r], odd[r]);
            /* rows 0, 2, 4, 6 in the low half, 1, 3, 5, 7 in the high one */
            const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
            put8(y, i, block * 8, rows, _mm256_permutevar8x32_ps(h, order), bias, flags);
        }
    }
    free(apart);
    free(owned);
}

/* The step that rounds the n values at x (n a multiple of 8) to integers of at most `top` magnitude: their largest
 * magnitude / top; 1 where all are zeros, NaN where one is NaN or infinite (which then carries into every product of
 * the row: an integer cannot stand for it). */
static float step_of(const float *x, int64_t n, float top) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 tops = _mm256_setzero_ps(), unordered = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        tops = _mm256_max_ps(tops, _mm256_andnot_ps(sign, v));  /* a NaN lane never wins the comparison below */
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float lanes[8], largest = 0;
    _mm256_storeu_ps(lanes, tops);
    for (int c = 0; c < 8; c++) largest = lanes[c] > largest ? lanes[c] : largest;
    if (_mm256_movemask_ps(unordered) || largest > FLT_MAX) return NAN;
    return largest > 0 ? largest / top : 1;
}

/* The 32 values of a row's group from xg into v, and step_of them */
static inline float group_step(const float *xg, __m256 v[4], float largest_code) {
    for (int c = 0; c < 4; c++) v[c] = _mm256_loadu_ps(xg + 8 * c);
    return step_of(xg, 32, largest_code);
}

/* 32 integers (4 x 8 lanes, each within a signed byte) stored at p as bytes in column order (packing works within
 * 128-bit lanes: the dwords put back in order) */
static inline void store_bytes32(int8_t *p, const __m256i q[4]) {
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i *)p, _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

/* The m input rows (fp32 or bf16, as `flags` says) per group of 32 columns as 16-bit integers xq with a step d
 * (x ~= xq * d, rounded to nearest; the step is the group's largest magnitude / 32767); false where memory ran
 * out. */
static int rows_in_int16(const void *x_in, int64_t m, int64_t k, int64_t flags, int16_t **xq, float **steps) {
    const int64_t groups = m * (k / 32);
    float *owned;
    const float *x = rows_in_f32(x_in, m, k, flags, &owned);
    *xq = malloc(m * k * sizeof(int16_t));
    *steps = malloc(groups * sizeof(float));
    if (!x || !*xq || !*steps) { free(owned); free(*xq); free(*steps); return 0; }
    for (int64_t i = 0; i < groups; i++) {
        __m256 v[4];
        const float d = group_step(x + 32 * i, v, 32767);
        const __m256 step = _mm256_set1_ps(d);
        for (int c = 0; c < 4; c += 2) {  /* rounded to nearest even, as _mm_cvtss_si32 rounds one by one */
            const __m256i lo = _mm256_cvtps_epi32(_mm256_div_ps(v[c], step));
            const __m256i hi = _mm256_cvtps_epi32(_mm256_div_ps(v[c + 1], step));
            /* packs within 128-bit lanes: put the 16 values back in column order */
            const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8);
            _mm256_storeu_si256((__m256i *)(*xq + 32 * i + 8 * c), packed);
        }
        (*steps)[i] = d;
    }
    free(owned);
    return 1;
}

/* Input rows for the byte products: each rounded once to 16-bit integers a with one step d per row (x ~= a d, rounded
 * to nearest even; d is the row's largest magnitude / SPLIT_TOP), each a split into two signed bytes, a = 256 hi + lo,
 * the signed operand of vpmaddubsw and vpdpbusd (whose other one, a code, is an unsigned byte). int4's rows, and int8's
 * on CPUs with VNNI. */
enum { SPLIT_TOP = 127 * 257 };  /* the largest a whose hi and lo are both signed bytes */

typedef struct {
    int8_t *bytes;        /* per row: hi [k], then lo [k], in column order */
    float *steps;         /* per row: d (NaN for a row with a NaN, which then carries into every product) */
    int32_t *group_sums;  /* per row and group of 32 columns: the sum of its integers */
} split_rows;

static void split_rows_free(split_rows *s) {
    free(s->bytes);
    free(s->steps);
    free(s->group_sums);
}

/* x [m, k] (fp32 or bf16, as `flags` says) into *s; false where memory ran out */
static int rows_split(const void *x_in, int64_t m, int64_t k, int64_t flags, split_rows *s) {
    const int64_t groups = k / 32;
    float *owned;
    const float *x = rows_in_f32(x_in, m, k, flags, &owned);
    s->bytes = malloc(2 * m * k);
    s->steps = malloc(m * sizeof(float));
    s->group_sums = malloc(m * groups * sizeof(int32_t));
    if (!x || !s->bytes || !s->steps || !s->group_sums) { free(owned); split_rows_free(s); return 0; }
    const __m256i top = _mm256_set1_epi32(SPLIT_TOP), bottom = _mm256_set1_epi32(-SPLIT_TOP);
    const __m256i half = _mm256_set1_epi32(128), low_byte = _mm256_set1_epi32(255);
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * k;
        const float d = step_of(xi, k, SPLIT_TOP);
        const __m256 step = _mm256_set1_ps(d);
        int8_t *hi = s->bytes + 2 * i * k, *lo = hi + k;
        for (int64_t g = 0; g < groups; g++) {
            __m256i h[4], l[4], count = _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {  /* a NaN row's integers are any: its step makes every product NaN */
                __m256i a = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(xi + 32 * g + 8 * c), step));
                a = _mm256_min_epi32(_mm256_max_epi32(a, bottom), top);
                count = _mm256_add_epi32(count, a);
                l[c] = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(a, half), low_byte), half);
                h[c] = _mm256_srai_epi32(_mm256_sub_epi32(a, l[c]), 8);
            }
            store_bytes32(hi + 32 * g, h);
            store_bytes32(lo + 32 * g, l);
            int32_t counts[8], group_sum = 0;
            _mm256_storeu_si256((__m256i *)counts, count);
            for (int c = 0; c < 8; c++) group_sum += counts[c];
            s->group_sums[i * groups + g] = group_sum;
        }
        s->steps[i] = d;
    }
    free(owned);
    return 1;
}

/* The 8 sums of a block of 8 int8 weight rows (wb: their codes, blocked as above) times one input row's 16-bit
 * integers (xq) with a step per group (steps), before the rows' scales: each group of a weight row two integer
 * multiply-adds, one conversion and one fma. */
static __m256 int8_block_sums(const int8_t *wb, const int16_t *xq, const float *steps, int64_t groups) {
    __m256 a[8];
    for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + 32 * g));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + 32 * g + 16));
        const __m256 d = _mm256_set1_ps(steps[g]);
        const int8_t *p = wb + 256 * g;
        prefetch(p, 256, prefetch_ahead[NARROWER_WEIGHTS]);
        for (int r = 0; r < 8; r++) {
            __m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 32 * r)));
            __m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 32 * r + 16)));
            __m256i s = _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
            a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, a[r]);
        }
    }
    return sums8(a);
}

/* The 8 integer sums of the 8 accumulators, as one vector: lane i holds the sum of a[i]'s lanes */
static inline __m256i integer_sums8(const __m256i *a) {
    __m256i s01 = _mm256_hadd_epi32(a[0], a[1]), s23 = _mm256_hadd_epi32(a[2], a[3]);
    __m256i s45 = _mm256_hadd_epi32(a[4], a[5]), s67 = _mm256_hadd_epi32(a[6], a[7]);
    __m256i s0123 = _mm256_hadd_epi32(s01, s23), s4567 = _mm256_hadd_epi32(s45, s67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0123, s4567, 0x20),
                            _mm256_permute2x128_si256(s0123, s4567, 0x31));
}

/* With VNNI: the codes q of a block of 8 int8 weight rows times one split row (hi, lo: rows_split's; row_sum: the sum
 * of its integers), exact, rounded once to fp32, before the row's step and the rows' scales. The codes plus 128 (an
 * exclusive or of the sign bit) are vpdpbusd's unsigned operand and the row's bytes its signed one, a 64-byte load two
 * weight rows' 32 columns (the row's 32 bytes in both halves): two instructions for 64 weights, summed in int32 over
 * the whole row, H over the hi bytes, L over the lo ones (each term at most 255 * 128: exact for k <=
 * VNNI_INT8_COLUMNS), then q a = 256 H + L - 128 sum(a) in doubles (exact). */
enum { VNNI_INT8_COLUMNS = 65536 };

VNNI static __m256 int8_block_products(const int8_t *wb, const int8_t *hi, const int8_t *lo, int64_t groups,
                                       double row_sum) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i h[4], l[4];  /* lanes 0-7: row 2r's, 8-15: row 2r + 1's */
    for (int r = 0; r < 4; r++) h[r] = l[r] = _mm512_setzero_si512();
    for (int64_t g = 0; g < groups; g++) {
        const __m512i xh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(hi + 32 * g)));
        const __m512i xl = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(lo + 32 * g)));
        const int8_t *p = wb + 256 * g;
        prefetch(p, 256, prefetch_ahead[NARROWER_WEIGHTS]);
        for (int r = 0; r < 4; r++) {
            const __m512i codes = _mm512_xor_si512(_mm512_loadu_si512(p + 64 * r), flip);
            h[r] = _mm512_dpbusd_epi32(h[r], codes, xh);
            l[r] = _mm512_dpbusd_epi32(l[r], codes, xl);
        }
    }
    __m256i hs[8], ls[8];
    for (int r = 0; r < 4; r++) {
        hs[2 * r] = _mm512_castsi512_si256(h[r]), hs[2 * r + 1] = _mm512_extracti64x4_epi64(h[r], 1);
        ls[2 * r] = _mm512_castsi512_si256(l[r]), ls[2 * r + 1] = _mm512_extracti64x4_epi64(l[r], 1);
    }
    const __m512d big = _mm512_mul_pd(_mm512_cvtepi32_pd(integer_sums8(hs)), _mm512_set1_pd(256));
    const __m512d little = _mm512_sub_pd(_mm512_cvtepi32_pd(integer_sums8(ls)), _mm512_set1_pd(128 * row_sum));
    return _mm512_cvtpd_ps(_mm512_add_pd(big, little));
}

void clozelm_product_int8(const int8_t *w, const float *scales, const void *x_in, void *y, int64_t m, int64_t n,
                          int64_t k, const void *bias, int64_t rows, int64_t flags) {
    const int64_t groups = k / 32;
    if (vnni_products() && k <= VNNI_INT8_COLUMNS) {
        split_rows s;
        if (!rows_split(x_in, m, k, flags, &s)) { all_nan(y, m * rows, flags); return; }
        double *row_sums = malloc(m * sizeof(double));
        if (!row_sums) { split_rows_free(&s); all_nan(y, m * rows, flags); return; }
        for (int64_t i = 0; i < m; i++) {
            int64_t sum = 0;
            for (int64_t g = 0; g < groups; g++) sum += s.group_sums[i * groups + g];
            row_sums[i] = (double)sum;
        }
#pragma omp parallel for schedule(static)
        for (int64_t block = 0; block < n / 8; block++)
            for (int64_t i = 0; i < m; i++) {
                const int8_t *hi = s.bytes + 2 * i * k;
                const __m256 products = int8_block_products(w + block * 8 * k, hi, hi + k, groups, row_sums[i]);
                const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(scales + block * 8), _mm256_set1_ps(s.steps[i]));
                put8(y, i, block * 8, rows, _mm256_mul_ps(products, scaled), bias, flags);
            }
        free(row_sums);
        split_rows_free(&s);
        return;
    }
    int16_t *xq;
    float *steps;
    if (!rows_in_int16(x_in, m, k, flags, &xq, &steps)) { all_nan(y, m * rows, flags); return; }
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < n / 8; block++)
        for (int64_t i = 0; i < m; i++) {
            const __m256 sums = int8_block_sums(w + block * 8 * k, xq + i * k, steps + i * groups, groups);
            put8(y, i, block * 8, rows, _mm256_mul_ps(sums, _mm256_loadu_ps(scales + block * 8)), bias, flags);
        }
    free(xq);
    free(steps);
}

/* The sums of a block of 8 int4 weight rows (wb: their codes, sb: their scales and zeros, blocked as above) times one
 * input row split into bytes (hi, lo, group_sums: rows_split's), before the row's step: lane r is row r's. Per group,
 * each load of codes times the same 8 columns of the row in every row's 8 bytes (the low nibbles, then the high ones)
 * in multiply-adds of bytes, hi bytes and lo ones apart; their sums make 256 H + L, the group's codes times its
 * integers (at most 32 * 15 * SPLIT_TOP < 2^24: exact in int32 and in fp32), each row's in two adjacent 32-bit lanes,
 * which one horizontal add puts in row order (the reason for the layout's order of rows); then the group's scales, and
 * the zeros' part, z - 8 s times the group's sum, for all 8 rows at once. */
static inline void int4_group(__m256i rows0145, __m256i rows2367, __m256 scale, __m256 zero_part, int32_t group_sum,
                              __m256 *acc, __m256 *zeros) {
    const __m256i t = _mm256_hadd_epi32(rows0145, rows2367);
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), scale, *acc);
    *zeros = _mm256_fmadd_ps(zero_part, _mm256_set1_ps((float)group_sum), *zeros);
}

/* a group's 8 scales s and the zeros' part z - 8 s, from its bf16 scales and zeros at sbg */
static inline __m256 group_scales(const uint16_t *sbg, __m256 *zero_part) {
    const __m256 s = from_bf16(sbg);
    *zero_part = _mm256_fnmadd_ps(_mm256_set1_ps(8), s, from_bf16(sbg + 8));
    return s;
}

/* the row's 8 bytes at p, in every 64-bit lane */
#define EVERY_ROW(p) ({ int64_t eight_; memcpy(&eight_, p, 8); eight_; })

/* with AVX2: a 32-byte load is 4 rows' 8 bytes; vpmaddubsw, whose pairs' sums (at most 2 * 15 * 128) add up over the
 * group's 4 within 16 bits, and one vpmaddwd each for H and L */
static __m256 int4_block_sums(const uint8_t *wb, const uint16_t *sb, const int8_t *hi, const int8_t *lo,
                              const int32_t *group_sums, int64_t groups) {
    const __m256i nibble = _mm256_set1_epi8(0x0f), by_256 = _mm256_set1_epi16(256), by_1 = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps(), zeros = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *p = wb + 128 * g;
        prefetch(p, 128, prefetch_ahead[NARROWER_WEIGHTS]);
        prefetch(sb + 16 * g, 32, prefetch_ahead[NARROWER_WEIGHTS]);
        __m256i h[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, l[2] = {h[0], h[0]};  /* rows 0145, 2367 */
        for (int j = 0; j < 2; j++) {
            const __m256i fh = _mm256_set1_epi64x(EVERY_ROW(hi + 32 * g + 8 * j));
            const __m256i sh = _mm256_set1_epi64x(EVERY_ROW(hi + 32 * g + 16 + 8 * j));
            const __m256i fl = _mm256_set1_epi64x(EVERY_ROW(lo + 32 * g + 8 * j));
            const __m256i sl = _mm256_set1_epi64x(EVERY_ROW(lo + 32 * g + 16 + 8 * j));
            for (int q = 0; q < 2; q++) {
                const __m256i b = _mm256_loadu_si256((const __m256i *)(p + 64 * j + 32 * q));
                const __m256i first = _mm256_and_si256(b, nibble);                         /* columns 8j .. 8j + 7 */
                const __m256i second = _mm256_and_si256(_mm256_srli_epi16(b, 4), nibble);  /* 16 + 8j .. 16 + 8j + 7 */
                h[q] = _mm256_add_epi16(h[q], _mm256_add_epi16(_mm256_maddubs_epi16(first, fh),
                                                               _mm256_maddubs_epi16(second, sh)));
                l[q] = _mm256_add_epi16(l[q], _mm256_add_epi16(_mm256_maddubs_epi16(first, fl),
                                                               _mm256_maddubs_epi16(second, sl)));
            }
        }
        __m256 zero_part;
        const __m256 scale = group_scales(sb + 16 * g, &zero_part);
        int4_group(_mm256_add_epi32(_mm256_madd_epi16(h[0], by_256), _mm256_madd_epi16(l[0], by_1)),
                   _mm256_add_epi32(_mm256_madd_epi16(h[1], by_256), _mm256_madd_epi16(l[1], by_1)), scale, zero_part,
                   group_sums[g], &acc, &zeros);
    }
    return _mm256_add_ps(acc, zeros);
}

/* with VNNI: a 64-byte load is the 8 rows' 8 bytes; vpdpbusd sums 4 products into int32 in one instruction. R input
 * rows at once (a token and its draft: sums[r] is row i0 + r's), the codes unpacked and the scales converted once for
 * all of them. */
VNNI static inline __attribute__((always_inline)) void int4_rows_vnni(const uint8_t *wb, const uint16_t *sb,
                                                                     const split_rows *s, int64_t i0, int64_t k,
                                                                     __m256 *sums, const int R) {
    const int64_t groups = k / 32;
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    __m256 acc[4], zeros[4];  /* R <= 4 */
    for (int r = 0; r < R; r++) acc[r] = zeros[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *p = wb + 128 * g;
        prefetch(p, 128, prefetch_ahead[NARROWER_WEIGHTS]);
        prefetch(sb + 16 * g, 32, prefetch_ahead[NARROWER_WEIGHTS]);
        const __m512i b0 = _mm512_loadu_si512(p), b1 = _mm512_loadu_si512(p + 64);
        const __m512i first[2] = {_mm512_and_si512(b0, nibble), _mm512_and_si512(b1, nibble)};
        const __m512i second[2] = {_mm512_and_si512(_mm512_srli_epi16(b0, 4), nibble),
                                   _mm512_and_si512(_mm512_srli_epi16(b1, 4), nibble)};
        __m256 zero_part;
        const __m256 scale = group_scales(sb + 16 * g, &zero_part);
        for (int r = 0; r < R; r++) {
            const int8_t *hi = s->bytes + 2 * (i0 + r) * k + 32 * g, *lo = hi + k;
            __m512i h0 = _mm512_setzero_si512(), h1 = h0, l0 = h0, l1 = h0; /* two chains each: shorter */
            for (int j = 0; j < 2; j++) {
                h0 = _mm512_dpbusd_epi32(h0, first[j], _mm512_set1_epi64(EVERY_ROW(hi + 8 * j)));
                h1 = _mm512_dpbusd_epi32(h1, second[j], _mm512_set1_epi64(EVERY_ROW(hi + 16 + 8 * j)));
                l0 = _mm512_dpbusd_epi32(l0, first[j], _mm512_set1_epi64(EVERY_ROW(lo + 8 * j)));
                l1 = _mm512_dpbusd_epi32(l1, second[j], _mm512_set1_epi64(EVERY_ROW(lo + 16 + 8 * j)));
            }
            const __m512i t = _mm512_add_epi32(_mm512_slli_epi32(_mm512_add_epi32(h0, h1), 8),
                                               _mm512_add_epi32(l0, l1));
            int4_group(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1), scale, zero_part,
                       s->group_sums[(i0 + r) * groups + g], &acc[r], &zeros[r]);
        }
    }
    for (int r = 0; r < R; r++) sums[r] = _mm256_add_ps(acc[r], zeros[r]);
}
VNNI static void int4_rows_vnni1(const uint8_t *wb, const uint16_t *sb, const split_rows *s, int64_t i0, int64_t k,
                                 __m256 *sums) { int4_rows_vnni(wb, sb, s, i0, k, sums, 1); }
VNNI static void int4_rows_vnni2(const uint8_t *wb, const uint16_t *sb, const split_rows *s, int64_t i0, int64_t k,
                                 __m256 *sums) { int4_rows_vnni(wb, sb, s, i0, k, sums, 2); }
VNNI static void int4_rows_vnni4(const uint8_t *wb, const uint16_t *sb, const split_rows *s, int64_t i0, int64_t k,
                                 __m256 *sums) { int4_rows_vnni(wb, sb, s, i0, k, sums, 4); }

void clozelm_product_int4(const uint8_t *w, const uint16_t *scales_zeros, const void *x_in, void *y, int64_t m,
                          int64_t n, int64_t k, const void *bias, int64_t rows, int64_t flags) {
    const int64_t groups = k / 32;
    split_rows s;
    if (!rows_split(x_in, m, k, flags, &s)) { all_nan(y, m * rows, flags); return; }
    const int vnni = vnni_products();
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < n / 8; block++) {
        const uint8_t *wb = w + block * 8 * (k / 2);
        const uint16_t *sb = scales_zeros + block * groups * 16;
        for (int64_t i = 0; i < m;) {
            __m256 sums[4];
            int64_t count = 1;
            if (vnni) {
                count = m - i >= 4 ? 4 : m - i >= 2 ? 2 : 1;
                (count == 4 ? int4_rows_vnni4 : count == 2 ? int4_rows_vnni2 : int4_rows_vnni1)(wb, sb, &s, i, k, sums);
            } else {
                const int8_t *hi = s.bytes + 2 * i * k;
                sums[0] = int4_block_sums(wb, sb, hi, hi + k, s.group_sums + i * groups, groups);
            }
            for (int64_t r = 0; r < count; r++, i++)
                put8(y, i, block * 8, rows, _mm256_mul_ps(sums[r], _mm256_set1_ps(s.steps[i])), bias, flags);
        }
    }
    split_rows_free(&s);
}

/* A few tokens of one row through every layer of a causal pre-norm network (GPT-2, Llama): what
 * model/transformer.py's Block.forward computes, in one call, so that a token pays one call from Python instead of
 * a few dozen operations a layer dispatched one at a time (model/native_step.py gathers the arguments).
 *
 * layers: per layer LAYER_FIELDS numbers, the addresses and sizes below (a product's kind PRODUCT_NONE where the
 * layer has no such product: the gate of a plain MLP; norms' weights and biases, and the products' biases, in
 * fp32). spec: the shapes (SPEC_*). x [m, D] (fp32): m consecutive tokens of the row (one, or a short draft with
 * the token before it), read and overwritten with the layer stack's output; their keys and values go into slots
 * pos .. pos + m - 1 of each layer's cache [Hkv, slots, Dh], and token t's attention reads slots 0 .. pos + t.
 * cos, sin [m, Dh]: the rotary angles of the tokens' positions (the sine's first half negated, as
 * model/transformer.py's _rotate takes it), or NULL for none. A bf16 network (SPEC_BF16): the cache in bf16 and
 * every row rounded to bf16 where its eager step rounds it (after each operation; products, their bias and
 * activation in fp32 and rounded once), the arithmetic between in fp32. final: NULL, or FINAL_FIELDS numbers, the
 * final norm's weight and bias (fp32; a weight of 0: no final norm) and the vocabulary projection's product fields
 * (kind PRODUCT_NONE: none): x's rows are then normed in place, and the rows from `from` on multiplied into logits
 * [m - from, vocabulary] (so that a token's last Python operations, the norm and the head, are not dispatched one by
 * one either). The small operations run on one thread (a few thousand numbers each), the attention one head a thread,
 * the products as above. Returns 0, or -1 where memory for the scratch rows ran out. */
/* a product's fields: kind (0 fp32, 1 bf16, 2 int8, 3 int4), data, scales, bias, n (padded), k, rows */
enum { PRODUCT_FIELDS = 7, PRODUCT_NONE = -1 };
enum { LN1_W, LN1_B, LN2_W, LN2_B, QKV, PROJ = QKV + PRODUCT_FIELDS, FC = PROJ + PRODUCT_FIELDS,
       GATE = FC + PRODUCT_FIELDS, DOWN = GATE + PRODUCT_FIELDS, KEYS = DOWN + PRODUCT_FIELDS, VALUES, LAYER_FIELDS };
enum { SPEC_LAYERS, SPEC_D, SPEC_HEADS, SPEC_KV_HEADS, SPEC_HEAD_DIM, SPEC_SLOTS, SPEC_RMS, SPEC_ACTIVATION,
       SPEC_MLP, SPEC_BF16, SPEC_FIELDS };
enum { ACT_NONE, ACT_GELU_TANH, ACT_GELU, ACT_SILU, ACT_RELU };
enum { LNF_W, LNF_B, HEAD, FINAL_FIELDS = HEAD + PRODUCT_FIELDS };

/* for native_step.py to check */
int64_t clozelm_step_fields(void) { return (LAYER_FIELDS * 1000 + SPEC_FIELDS) * 1000 + FINAL_FIELDS; }

/* y [m, rows] = x [m, k] times the product's weight, plus its bias */
static void product_of(const int64_t *p, const float *x, float *y, int64_t m) {
    const void *w = (const void *)p[1], *scales = (const void *)p[2], *bias = (const void *)p[3];
    switch (p[0]) {
        case 0: clozelm_product_f32(w, NULL, x, y, m, p[4], p[5], bias, p[6], 0); break;
        case 1: clozelm_product_bf16(w, NULL, x, y, m, p[4], p[5], bias, p[6], 0); break;
        case 2: clozelm_product_int8(w, scales, x, y, m, p[4], p[5], bias, p[6], 0); break;
        default: clozelm_product_int4(w, scales, x, y, m, p[4], p[5], bias, p[6], 0); break;
    }
}

/* v[0..n) rounded to bf16 (kept in fp32) where `on`: a bf16 network's rows between its operations */
static void rounded(float *v, int64_t n, int on) {
    if (on)
        for (int64_t i = 0; i < n; i++) v[i] = bf16_to_f32(f32_to_bf16(v[i]));
}

/* 8 numbers of a cache row from p[i], fp32 or bf16 */
static inline __m256 load8(const void *p, int64_t i, int bf16) {
    return bf16 ? from_bf16((const uint16_t *)p + i) : _mm256_loadu_ps((const float *)p + i);
}

static inline float load1(const void *p, int64_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* The sum of x[0..n) less `shift` (of the squares where asked), 8 lanes at a time (a compiler may not reorder a
 * float sum on its own) */
static float sum_of(const float *x, int64_t n, float shift, int squares) {
    __m256 acc = _mm256_setzero_ps();
    const __m256 c = _mm256_set1_ps(shift);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), c);
        acc = squares ? _mm256_fmadd_ps(v, v, acc) : _mm256_add_ps(acc, v);
    }
    float lanes[8], total = 0;
    _mm256_storeu_ps(lanes, acc);
    for (int j = 0; j < 8; j++) total += lanes[j];
    for (; i < n; i++) total += squares ? (x[i] - shift) * (x[i] - shift) : x[i] - shift;
    return total;
}

/* y = norm(x) * w (+ b): LayerNorm (biased variance) or RMSNorm, rounded to bf16 where `bf16` (RMSNorm twice, as
 * model/transformer.py's RMSNorm rounds the normalised row before its weight multiplies it) */
static void normed(const float *x, float *y, int64_t d, const float *w, const float *b, int rms, float eps, int bf16) {
    const float mean = rms ? 0 : sum_of(x, d, 0, 0) / d;
    const float r = 1.0f / sqrtf(sum_of(x, d, mean, 1) / d + eps);
    for (int64_t i = 0; i < d; i++) {
        const float v = (x[i] - mean) * r;
        y[i] = (rms && bf16 ? bf16_to_f32(f32_to_bf16(v)) : v) * w[i] + (b ? b[i] : 0);
    }
    rounded(y, d, bf16);
}

/* e^x in W-bit lanes (Cephes' expf: x = n ln 2 + r, a degree-6 polynomial in r, n into the exponent), to about an
 * ulp; x clamped to where e^x is a normal float (max and min return their second operand where one is NaN, so a NaN
 * x stays NaN). exp8 here, exp16 with AVX-512 below. */
#define EXP_LANES(NAME, W, ROUND)                                                                            \
    static inline __m##W NAME(__m##W x) {                                                                    \
        x = _mm##W##_min_ps(_mm##W##_set1_ps(88.3f), _mm##W##_max_ps(_mm##W##_set1_ps(-87.3f), x));          \
        const __m##W n = ROUND(_mm##W##_mul_ps(x, _mm##W##_set1_ps(1.44269504088896341f)));                   \
        __m##W r = _mm##W##_fnmadd_ps(n, _mm##W##_set1_ps(0.693359375f), x);                                  \
        r = _mm##W##_fnmadd_ps(n, _mm##W##_set1_ps(-2.12194440e-4f), r);                                      \
        __m##W p = _mm##W##_set1_ps(1.9875691500e-4f);                                                        \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(1.3981999507e-3f));                                      \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(8.3334519073e-3f));                                      \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(4.1665795894e-2f));                                      \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(1.6666665459e-1f));                                      \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(5.0000001201e-1f));                                      \
        p = _mm##W##_add_ps(_mm##W##_fmadd_ps(_mm##W##_mul_ps(p, r), r, r), _mm##W##_set1_ps(1));             \
        const __m##W##i scale =                                                                              \
            _mm##W##_slli_epi32(_mm##W##_add_epi32(_mm##W##_cvtps_epi32(n), _mm##W##_set1_epi32(127)), 23);   \
        return _mm##W##_mul_ps(p, _mm##W##_castsi##W##_ps(scale));                                            \
    }
#define ROUND256(v) _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define ROUND512(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
EXP_LANES(exp8, 256, ROUND256)

AVX512 EXP_LANES(exp16, 512, ROUND512)

AVX512 static inline __m512 from_bf16_16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

AVX512 static inline void store_bf16_16(uint16_t *p, __m512 v) {  /* store_bf16_8's rounding */
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(r));
}

static inline float activated(float v, int64_t activation) {
    switch (activation) {
        case ACT_GELU_TANH: return 0.5f * v * (1 + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        case ACT_GELU: return 0.5f * v * (1 + erff(v * 0.7071067811865476f));
        case ACT_SILU: return v / (1 + expf(-v));
        case ACT_RELU: return v > 0 ? v : 0;
        default: return v;
    }
}

/* a[i] = act(a[i]). GELU's tanh form and SiLU 8 lanes at a time, both as v * sigmoid(t) = v / (1 + e^-t) (the tanh
 * form: 0.5 (1 + tanh(u)) = sigmoid(2 u)); the rest one by one. */
static void activate_into(float *a, int64_t n, int64_t activation) {
    int64_t i = 0;
    if (activation == ACT_GELU_TANH || activation == ACT_SILU)
        for (; i + 8 <= n; i += 8) {
            const __m256 x = _mm256_loadu_ps(a + i);
            __m256 t = x;
            if (activation == ACT_GELU_TANH)  /* 2 sqrt(2 / pi) (x + 0.044715 x^3) */
                t = _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.5957691216057308f)),
                                  _mm256_fmadd_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(0.044715f), _mm256_set1_ps(1)));
            const __m256 y = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1),
                                                            exp8(_mm256_sub_ps(_mm256_setzero_ps(), t))));
            _mm256_storeu_ps(a + i, y);
        }
    for (; i < n; i++) a[i] = activated(a[i], activation);
}

/* sc[s] = q . K[s] * scale for the S keys K [S, dh]: 8 keys at a time, each its own accumulator (one key's sum alone
 * would wait on each fma in turn) */
static void scores_of(const float *q, const void *K, int64_t S, int64_t dh, float scale, float *sc, int bf16) {
    int64_t s = 0;
    if (dh % 8 == 0)
        for (; s + 8 <= S; s += 8) {
            __m256 a[8];
            for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
            for (int64_t i = 0; i < dh; i += 8) {
                const __m256 qv = _mm256_loadu_ps(q + i);
                for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(qv, load8(K, (s + r) * dh + i, bf16), a[r]);
            }
            _mm256_storeu_ps(sc + s, _mm256_mul_ps(sums8(a), _mm256_set1_ps(scale)));
        }
    for (; s < S; s++) {
        float dot = 0;
        for (int64_t i = 0; i < dh; i++) dot += q[i] * load1(K, s * dh + i, bf16);
        sc[s] = dot * scale;
    }
}

/* y [dh] = sum over s of p[s] V[s], 32 columns at a time in registers */
static void weighted_sum(const float *p, const void *V, int64_t S, int64_t dh, float *y, int bf16) {
    int64_t i = 0;
    for (; i + 32 <= dh; i += 32) {
        __m256 a[4];
        for (int c = 0; c < 4; c++) a[c] = _mm256_setzero_ps();
        for (int64_t s = 0; s < S; s++) {
            const __m256 ps = _mm256_set1_ps(p[s]);
            for (int c = 0; c < 4; c++) a[c] = _mm256_fmadd_ps(ps, load8(V, s * dh + i + 8 * c, bf16), a[c]);
        }
        for (int c = 0; c < 4; c++) _mm256_storeu_ps(y + i + 8 * c, a[c]);
    }
    for (; i < dh; i++) {
        float sum = 0;
        for (int64_t s = 0; s < S; s++) sum += p[s] * load1(V, s * dh + i, bf16);
        y[i] = sum;
    }
}

/* heads [count, dh] rotated in place: x * cos + (x2, x1) * sin (in bf16, each of the three rounded, as torch's bf16
 * operations round them) */
static void rotated(float *heads, int64_t count, int64_t dh, const float *cos, const float *sin, int bf16) {
    const int64_t half = dh / 2;
    for (int64_t h = 0; h < count; h++) {
        float *v = heads + h * dh, c[dh], r[dh];
        for (int64_t i = 0; i < dh; i++) {
            c[i] = v[i] * cos[i];
            r[i] = (i < half ? v[i + half] : v[i - half]) * sin[i];
        }
        rounded(c, dh, bf16);
        rounded(r, dh, bf16);
        for (int64_t i = 0; i < dh; i++) v[i] = c[i] + r[i];
        rounded(v, dh, bf16);
    }
}

int clozelm_step(const int64_t *layers, const int64_t *spec, double eps, float *x, int64_t m, int64_t pos,
                 const float *cos, const float *sin, const int64_t *final, float *logits, int64_t from) {
    const int64_t D = spec[SPEC_D], H = spec[SPEC_HEADS], Hkv = spec[SPEC_KV_HEADS], Dh = spec[SPEC_HEAD_DIM];
    const int64_t slots = spec[SPEC_SLOTS], width = spec[SPEC_MLP], S = pos + m, act = spec[SPEC_ACTIVATION];
    const int rms = (int)spec[SPEC_RMS], bf16 = (int)spec[SPEC_BF16];
    const int64_t heads = (H + 2 * Hkv) * Dh, widest = heads > width ? heads : width, element = bf16 ? 2 : 4;
    float *normed_x = malloc(m * (2 * D + 2 * widest + H * Dh + H * S) * sizeof(float));
    if (!normed_x) return -1;
    /* scratch rows: the normed rows, a product's wide rows (queries, keys and values; the MLP's hidden ones), the
     * gate's, the attention's output, what a residual adds, and the attention's scores */
    float *wide = normed_x + m * D, *gate = wide + m * widest, *attended = gate + m * widest;
    float *added = attended + m * H * Dh, *scores = added + m * D;
    for (int64_t l = 0; l < spec[SPEC_LAYERS]; l++) {
        const int64_t *f = layers + l * LAYER_FIELDS;
        for (int64_t t = 0; t < m; t++)
            normed(x + t * D, normed_x + t * D, D, (const float *)f[LN1_W], (const float *)f[LN1_B], rms, (float)eps, bf16);
        product_of(f + QKV, normed_x, wide, m);  /* per row: q [H, Dh], k [Hkv, Dh], v [Hkv, Dh] */
        rounded(wide, m * heads, bf16);
        char *keys = (char *)f[KEYS], *values = (char *)f[VALUES];
        for (int64_t t = 0; t < m; t++) {
            float *row = wide + t * heads;
            if (cos) rotated(row, H + Hkv, Dh, cos + t * Dh, sin + t * Dh, bf16);
            for (int64_t j = 0; j < Hkv; j++)
                for (int64_t i = 0; i < Dh; i++) {
                    const int64_t at = (j * slots + pos + t) * Dh + i;
                    const float k = row[(H + j) * Dh + i], v = row[(H + Hkv + j) * Dh + i];
                    if (bf16) {
                        ((uint16_t *)keys)[at] = f32_to_bf16(k);
                        ((uint16_t *)values)[at] = f32_to_bf16(v);
                    } else {
                        ((float *)keys)[at] = k;
                        ((float *)values)[at] = v;
                    }
                }
        }
        const float scale = 1.0f / sqrtf((float)Dh);
        /* row t of the m attends to the cached slots and the rows up to itself: slots 0 .. pos + t */
#pragma omp parallel for schedule(static)
        for (int64_t job = 0; job < m * H; job++) {
            const int64_t t = job / H, hq = job % H, count = pos + t + 1;
            const float *q = wide + t * heads + hq * Dh;
            const char *K = keys + hq / (H / Hkv) * slots * Dh * element;
            const char *V = values + hq / (H / Hkv) * slots * Dh * element;
            float *sc = scores + job * S, top = -INFINITY, total = 0, *yh = attended + t * H * Dh + hq * Dh;
            scores_of(q, K, count, Dh, scale, sc, bf16);
            for (int64_t s = 0; s < count; s++) top = sc[s] > top ? sc[s] : top;
            int64_t s = 0;
            for (; s + 8 <= count; s += 8)
                _mm256_storeu_ps(sc + s, exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + s), _mm256_set1_ps(top))));
            for (; s < count; s++) sc[s] = expf(sc[s] - top);
            for (s = 0; s < count; s++) total += sc[s];
            weighted_sum(sc, V, count, Dh, yh, bf16);
            for (int64_t i = 0; i < Dh; i++) yh[i] /= total;
        }
        rounded(attended, m * H * Dh, bf16);
        product_of(f + PROJ, attended, added, m);
        rounded(added, m * D, bf16);
        for (int64_t i = 0; i < m * D; i++) x[i] += added[i];
        rounded(x, m * D, bf16);
        for (int64_t t = 0; t < m; t++)
            normed(x + t * D, normed_x + t * D, D, (const float *)f[LN2_W], (const float *)f[LN2_B], rms, (float)eps, bf16);
        product_of(f + FC, normed_x, wide, m);
        if (f[GATE] != PRODUCT_NONE) {  /* SwiGLU: act(gate(h)) * fc(h), each rounded in bf16 */
            product_of(f + GATE, normed_x, gate, m);
            activate_into(gate, m * width, act);
            rounded(gate, m * width, bf16);
            rounded(wide, m * width, bf16);
            for (int64_t i = 0; i < m * width; i++) wide[i] *= gate[i];
        } else {
            activate_into(wide, m * width, act);
        }
        rounded(wide, m * width, bf16);
        product_of(f + DOWN, wide, added, m);
        rounded(added, m * D, bf16);
        for (int64_t i = 0; i < m * D; i++) x[i] += added[i];
        rounded(x, m * D, bf16);
    }
    if (final && final[LNF_W])
        for (int64_t t = 0; t < m; t++)
            normed(x + t * D, x + t * D, D, (const float *)final[LNF_W], (const float *)final[LNF_B], rms, (float)eps,
                   bf16);
    if (final && final[HEAD] != PRODUCT_NONE) {
        product_of(final + HEAD, x + from * D, logits, m - from);
        rounded(logits, (m - from) * final[HEAD + PRODUCT_FIELDS - 1], bf16);
    }
    free(normed_x);
    return 0;
}

/* Causal attention's softmax for a training step in bf16 (model/native_attention.py), row by row: s [rows, T] holds
 * q k^T as bf16 (one row a query, `rows` = batch x heads x T; the query at row r attends keys 0 .. r % T),
 * p = softmax(s * scale) in fp32 over those keys, written rounded to bf16 (0 above the diagonal), and per row its
 * largest scaled score and the sum of the exponentials (stats [rows, 2]), from which the backward recomputes the fp32
 * probabilities exactly. What softmax over the scores rounded once to bf16 computes, in one pass over each row's
 * causal half, where torch's eager operations take a pass each over the whole square (the mask, the scale, the casts,
 * the softmax). */
AVX512 static float top16(const uint16_t *s, int64_t n) {  /* the largest of s[0 .. n), n a multiple of 16 */
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16) top = _mm512_max_ps(top, from_bf16_16(s + j));
    return _mm512_reduce_max_ps(top);
}

static float row_top(const uint16_t *s, int64_t n, float scale) {
    __m256 top = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    float best = -INFINITY;
    if (wide_lanes()) {
        j = n / 16 * 16;
        if (j) best = top16(s, j);
    }
    for (; j + 8 <= n; j += 8) top = _mm256_max_ps(top, from_bf16(s + j));
    float tops[8];
    _mm256_storeu_ps(tops, top);
    for (int c = 0; c < 8; c++) best = tops[c] > best ? tops[c] : best;
    for (; j < n; j++) best = bf16_to_f32(s[j]) > best ? bf16_to_f32(s[j]) : best;
    return best * scale;  /* scale > 0: the largest score scaled is the largest scaled score */
}

AVX512 static void scaled16(const float *e, float a, float b, uint16_t *out, int64_t n) {
    for (int64_t j = 0; j < n; j += 16)
        store_bf16_16(out + j,
                      _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(e + j), _mm512_set1_ps(a)), _mm512_set1_ps(b)));
}

/* out[j] = e[j] * a * b rounded to bf16, for j < n */
static void scaled_to_bf16(const float *e, float a, float b, uint16_t *out, int64_t n) {
    int64_t j = 0;
    if (wide_lanes()) {
        j = n / 16 * 16;
        scaled16(e, a, b, out, j);
    }
    for (; j + 8 <= n; j += 8)
        store_bf16_8(out + j,
                     _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(e + j), _mm256_set1_ps(a)), _mm256_set1_ps(b)));
    for (; j < n; j++) out[j] = f32_to_bf16(e[j] * a * b);
}

/* e[j] = exp(s[j] * scale - top) over whole blocks of W-bit lanes from j = *next on (advanced past them); returns the
 * lanes' sums */
#define EXP_ROW_LANES(NAME, W, LANES, FROM)                                                                    \
    static inline __m##W NAME(const uint16_t *s, int64_t n, float scale, float top, float *e, int64_t *next) { \
        const __m##W sc = _mm##W##_set1_ps(scale), t = _mm##W##_set1_ps(top);                                  \
        __m##W sum = _mm##W##_setzero_ps();                                                                     \
        int64_t j = *next;                                                                                      \
        for (; j + LANES <= n; j += LANES) {                                                                    \
            const __m##W v = exp##LANES(_mm##W##_fmsub_ps(FROM(s + j), sc, t));                                 \
            _mm##W##_storeu_ps(e + j, v);                                                                       \
            sum = _mm##W##_add_ps(sum, v);                                                                      \
        }                                                                                                       \
        *next = j;                                                                                              \
        return sum;                                                                                             \
    }
EXP_ROW_LANES(exp_blocks8, 256, 8, from_bf16)
AVX512 EXP_ROW_LANES(exp_blocks16, 512, 16, from_bf16_16)

/* e[j] = exp(s[j] * scale - top) for j < n (e padded to a multiple of 8 by the caller); returns their sum */
static float row_exp8(const uint16_t *s, int64_t n, float scale, float top, float *e) {
    int64_t j = 0;
    __m256 sum = exp_blocks8(s, n, scale, top, e, &j);
    if (j < n) {  /* the tail through the same code, on a padded copy: every probability from one formula */
        uint16_t tail[8] = {0};
        for (int64_t i = j; i < n; i++) tail[i - j] = s[i];
        const __m256 v = exp8(_mm256_fmsub_ps(from_bf16(tail), _mm256_set1_ps(scale), _mm256_set1_ps(top)));
        float lanes[8], rest = 0;
        _mm256_storeu_ps(lanes, v);
        for (int64_t i = j; i < n; i++) rest += e[i] = lanes[i - j];
        sum = _mm256_add_ps(sum, _mm256_setr_ps(rest, 0, 0, 0, 0, 0, 0, 0));
    }
    float sums[8], total = 0;
    _mm256_storeu_ps(sums, sum);
    for (int c = 0; c < 8; c++) total += sums[c];
    return total;
}

/* row_exp8 16 lanes at a time where the CPU has AVX-512 (the exponential bounds these passes), the last numbers
 * through row_exp8 */
AVX512 static float row_exp16(const uint16_t *s, int64_t n, float scale, float top, float *e) {
    int64_t j = 0;
    const float sum = _mm512_reduce_add_ps(exp_blocks16(s, n, scale, top, e, &j));
    return sum + (j < n ? row_exp8(s + j, n - j, scale, top, e + j) : 0);
}

static float row_exp(const uint16_t *s, int64_t n, float scale, float top, float *e) {
    return wide_lanes() ? row_exp16(s, n, scale, top, e) : row_exp8(s, n, scale, top, e);
}

/* what a row of either pass reads and writes */
typedef struct {
    const uint16_t *s, *dp;  /* the scores; the gradient of the probabilities (the backward) */
    uint16_t *out;           /* the probabilities, or the gradient of the scores */
    float *stats;            /* per row: the largest scaled score, 1 / the sum of the exponentials */
    int64_t T;
    float scale;
} causal_rows;

/* row(a, r, e) for every row r in parallel, e a scratch row of `width` + 8 floats per thread; nonzero where memory
 * ran out */
static int each_row(const void *a, int64_t rows, int64_t width, void (*row)(const void *, int64_t, float *)) {
    int failed = 0;
#pragma omp parallel
    {
        float *e = malloc((width + 8) * sizeof(float));
        if (!e) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            if (e) row(a, r, e);
        free(e);
    }
    return failed;
}

static void softmax_row(const void *rows, int64_t r, float *e) {
    const causal_rows *a = rows;
    const int64_t T = a->T, n = r % T + 1;
    const uint16_t *sr = a->s + r * T;
    const float top = row_top(sr, n, a->scale), sum = row_exp(sr, n, a->scale, top, e), inverse = 1 / sum;
    uint16_t *pr = a->out + r * T;
    scaled_to_bf16(e, inverse, 1, pr, n);
    memset(pr + n, 0, (T - n) * sizeof(uint16_t));
    a->stats[2 * r] = top;
    a->stats[2 * r + 1] = inverse;
}

int clozelm_causal_softmax(const uint16_t *s, uint16_t *p, float *stats, int64_t rows, int64_t T, float scale) {
    const causal_rows a = {s, NULL, p, stats, T, scale};
    return each_row(&a, rows, T, softmax_row);
}

/* the first n (a multiple of 16) of softmax_backward_row's two passes, 16 lanes at a time */
AVX512 static float probabilities16(float *e, const uint16_t *dp, float inverse, int64_t n) {
    __m512 dots = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __m512 pj = _mm512_mul_ps(_mm512_loadu_ps(e + j), _mm512_set1_ps(inverse));
        _mm512_storeu_ps(e + j, pj);
        dots = _mm512_fmadd_ps(pj, from_bf16_16(dp + j), dots);
    }
    return _mm512_reduce_add_ps(dots);
}

AVX512 static void score_gradients16(const float *p, const uint16_t *dp, float dot, float scale, uint16_t *ds,
                                     int64_t n) {
    for (int64_t j = 0; j < n; j += 16)
        store_bf16_16(ds + j, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(p + j),
                                                          _mm512_sub_ps(from_bf16_16(dp + j), _mm512_set1_ps(dot))),
                                            _mm512_set1_ps(scale)));
}

/* The backward of clozelm_causal_softmax: dp [rows, T] the gradient of p (bf16), ds = p * (dp - sum(p * dp)) * scale
 * with p in fp32 as the forward computed it, rounded to bf16 (0 above the diagonal): the gradient of s. */
static void softmax_backward_row(const void *rows, int64_t r, float *e) {
    const causal_rows *a = rows;
    const int64_t T = a->T, n = r % T + 1, wide = wide_lanes() ? n / 16 * 16 : 0;
    const uint16_t *dpr = a->dp + r * T;
    const float inverse = a->stats[2 * r + 1], scale = a->scale;
    row_exp(a->s + r * T, n, scale, a->stats[2 * r], e);
    const __m256 inv = _mm256_set1_ps(inverse);
    __m256 dots = _mm256_setzero_ps();
    float dot = wide ? probabilities16(e, dpr, inverse, wide) : 0;
    int64_t j = wide;
    for (; j + 8 <= n; j += 8) {
        const __m256 pj = _mm256_mul_ps(_mm256_loadu_ps(e + j), inv);
        _mm256_storeu_ps(e + j, pj);
        dots = _mm256_fmadd_ps(pj, from_bf16(dpr + j), dots);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, dots);
    for (int c = 0; c < 8; c++) dot += lanes[c];
    for (int64_t i = j; i < n; i++) { e[i] *= inverse; dot += e[i] * bf16_to_f32(dpr[i]); }
    uint16_t *dsr = a->out + r * T;
    if (wide) score_gradients16(e, dpr, dot, scale, dsr, wide);
    const __m256 d = _mm256_set1_ps(dot), sc = _mm256_set1_ps(scale);
    for (j = wide; j + 8 <= n; j += 8)
        store_bf16_8(dsr + j,
                     _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(e + j), _mm256_sub_ps(from_bf16(dpr + j), d)), sc));
    for (; j < n; j++) dsr[j] = f32_to_bf16(e[j] * (bf16_to_f32(dpr[j]) - dot) * scale);
    memset(dsr + n, 0, (T - n) * sizeof(uint16_t));
}

int clozelm_causal_softmax_backward(const uint16_t *s, const float *stats, const uint16_t *dp, uint16_t *ds,
                                    int64_t rows, int64_t T, float scale) {
    const causal_rows a = {s, dp, ds, (float *)stats, T, scale};
    return each_row(&a, rows, T, softmax_backward_row);
}

/* The cross-entropy of a training step's logits, in place (training/fused_loss.py). z [rows, V] holds the logits in
 * bf16; each row r has a label t = labels[r] (IGNORE: none) and a weight w = weights[r] (1 where weights is NULL, 0
 * where there is no label). Per row: logp[r] = w log softmax(z)[t] in fp32 (0 without a label), and z becomes the
 * gradient of the summed loss, w (softmax(z) - onehot(t)), rounded to bf16: what torch's log_softmax in fp32, its
 * exponential and the casts compute in a pass each over fp32 copies of the rows, here in one pass over each row held
 * in the cache. Returns nonzero where a label is outside 0 .. V - 1 (and not IGNORE; that row's logits are left as
 * they were) or memory ran out. */
enum { IGNORE = -100 };

typedef struct {
    uint16_t *z;
    const int64_t *labels;
    const float *weights;
    float *logp;
    int64_t V;
    int *bad_label;
} loss_rows;

static void cross_entropy_row(const void *rows, int64_t r, float *e) {
    const loss_rows *a = rows;
    const int64_t V = a->V, t = a->labels[r];
    if (t != IGNORE && (t < 0 || t >= V)) {
#pragma omp atomic write
        *a->bad_label = 1;
        a->logp[r] = 0;
        return;
    }
    uint16_t *z = a->z + r * V;
    const float w = t == IGNORE ? 0 : a->weights ? a->weights[r] : 1;
    const float top = row_top(z, V, 1), sum = row_exp(z, V, 1, top, e), inverse = 1 / sum;
    a->logp[r] = t == IGNORE ? 0 : w * (bf16_to_f32(z[t]) - top - logf(sum));
    scaled_to_bf16(e, inverse, w, z, V);
    if (t != IGNORE) z[t] = f32_to_bf16((e[t] * inverse - 1) * w);
}

int clozelm_cross_entropy(uint16_t *z, const int64_t *labels, const float *weights, float *logp, int64_t rows,
                          int64_t V) {
    int bad_label = 0;
    const loss_rows a = {z, labels, weights, logp, V, &bad_label};
    return each_row(&a, rows, V, cross_entropy_row) | (bad_label ? 2 : 0);
}

/* AdamW over a training run's fp32 master weights (training/precision.py), all tensors in one call. Each tensor t is
 * described by 7 numbers in `tensors` [count, 7]: its masters p, moments m and v (fp32, updated in place), its
 * gradient as the sum of an fp32 part (earlier micro-batches, or NULL) and a bf16 part (the network's, or NULL), the
 * network's bf16 copy of it (written, or NULL), and its length; and by 6 in `factors` [count, 6]: 1 - lr weight_decay,
 * lr / (1 - beta1^step), sqrt(1 - beta2^step), beta1, beta2, eps. Every gradient is multiplied by `clip` first
 * (gradient clipping).
 * torch.optim.AdamW's formulas in fp32, in one pass that reads the gradient, the masters and the moments once and
 * writes the masters, the moments and the network's weights, where torch's fused AdamW, the clipping's multiplication
 * and the copies to and from the network take five. */
enum { T_MASTER, T_M, T_V, T_ACC, T_G16, T_MODEL, T_LENGTH, T_FIELDS };

/* the gradient's 8 numbers at i */
static inline __m256 gradient8(const float *acc, const uint16_t *g16, int64_t i) {
    if (acc && g16) return _mm256_add_ps(_mm256_loadu_ps(acc + i), from_bf16(g16 + i));
    return acc ? _mm256_loadu_ps(acc + i) : from_bf16(g16 + i);
}

static inline float gradient1(const float *acc, const uint16_t *g16, int64_t i) {
    return (acc ? acc[i] : 0) + (g16 ? bf16_to_f32(g16[i]) : 0);
}

/* what one call over a run's tensors reads */
typedef struct {
    const int64_t *tensors;
    const double *factors;
    float clip;
} tensor_run;

/* the sum of part(a, t, start, end) over pieces of the tensors' elements, split evenly between the threads */
static double each_part(const tensor_run *a, int64_t count,
                        double (*part)(const tensor_run *, int64_t, int64_t, int64_t)) {
    int64_t total = 0;
    for (int64_t t = 0; t < count; t++) total += a->tensors[t * T_FIELDS + T_LENGTH];
    double sum = 0;
#pragma omp parallel reduction(+ : sum)
    {
        const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
        const int64_t from = total * me / threads, to = total * (me + 1) / threads;
        int64_t offset = 0;
        for (int64_t t = 0; t < count && offset < to; t++) {
            const int64_t n = a->tensors[t * T_FIELDS + T_LENGTH];
            const int64_t start = from > offset ? from - offset : 0, end = to - offset < n ? to - offset : n;
            if (start < end) sum += part(a, t, start, end);
            offset += n;
        }
    }
    return sum;
}

static double squares_part(const tensor_run *a, int64_t t, int64_t start, int64_t end) {
    const int64_t *f = a->tensors + t * T_FIELDS;
    const float *acc = (const float *)f[T_ACC];
    const uint16_t *g16 = (const uint16_t *)f[T_G16];
    double part = 0;
    int64_t i = start;
    while (i + 8 <= end) {  /* fp32 lanes over a block of 4,096 at most, then into the double: over millions of
                             * numbers, fp32 sums would drop the small squares */
        const int64_t block_end = i + 4096 < end ? i + 4096 : end;
        __m256 sums = _mm256_setzero_ps();
        for (; i + 8 <= block_end; i += 8) {
            const __m256 g = gradient8(acc, g16, i);
            sums = _mm256_fmadd_ps(g, g, sums);
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, sums);
        for (int c = 0; c < 8; c++) part += lanes[c];
    }
    for (; i < end; i++) part += (double)gradient1(acc, g16, i) * gradient1(acc, g16, i);
    return part;
}

/* the sum of the squared gradients (before clipping) */
double clozelm_gradient_squares(const int64_t *tensors, int64_t count) {
    const tensor_run a = {tensors, NULL, 0};
    return each_part(&a, count, squares_part);
}

static double adamw_part(const tensor_run *a, int64_t t, int64_t start, int64_t end) {
    const int64_t *f = a->tensors + t * T_FIELDS;
    float *p = (float *)f[T_MASTER], *m = (float *)f[T_M], *v = (float *)f[T_V];
    const float *acc = (const float *)f[T_ACC];
    const uint16_t *g16 = (const uint16_t *)f[T_G16];
    uint16_t *model = (uint16_t *)f[T_MODEL];
    const double *h = a->factors + 6 * t;
    const float decay = (float)h[0], step = (float)h[1], root = (float)h[2], beta1 = (float)h[3], beta2 = (float)h[4];
    const float rest1 = (float)(1 - h[3]), rest2 = (float)(1 - h[4]), eps = (float)h[5];
    const __m256 b1 = _mm256_set1_ps(beta1), b2 = _mm256_set1_ps(beta2), c1 = _mm256_set1_ps(rest1);
    const __m256 c2 = _mm256_set1_ps(rest2), clip = _mm256_set1_ps(a->clip);
    int64_t i = start;
    for (; i + 8 <= end; i += 8) {
        const __m256 g = _mm256_mul_ps(gradient8(acc, g16, i), clip);
        const __m256 mv = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(m + i), b1), _mm256_mul_ps(g, c1));
        const __m256 vv = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), b2),
                                        _mm256_mul_ps(_mm256_mul_ps(g, g), c2));
        const __m256 denominator = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), _mm256_set1_ps(root)),
                                                 _mm256_set1_ps(eps));
        const __m256 pv = _mm256_mul_ps(_mm256_loadu_ps(p + i), _mm256_set1_ps(decay));
        const __m256 updated = _mm256_sub_ps(pv, _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(step), mv), denominator));
        _mm256_storeu_ps(m + i, mv);
        _mm256_storeu_ps(v + i, vv);
        _mm256_storeu_ps(p + i, updated);
        if (model) store_bf16_8(model + i, updated);
    }
    for (; i < end; i++) {
        const float g = gradient1(acc, g16, i) * a->clip;
        m[i] = m[i] * beta1 + g * rest1;
        v[i] = v[i] * beta2 + g * g * rest2;
        p[i] = p[i] * decay - step * m[i] / (sqrtf(v[i]) / root + eps);
        if (model) model[i] = f32_to_bf16(p[i]);
    }
    return 0;
}

void clozelm_adamw(const int64_t *tensors, const double *factors, int64_t count, double clip) {
    const tensor_run a = {tensors, factors, (float)clip};
    each_part(&a, count, adamw_part);
}

/* The backward of GELU's tanh form in a bf16 training step (model/fused.py): dx = dy gelu'(x) in fp32 from the bf16
 * pre-activation x and gradient dy, rounded once to bf16, as torch's gelu_backward(dy, x, approximate="tanh")
 * computes it, where torch's kernel spends several times as long on its tanh. With 2u = 2 sqrt(2 / pi) (x + 0.044715
 * x^3), s = sigmoid(2u) = 0.5 (1 + tanh(u)) and e = exp(-2u): gelu'(x) = s + 2 x s (1 - s) u' with 1 - s = e s, which
 * keeps the small values of 1 + tanh(u) and 1 - tanh(u)^2 free of cancellation. 16 lanes where the CPU has AVX-512
 * (the pass is bound by its arithmetic, not by memory), else 8. */
#define GELU_DERIVATIVE_LANES(NAME, W, EXP)                                                                    \
    static inline __m##W NAME(__m##W x) {                                                                      \
        const __m##W two_u = _mm##W##_mul_ps(_mm##W##_mul_ps(x, _mm##W##_set1_ps(1.5957691216057308f)),       \
                                             _mm##W##_fmadd_ps(_mm##W##_mul_ps(x, x), _mm##W##_set1_ps(0.044715f), \
                                                               _mm##W##_set1_ps(1)));                          \
        const __m##W e = EXP(_mm##W##_sub_ps(_mm##W##_setzero_ps(), two_u));                                    \
        const __m##W s = _mm##W##_div_ps(_mm##W##_set1_ps(1), _mm##W##_add_ps(_mm##W##_set1_ps(1), e));        \
        const __m##W du = _mm##W##_mul_ps(_mm##W##_set1_ps(0.7978845608028654f),                               \
                                          _mm##W##_fmadd_ps(_mm##W##_mul_ps(x, x), _mm##W##_set1_ps(0.134145f), \
                                                            _mm##W##_set1_ps(1)));                             \
        const __m##W spread = _mm##W##_mul_ps(_mm##W##_mul_ps(_mm##W##_add_ps(x, x), s),                       \
                                              _mm##W##_mul_ps(_mm##W##_mul_ps(e, s), du));                     \
        return _mm##W##_add_ps(s, spread);                                                                     \
    }
GELU_DERIVATIVE_LANES(gelu_derivative8, 256, exp8)
AVX512 GELU_DERIVATIVE_LANES(gelu_derivative16, 512, exp16)

AVX512 static void gelu_backward16(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t i) {
    store_bf16_16(dx + i, _mm512_mul_ps(from_bf16_16(dy + i), gelu_derivative16(from_bf16_16(x + i))));
}

static void gelu_backward8(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t i) {
    store_bf16_8(dx + i, _mm256_mul_ps(from_bf16(dy + i), gelu_derivative8(from_bf16(x + i))));
}

void clozelm_gelu_tanh_backward(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t n) {
    const int wide = wide_lanes();
    const int64_t lanes = wide ? 16 : 8, whole = n / lanes * lanes;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < whole; i += lanes) {
        if (wide) gelu_backward16(dy, x, dx, i);
        else gelu_backward8(dy, x, dx, i);
    }
    for (int64_t i = whole; i < n; i += 8) {  /* at most two blocks of 8, the last through a padded copy */
        uint16_t xs[8] = {0}, dys[8] = {0}, out[8];
        const int64_t count = n - i < 8 ? n - i : 8;
        memcpy(xs, x + i, count * sizeof(uint16_t));
        memcpy(dys, dy + i, count * sizeof(uint16_t));
        gelu_backward8(dys, xs, out, 0);
        memcpy(dx + i, out, count * sizeof(uint16_t));
    }
}

/* dst [cols, rows] = src [rows, cols] transposed, 16-bit numbers (bf16), src rows `stride` numbers apart: 8 x 8 tiles
 * through SSE registers, 64 x 64 blocks at a time so that both sides stay in the cache. On a Xeon with AMX oneDNN
 * multiplies a transposed operand well below the speed of a contiguous one (model/fused.py, training/fused_loss.py
 * say where that pays); torch's copy of a transposed bf16 view runs at a fraction of the memory's speed. */
static inline void transpose8x8(const uint16_t *s, int64_t stride, uint16_t *d, int64_t rows) {
    __m128i r[8], t[8];
    for (int i = 0; i < 8; i++) r[i] = _mm_loadu_si128((const __m128i *)(s + i * stride));
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        r[4 * i] = _mm_unpacklo_epi32(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm_unpackhi_epi32(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm_unpacklo_epi32(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm_unpackhi_epi32(t[4 * i + 1], t[4 * i + 3]);
    }
    /* r[0..3]: columns 0-1, 2-3, 4-5, 6-7 of rows 0-3; r[4..7]: the same of rows 4-7 */
    const int order[4] = {0, 1, 2, 3};
    for (int i = 0; i < 4; i++) {
        _mm_storeu_si128((__m128i *)(d + (2 * order[i]) * rows), _mm_unpacklo_epi64(r[i], r[i + 4]));
        _mm_storeu_si128((__m128i *)(d + (2 * order[i] + 1) * rows), _mm_unpackhi_epi64(r[i], r[i + 4]));
    }
}

void clozelm_transpose16(const uint16_t *src, int64_t rows, int64_t cols, int64_t stride, uint16_t *dst) {
    enum { BLOCK_ = 64 };
    const int64_t row_blocks = (rows + BLOCK_ - 1) / BLOCK_, col_blocks = (cols + BLOCK_ - 1) / BLOCK_;
#pragma omp parallel for schedule(static) collapse(2)
    for (int64_t rb = 0; rb < row_blocks; rb++)
        for (int64_t cb = 0; cb < col_blocks; cb++) {
            const int64_t r0 = rb * BLOCK_, c0 = cb * BLOCK_;
            const int64_t r1 = r0 + BLOCK_ < rows ? r0 + BLOCK_ : rows, c1 = c0 + BLOCK_ < cols ? c0 + BLOCK_ : cols;
            for (int64_t r = r0; r < r1; r += 8)
                for (int64_t c = c0; c < c1; c += 8) {
                    if (r + 8 <= r1 && c + 8 <= c1) {
                        transpose8x8(src + r * stride + c, stride, dst + c * rows + r, rows);
                        continue;
                    }
                    for (int64_t i = r; i < (r + 8 < r1 ? r + 8 : r1); i++)
                        for (int64_t j = c; j < (c + 8 < c1 ? c + 8 : c1); j++) dst[j * rows + i] = src[i * stride + j];
                }
        }
}

/* LayerNorm in a bf16 training step (model/native_norm.py), rows of x [rows, d] (bf16) with a bf16 weight and bias
 * (bias NULL: none): y = (x - mean) / sqrt(var + eps) * w + b in fp32, rounded once to bf16, as torch's layer_norm
 * computes it for bf16 rows; stats [rows, 2] keep each row's mean and 1 / sqrt(var + eps) for the backward. The
 * backward: dx = r (g - mean(g) - xhat mean(g xhat)) with g = dy w and xhat = (x - mean) r, and the weight's and the
 * bias's gradients summed over the rows in fp32 (dw, db [d], written: torch's CPU backward for bf16 rows leaves them
 * several bf16 roundings from the exact sums), 8 lanes at a time, each row in the cache. */
typedef struct {
    const uint16_t *x, *dy, *w, *b;
    uint16_t *out;
    float *stats, eps;
    int64_t d;
} norm_rows;

static void layer_norm_row(const void *rows, int64_t r, float *e) {
    const norm_rows *a = rows;
    const int64_t d = a->d, whole = d / 8 * 8;
    const uint16_t *x = a->x + r * d;
    for (int64_t j = 0; j < whole; j += 8) _mm256_storeu_ps(e + j, from_bf16(x + j));
    for (int64_t j = whole; j < d; j++) e[j] = bf16_to_f32(x[j]);
    const float mean = sum_of(e, d, 0, 0) / d, inverse = 1.0f / sqrtf(sum_of(e, d, mean, 1) / d + a->eps);
    uint16_t *y = a->out + r * d;
    const __m256 m = _mm256_set1_ps(mean), inv = _mm256_set1_ps(inverse);
    for (int64_t j = 0; j < whole; j += 8) {
        const __m256 scaled = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(e + j), m), inv),
                                            from_bf16(a->w + j));
        store_bf16_8(y + j, a->b ? _mm256_add_ps(scaled, from_bf16(a->b + j)) : scaled);
    }
    for (int64_t j = whole; j < d; j++)
        y[j] = f32_to_bf16((e[j] - mean) * inverse * bf16_to_f32(a->w[j]) + (a->b ? bf16_to_f32(a->b[j]) : 0));
    a->stats[2 * r] = mean;
    a->stats[2 * r + 1] = inverse;
}

int clozelm_layer_norm(const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *y, float *stats,
                       int64_t rows, int64_t d, float eps) {
    const norm_rows a = {x, NULL, w, b, y, stats, eps, d};
    return each_row(&a, rows, d, layer_norm_row);
}

int clozelm_layer_norm_backward(const uint16_t *dy, const uint16_t *x, const uint16_t *w, const float *stats,
                                uint16_t *dx, float *dw, float *db, int64_t rows, int64_t d) {
    int failed = 0;
    memset(dw, 0, d * sizeof(float));
    memset(db, 0, d * sizeof(float));
#pragma omp parallel
    {
        float *part = calloc(4 * d + 8, sizeof(float));  /* this thread's dw, db; a row's xhat and g */
        if (!part) {
#pragma omp atomic write
            failed = 1;
        }
        float *pw = part, *pb = part + d, *xhat = part + 2 * d, *g = part + 3 * d;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (!part) continue;
            const float mean = stats[2 * r], inverse = stats[2 * r + 1];
            const uint16_t *xr = x + r * d, *dyr = dy + r * d;
            const __m256 m = _mm256_set1_ps(mean), inv = _mm256_set1_ps(inverse);
            __m256 sums_g = _mm256_setzero_ps(), sums_gx = _mm256_setzero_ps();
            const int64_t whole = d / 8 * 8;
            for (int64_t j = 0; j < whole; j += 8) {
                const __m256 dyj = from_bf16(dyr + j), xh = _mm256_mul_ps(_mm256_sub_ps(from_bf16(xr + j), m), inv);
                const __m256 gj = _mm256_mul_ps(dyj, from_bf16(w + j));
                _mm256_storeu_ps(xhat + j, xh);
                _mm256_storeu_ps(g + j, gj);
                _mm256_storeu_ps(pw + j, _mm256_fmadd_ps(dyj, xh, _mm256_loadu_ps(pw + j)));
                _mm256_storeu_ps(pb + j, _mm256_add_ps(dyj, _mm256_loadu_ps(pb + j)));
                sums_g = _mm256_add_ps(sums_g, gj);
                sums_gx = _mm256_fmadd_ps(gj, xh, sums_gx);
            }
            float lanes_g[8], lanes_gx[8], sum_g = 0, sum_gx = 0;
            _mm256_storeu_ps(lanes_g, sums_g);
            _mm256_storeu_ps(lanes_gx, sums_gx);
            for (int c = 0; c < 8; c++) {
                sum_g += lanes_g[c];
                sum_gx += lanes_gx[c];
            }
            for (int64_t j = whole; j < d; j++) {
                const float dyj = bf16_to_f32(dyr[j]);
                xhat[j] = (bf16_to_f32(xr[j]) - mean) * inverse;
                g[j] = dyj * bf16_to_f32(w[j]);
                pw[j] += dyj * xhat[j];
                pb[j] += dyj;
                sum_g += g[j];
                sum_gx += g[j] * xhat[j];
            }
            const float mean_g = sum_g / d, mean_gx = sum_gx / d;
            const __m256 mg = _mm256_set1_ps(mean_g), mgx = _mm256_set1_ps(mean_gx);
            uint16_t *dxr = dx + r * d;
            for (int64_t j = 0; j < whole; j += 8)
                store_bf16_8(dxr + j, _mm256_mul_ps(inv, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(g + j), mg),
                                                                       _mm256_mul_ps(_mm256_loadu_ps(xhat + j), mgx))));
            for (int64_t j = whole; j < d; j++) dxr[j] = f32_to_bf16(inverse * (g[j] - mean_g - xhat[j] * mean_gx));
        }
        if (part) {
#pragma omp critical
            for (int64_t j = 0; j < d; j++) {
                dw[j] += pw[j];
                db[j] += pb[j];
            }
        }
        free(part);
    }
    return failed;
}

/* Causal attention of a bf16 training step on AMX tiles (model/native_attention.py), forward and backward, one head
 * at a time, each thread a head: q, k, v [B, H, T, Dh] as views (strides in numbers; the numbers of a token's head
 * contiguous), out [B, H, T, Dh] likewise. clozelm_causal_softmax's formulas between two products: the softmax in
 * fp32 over each row's causal half, the probabilities rounded to bf16 for the product with the values, stats
 * [B, H, T, 2] each row's largest scaled score and 1 / the sum of its exponentials, but on the scores as the tiles
 * summed them in fp32 (a batched bf16 product rounds them to bf16 first). What the tiles change besides: the
 * products stop at the diagonal (blocks of 16 queries against the keys up to their block; oneDNN's batched products
 * compute the whole square), the square never leaves the cache (the backward recomputes the scores from q and k
 * instead of keeping them), and the operands are read where the layer's projections wrote them, so no copies of q,
 * k, v, the output or the gradients. dh must be 32 or 64 and T at most LONGEST_ATTENTION (the scratch each thread
 * keeps).
 *
 * A tile product C[16][16] (fp32) += A[16][32] B[32][16] takes B with its rows paired (B[k][n] beside B[k + 1][n],
 * "VNNI" order): keys and values are packed once per head into the orders each product wants, the query, key and
 * gradient rows padded with zeros to a multiple of 32 tokens. */
#if defined(__linux__) && (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#include <sys/syscall.h>
#include <unistd.h>

#define AMX __attribute__((target("amx-tile,amx-bf16,avx2,fma,avx512f,avx512bw,avx512vl")))
enum { LONGEST_ATTENTION = 512 };

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t columns[16];  /* bytes per row */
    uint8_t rows[16];
} tile_config;

/* 0 where this process may use AMX tiles (Linux asks each process to request them once), else nonzero */
int clozelm_amx_ready(void) { return (int)syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* tiles */); }

AMX static void tiles_configured(void) {  /* all eight tiles 16 rows of 64 bytes */
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.columns[t] = 64;
        c.rows[t] = 16;
    }
    __asm__ volatile("" : : "r"(&c) : "memory");  /* GCC 12 drops the stores above as if the load never read them */
    _tile_loadconfig(&c);
}

AMX static void tiles_released(void) { _tile_release(); }

/* out_u [16][16] = sum over s < steps of A(u, s) B(u, s) for u < count, A(u, s) at a + u a_u + s a_s (16 rows of 32
 * bf16, rows a_stride bytes apart), B(u, s) likewise (16 rows of 16 bf16 pairs); out_u at out + u out_u, rows
 * out_stride bytes apart. Four products at once where there are four, each with its own pair of A and B tiles
 * (0-1, 2-3 alternate) so that a load need not wait for the product before it; an operand the same for every u
 * loaded once per step. */
AMX static void tile_products(const uint16_t *a, int64_t a_stride, int64_t a_u, int64_t a_s, const uint16_t *b,
                              int64_t b_stride, int64_t b_u, int64_t b_s, int64_t count, int64_t steps, float *out,
                              int64_t out_stride, int64_t out_u) {
    __asm__ volatile("" : : : "memory");  /* GCC's tile loads do not say they read memory: the scratch's stores first */
    int64_t u = 0;
#define TILE_STEP(C, A, B, U)                                                         \
    do {                                                                              \
        if (a_u || (U) < 2) _tile_loadd(A, as + (U) * a_u, a_stride);                 \
        if (b_u || (U) < 2) _tile_loadd(B, bs + (U) * b_u, b_stride);                 \
        _tile_dpbf16ps(C, A, B);                                                      \
    } while (0)
    for (; u + 4 <= count; u += 4) {
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_zero(7);
        for (int64_t s = 0; s < steps; s++) {
            const uint16_t *as = a + u * a_u + s * a_s, *bs = b + u * b_u + s * b_s;
            TILE_STEP(4, 0, 1, 0);
            TILE_STEP(5, 2, 3, 1);
            TILE_STEP(6, 0, 1, 2);
            TILE_STEP(7, 2, 3, 3);
        }
        _tile_stored(4, out + u * out_u, out_stride);
        _tile_stored(5, out + (u + 1) * out_u, out_stride);
        _tile_stored(6, out + (u + 2) * out_u, out_stride);
        _tile_stored(7, out + (u + 3) * out_u, out_stride);
    }
    for (; u < count; u++) {
        _tile_zero(4);
        for (int64_t s = 0; s < steps; s++) {
            const uint16_t *as = a + u * a_u + s * a_s, *bs = b + u * b_u + s * b_s;
            TILE_STEP(4, 0, 1, 0);
        }
        _tile_stored(4, out + u * out_u, out_stride);
    }
#undef TILE_STEP
}

/* one [T, Dh] head of a view: its base, and its tokens `token` numbers apart */
typedef struct {
    const uint16_t *p;
    int64_t token;
} head_rows;

typedef struct {
    int64_t p, batch, head, token;  /* an address and its strides in numbers, as native_attention.py passes them */
} view_arg;

static head_rows head_of(const view_arg *v, int64_t b, int64_t h) {
    const head_rows r = {(const uint16_t *)v->p + b * v->batch + h * v->head, v->token};
    return r;
}

/* dst [Tp][Dh] = the head's rows, zeros from T on */
static void rows_padded(head_rows src, int64_t T, int64_t Tp, int64_t Dh, uint16_t *dst) {
    for (int64_t t = 0; t < T; t++) memcpy(dst + t * Dh, src.p + t * src.token, Dh * sizeof(uint16_t));
    memset(dst + T * Dh, 0, (Tp - T) * Dh * sizeof(uint16_t));
}

/* dst [Dh / 2][pitch] pairs = rows [Tp][Dh] with each pair of columns as one 32-bit number, transposed: B of a
 * product with the rows' transpose (q k^T, dO v^T) */
static void paired_by_column(const uint16_t *rows, int64_t Tp, int64_t Dh, uint16_t *dst, int64_t pitch) {
    const float *src = (const float *)rows;  /* pairs moved as 32-bit numbers: floats only for the shuffles */
    float *d = (float *)dst;
    const int64_t pairs = Dh / 2;
    for (int64_t t = 0; t < Tp; t += 8)
        for (int64_t c = 0; c < pairs; c += 8) {  /* an 8 x 8 transpose of pairs */
            __m256 r[8], u[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (t + i) * pairs + c);
            for (int i = 0; i < 8; i += 2) {
                u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
                u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                r[i] = _mm256_shuffle_ps(u[i], u[i + 2], 0x44);
                r[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], 0xee);
                r[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0x44);
                r[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0xee);
            }
            /* r[0..3]: columns 0, 1, 2, 3 of rows 0-3 (low half) and 4, 5, 6, 7 (high); r[4..7] the same of rows 4-7 */
            for (int i = 0; i < 4; i++) {
                _mm256_storeu_ps(d + (c + i) * pitch + t, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
                _mm256_storeu_ps(d + (c + i + 4) * pitch + t, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
            }
        }
}

/* dst [Dh][pitch] = rows [Tp][Dh] transposed: A of a product summing over tokens (dk^T = q^T dS, dv^T = dO^T p) */
static void transposed_rows(const uint16_t *rows, int64_t Tp, int64_t Dh, uint16_t *dst, int64_t pitch) {
    for (int64_t t = 0; t < Tp; t += 8)
        for (int64_t c = 0; c < Dh; c += 8) transpose8x8(rows + t * Dh + c, Dh, dst + c * pitch + t, pitch);
}

AMX static void rounded_row(const float *x, uint16_t *y, int64_t n) {  /* n a multiple of 16 */
    for (int64_t j = 0; j < n; j += 16) store_bf16_16(y + j, _mm512_loadu_ps(x + j));
}

/* o [Dh][16] (fp32: the gradient of 16 tokens from k0 on, transposed) -> the rows of those tokens before T, in bf16 at
 * dst, `token` numbers apart; `turned` holds 32 Dh numbers */
AMX static void columns_out(const float *o, int64_t Dh, uint16_t *dst, int64_t token, int64_t k0, int64_t T,
                            uint16_t *turned) {
    uint16_t *rows = turned + 16 * Dh;
    rounded_row(o, turned, 16 * Dh);
    for (int64_t d = 0; d < Dh; d += 8)
        for (int64_t c = 0; c < 16; c += 8) transpose8x8(turned + d * 16 + c, 16, rows + c * Dh + d, Dh);
    for (int64_t c = 0; c < 16 && k0 + c < T; c++) memcpy(dst + (k0 + c) * token, rows + c * Dh, Dh * sizeof(uint16_t));
}

/* rows [count][n] of bf16 (`stride` apart, count even) -> dst rows of pairs, `pitch` pairs a row: dst[r / 2][j] =
 * rows[r][j] beside rows[r + 1][j], B of a product with the rows themselves (p v, dS k; n a multiple of 16) */
AMX static void rows_paired(const uint16_t *rows, int64_t count, int64_t stride, int64_t n, uint16_t *dst,
                            int64_t pitch) {
    for (int64_t r = 0; r < count; r += 2)
        for (int64_t j = 0; j < n; j += 16) {
            const __m512i even = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(rows + r * stride + j)));
            const __m512i odd =
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(rows + (r + 1) * stride + j)));
            _mm512_storeu_si512(dst + (r / 2) * pitch * 2 + 2 * j, _mm512_or_si512(even, _mm512_slli_epi32(odd, 16)));
        }
}

static inline __mmask16 lanes_below(int64_t n) { return n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1); }

/* One row of a block's scores s (fp32 from the tiles, the first n keys causal): e[j] = exp(s[j] scale - top) for
 * j < n and 0 from n to the next multiple of 16; returns their sum. top < INFINITY: the given row's largest scaled
 * score; else found here and returned in *top. clozelm_causal_softmax's formulas, 16 lanes at a time, on the scores
 * as the tiles summed them (fp32: the batched products rounded them to bf16 first). */
AMX static float row_exponentials(const float *s, int64_t n, float scale, float *top, float *e) {
    if (*top == INFINITY) {
        __m512 m = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < n; j += 16)
            m = _mm512_mask_max_ps(m, lanes_below(n - j), m, _mm512_loadu_ps(s + j));
        *top = _mm512_reduce_max_ps(m) * scale;
    }
    const __m512 sc = _mm512_set1_ps(scale), t = _mm512_set1_ps(*top);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __m512 v = _mm512_maskz_mov_ps(lanes_below(n - j),
                                             exp16(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, t)));
        _mm512_storeu_ps(e + j, v);
        sum = _mm512_add_ps(sum, v);
    }
    return _mm512_reduce_add_ps(sum);
}

/* the forward's row: p = e / sum in bf16 (0 from n to `ends`), stats = the largest scaled score, 1 / sum */
AMX static void probabilities_row(const float *s, int64_t n, int64_t ends, float scale, float *e, uint16_t *p,
                                  float *stats) {
    float top = INFINITY;
    const float inverse = 1 / row_exponentials(s, n, scale, &top, e);
    int64_t j = 0;
    for (; j < n; j += 16) store_bf16_16(p + j, _mm512_mul_ps(_mm512_loadu_ps(e + j), _mm512_set1_ps(inverse)));
    memset(p + j, 0, (ends - j) * sizeof(uint16_t));
    stats[0] = top;
    stats[1] = inverse;
}

/* the backward's row: p again from the stats, ds = p (dp - sum(p dp)) scale and p in bf16 (0 from n to `ends`) */
AMX static void score_gradients_row(const float *s, const float *dp, int64_t n, int64_t ends, float scale,
                                    const float *stats, float *e, uint16_t *ds, uint16_t *p) {
    float top = stats[0];
    row_exponentials(s, n, scale, &top, e);
    const __m512 inverse = _mm512_set1_ps(stats[1]);
    __m512 dots = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j < n; j += 16) {  /* e and dp are 0 from n on */
        const __m512 pj = _mm512_mul_ps(_mm512_loadu_ps(e + j), inverse);
        _mm512_storeu_ps(e + j, pj);
        dots = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(lanes_below(n - j), dp + j), dots);
    }
    const __m512 dot = _mm512_set1_ps(_mm512_reduce_add_ps(dots)), sc = _mm512_set1_ps(scale);
    for (j = 0; j < n; j += 16) {
        const __m512 pj = _mm512_loadu_ps(e + j);
        store_bf16_16(ds + j, _mm512_mul_ps(_mm512_mul_ps(pj, _mm512_sub_ps(_mm512_loadu_ps(dp + j), dot)), sc));
        store_bf16_16(p + j, pj);
    }
    memset(ds + j, 0, (ends - j) * sizeof(uint16_t));
    memset(p + j, 0, (ends - j) * sizeof(uint16_t));
}

/* the scratch of one thread, in numbers: heads [Tp][Dh] and their packed forms, a block's rows. Rows along the tokens
 * are `pitch` = Tp + 16 numbers (or pairs) long: at a power of two the 16 rows of a tile would fall into a few sets
 * of the L1 cache and evict each other. */
typedef struct {
    uint16_t *q, *k_cols, *v_rows, *dout, *v_cols, *k_rows, *q_t, *dout_t, *ds_pairs, *p_pairs, *ds, *p, *turned;
    float *s, *dp, *e, *o;
} attention_scratch;

static int64_t pitch_of(int64_t Tp) { return Tp + 16; }

static void *scratch_alloc(attention_scratch *w, int64_t Tp, int64_t Dh, int backward) {
    const int64_t P = pitch_of(Tp), head = P * Dh, square = backward ? Tp * P : 0, block = 16 * P;
    const int64_t halves = 8 * head + 2 * square + 2 * block + 32 * Dh, floats = 3 * block + P + 16 + 16 * Dh;
    char *base = aligned_alloc(64, (halves * 2 + floats * 4 + 63) / 64 * 64);
    if (!base) return NULL;
    uint16_t *h = (uint16_t *)base;
    uint16_t **heads[] = {&w->q, &w->k_cols, &w->v_rows, &w->dout, &w->v_cols, &w->k_rows, &w->q_t, &w->dout_t};
    for (int i = 0; i < 8; i++, h += head) *heads[i] = h;
    w->ds_pairs = h, h += square;
    w->p_pairs = h, h += square;
    w->ds = h, h += block;
    w->p = h, h += block;
    w->turned = h, h += 32 * Dh;
    float *f = (float *)h;
    w->s = f, f += block;
    w->dp = f, f += block;
    w->e = f, f += block + P + 16;
    w->o = f;
    return base;
}

typedef struct {
    view_arg q, k, v, out, dout, dq, dk, dv;
    float *stats;
    int64_t B, H, T, Dh;
    float scale;
} attention_args;

/* stored rows [16][Dh] fp32 -> the view's rows i0 .. min(i0 + 16, T), rounded to bf16 */
AMX static void rows_out(const float *o, int64_t Dh, const view_arg *v, int64_t b, int64_t h, int64_t i0, int64_t T) {
    uint16_t *dst = (uint16_t *)v->p + b * v->batch + h * v->head;
    for (int64_t r = 0; r < 16 && i0 + r < T; r++) rounded_row(o + r * Dh, dst + (i0 + r) * v->token, Dh);
}

/* s [16][keys] = q rows i0 .. i0 + 15 times the keys' transpose, fp32 */
AMX static void block_scores(const uint16_t *q, const uint16_t *k_cols, int64_t i0, int64_t keys, int64_t P,
                             int64_t Dh, float *s) {
    tile_products(q + i0 * Dh, Dh * 2, 0, 32, k_cols, P * 4, 32, 16 * P * 2, keys / 16, Dh / 32, s, P * 4, 16);
}

AMX static void attention_head(const attention_args *a, int64_t b, int64_t h, attention_scratch *w) {
    const int64_t T = a->T, Dh = a->Dh, Tp = (T + 31) / 32 * 32, P = pitch_of(Tp);
    float *stats = a->stats + (b * a->H + h) * T * 2;
    rows_padded(head_of(&a->q, b, h), T, Tp, Dh, w->q);
    uint16_t *rows = w->v_cols;  /* the keys' and the values' rows before packing (v_cols: the backward's) */
    rows_padded(head_of(&a->k, b, h), T, Tp, Dh, rows);
    paired_by_column(rows, Tp, Dh, w->k_cols, P);
    rows_padded(head_of(&a->v, b, h), T, Tp, Dh, rows);
    rows_paired(rows, Tp, Dh, Dh, w->v_rows, Dh);
    for (int64_t i0 = 0; i0 < T; i0 += 16) {
        const int64_t keys = i0 + 16, ends = (keys + 31) / 32 * 32;
        block_scores(w->q, w->k_cols, i0, keys, P, Dh, w->s);
        for (int64_t r = 0; r < 16; r++) {
            const int64_t n = i0 + r + 1;
            uint16_t *pr = w->p + r * P;
            if (n > T) {
                memset(pr, 0, ends * sizeof(uint16_t));
                continue;
            }
            probabilities_row(w->s + r * P, n, ends, a->scale, w->e, pr, stats + 2 * (i0 + r));
        }
        tile_products(w->p, P * 2, 0, 32, w->v_rows, Dh * 4, 32, 16 * Dh * 2, Dh / 16, ends / 32, w->o, Dh * 4, 16);
        rows_out(w->o, Dh, &a->out, b, h, i0, T);
    }
}

/* The backward for one head: per block of 16 queries the scores and the probabilities again (from the stats), dP =
 * dO v^T, dS = p (dP - sum(p dP)) scale, dq = dS k; dS and p kept for the whole head (paired rows), then dk^T = q^T dS
 * and dv^T = dO^T p per block of 16 keys, over the queries from the key's block on. */
AMX static void attention_head_backward(const attention_args *a, int64_t b, int64_t h, attention_scratch *w) {
    const int64_t T = a->T, Dh = a->Dh, Tp = (T + 31) / 32 * 32, P = pitch_of(Tp);
    const float *stats = a->stats + (b * a->H + h) * T * 2, scale = a->scale;
    rows_padded(head_of(&a->q, b, h), T, Tp, Dh, w->q);
    transposed_rows(w->q, Tp, Dh, w->q_t, P);
    rows_padded(head_of(&a->dout, b, h), T, Tp, Dh, w->dout);
    transposed_rows(w->dout, Tp, Dh, w->dout_t, P);
    uint16_t *rows = w->v_rows;  /* the keys' and the values' rows before packing (v_rows: the forward's) */
    rows_padded(head_of(&a->k, b, h), T, Tp, Dh, rows);
    paired_by_column(rows, Tp, Dh, w->k_cols, P);
    rows_paired(rows, Tp, Dh, Dh, w->k_rows, Dh);
    rows_padded(head_of(&a->v, b, h), T, Tp, Dh, rows);
    paired_by_column(rows, Tp, Dh, w->v_cols, P);
    for (int64_t i0 = 0; i0 < Tp; i0 += 16) {
        const int64_t keys = i0 + 16, ends = (keys + 31) / 32 * 32;
        if (i0 < T) {
            block_scores(w->q, w->k_cols, i0, keys, P, Dh, w->s);
            block_scores(w->dout, w->v_cols, i0, keys, P, Dh, w->dp);
        }
        for (int64_t r = 0; r < 16; r++) {
            const int64_t n = i0 + r + 1;
            uint16_t *dsr = w->ds + r * P, *pr = w->p + r * P;
            if (n > T) {
                memset(dsr, 0, ends * sizeof(uint16_t));
                memset(pr, 0, ends * sizeof(uint16_t));
                continue;
            }
            score_gradients_row(w->s + r * P, w->dp + r * P, n, ends, scale, stats + 2 * (n - 1), w->e, dsr, pr);
        }
        rows_paired(w->ds, 16, P, ends, w->ds_pairs + (i0 / 2) * P * 2, P);
        rows_paired(w->p, 16, P, ends, w->p_pairs + (i0 / 2) * P * 2, P);
        if (i0 < T) {
            tile_products(w->ds, P * 2, 0, 32, w->k_rows, Dh * 4, 32, 16 * Dh * 2, Dh / 16, ends / 32, w->o, Dh * 4,
                          16);
            rows_out(w->o, Dh, &a->dq, b, h, i0, T);
        }
    }
    const view_arg *grads[2] = {&a->dk, &a->dv};
    const uint16_t *lefts[2] = {w->q_t, w->dout_t}, *rights[2] = {w->ds_pairs, w->p_pairs};
    for (int g = 0; g < 2; g++) {
        uint16_t *dst = (uint16_t *)grads[g]->p + b * grads[g]->batch + h * grads[g]->head;
        for (int64_t k0 = 0; k0 < T; k0 += 16) {
            const int64_t q0 = k0 / 32 * 32;
            /* o [Dh][16] = the transpose of the gradient's rows k0 .. k0 + 15 */
            tile_products(lefts[g] + q0, P * 2, 16 * P, 32, rights[g] + (q0 / 2) * P * 2 + k0 * 2, P * 4, 0, 16 * P * 2,
                          Dh / 16, (Tp - q0) / 32, w->o, 64, 256);
            columns_out(w->o, Dh, dst, grads[g]->token, k0, T, w->turned);
        }
    }
}

static int each_head(const attention_args *a, int backward) {
    const int64_t Tp = (a->T + 31) / 32 * 32;
    int failed = 0;
#pragma omp parallel
    {
        attention_scratch w;
        void *base = scratch_alloc(&w, Tp, a->Dh, backward);
        if (!base) {
#pragma omp atomic write
            failed = 1;
        } else {
            tiles_configured();
        }
#pragma omp for schedule(dynamic)
        for (int64_t bh = 0; bh < a->B * a->H; bh++) {
            if (!base) continue;
            if (backward)
                attention_head_backward(a, bh / a->H, bh % a->H, &w);
            else
                attention_head(a, bh / a->H, bh % a->H, &w);
        }
        if (base) tiles_released();
        free(base);
    }
    return failed;
}

/* views: q, k, v, out (forward) or q, k, v, dout, dq, dk, dv (backward), four numbers each (view_arg); returns
 * nonzero where memory ran out or the shape is not one the tiles take */
int clozelm_amx_attention(const int64_t *views, float *stats, int64_t B, int64_t H, int64_t T, int64_t Dh,
                          float scale) {
    if ((Dh != 32 && Dh != 64) || T < 1 || T > LONGEST_ATTENTION) return 2;
    const view_arg *v = (const view_arg *)views;
    const attention_args a = {v[0], v[1], v[2], v[3], {0}, {0}, {0}, {0}, stats, B, H, T, Dh, scale};
    return each_head(&a, 0);
}

int clozelm_amx_attention_backward(const int64_t *views, const float *stats, int64_t B, int64_t H, int64_t T,
                                   int64_t Dh, float scale) {
    if ((Dh != 32 && Dh != 64) || T < 1 || T > LONGEST_ATTENTION) return 2;
    const view_arg *v = (const view_arg *)views;
    const attention_args a = {v[0], v[1], v[2], {0}, v[3], v[4], v[5], v[6], (float *)stats, B, H, T, Dh, scale};
    return each_head(&a, 1);
}
#else
int clozelm_amx_ready(void) { return -1; }  /* not Linux, or a compiler without AMX's intrinsics: batched products */
int clozelm_amx_attention(const int64_t *views, float *stats, int64_t B, int64_t H, int64_t T, int64_t Dh,
                          float scale) { return 2; }
int clozelm_amx_attention_backward(const int64_t *views, const float *stats, int64_t B, int64_t H, int64_t T,
                                   int64_t Dh, float scale) { return 2; }
#endif
