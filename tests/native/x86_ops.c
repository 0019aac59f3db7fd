/* Real x86 int8 dot-product instructions on records read from a file, for tests/test_cpu_isa.py.
 *
 *   x86_ops OP IN OUT     IN: int64 little-endian records; OUT: int64 results (see each op).
 *
 * Built three times, each with one feature set: -mavx512vnni -mavx512bw -DUSE_AVX512VNNI,
 * -mavxvnni -DUSE_AVXVNNI, -mavx2 -DUSE_AVX2; a binary only lists (and only executes) the
 * instructions of its feature set. The caller pads the record count to a multiple of 16.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "records_io.h"

static int64_t *in_buf, *out_buf;
static size_t n_in, n_out;


/* records (acc, u0..u3, w0..w3): gather 'lanes' of them into acc[], u[], w[] byte arrays */
static void gather_dot(size_t i, int lanes, int32_t *acc, uint8_t *u, int8_t *w) {
    for (int l = 0; l < lanes; l++) {
        const int64_t *rec = in_buf + 9 * (i + l);
        acc[l] = (int32_t)rec[0];
        for (int j = 0; j < 4; j++) { u[4 * l + j] = (uint8_t)rec[1 + j]; w[4 * l + j] = (int8_t)rec[5 + j]; }
    }
}

/* records (a0, a1, b0, b1): gather 'lanes' of them into pair arrays a[2 * lanes], b[2 * lanes] */
#define GATHER_PAIRS(NAME, TA, TB)                                                             \
    static inline void NAME(size_t i, int lanes, TA *a, TB *b) {                              \
        for (int l = 0; l < lanes; l++) {                                                     \
            const int64_t *rec = in_buf + 4 * (i + l);                                        \
            a[2 * l] = (TA)rec[0]; a[2 * l + 1] = (TA)rec[1];                                 \
            b[2 * l] = (TB)rec[2]; b[2 * l + 1] = (TB)rec[3];                                 \
        }                                                                                     \
    }
GATHER_PAIRS(gather_pairs_u8_s8, uint8_t, int8_t)
GATHER_PAIRS(gather_pairs_s16, int16_t, int16_t)

/* A GEMM's weights from the file (K x N, row-major) interleaved for 4-byte dot products,
 * w4[(k / 4) * N * 4 + c * 4 + k % 4] = w[k][c], and comp[c] = 128 * sum_k w[k][c]: what the
 * u8 input u = x + 128 adds, subtracted at the end. Both arrays malloc'd; the caller frees them. */
static inline void interleave_weights(const int64_t *wsrc, int64_t K, int64_t N, int8_t **w4, int32_t **comp) {
    *w4 = malloc(K * N);
    *comp = calloc(N, 4);
    if (!*w4 || !*comp) die("out of memory");
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < N; c++) {
            (*w4)[(k / 4) * N * 4 + c * 4 + k % 4] = (int8_t)wsrc[k * N + c];
            (*comp)[c] += 128 * (int32_t)wsrc[k * N + c];
        }
}

#ifdef USE_AVX512VNNI
/* VPDPBUSD / VPDPBUSDS zmm: records (acc, u0..u3, w0..w3) -> lane */
static void op_dpbusd512(size_t n, int saturating) {
    for (size_t i = 0; i < n; i += 16) {
        int32_t acc[16], r[16]; uint8_t u[64]; int8_t w[64];
        gather_dot(i, 16, acc, u, w);
        __m512i va = _mm512_loadu_si512(acc), vu = _mm512_loadu_si512(u), vw = _mm512_loadu_si512(w);
        _mm512_storeu_si512(r, saturating ? _mm512_dpbusds_epi32(va, vu, vw) : _mm512_dpbusd_epi32(va, vu, vw));
        for (int l = 0; l < 16; l++) out_buf[i + l] = r[l];
    }
}
static void op_dpbusd(size_t n) { op_dpbusd512(n, 0); }
static void op_dpbusds(size_t n) { op_dpbusd512(n, 1); }

/* VPMADDUBSW zmm (AVX-512BW): records (u0, u1, w0, w1) -> int16 lane */
static void op_maddubs(size_t n) {
    for (size_t i = 0; i < n; i += 32) {
        uint8_t u[64]; int8_t w[64]; int16_t r[32];
        gather_pairs_u8_s8(i, 32, u, w);
        _mm512_storeu_si512(r, _mm512_maddubs_epi16(_mm512_loadu_si512(u), _mm512_loadu_si512(w)));
        for (int l = 0; l < 32; l++) out_buf[i + l] = r[l];
    }
}

