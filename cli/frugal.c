/* frugal.c — entry point of the `frugal` command: dispatches to the subcommands.
 *
 * The CLI uses only the public API (include/frugal.h). Library calls return an int status;
 * on failure the command prints "frugal: error: <fr_last_error()>" and exits non-zero. */
#include "cli.h"

#include "frugal.h"

#include <string.h>


static void usage_main(FILE *f) {
    fprintf(f,
            "usage: frugal <command> [options]\n"
            "\n"
            "frugal trains and runs DeepSeek-V3-architecture language models (MLA, DeepSeekMoE, MTP).\n"
            "\n"
            "Commands:\n"
            "  data       tokenize text / JSONL / folders into token shards; inspect a dataset\n"
            "  tokenizer  train a byte-level BPE tokenizer; encode and decode text\n"
            "  train      train a model: AdamW, aux-loss-free balancing, MTP, checkpoints, ledger\n"
            "  finetune   fine-tune a model on chat conversations (loss on the assistant replies; LoRA)\n"
            "  merge      fold a LoRA adapter (PEFT folder) into a model folder\n"
            "  distill    train a student on a teacher's logits (or store the teacher's top-k once)\n"
            "  eval       mean next-token loss and perplexity of a model on token sequences\n"
            "  info       config summary, parameter counts, latent KV-cache size, CPU features\n"
            "  init       a randomly initialised model folder from a config (no training)\n"
            "  cost       run ledger: final-run cost next to the lifecycle cost of all runs\n"
            "  plan       plan a training run on a GPU cluster: memory, step time, MFU, GPU-hours, cost\n"
            "  plot       draw training curves from metrics.jsonl (SVG or terminal)\n"
            "  generate   sample text from a checkpoint (latent KV cache, MTP speculation)\n"
            "  chat       interactive chat with a checkpoint\n"
            "  convert    convert a model folder to GGUF for llama.cpp (F32 ... Q8_0, Q4_0, K-quants)\n"
            "  quantize   store a model's linear weights as BF16 / Q8_0 / Q4_1; validation perplexity\n"
            "  serve      OpenAI-compatible HTTP server with continuous batching and a chat page\n"
            "  version    print the version\n"
            "  help       show this help, or `frugal help <command>` for a command's help\n"
            "\n"
            "Run `frugal <command> --help` for the options of a command.\n"
            "Exit status: 0 success, 1 failure, 2 usage error.\n");
}

static void usage_version(FILE *f) {
    fprintf(f,
            "usage: frugal version\n"
            "\n"
            "Print the version of frugal (and of the linked libfrugal).\n");
}

static void usage_help(FILE *f) {
    fprintf(f,
            "usage: frugal help [command]\n"
            "\n"
            "Without a command, list the commands; with one, show that command's help.\n");
}

static int cmd_version(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            usage_version(stdout);
            return CLI_EXIT_OK;
        }
        return cli_usage_error("version", usage_version, "unexpected argument '%s'", argv[i]);
    }
    printf("frugal %s\n", FRUGAL_VERSION);
    return CLI_EXIT_OK;
}

static int cmd_help(int argc, char **argv);

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    void (*usage)(FILE *);
} command;

static const command COMMANDS[] = {
    {"train", cmd_train, usage_train},
    {"finetune", cmd_finetune, usage_finetune},
    {"merge", cmd_merge, usage_merge},
    {"distill", cmd_distill, usage_distill},
    {"data", cmd_data, usage_data},
    {"tokenizer", cmd_tokenizer, usage_tokenizer},
    {"eval", cmd_eval, usage_eval},
    {"info", cmd_info, usage_info},
    {"init", cmd_init, usage_init},
    {"cost", cmd_cost, usage_cost},
    {"plan", cmd_plan, usage_plan},
    {"plot", cmd_plot, usage_plot},
    {"generate", cmd_generate, usage_generate},
    {"chat", cmd_chat, usage_chat},
    {"convert", cmd_convert, usage_convert},
    {"quantize", cmd_quantize, usage_quantize},
    {"serve", cmd_serve, usage_serve},
    {"version", cmd_version, usage_version},
    {"help", cmd_help, usage_help},
};
#define N_COMMANDS ((int)(sizeof COMMANDS / sizeof COMMANDS[0]))

static const command *find_command(const char *name) {
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(COMMANDS[i].name, name) == 0) return &COMMANDS[i];
    return NULL;
}

static int cmd_help(int argc, char **argv) {
    if (argc <= 1) {
        usage_main(stdout);
        return CLI_EXIT_OK;
    }
    if (cli_is_help(argv[1])) {
        usage_help(stdout);
        return CLI_EXIT_OK;
    }
    if (argc > 2) return cli_usage_error("help", usage_help, "unexpected argument '%s'", argv[2]);
    const command *c = find_command(argv[1]);
    if (c) {
        c->usage(stdout);
        return CLI_EXIT_OK;
    }
    fprintf(stderr, "frugal help: unknown command '%s'\nRun 'frugal help' for the list of commands.\n", argv[1]);
    return CLI_EXIT_USAGE;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage_main(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (cli_is_help(name)) {
        usage_main(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("frugal %s\n", FRUGAL_VERSION);
        return CLI_EXIT_OK;
    }
    const command *c = find_command(name);
    if (c) {
        /* before the command starts any thread: see cli_signals.c. `serve` takes SIGINT and
         * SIGTERM itself (sigwait in its main thread), so it gets no watcher. */
        const int serve = c->run == cmd_serve;
        cli_signals_block(serve);
        if (!serve) cli_signals_start();
        return c->run(argc - 1, argv + 1);
    }
    fprintf(stderr, "frugal: unknown %s '%s'\nRun 'frugal help' for the list of commands.\n",
            name[0] == '-' ? "option" : "command", name);
    return CLI_EXIT_USAGE;
}
