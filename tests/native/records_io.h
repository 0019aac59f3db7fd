/* Shared by arm_ops.c and x86_ops.c: the int64 record files the tests write and read back.
 *
 * A file is a flat array of little-endian int64 values; the program narrows each operand to its
 * lane type itself. Every error is one line on stderr and exit status 2.
 */
#ifndef IBERT_REF_RECORDS_IO_H
#define IBERT_REF_RECORDS_IO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* the program's name in error lines (main sets it) */
static const char *prog_name = "native";

static void die(const char *msg) {
    fprintf(stderr, "%s: %s\n", prog_name, msg);
    exit(2);
}

/* The whole file at PATH as int64 values (with one spare slot after them); *COUNT: how many. */
static int64_t *read_int64_file(const char *path, size_t *count) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open input");
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    *count = (size_t)bytes / 8;
    int64_t *buf = malloc((size_t)bytes + 8);
    if (!buf || fread(buf, 8, *count, f) != *count) die("short read");
    fclose(f);
    return buf;
}

/* COUNT int64 values from BUF into the file at PATH. */
static void write_int64_file(const char *path, const int64_t *buf, size_t count) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 8, count, f) != count) die("cannot write output");
    fclose(f);
}

#endif