/* the float32 epilogue, zmm: records (z, bits of float32 alpha) -> cvtps2dq(cvtdq2ps(z) * alpha) */
static void op_requant_f32(size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        int32_t z[16], a[16], r[16];
        for (int l = 0; l < 16; l++) { z[l] = (int32_t)in_buf[2 * (i + l)]; a[l] = (int32_t)(uint32_t)in_buf[2 * (i + l) + 1]; }
        __m512 prod = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(z)), _mm512_castsi512_ps(_mm512_loadu_si512(a)));
        _mm512_storeu_si512(r, _mm512_cvtps_epi32(prod));
        for (int l = 0; l < 16; l++) out_buf[i + l] = r[l];
    }
}

/* A GEMM as oneDNN-style kernels do it: 16 output columns per zmm, k in steps of 4,
 * u = x + 128 broadcast 4 bytes at a time, w interleaved [k/4][n][4], then - 128 * colsum(w).
 * IN: M, K, N, x[M*K] (s8), w[K*N] (s8, row-major K x N); OUT: y[M*N]. K % 4 == 0, N % 16 == 0. */
static void op_gemm(size_t unused, int saturating) {
    (void)unused;
    int64_t M = in_buf[0], K = in_buf[1], N = in_buf[2];
    const int64_t *x = in_buf + 3, *wsrc = in_buf + 3 + M * K;
    if (K % 4 || N % 16) die("gemm: K % 4 and N % 16 must be 0");
    int8_t *w;
    int32_t *comp;
    interleave_weights(wsrc, K, N, &w, &comp);
    for (int64_t m = 0; m < M; m++)
        for (int64_t c0 = 0; c0 < N; c0 += 16) {
            __m512i acc = _mm512_setzero_si512();
            for (int64_t k = 0; k < K; k += 4) {
                uint8_t u4[4];
                for (int j = 0; j < 4; j++) u4[j] = (uint8_t)(x[m * K + k + j] + 128);
                int32_t word; memcpy(&word, u4, 4);
                __m512i vu = _mm512_set1_epi32(word), vw = _mm512_loadu_si512(w + (k / 4) * N * 4 + c0 * 4);
                acc = saturating ? _mm512_dpbusds_epi32(acc, vu, vw) : _mm512_dpbusd_epi32(acc, vu, vw);
            }
            int32_t r[16];
            _mm512_storeu_si512(r, _mm512_sub_epi32(acc, _mm512_loadu_si512(comp + c0)));
            for (int l = 0; l < 16; l++) out_buf[m * N + c0 + l] = r[l];
        }
    n_out = M * N;
    free(w); free(comp);
}
static void op_gemm_dpbusd(size_t n) { op_gemm(n, 0); }
static void op_gemm_dpbusds(size_t n) { op_gemm(n, 1); }
#endif

#ifdef USE_AVXVNNI
/* VPDPBUSD / VPDPBUSDS ymm, VEX-encoded (AVX-VNNI) */
static void op_dpbusd256(size_t n, int saturating) {
    for (size_t i = 0; i < n; i += 8) {
        int32_t acc[8], r[8]; uint8_t u[32]; int8_t w[32];
        gather_dot(i, 8, acc, u, w);
        __m256i va = _mm256_loadu_si256((void *)acc), vu = _mm256_loadu_si256((void *)u), vw = _mm256_loadu_si256((void *)w);
        _mm256_storeu_si256((void *)r, saturating ? _mm256_dpbusds_avx_epi32(va, vu, vw) : _mm256_dpbusd_avx_epi32(va, vu, vw));
        for (int l = 0; l < 8; l++) out_buf[i + l] = r[l];
    }
}
static void op_dpbusd(size_t n) { op_dpbusd256(n, 0); }
static void op_dpbusds(size_t n) { op_dpbusd256(n, 1); }
#endif

