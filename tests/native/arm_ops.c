/* Real AArch64 instructions (NEON, FEAT_RDM, FEAT_DotProd, FEAT_I8MM, SVE2) on records read
 * from a file, for tests/test_arm_qemu.py.
 *
 *   arm_ops OP IN OUT      IN: int64 little-endian, N records of OP's operand count;
 *                          OUT: int64, N records of OP's result count.
 *
 * Every operand is an int64 in the file and is narrowed to its lane type here (the caller keeps
 * it in range). Records are processed a register at a time (4 x 32-bit, 8 x 16-bit lanes, ...);
 * the caller pads N to a multiple of 16. Built with -march=armv8.6-a+i8mm[+sve2] -static and
 * run under qemu-aarch64 -cpu max.
 */
#include <arm_neon.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef WITH_SVE2
#include <arm_sve.h>
#endif

#include "records_io.h"

static int64_t *in_buf, *out_buf;
static size_t n_in;


/* ---- binary ops on one 128-bit register of LANES x T lanes: records (a, b) -> r ---- */
#define BINARY(NAME, T, LANES, VT, LD, ST, EXPR)                                               \
    static void NAME(size_t n) {                                                              \
        for (size_t i = 0; i < n; i += LANES) {                                               \
            T a[LANES], b[LANES], r[LANES];                                                   \
            for (int l = 0; l < LANES; l++) { a[l] = (T)in_buf[2 * (i + l)];                  \
                                              b[l] = (T)in_buf[2 * (i + l) + 1]; }            \
            VT va = LD(a), vb = LD(b);                                                        \
            ST(r, EXPR);                                                                      \
            for (int l = 0; l < LANES; l++) out_buf[i + l] = r[l];                            \
        }                                                                                     \
    }
#define BINARY32(NAME, EXPR) BINARY(NAME, int32_t, 4, int32x4_t, vld1q_s32, vst1q_s32, EXPR)
#define BINARY16(NAME, EXPR) BINARY(NAME, int16_t, 8, int16x8_t, vld1q_s16, vst1q_s16, EXPR)
#define BINARY8(NAME, EXPR) BINARY(NAME, int8_t, 16, int8x16_t, vld1q_s8, vst1q_s8, EXPR)

BINARY32(op_sqrdmulh32, vqrdmulhq_s32(va, vb))
BINARY16(op_sqrdmulh16, vqrdmulhq_s16(va, vb))
BINARY32(op_sqdmulh32, vqdmulhq_s32(va, vb))
BINARY32(op_srshl32, vrshlq_s32(va, vb))
BINARY16(op_srshl16, vrshlq_s16(va, vb))
BINARY8(op_srshl8, vrshlq_s8(va, vb))
BINARY32(op_sshl32, vshlq_s32(va, vb))
BINARY32(op_sqrshl32, vqrshlq_s32(va, vb))

/* ---- SQRDMLAH: records (acc, a, b) -> r ---- */
#define TERNARY(NAME, T, LANES, LD, ST, OP)                                                    \
    static void NAME(size_t n) {                                                              \
        for (size_t i = 0; i < n; i += LANES) {                                               \
            T c[LANES], a[LANES], b[LANES], r[LANES];                                         \
            for (int l = 0; l < LANES; l++) {                                                 \
                c[l] = (T)in_buf[3 * (i + l)];                                                \
                a[l] = (T)in_buf[3 * (i + l) + 1];                                            \
                b[l] = (T)in_buf[3 * (i + l) + 2];                                            \
            }                                                                                 \
            ST(r, OP(LD(c), LD(a), LD(b)));                                                   \
            for (int l = 0; l < LANES; l++) out_buf[i + l] = r[l];                            \
        }                                                                                     \
    }
TERNARY(op_sqrdmlah32, int32_t, 4, vld1q_s32, vst1q_s32, vqrdmlahq_s32)
TERNARY(op_sqrdmlah16, int16_t, 8, vld1q_s16, vst1q_s16, vqrdmlahq_s16)

/* ---- SQRSHRN #n (immediate): records (x, n) -> r; n must be a literal, hence the switch ---- */
#define C1(F, v, k) case k: return F(v, k);
#define C8(F, v) C1(F, v, 1) C1(F, v, 2) C1(F, v, 3) C1(F, v, 4) C1(F, v, 5) C1(F, v, 6) C1(F, v, 7) C1(F, v, 8)
#define C16(F, v) C8(F, v) C1(F, v, 9) C1(F, v, 10) C1(F, v, 11) C1(F, v, 12) C1(F, v, 13) C1(F, v, 14)   \
    C1(F, v, 15) C1(F, v, 16)
#define C32(F, v) C16(F, v) C1(F, v, 17) C1(F, v, 18) C1(F, v, 19) C1(F, v, 20) C1(F, v, 21) C1(F, v, 22) \
    C1(F, v, 23) C1(F, v, 24) C1(F, v, 25) C1(F, v, 26) C1(F, v, 27) C1(F, v, 28) C1(F, v, 29)          \
    C1(F, v, 30) C1(F, v, 31) C1(F, v, 32)

