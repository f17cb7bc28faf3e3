/*
 * job_int.h - what the parts of the command engine share (job.c: a
 * command's run; job_api.c: what handlers call; job_occ.c: conflicts
 * between mutating commands; job_commit.c: the fenced commit; job_limbo.c:
 * lost replies). Not for handlers: they use cmd.h.
 */
#ifndef KG_JOB_INT_H
#define KG_JOB_INT_H

#include "cmd.h"

#define AUDIT_REFUSED_KEEP "1000"  /* refusals kept (approximately): they never touch the accepted stream */
#define MUT_CONCURRENCY 32
#define TX_FENCE_TTL "60"          /* seconds a commit's fence is kept: well past LIMBO_WAIT_S */
#define LIMBO_WAIT_S 5             /* how long a lost reply is looked into */
/* A version lives this long after its key's last write. Versions are commit
 * ids, never reused, so one that expired reads as "none" and can only make
 * a commit fail (moved), never pass wrongly, unless a command ran longer
 * than the TTL between its read and its commit: VERSION_MAX_AGE_S refuses
 * that (a command lives seconds: store timeouts). */
#define VERSION_TTL "86400"
#define VERSION_MAX_AGE_S 3600.0
#define COMMIT_MOVED 2             /* commit_lua: a version moved, nothing written */


/* job.c */
void job_advance(job *j, job_step step);   /* acts on what a stage returned */
void job_start(job *j);                    /* its first stage */
void job_rerun(job *j);                    /* again from the start (a conflict) */
void job_finish(job *j);                   /* answers, audits, frees */
void job_free(job *j);
/* The first error reply among a round's replies, at any depth, or NULL. */
const char *job_first_error(const json_t *replies);

/* job_api.c */
void job_scratch_free(job *j);
const char *job_type_name(arg_type t);
int job_type_ok(arg_type t, json_t *v);

/* job_occ.c */
/* Calls fn(arg, key) for each Redis key the command cmd names. */
void job_cmd_keys(json_t *cmd, void (*fn)(void *arg, const char *key), void *arg);
/* The version key of key (P v:<key>, in key's slot on a cluster). */
void job_version_key(const app *a, const char *key, char out[KGC_RKEY_MAX]);
void job_note_read(job *j, json_t *cmd);       /* the keys j's read names */
void job_note_writes(app *a, json_t *cmds);    /* the keys a commit writes */
int job_conflicts(job *j);                     /* 1: a key j read was written since */
void job_decided(job *j);                      /* j is out of the running */
void job_mut_pump(app *a);                     /* starts queued mutations while there is room */

/* job_commit.c */
void job_append_audit(job *j, json_t *cmds);   /* the audit entry's commands */
/* j's writes q as one fenced commit (a script; or xcommit.h's plan). */
json_t *job_commit_wrap(job *j, json_t *q);

/* job_limbo.c */
void job_limbo_add(job *j);                    /* a commit's reply was lost: find out */
void job_limbo_later(job *j);                  /* ask again shortly */

#endif
