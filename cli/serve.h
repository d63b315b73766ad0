/* serve.h — pieces of `frugal serve` shared by cli/cmd_serve.c (HTTP front end on
 * libmicrohttpd), cli/serve_api.c (OpenAI request parsing and response bodies), cli/serve_sched.c (the scheduler thread that
 * owns the engine: continuous batching over --parallel slots) and cli/serve_web.c (the chat
 * page served at /). See docs/serve.md. */
#ifndef FR_SERVE_H
#define FR_SERVE_H

#include "frugal.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stddef.h>

#define SRV_MAX_STOPS 16
#define SRV_MAX_STOP_LEN 256

typedef enum { SRV_QUEUED = 0, SRV_RUNNING = 1, SRV_DONE = 2 } srv_state;

/* One completion request. Shared by the HTTP thread of its connection, the scheduler and
 * the streaming response; reference counted; every field below `state` is guarded by
 * srv_server.mu once the request is submitted. */
typedef struct srv_req {
    int refs;
    /* set before submission, read-only afterwards */
    int chat, stream, include_usage, ignore_eos, max_tokens;
    char id[40];
    long created;
    int *hist;       /* prompt tokens followed by room for max_tokens generated ones */
    int n_prompt;
    fr_sample_params sp;
    char *stops[SRV_MAX_STOPS];
    int n_stops;
    double t_submit;
    /* scheduler state */
    srv_state state;
    int cancelled;   /* client gone: the scheduler frees the slot at its next iteration */
    int rejected;    /* refused while queued (server draining): answered 503 */
    int slot, fed;   /* slot index while running; prompt tokens already in the cache */
    int n_gen;       /* generated tokens (hist + n_prompt) */
    size_t text_done;            /* bytes of the decoded completion already released */
    char *out;                   /* released completion text (never holds a stop string) */
    size_t out_len, out_cap;
    size_t *cuts;                /* end offset in out of each released piece (one per token) */
    int n_cuts, cap_cuts;
    const char *finish_reason;   /* "stop" / "length" when done */
    char *error;                 /* runtime failure message (done with an error) */
    double t_first, t_done;
    fr_sampler *sampler;
    struct srv_req *next;        /* queue link */
    /* streaming response state (only the response callback touches it) */
    size_t sent;                 /* bytes of out already sent as events */
    int sent_role, finished, sent_cuts;
    char *pend;                  /* formatted events not yet handed to MHD */
    size_t pend_len, pend_off;
} srv_req;

typedef struct {
    fr_engine *engine;
    fr_tokenizer *tok;
    const char *model_id;
    const char *api_key;     /* NULL: no key required */
    int parallel, ctx, vocab, eos_id;
    int *undecodable;        /* ids below vocab the tokenizer cannot decode, EOS included */
    int n_undecodable;
    int threads;             /* --threads (0 = OpenMP default), applied in the scheduler thread */
    long max_queue;
    size_t kv_bytes_per_token;
    double t_start;

    pthread_mutex_t mu;
    pthread_cond_t sched_cv;  /* wakes the scheduler: new request, cancellation, stop */
    pthread_cond_t out_cv;    /* wakes HTTP waiters: new text, request done, stop */
    pthread_t sched_thread;
    int sched_started, stopping;
    int draining;             /* SIGTERM: no new requests, queued ones refused, running ones finish */
    long open_reqs;           /* accepted completions whose response has not ended (HTTP side, mu) */
    srv_req *q_head, *q_tail;
    long q_len;
    long kv_tokens, active;   /* tokens cached in / requests holding the slots (scheduler, mu held) */
    srv_req **slots;
    fr_seq **seqs;
    float *logits;
    unsigned long long id_counter;

    /* metrics (under mu) */
    unsigned long http_status[600];
    unsigned long completions[2];          /* [0] /v1/completions, [1] /v1/chat/completions */
    unsigned long prompt_tokens, gen_tokens, decode_steps, batch_rows, forwards, disconnects,
        finished_reqs, failed_reqs;
    unsigned long prefix_reused;           /* prompt tokens a slot's cache already held (not computed) */
    double ttft_sum, duration_sum, forward_s, sample_s;
    unsigned long ttft_count;
    long rate_sec[16];                     /* generated tokens per wall-clock second (ring) */
    long rate_stamp[16];
} srv_server;

/* Scheduler (serve_sched.c). srv_sched_start creates the --parallel sequences and starts the
 * thread; srv_sched_stop stops and joins it and fails every request still queued or running. */
int srv_sched_start(srv_server *s);
void srv_sched_stop(srv_server *s);
/* Drain: refuse every queued request (state done, rejected, error "server shutting down");
 * running ones continue. Call with s->mu held. */
void srv_sched_reject_queued_locked(srv_server *s);
/* Queue a request (takes a reference). Returns 0, or -1 when the queue is full, -2 when the
 * server is stopping or draining. */
int srv_submit(srv_server *s, srv_req *r);
/* Reference counting; srv_req_unref frees at zero. Call with s->mu held. */
void srv_req_unref_locked(srv_req *r);
double srv_now(void);
/* Tokens/s over the last 10 whole seconds (mu held). */
double srv_tokens_per_s(srv_server *s);

/* The OpenAI API as JSON (serve_api.c). */
typedef struct {
    char msg[320];
    const char *param, *code;
    unsigned status;   /* HTTP status to answer with */
} srv_parse_err;
/* Build a request from a parsed body: checks every field, renders chat messages with the
 * model's template and tokenizes the prompt (s->tok, s->ctx, s->vocab). Returns NULL with *e
 * filled on error. */
srv_req *srv_parse_request(srv_server *s, const cJSON *root, int chat, srv_parse_err *e);
/* {"error": {"message", "type", "param", "code"}} (param and code may be NULL). */
cJSON *srv_error_object(const char *message, const char *type, const char *param, const char *code);
/* Non-streaming body (mu held, request done without error). */
cJSON *srv_final_body(const srv_server *s, const srv_req *r);
/* One streaming event: delta text (len bytes, may be 0), role (first chat event), finish;
 * "data: {...}\n\n", malloc'd. */
char *srv_stream_event(const srv_server *s, const srv_req *r, const char *text, size_t len, int role,
                       const char *finish, int usage_only);

/* The front door (serve_door.c): our listening socket and a thread that answers malformed
 * request heads with JSON errors and hands every other connection to libmicrohttpd. */
#define FR_DOOR_HEAD_CAP (64 * 1024)
typedef struct srv_door srv_door;
typedef struct {
    int max_pending;        /* connections whose first request head is still arriving */
    int per_ip;             /* of them from one address (0: no limit) */
    double head_timeout;    /* seconds a head may take */
    unsigned long long body_cap; /* Content-Length above this gets 413 */
    void (*log)(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* NULL: no log */
} srv_door_limits;
struct sockaddr;
struct MHD_Daemon;
/* Bind and listen on sa (port 0: any); *bound_port is the port. Returns 0 or an errno. */
int srv_door_open(srv_door **out, const struct sockaddr *sa, unsigned sa_len, unsigned *bound_port);
/* Start the door's thread, handing connections to mhd (started with MHD_USE_NO_LISTEN_SOCKET). */
int srv_door_start(srv_door *d, struct MHD_Daemon *mhd, const srv_door_limits *lim);
/* Stop accepting: join the thread, close the listening socket and the pending connections. */
void srv_door_close(srv_door *d);

/* The chat page (serve_web.c). */
extern const char srv_web_page[];

#endif
