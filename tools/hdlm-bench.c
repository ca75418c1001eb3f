// hdlm-bench: performance measurements, each next to a baseline run on the same machine in the same run. One
// subcommand per row of the table below; each lives in tools/hdlm-bench/.

#include "hdlm/cli.h"
#include "hdlm-bench/bench.h"

static const hdlm_subcommand commands[] = {
    {"tokenizer", bench_tokenizer_main, "GPT-2 BPE encoding speed on the default corpus vs the npm encoders"},
    {"model", bench_model_main, "DDiT-small forward+backward: tok/s and % of the FMA peak vs the PyTorch reference"},
    {"checkpoint", bench_checkpoint_main, "DDiT-small checkpoint write/read time and size vs raw disk speed (1-N ranks)"},
    {"eval", bench_eval_main, "the masking NELBO of hdlm-eval perplexity vs the PyTorch reference model, same weights"},
    {"kvcache", bench_kvcache_main, "generation with and without the KV cache of settled blocks (ω = L/16, L/4)"},
    {"prepare", bench_prepare_main, "hdlm-prep prepare on a 1 GB OpenWebText-shaped archive, 1 and 2 ranks, vs tar/xz + npm"},
    {"train", bench_train_main, "DDiT-small training steps on a GPU (or CPU): tok/s and MFU vs PyTorch eager/compile"},
};

int main(int argc, char **argv) {
    return hdlm_cli_dispatch("hdlm-bench", commands, sizeof commands / sizeof *commands, argc, argv);
}
