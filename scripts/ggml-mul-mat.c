// One matrix product through ggml's CPU backend, the reference for how llama.cpp multiplies
// quantized weights with f32 activations (src/eval's rounded matmul is checked against it by
// fixtures/golden/matmul.json). Made by scripts/gen-golden-matmul.py, which builds this
// against the llama.cpp that scripts/build-llama-cpp makes.
// Usage: ggml-mul-mat TYPE ROWS COLS N WEIGHTS.f32 X.f32 OUT_WEIGHTS.bin OUT_Y.f32
//   TYPE: ggml type id; the f32 weights (ROWS x COLS) are quantized by ggml_quantize_chunk,
//   X is N rows of COLS; Y = W . X as ggml_mul_mat computes it (N rows of ROWS), 1 thread.
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
#include "ggml-cpu.h"

static void read_f32(const char * path, float * dst, size_t n) {
    FILE * f = fopen(path, "rb");
    if (!f || fread(dst, sizeof(float), n, f) != n) {
        fprintf(stderr, "cannot read %zu floats from %s\n", n, path);
        exit(1);
    }
    fclose(f);
}

static void write_all(const char * path, const void * data, size_t n) {
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

int main(int argc, char ** argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s TYPE ROWS COLS N WEIGHTS.f32 X.f32 OUT_WEIGHTS.bin OUT_Y.f32\n", argv[0]);
        return 2;
    }
    const enum ggml_type type = (enum ggml_type) atoi(argv[1]);
    const int rows = atoi(argv[2]), cols = atoi(argv[3]), n = atoi(argv[4]);
    struct ggml_init_params ip = { 64u << 20, NULL, false };
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * w = ggml_new_tensor_2d(ctx, type, cols, rows);
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols, n);
    float * wf = malloc(sizeof(float) * rows * cols);
    read_f32(argv[5], wf, (size_t) rows * cols);
    ggml_quantize_chunk(type, wf, w->data, 0, rows, cols, NULL);
    read_f32(argv[6], (float *) x->data, (size_t) n * cols);
    struct ggml_tensor * y = ggml_mul_mat(ctx, w, x);
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    ggml_graph_compute_with_ctx(ctx, gf, 1);
    write_all(argv[7], w->data, ggml_nbytes(w));
    write_all(argv[8], y->data, ggml_nbytes(y));
    return 0;
}
