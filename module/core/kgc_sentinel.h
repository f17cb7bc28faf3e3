/*
 * kgc_sentinel.h - finding the primary through Redis Sentinel.
 *
 * One blocking, bounded look-up shared by the daemon (store.c), libkeygate
 * (kg_link.c) and the CLI (fsck): the sentinels are asked in turn
 * (SENTINEL get-master-addr-by-name), starting with the one that answered
 * last time; the address given is then asked ROLE, and only a "master" is
 * accepted. That connection sends the config's AUTH first (kgc_auth.h); the
 * ones to the sentinels send none (sentinels usually have no ACL users). Every connect and every reply is bounded by timeout_ms, so the
 * whole call takes at most (nsentinels + 1) * 2 * timeout_ms. It is called
 * only when a connection to the store is (re)made, never per request.
 *
 * The three failures the Sentinel client guidelines keep apart are kept
 * apart in err: no sentinel answered; the sentinels do not know the master;
 * the address they gave is not (or no longer) a master. A fourth is not a
 * topology matter: the master refused AUTH ("sentinel: master 'NAME':
 * redis: AUTH refused: ...").
 */
#ifndef KGC_SENTINEL_H
#define KGC_SENTINEL_H

#include <stddef.h>

#include "kgc_config.h"

/* On success returns 0 with the primary in *out and *first set to the
 * index of the sentinel that answered (pass it back next time). Returns -1
 * with a message in err. */
int kgc_sentinel_resolve(const kgc_config *cfg, int timeout_ms, int *first, kgc_hostport *out,
                         char *err, size_t errlen);

/* 1 if a Redis error reply means "this node is not the primary any more"
 * (READONLY: a demoted primary; MASTERDOWN, NOREPLICAS are the store's
 * own refusals and are not). */
int kgc_sentinel_demoted(const char *errstr);

#endif