#ifdef USE_AVX2
/* VPMADDUBSW ymm: records (u0, u1, w0, w1) -> int16 lane */
static void op_maddubs(size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        uint8_t u[32]; int8_t w[32]; int16_t r[16];
        gather_pairs_u8_s8(i, 16, u, w);
        _mm256_storeu_si256((void *)r, _mm256_maddubs_epi16(_mm256_loadu_si256((void *)u), _mm256_loadu_si256((void *)w)));
        for (int l = 0; l < 16; l++) out_buf[i + l] = r[l];
    }
}
/* VPMADDWD ymm: records (a0, a1, b0, b1) -> int32 lane */
static void op_maddwd(size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        int16_t a[16], b[16]; int32_t r[8];
        gather_pairs_s16(i, 8, a, b);
        _mm256_storeu_si256((void *)r, _mm256_madd_epi16(_mm256_loadu_si256((void *)a), _mm256_loadu_si256((void *)b)));
        for (int l = 0; l < 8; l++) out_buf[i + l] = r[l];
    }
}
/* the AVX2 dot step: acc + vpmaddwd(vpmaddubsw(u, w), 1): records (acc, u0..u3, w0..w3) -> lane */
static void op_dot4(size_t n) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (size_t i = 0; i < n; i += 8) {
        int32_t acc[8], r[8]; uint8_t u[32]; int8_t w[32];
        gather_dot(i, 8, acc, u, w);
        __m256i pairs = _mm256_maddubs_epi16(_mm256_loadu_si256((void *)u), _mm256_loadu_si256((void *)w));
        __m256i sum = _mm256_add_epi32(_mm256_loadu_si256((void *)acc), _mm256_madd_epi16(pairs, ones));
        _mm256_storeu_si256((void *)r, sum);
        for (int l = 0; l < 8; l++) out_buf[i + l] = r[l];
    }
}
/* A GEMM the AVX2 way: 8 output columns per ymm, k in steps of 4, vpmaddubsw + vpmaddwd + vpaddd,
 * then - 128 * colsum(w). Same file layout as the AVX-512 gemm; N % 8 == 0. */
static void op_gemm_maddubs(size_t unused) {
    (void)unused;
    int64_t M = in_buf[0], K = in_buf[1], N = in_buf[2];
    const int64_t *x = in_buf + 3, *wsrc = in_buf + 3 + M * K;
    if (K % 4 || N % 8) die("gemm: K % 4 and N % 8 must be 0");
    int8_t *w;
    int32_t *comp;
    interleave_weights(wsrc, K, N, &w, &comp);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t m = 0; m < M; m++)
        for (int64_t c0 = 0; c0 < N; c0 += 8) {
            __m256i acc = _mm256_setzero_si256();
            for (int64_t k = 0; k < K; k += 4) {
                uint8_t u4[4];
                for (int j = 0; j < 4; j++) u4[j] = (uint8_t)(x[m * K + k + j] + 128);
                int32_t word; memcpy(&word, u4, 4);
                __m256i vu = _mm256_set1_epi32(word), vw = _mm256_loadu_si256((void *)(w + (k / 4) * N * 4 + c0 * 4));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(vu, vw), ones));
            }
            int32_t r[8];
            _mm256_storeu_si256((void *)r, _mm256_sub_epi32(acc, _mm256_loadu_si256((void *)(comp + c0))));
            for (int l = 0; l < 8; l++) out_buf[m * N + c0 + l] = r[l];
        }
    n_out = M * N;
    free(w); free(comp);
}
#endif

struct op { const char *name; int n_operands; void (*run)(size_t); };
static const struct op OPS[] = {
#ifdef USE_AVX512VNNI
    {"dpbusd", 9, op_dpbusd}, {"dpbusds", 9, op_dpbusds}, {"maddubs", 4, op_maddubs},
    {"requant_f32", 2, op_requant_f32}, {"gemm_dpbusd", 0, op_gemm_dpbusd}, {"gemm_dpbusds", 0, op_gemm_dpbusds},
#endif
#ifdef USE_AVXVNNI
    {"dpbusd", 9, op_dpbusd}, {"dpbusds", 9, op_dpbusds},
#endif
#ifdef USE_AVX2
    {"maddubs", 4, op_maddubs}, {"maddwd", 4, op_maddwd}, {"dot4", 9, op_dot4},
    {"gemm_maddubs", 0, op_gemm_maddubs},
#endif
};

int main(int argc, char **argv) {
    prog_name = "x86_ops";
    if (argc != 4) die("usage: x86_ops OP IN OUT");
    const struct op *op = NULL;
    for (size_t k = 0; k < sizeof OPS / sizeof OPS[0]; k++)
        if (!strcmp(OPS[k].name, argv[1])) op = &OPS[k];
    if (!op) die("unknown op for this build");
    in_buf = read_int64_file(argv[2], &n_in);
    size_t n = 0;
    if (op->n_operands) {  /* records */
        if (n_in % op->n_operands) die("input is not a whole number of records");
        n = n_in / op->n_operands;
        if (n % 32) die("pad the record count to a multiple of 32");
        n_out = n;
        out_buf = calloc(n + 1, 8);
    } else {  /* gemm: M, K, N header */
        out_buf = calloc(in_buf[0] * in_buf[2] + 1, 8);
    }
    op->run(n);
    write_int64_file(argv[3], out_buf, n_out);
    return 0;
}