static int8x8_t qrshrn8(int16x8_t v, int n) { switch (n) { C8(vqrshrn_n_s16, v) } die("n"); return vdup_n_s8(0); }
static int16x4_t qrshrn16(int32x4_t v, int n) { switch (n) { C16(vqrshrn_n_s32, v) } die("n"); return vdup_n_s16(0); }
static int32x2_t qrshrn32(int64x2_t v, int n) { switch (n) { C32(vqrshrn_n_s64, v) } die("n"); return vdup_n_s32(0); }

/* one record at a time (n differs per record): lane 0 of a broadcast register */
static void op_sqrshrn8(size_t n) {
    for (size_t i = 0; i < n; i++)
        out_buf[i] = vget_lane_s8(qrshrn8(vdupq_n_s16((int16_t)in_buf[2 * i]), (int)in_buf[2 * i + 1]), 0);
}
static void op_sqrshrn16(size_t n) {
    for (size_t i = 0; i < n; i++)
        out_buf[i] = vget_lane_s16(qrshrn16(vdupq_n_s32((int32_t)in_buf[2 * i]), (int)in_buf[2 * i + 1]), 0);
}
static void op_sqrshrn32(size_t n) {
    for (size_t i = 0; i < n; i++)
        out_buf[i] = vget_lane_s32(qrshrn32(vdupq_n_s64(in_buf[2 * i]), (int)in_buf[2 * i + 1]), 0);
}

/* ---- SDOT: records (acc, a0..a3, b0..b3) -> r (one 32-bit lane each) ---- */
static void op_sdot(size_t n) {
    for (size_t i = 0; i < n; i += 4) {
        int32_t c[4], r[4];
        int8_t a[16], b[16];
        for (int l = 0; l < 4; l++) {
            const int64_t *rec = in_buf + 9 * (i + l);
            c[l] = (int32_t)rec[0];
            for (int j = 0; j < 4; j++) { a[4 * l + j] = (int8_t)rec[1 + j]; b[4 * l + j] = (int8_t)rec[5 + j]; }
        }
        vst1q_s32(r, vdotq_s32(vld1q_s32(c), vld1q_s8(a), vld1q_s8(b)));
        for (int l = 0; l < 4; l++) out_buf[i + l] = r[l];
    }
}

/* ---- SMMLA: records (acc[4], vn[16], vm[16]) -> r[4]; acc row-major 2x2, vn = A (2x8 row-major),
 *      vm = B^T (2x8 row-major) ---- */
static void op_smmla(size_t n) {
    for (size_t i = 0; i < n; i++) {
        const int64_t *rec = in_buf + 36 * i;
        int32_t c[4], r[4];
        int8_t a[16], b[16];
        for (int j = 0; j < 4; j++) c[j] = (int32_t)rec[j];
        for (int j = 0; j < 16; j++) { a[j] = (int8_t)rec[4 + j]; b[j] = (int8_t)rec[20 + j]; }
        vst1q_s32(r, vmmlaq_s32(vld1q_s32(c), vld1q_s8(a), vld1q_s8(b)));
        for (int j = 0; j < 4; j++) out_buf[4 * i + j] = r[j];
    }
}

/* ---- requantization pipelines: records (x, m, shift) -> r, shift in [-31, 31] ---- */
/* 4 records from i: x, m, and the shift split into left = max(shift, 0), negright = min(shift, 0) */
static void gather_requant(size_t i, int32_t *x, int32_t *m, int32_t *left, int32_t *negright) {
    for (int l = 0; l < 4; l++) {
        const int64_t *rec = in_buf + 3 * (i + l);
        int sh = (int)rec[2];
        x[l] = (int32_t)rec[0]; m[l] = (int32_t)rec[1];
        left[l] = sh > 0 ? sh : 0; negright[l] = sh > 0 ? 0 : sh;
    }
}
/* gemmlowp / TFLite NEON: SQRDMULH(SSHL(x, left), m), then RoundingDivideByPOT with the fixup
 * (fixup = (x & -right) >> 31; x = SQADD(x, fixup); SRSHL(x, -right)). */
static void op_mbqm_gemmlowp(size_t n) {
    for (size_t i = 0; i < n; i += 4) {
        int32_t x[4], m[4], left[4], negright[4], r[4];
        gather_requant(i, x, m, left, negright);
        int32x4_t nr = vld1q_s32(negright);
        int32x4_t high = vqrdmulhq_s32(vshlq_s32(vld1q_s32(x), vld1q_s32(left)), vld1q_s32(m));
        int32x4_t fixup = vshrq_n_s32(vandq_s32(high, nr), 31);
        int32x4_t fixed = vqaddq_s32(high, fixup);
        vst1q_s32(r, vrshlq_s32(fixed, nr));
        for (int l = 0; l < 4; l++) out_buf[i + l] = r[l];
    }
}
/* the `arm` profile: SRSHL(SQRDMULH(SSHL(x, left), m), -right), no fixup (RHU twice) */
static void op_requant_arm(size_t n) {
    for (size_t i = 0; i < n; i += 4) {
        int32_t x[4], m[4], left[4], negright[4], r[4];
        gather_requant(i, x, m, left, negright);
        int32x4_t high = vqrdmulhq_s32(vshlq_s32(vld1q_s32(x), vld1q_s32(left)), vld1q_s32(m));
        vst1q_s32(r, vrshlq_s32(high, vld1q_s32(negright)));
        for (int l = 0; l < 4; l++) out_buf[i + l] = r[l];
    }
}

