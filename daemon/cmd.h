/*
 * cmd.h - the command table and the job that runs one admin command.
 *
 * Every admin command is one row of the table (cmd_table.c): its name, its
 * handler, who may call it, and the shape of its arguments. The engine
 * (job.c) checks the arguments, resolves the actor and the team the command
 * acts on, enforces the row's role in one place, then runs the handler in
 * stages: a handler queues reads and returns J_READ, sees their replies at
 * the next stage, and finally queues its writes (one MULTI/EXEC) and
 * returns J_WRITE, or answers with J_DONE / J_FAIL.
 *
 * Mutating commands are serializable: several run at once, optimistically.
 * Each remembers the Redis keys it read; before it decides (writes or
 * answers), the engine checks that no transaction sent after its reads
 * wrote one of those keys, and otherwise runs it again from the start.
 * Several keygated may serve one store: each key read has a version, read
 * with it, that the commit script checks (job_commit.c), so a commit that another
 * daemon's commit overtook writes nothing and the command runs again too.
 * Redis runs one connection's commands in order, so a read sent after a
 * transaction sees it (docs/redis-schema.md, "Atomicity"). Commands decide
 * in the order they arrived: one ready before an older one waits (parked)
 * and is checked again when its turn comes, so a client's pipelined
 * commands take effect in the order it sent them.
 */
#ifndef KG_CMD_H
#define KG_CMD_H

#include <jansson.h>

#include "app.h"
#include "kgc_keys.h"
#include "server.h"

typedef enum role_need {
    NEED_NOBODY = 0,   /* no actor */
    NEED_USER,         /* any existing user, no team */
    NEED_MEMBER,       /* member of the command's team */
    NEED_ADMIN,        /* owner or admin of it */
    NEED_OWNER         /* its owner */
} role_need;

typedef enum scope {
    SCOPE_NONE = 0,
    SCOPE_TEAM,        /* argument "team" */
    SCOPE_KEY,         /* argument "key": the team is in the id */
    SCOPE_WALLET       /* argument "wallet" */
} scope;

typedef enum arg_type { A_STR = 1, A_INT, A_BOOL, A_STRS, A_OBJ } arg_type;

typedef struct arg_rule {
    const char *name;
    arg_type type;
    int required;
} arg_rule;

typedef enum job_step { J_READ, J_WRITE, J_DONE, J_FAIL, J_WAIT } job_step;

/* Receives the answer envelope of a command (stolen). secret: it carries a
 * token, wipe its serialized form after sending. */
typedef void (*job_reply_fn)(void *ctx, json_t *response, int secret);

typedef struct cmd_def {
    const char *name;
    job_step (*run)(job *j);
    role_need role;
    scope scope;
    int mutates;                  /* queued; audited */
    int secret;                   /* result carries a token: wiped after sending */
    arg_rule args[8];
    /* Optional: CPU-heavy work that needs no store (Argon2id), run on the
     * worker thread before the command is started or queued, so that it
     * holds up neither the loop nor other mutations. Touches only the
     * request (read-only) and job_scratch. */
    void (*prepare)(job *j);
    /* Optional, with prepare: reads that tell whether prepare is needed at
     * all. gate_reads appends commands to cmds; gate_needs sees their
     * replies (array) and returns 1 to run prepare, 0 to queue the command
     * without it (sign-up: an email taken is refused before any hashing),
     * -1 after job_fail to answer that at once (a rate limit).
     * The handler must not rely on prepare having run. */
    void (*gate_reads)(job *j, json_t *cmds);
    int (*gate_needs)(job *j, json_t *replies);
} cmd_def;

