/* Matrix products of a few input rows with weights read once, for x86 CPUs with AVX2 and FMA (model/native.py
 * compiles this file on the machine that runs it).
 *
 * y[m, rows] = x[m, k] times the weight [rows, k] transposed. fp32 and bf16 weights (in fp32 arithmetic) are stored
 * blocked, [n / 8][k / 8][8 rows][8 columns]: the 64 numbers one step of the inner loop multiplies are contiguous,
 * so the whole weight is one sequential stream that the hardware prefetcher follows (row-major, 8 rows read side by
 * side are 8 short streams, and an int8 product read that way ran at less than half the speed). n is padded with
 * zero rows to a multiple of 8 by the packing; k must be a multiple of 8 (of 32 for int8 and int4).
 *
 * int8 (clozelm_product_int8): codes q with an fp32 scale s per row, w = q * s. Blocked [n / 8][k / 32][8 rows][32
 * columns], and multiplied like int4 below: the input row in 16-bit integers, each group of 32 columns of a row two
 * integer multiply-adds, one conversion and one fma for the group's step (widening every code to fp32 instead, two
 * conversions and an fma per 8 weights, made the kernel bound by its arithmetic). k must be a multiple of 32.
 *
 * int4 (clozelm_product_int4): 4-bit codes q in 0..15 with a bf16 scale s and zero z per row and group of 32
 * columns, w = (q - 8) * s + z (model/packed.py's int4 format). Blocked [n / 8][k / 32][8 rows][16 bytes], byte b
 * holding column b in its low nibble and column 16 + b in its high one; the scales and zeros beside it,
 * [n / 8][k / 32][8 scales, 8 zeros]. The input row is rounded to 16-bit integers per group of 32 (a step of the
 * group's largest value / 32767: far finer than the bf16 row torch's int4 kernel multiplies), so that the codes
 * need no conversion to fp32: a group of a row is two integer multiply-adds (vpmaddwd), one conversion and one
 * fma for its scale, and the zeros' part, z - 8 s times the group's sum, is one fma for all 8 rows (widening
 * every code to fp32 instead made the kernel bound by its arithmetic, slower than torch's). k must be a multiple
 * of 32.
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
#include <immintrin.h>
#include <math.h>
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

static inline __m256 from_f32(const float *p) { return _mm256_loadu_ps(p); }

static inline __m256 from_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

#define PRODUCT(NAME, TYPE, WIDEN)                                                                           \
    void NAME(const TYPE *w, const void *unused, const void *x_in, void *y, int64_t m, int64_t n, int64_t k,     \
              const void *bias, int64_t rows, int64_t flags) {                                                 \
        (void)unused;  /* the signature of the quantized kernels, which take scales */                       \
        float *owned;                                                                                        \
        const float *x = rows_in_f32(x_in, m, k, flags, &owned);                                             \
        if (!x) { all_nan(y, m * rows, flags); return; }                                                     \
        _Pragma("omp parallel for schedule(static)")                                                         \
        for (int64_t block = 0; block < n / 8; block++) {                                                    \
            const TYPE *wb = w + block * 8 * k;                                                               \
            for (int64_t i = 0; i < m; i++) {                                                                \
                const float *xi = x + i * k;                                                                 \
                const TYPE *p = wb;                                                                          \
                __m256 a[8];                                                                                 \
                for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();                                       \
                for (int64_t j = 0; j < k; j += 8, p += 64) {                                                \
                    __m256 xv = _mm256_loadu_ps(xi + j);                                                     \
                    for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(WIDEN(p + 8 * r), xv, a[r]);          \
                }                                                                                            \
                put8(y, i, block * 8, rows, sums8(a), bias, flags);                                          \
            }                                                                                                \
        }                                                                                                    \
        free(owned);                                                                                         \
    }

PRODUCT(clozelm_product_f32, float, from_f32)
PRODUCT(clozelm_product_bf16, uint16_t, from_bf16)

/* The m input rows (fp32 or bf16, as `flags` says) per group of 32 columns as 16-bit integers xq with a step d
 * (x ~= xq * d, rounded to nearest; the step is the group's largest magnitude / 32767), and each group's sum; false
 * where memory ran out. */
