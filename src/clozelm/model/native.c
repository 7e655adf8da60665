/* Matrix products of a few input rows with weights read once, for x86 CPUs with AVX2 and FMA (model/native.py
 * compiles this file on the machine that runs it).
 *
 * y[m, n] = x[m, k] times the weight [n, k] transposed, all in fp32 arithmetic. The weight is stored blocked,
 * [n / 8][k / 8][8 rows][8 columns]: the 64 numbers one step of the inner loop multiplies are contiguous, so the
 * whole weight is one sequential stream that the hardware prefetcher follows (row-major, 8 rows read side by side
 * are 8 short streams, and an int8 product read that way ran at less than half the speed). n is padded with zero
 * rows to a multiple of 8 by the packing; k must be a multiple of 8.
 *
 * With more than one input row, each block of 8 weight rows is read from memory once and again from the cache
 * for the other rows. Threads: OpenMP, which resolves to the runtime torch has loaded already (the same
 * libgomp.so.1), so torch.set_num_threads holds here too.
 */
#include <immintrin.h>
#include <stdint.h>

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

static inline __m256 from_int8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

#define PRODUCT(NAME, TYPE, WIDEN)                                                                           \
    void NAME(const TYPE *w, const float *scales, const float *x, float *y, int64_t m, int64_t n, int64_t k) { \
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
                __m256 s = sums8(a);                                                                         \
                if (scales) s = _mm256_mul_ps(s, _mm256_loadu_ps(scales + block * 8));                       \
                _mm256_storeu_ps(y + i * n + block * 8, s);                                                  \
            }                                                                                                \
        }                                                                                                    \
    }

PRODUCT(clozelm_product_f32, float, from_f32)
PRODUCT(clozelm_product_bf16, uint16_t, from_bf16)
PRODUCT(clozelm_product_int8, int8_t, from_int8)
