// Greedy generation with llama.cpp's library on a chosen number of threads, for the tests that
// check a file loads and generates in llama.cpp. llama-simple always runs 4 threads, which on
// a busy 2-core machine spin against each other for minutes; llama-completion takes -t but
// prints through its logger's background thread, which now and then loses the text's tail at
// exit. This prints the prompt, then each generated piece, to stdout with stdio, and the
// loader's log to stderr as llama-simple does.
// Built by scripts/build-llama-cpp against the static libraries it makes.
// Usage: llama-generate MODEL N_PREDICT N_THREADS PROMPT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL N_PREDICT N_THREADS PROMPT\n", argv[0]);
        return 2;
    }
    const char * path = argv[1];
    const int n_predict = atoi(argv[2]);
    const int n_threads = atoi(argv[3]);
    const char * prompt = argv[4];

    ggml_backend_load_all();
    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(path, mparams);
    if (!model) {
        fprintf(stderr, "error: unable to load model %s\n", path);
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    // As llama-simple: the vocabulary's special tokens added, the prompt parsed for them.
    const int n_prompt = -llama_tokenize(vocab, prompt, (int) strlen(prompt), NULL, 0, true, true);
    llama_token * tokens = malloc(sizeof(llama_token) * (n_prompt + 1));
    if (llama_tokenize(vocab, prompt, (int) strlen(prompt), tokens, n_prompt, true, true) < 0) {
        fprintf(stderr, "error: failed to tokenize the prompt\n");
        return 1;
    }

    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_prompt + n_predict;
    cparams.n_batch = n_prompt;
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.no_perf = true;
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        fprintf(stderr, "error: failed to create the context\n");
        return 1;
    }
    struct llama_sampler * greedy = llama_sampler_init_greedy();

    char piece[256];
    for (int i = 0; i < n_prompt; i++) {
        int n = llama_token_to_piece(vocab, tokens[i], piece, sizeof(piece), 0, true);
        if (n < 0) {
            fprintf(stderr, "error: failed to convert token %d to text\n", tokens[i]);
            return 1;
        }
        fwrite(piece, 1, n, stdout);
    }
    struct llama_batch batch = llama_batch_get_one(tokens, n_prompt);
    llama_token next;
    for (int generated = 0; generated < n_predict; generated++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "error: failed to evaluate\n");
            return 1;
        }
        next = llama_sampler_sample(greedy, ctx, -1);
        if (llama_vocab_is_eog(vocab, next)) {
            break;
        }
        int n = llama_token_to_piece(vocab, next, piece, sizeof(piece), 0, true);
        if (n < 0) {
            fprintf(stderr, "error: failed to convert token %d to text\n", next);
            return 1;
        }
        fwrite(piece, 1, n, stdout);
        fflush(stdout);
        batch = llama_batch_get_one(&next, 1);
    }
    printf("\n");
    fflush(stdout);
    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    return 0;
}