struct job {
    app *app;
    const cmd_def *def;
    job_reply_fn reply;           /* where the answer goes */
    void *reply_ctx;
    json_t *req;                  /* the request object (owned) */
    peer_info peer;
    const char *actor_id;         /* borrowed from req (or own_actor); NULL for NEED_NOBODY */
    char own_actor[KGC_ID_MAX];   /* an actor the command made itself (user.signup) */
    json_t *actor;                /* actor's user document (owned) */
    char team_id[KGC_ID_MAX];     /* team the command acts on, "" if none */
    json_t *team;                 /* its document (owned), NULL if none */
    const char *role;             /* actor's role there, or NULL */
    int stage;                    /* 0 before the engine's reads, then 1, 2, ... */
    json_t *rq;                   /* reads queued for the next round */
    json_t *rr;                   /* replies of the handler's last reads */
    json_t *wq;                   /* writes of the transaction */
    json_t *pub;                  /* invalidation messages, published in it */
    json_t *result;               /* answer (owned) */
    const char *code;             /* error code once failed */
    char msg[300];
    char target[128];             /* audit target */
    int after_write;              /* run again after the writes, rr = EXEC replies */
    int not_durable;              /* the last commit was made but min_replicas_ack not met */
    int legacy_members;           /* the team document still holds "members" (model.c) */
    /* A command whose writes are too many for one commit (over
     * PAGE_BATCH_MAX keys) sends them as several, in order: the handler
     * sets more_commits with after_write before each J_WRITE but the last.
     * It stays undecided (the oldest active one: no other mutation decides
     * meanwhile), its reads are checked for conflicts before the first
     * commit only, and it is audited with the last one. Every state in
     * between must be valid on its own, and running the command again must
     * finish the job: after a commit, "unavailable" says part was done. */
    int more_commits;
    int commits_sent, commits_done;
    size_t fw_reads;              /* engine's reads at the head of round 1 */
    int decided;                  /* mutating: wrote or answered (left mut_active) */
    long long read_seq;           /* app wseq when its first reads were sent */
    double t_in;                  /* metrics_now() at arrival */
    json_t *readset;              /* key it read -> its version when read (string, null:
                                     none), true while that is not known yet */
    json_t *checked;              /* key -> version its last commit expects there: what an
                                     earlier commit of it checked or wrote */
    json_t *vread;                /* keys whose versions the next round reads */
    json_t *vsent;                /* ... and those of the round in flight, or NULL */
    json_t *claims;               /* key -> value of claims it holds (job_claim) */
    double t_read;                /* metrics_now() at its (last) start */
    char scope_team[KGC_ID_MAX];  /* team_id as dispatch found it (for a rerun) */
    int reruns;
    job *aprev, *anext;           /* in the app's list of active mutations */
    void *scratch;                /* handler's own state, freed with the job */
    int parked;                   /* ready to decide, waiting for older ones */
    int parked_rerun;             /* ... and to run again then (it met a lock) */
    char txid[24];                /* its commit script's fence, "" for MULTI */
    struct event *limbo;          /* reply lost: deadline for finding out */
    struct event *limbo_retry;    /* ... and the next question, after a refusal */
    char fence[KGC_RKEY_MAX];     /* its commit script's fence key (job_commit.c) */
    struct xc_plan *xplan;        /* a commit across slots, built, not yet run (xcommit.h) */
    int xtx;                      /* its last commit ran as cross-slot steps */
    int xsettling;                /* ... and its owner's settle is in flight (limbo) */
    json_t *xwrites;              /* ... the keys that commit writes, while it runs */
    struct event *later;          /* runs it again after a lock cleared (job.c) */
    int lock_tries;               /* locks of others it met (job_locked) */
    job *lnext;                   /* in the app's limbo list */
    job_step parked_step;
    job *next;                    /* in the mutation queue */
};

extern const cmd_def cmd_table[];
const cmd_def *cmd_find(const char *name);

/* Entry point from the admin socket: one request line. */
void job_dispatch(void *app, reqslot *rs, const char *line, size_t len, const peer_info *peer);

/* Runs one request object (stolen) from any front end (the socket, the
 * HTTP console). reply is called exactly once, now or later. */
void job_submit(app *a, json_t *req, const peer_info *peer, job_reply_fn reply, void *ctx);
/* One request line (not NUL-terminated) as job_submit runs it, or its
 * parse error answered. */
void job_line(app *a, const char *line, size_t len, const peer_info *peer, job_reply_fn reply,
              void *ctx);
/* Answers every queued job `unavailable` (shutdown). */
void job_abort_all(app *a);
/* After a reconnect: finds out whether the commands whose reply was lost
 * took effect, and answers them. */
void job_limbo_resolve(app *a);

/* --- for handlers ------------------------------------------------------ */
job_step job_fail(job *j, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Queue a read / a write: a command and its string arguments, NULL-ended. */
void job_read(job *j, const char *cmd, ...) __attribute__((sentinel));
/* Queue a read given as a JSON array of strings (stolen). */
void job_read_cmd(job *j, json_t *cmd);
void job_write(job *j, const char *cmd, ...) __attribute__((sentinel));
/* SET key <compact JSON of doc> (borrowed). */
void job_write_json(job *j, const char *key, json_t *doc);
void job_write_cmd(job *j, json_t *cmd);   /* takes cmd (an array of strings) */
void job_publish(job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The job holds a claim: key (a full Redis key name) holds value, set by
 * one of its reads (SET NX). Its commits write only while the claim still
 * holds that value (checked in the commit script); if the command fails
 * before a commit replaced it, the claim is released (deleted if it still
 * holds value). Kept across re-runs. */
void job_claim(job *j, const char *key, const char *value);
/* Runs work(arg) on the worker thread (CPU-heavy steps: Argon2id) and
 * returns J_WAIT; the handler runs again at the next stage when it is
 * done. work must touch nothing but arg; arg stays the caller's. */
job_step job_offload(job *j, void (*work)(void *arg), void *arg);

/* Handler scratch memory: zeroed at first, wiped (sodium_memzero) and freed
 * with the job; it survives re-runs (a prepare step's results live there).
 * Returns the same block for the same job. */
void *job_scratch(job *j, size_t size);

/* Reply i of the last read round (borrowed), or NULL. */
json_t *job_reply(job *j, size_t i);
/* Parses a stored JSON document of reply i (new reference) or NULL. */
json_t *job_reply_json(job *j, size_t i);
/* Redis key name: prefix + printf. Returned buffer is static, reused by the
 * next call: copy it (job_read/job_write do). */
const char *rk(job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const char *arg_str(job *j, const char *name);     /* NULL if absent */
json_t *arg(job *j, const char *name);             /* borrowed, NULL if absent */
long long now_ms(void);
int role_is_admin(const char *role);               /* owner or admin */

#endif