#ifdef WITH_SVE2
/* ---- SVE2 (vector length as qemu -cpu max sets it): records (a, b) -> r ---- */
#define SVE_BINARY32(NAME, EXPR)                                                               \
    static void NAME(size_t n) {                                                              \
        int32_t *a = malloc(n * 4), *b = malloc(n * 4), *r = malloc(n * 4);                   \
        for (size_t i = 0; i < n; i++) { a[i] = (int32_t)in_buf[2 * i]; b[i] = (int32_t)in_buf[2 * i + 1]; } \
        for (size_t i = 0; i < n; i += svcntw()) {                                            \
            svbool_t pg = svwhilelt_b32_u64(i, n);                                            \
            svint32_t va = svld1_s32(pg, a + i), vb = svld1_s32(pg, b + i);                   \
            svst1_s32(pg, r + i, EXPR);                                                       \
        }                                                                                     \
        for (size_t i = 0; i < n; i++) out_buf[i] = r[i];                                     \
        free(a); free(b); free(r);                                                            \
    }
SVE_BINARY32(op_sve_srshl32, svrshl_s32_x(pg, va, vb))
SVE_BINARY32(op_sve_sqrdmulh32, svqrdmulh_s32(va, vb))

/* SVE SDOT: records (acc, a0..a3, b0..b3) -> r */
static void op_sve_sdot(size_t n) {
    int32_t *c = malloc(n * 4), *r = malloc(n * 4);
    int8_t *a = malloc(n * 4), *b = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        const int64_t *rec = in_buf + 9 * i;
        c[i] = (int32_t)rec[0];
        for (int j = 0; j < 4; j++) { a[4 * i + j] = (int8_t)rec[1 + j]; b[4 * i + j] = (int8_t)rec[5 + j]; }
    }
    for (size_t i = 0; i < n; i += svcntw()) {
        svbool_t pw = svwhilelt_b32_u64(i, n), pb = svwhilelt_b8_u64(4 * i, 4 * n);
        svst1_s32(pw, r + i, svdot_s32(svld1_s32(pw, c + i), svld1_s8(pb, a + 4 * i), svld1_s8(pb, b + 4 * i)));
    }
    for (size_t i = 0; i < n; i++) out_buf[i] = r[i];
    free(a); free(b); free(c); free(r);
}
#endif

struct op { const char *name; int n_operands, n_results; void (*run)(size_t); };
static const struct op OPS[] = {
    {"sqrdmulh32", 2, 1, op_sqrdmulh32}, {"sqrdmulh16", 2, 1, op_sqrdmulh16},
    {"sqdmulh32", 2, 1, op_sqdmulh32},   {"sqrdmlah32", 3, 1, op_sqrdmlah32},
    {"sqrdmlah16", 3, 1, op_sqrdmlah16}, {"srshl32", 2, 1, op_srshl32},
    {"srshl16", 2, 1, op_srshl16},       {"srshl8", 2, 1, op_srshl8},
    {"sshl32", 2, 1, op_sshl32},         {"sqrshl32", 2, 1, op_sqrshl32},
    {"sqrshrn8", 2, 1, op_sqrshrn8},     {"sqrshrn16", 2, 1, op_sqrshrn16},
    {"sqrshrn32", 2, 1, op_sqrshrn32},   {"sdot", 9, 1, op_sdot},
    {"smmla", 36, 4, op_smmla},          {"mbqm_gemmlowp", 3, 1, op_mbqm_gemmlowp},
    {"requant_arm", 3, 1, op_requant_arm},
#ifdef WITH_SVE2
    {"sve_srshl32", 2, 1, op_sve_srshl32}, {"sve_sqrdmulh32", 2, 1, op_sve_sqrdmulh32},
    {"sve_sdot", 9, 1, op_sve_sdot},
#endif
};

int main(int argc, char **argv) {
    prog_name = "arm_ops";
    if (argc != 4) die("usage: arm_ops OP IN OUT");
    const struct op *op = NULL;
    for (size_t k = 0; k < sizeof OPS / sizeof OPS[0]; k++)
        if (!strcmp(OPS[k].name, argv[1])) op = &OPS[k];
    if (!op) die("unknown op");
    in_buf = read_int64_file(argv[2], &n_in);
    if (n_in % op->n_operands) die("input is not a whole number of records");
    size_t n = n_in / op->n_operands;
    if (n % 16) die("pad the record count to a multiple of 16");
    out_buf = calloc(n * op->n_results + 1, 8);
    op->run(n);
    write_int64_file(argv[3], out_buf, n * op->n_results);
    return 0;
}
