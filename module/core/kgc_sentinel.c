/*
 * kgc_sentinel.c - the bounded look-up of kgc_sentinel.h (hiredis, blocking).
 */
#include "kgc_sentinel.h"
#include "kgc_auth.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static redisContext *dial(const char *host, int port, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(host, port, tv);

    if (c != NULL && !c->err && redisSetTimeout(c, tv) != REDIS_OK) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* 1 when host:port answers ROLE with "master", 0 when not (why says what
 * it said), -1 when it refused the config's AUTH (why has its answer):
 * that node holds the data, so it is sent AUTH first (kgc_auth.h). */
static int is_master(const kgc_config *cfg, const kgc_hostport *hp, int timeout_ms, char *why,
                     size_t whylen)
{
    redisContext *c = dial(hp->host, hp->port, timeout_ms);
    redisReply *r;
    int ok = 0;

    if (c == NULL || c->err) {
        snprintf(why, whylen, "%s", c ? c->errstr : "out of memory");
        redisFree(c);
        return 0;
    }
    if (kgc_auth_sync(c, cfg, why, whylen) != 0) {
        redisFree(c);
        return -1;
    }
    r = redisCommand(c, "ROLE");
    if (r == NULL)
        snprintf(why, whylen, "%s", c->errstr[0] ? c->errstr : "no reply");
    else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
             r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0)
        ok = 1;
    else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
             r->element[0]->type == REDIS_REPLY_STRING)
        snprintf(why, whylen, "ROLE says %s", r->element[0]->str);
    else
        snprintf(why, whylen, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "bad ROLE reply");
    if (r != NULL)
        freeReplyObject(r);
    redisFree(c);
    return ok;
}

int kgc_sentinel_resolve(const kgc_config *cfg, int timeout_ms, int *first, kgc_hostport *out,
                         char *err, size_t errlen)
{
    int n = cfg->nsentinels, start = (*first >= 0 && *first < n) ? *first : 0;
    int reached = 0, unknown = 0, denied = 0;
    char why[200] = "";

    if (n == 0) {
        snprintf(err, errlen, "no sentinel configured");
        return -1;
    }
    for (int k = 0; k < n; k++) {
        int i = (start + k) % n;
        const kgc_hostport *s = &cfg->sentinels[i];
        /* No AUTH here: sentinels usually run without ACL users, and the
         * config's credentials are the data nodes' (kgc_auth.h). */
        redisContext *c = dial(s->host, s->port, timeout_ms);
        redisReply *r;
        kgc_hostport hp;

        if (c == NULL || c->err) {
            redisFree(c);
            continue;
        }
        r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", cfg->sentinel_master);
        redisFree(c);
        if (r == NULL)
            continue;
        reached++;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING ||
            r->element[0]->len >= sizeof hp.host) {
            unknown++;
            freeReplyObject(r);
            continue;
        }
        memcpy(hp.host, r->element[0]->str, r->element[0]->len + 1);
        hp.port = atoi(r->element[1]->str);
        freeReplyObject(r);
        if (hp.port <= 0 || hp.port > 65535) {
            unknown++;
            continue;
        }
        switch (is_master(cfg, &hp, timeout_ms, why, sizeof why)) {
        case 1:
            break;
        case -1:
            denied = 1;         /* said apart below: a failover will not mend it */
            continue;
        default:
            denied = 0;
            continue;           /* mid-failover: another sentinel may know better */
        }
        *out = hp;
        *first = i;
        return 0;
    }
    if (reached == 0)
        snprintf(err, errlen, "sentinel: none of %d sentinels answered", n);
    else if (unknown == reached)
        snprintf(err, errlen, "sentinel: no sentinel knows master '%s'", cfg->sentinel_master);
    else if (denied)
        snprintf(err, errlen, "sentinel: master '%s': %s", cfg->sentinel_master, why);
    else
        snprintf(err, errlen, "sentinel: the address given for '%s' is not a master (%s)",
                 cfg->sentinel_master, why);
    return -1;
}

int kgc_sentinel_demoted(const char *errstr)
{
    return errstr != NULL && strncmp(errstr, "READONLY", 8) == 0;
}
