// Quantizes rows of f32 with ggml's own ggml_quantize_chunk: the oracle for the IQ1_M golden
// digests (libgguf ports an older IQ1_M). Used by scripts/gen-golden-quant.py --ggml-helper.
// Build against the llama.cpp that scripts/build-llama-cpp makes:
//   v=third_party/llama_cpp_python-0.3.36/vendor/llama.cpp
//   gcc -c -O1 scripts/ggml-quantize-rows.c -I$v/ggml/include -o /tmp/gqr.o
//   g++ /tmp/gqr.o third_party/llama.cpp-build-v3/ggml/src/libggml-base.a -lm -lpthread -lgomp
//       -o /tmp/ggml-quantize-rows
// Usage: ggml-quantize-rows TYPE NROWS N_PER_ROW IN.f32 (IMATRIX.f32|-) OUT.bin
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"

static void read_f32(const char * path, float * dst, size_t n) {
    FILE * f = fopen(path, "rb");
    if (!f || fread(dst, sizeof(float), n, f) != n) {
        fprintf(stderr, "cannot read %zu floats from %s\n", n, path);
        exit(1);
    }
    fclose(f);
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s TYPE NROWS N_PER_ROW IN.f32 IMATRIX.f32|- OUT.bin\n", argv[0]);
        return 2;
    }
    const enum ggml_type type = (enum ggml_type) atoi(argv[1]);
    const long nrows = atol(argv[2]), n = atol(argv[3]);
    float * x = malloc(nrows * n * sizeof(float));
    read_f32(argv[4], x, nrows * n);
    float * im = NULL;
    if (argv[5][0] != '-') {
        im = malloc(n * sizeof(float));
        read_f32(argv[5], im, n);
    }
    const size_t row_size = ggml_row_size(type, n);
    void * out = calloc(nrows, row_size);
    ggml_quantize_chunk(type, x, out, 0, nrows, n, im);
    FILE * f = fopen(argv[6], "wb");
    if (!f || fwrite(out, 1, nrows * row_size, f) != nrows * row_size) {
        fprintf(stderr, "cannot write %s\n", argv[6]);
        return 1;
    }
    fclose(f);
    return 0;
}
