/*
 * xcommit_plan.h - the per-slot commands of a commit across slots, built
 * from one part of its plan (the JSON kept in the intent, see xcommit.h
 * and docs/redis-schema.md "Cross-slot commits"). Shared by keygated
 * (xcommit.c) and `keygate fsck --repair` (daemon/cli/cli_fsck_xc.c), so
 * both settle a commit with the very same EVALs. Only jansson: no store,
 * no event loop.
 *
 * Each builder returns a new command array ["EVAL", <lua>, <numkeys>,
 * marker, version keys..., args...] the caller json_decref's; part is
 * borrowed. The command goes to the master of the part's slot (every key
 * of it lies in that slot).
 */
#ifndef KG_XCOMMIT_PLAN_H
#define KG_XCOMMIT_PLAN_H

#include <jansson.h>
#include <stddef.h>

#define XC_VERSION_TTL "86400"    /* as job_int.h's VERSION_TTL */
#define XC_FENCE_TTL "60"         /* as job_int.h's TX_FENCE_TTL */
#define XC_STALE_MS 2000          /* a pending intent this old may be aborted by anyone */

/* 1 if the part writes (commands, versions to bump, claims): only such
 * parts are prepared, applied and rolled back; the others are validated. */
int xc_part_writes(json_t *part);

/* The builders below return NULL for a part they have nothing to do on. */

/* Step 2b, once every writing part is locked: the versions the part only
 * read still hold and are not locked. */
json_t *xc_validate_cmd(const char *txid, json_t *part);
/* Step 2: lock the part's written versions, check its claims, set its marker. */
json_t *xc_prepare_cmd(const char *txid, json_t *part);
/* Step 4: the part's writes, once (only while the marker is txid's). */
json_t *xc_apply_cmd(const char *txid, json_t *part);
/* Roll back: every lock of txid in the part put back to its old value. */
json_t *xc_rollback_cmd(const char *txid, json_t *part);

/* A version value that is a lock "L <txid> <old>": the txid holding it
 * into out[n], 1; else 0. */
int xc_lock_holder(const char *v, char *out, size_t n);

#endif