static int rows_in_int16(const void *x_in, int64_t m, int64_t k, int64_t flags, int16_t **xq, float **steps,
                         float **sums) {
    const int64_t groups = m * (k / 32);
    float *owned;
    const float *x = rows_in_f32(x_in, m, k, flags, &owned);
    *xq = malloc(m * k * sizeof(int16_t));
    *steps = malloc(2 * groups * sizeof(float));
    if (!x || !*xq || !*steps) { free(owned); free(*xq); free(*steps); return 0; }
    *sums = *steps + groups;
    for (int64_t i = 0; i < groups; i++) {
        const float *xg = x + 32 * i;
        float top = 0, sum = 0;
        for (int c = 0; c < 32; c++) { top = xg[c] > top ? xg[c] : -xg[c] > top ? -xg[c] : top; sum += xg[c]; }
        /* a NaN never wins the comparison above and would round to 0: a NaN step carries it into every product */
        const float d = sum != sum ? NAN : top > 0 ? top / 32767 : 1;
        for (int c = 0; c < 32; c++) (*xq)[32 * i + c] = (int16_t)_mm_cvtss_si32(_mm_set_ss(xg[c] / d));
        (*steps)[i] = d;
        (*sums)[i] = sum;
    }
    free(owned);
    return 1;
}

void clozelm_product_int8(const int8_t *w, const float *scales, const void *x_in, void *y, int64_t m, int64_t n,
                          int64_t k, const void *bias, int64_t rows, int64_t flags) {
    const int64_t groups = k / 32;
    int16_t *xq;
    float *steps, *sums;
    if (!rows_in_int16(x_in, m, k, flags, &xq, &steps, &sums)) { all_nan(y, m * rows, flags); return; }
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < n / 8; block++) {
        const int8_t *wb = w + block * 8 * k;
        for (int64_t i = 0; i < m; i++) {
            __m256 a[8];
            for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
            for (int64_t g = 0; g < groups; g++) {
                const int16_t *xg = xq + i * k + 32 * g;
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)xg);
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xg + 16));
                const __m256 d = _mm256_set1_ps(steps[i * groups + g]);
                const int8_t *p = wb + 256 * g;
                for (int r = 0; r < 8; r++) {
                    __m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 32 * r)));
                    __m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 32 * r + 16)));
                    __m256i s = _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
                    a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, a[r]);
                }
            }
            put8(y, i, block * 8, rows, _mm256_mul_ps(sums8(a), _mm256_loadu_ps(scales + block * 8)), bias, flags);
        }
    }
    free(xq);
    free(steps);
}

void clozelm_product_int4(const uint8_t *w, const uint16_t *scales_zeros, const void *x_in, void *y, int64_t m,
                          int64_t n, int64_t k, const void *bias, int64_t rows, int64_t flags) {
    const int64_t groups = k / 32;
    int16_t *xq;
    float *steps, *sums;
    if (!rows_in_int16(x_in, m, k, flags, &xq, &steps, &sums)) { all_nan(y, m * rows, flags); return; }
    const __m256i nibble = _mm256_set1_epi16(0x0f);
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < n / 8; block++) {
        const uint8_t *wb = w + block * 8 * (k / 2);
        const uint16_t *sb = scales_zeros + block * groups * 16;
        for (int64_t i = 0; i < m; i++) {
            __m256 a[8], zeros = _mm256_setzero_ps();
            for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
            for (int64_t g = 0; g < groups; g++) {
                const int16_t *xg = xq + i * k + 32 * g;
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)xg);
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xg + 16));
                const __m256 s = from_bf16(sb + 16 * g), z = from_bf16(sb + 16 * g + 8);
                /* w = q * s + (z - 8 s): the zeros' part of all 8 rows at once */
                zeros = _mm256_fmadd_ps(_mm256_fnmadd_ps(_mm256_set1_ps(8), s, z),
                                        _mm256_set1_ps(sums[i * groups + g]), zeros);
                float sd[8];
                _mm256_storeu_ps(sd, _mm256_mul_ps(s, _mm256_set1_ps(steps[i * groups + g])));
                const uint8_t *p = wb + 128 * g;
                for (int r = 0; r < 8; r++) {
                    /* 16 bytes widened to 16-bit lanes: the low nibble is column b, the high one column 16 + b */
                    __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p + 16 * r)));
                    __m256i d = _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(b, nibble), x0),
                                                 _mm256_madd_epi16(_mm256_srli_epi16(b, 4), x1));
                    a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_broadcast_ss(sd + r), a[r]);
                }
            }
            put8(y, i, block * 8, rows, _mm256_add_ps(sums8(a), zeros), bias, flags);
        }
    }
    free(xq);
    free(steps);
}
