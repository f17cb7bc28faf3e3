/*
 * kgc_auth.c - AUTH with the config's Redis ACL credentials (kgc_auth.h).
 */
#include "kgc_auth.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

int kgc_auth_argv(const kgc_config *cfg, const char *argv[3], size_t argvlen[3])
{
    int n = 0;

    if (cfg == NULL || cfg->redis_password[0] == '\0')
        return 0;
    argv[n] = "AUTH";
    argvlen[n++] = 4;
    if (cfg->redis_user[0] != '\0') {
        argv[n] = cfg->redis_user;
        argvlen[n++] = strlen(cfg->redis_user);
    }
    argv[n] = cfg->redis_password;
    argvlen[n++] = strlen(cfg->redis_password);
    return n;
}

int kgc_auth_sync(redisContext *c, const kgc_config *cfg, char *err, size_t errlen)
{
    const char *argv[3];
    size_t argvlen[3];
    char *cmd = NULL;
    void *reply = NULL;
    redisReply *r;
    int argc = kgc_auth_argv(cfg, argv, argvlen), len, rc = -1;

    if (argc == 0)
        return 0;
    if (c == NULL || c->err) {
        snprintf(err, errlen, "redis: AUTH: %s", c != NULL ? c->errstr : "out of memory");
        return -1;
    }
    /* Formatted here so that our copy of the password can be wiped; the
     * one in hiredis' output buffer is beyond reach (sds, freed as is). */
    if ((len = redisFormatCommandArgv(&cmd, argc, argv, argvlen)) < 0) {
        snprintf(err, errlen, "redis: AUTH: out of memory");
        return -1;
    }
    if (redisAppendFormattedCommand(c, cmd, (size_t)len) != REDIS_OK ||
        redisGetReply(c, &reply) != REDIS_OK || reply == NULL) {
        snprintf(err, errlen, "redis: AUTH: %s", c->errstr[0] ? c->errstr : "no reply");
    } else {
        r = reply;
        if (r->type == REDIS_REPLY_STATUS)
            rc = 0;
        else if (r->type == REDIS_REPLY_ERROR)
            snprintf(err, errlen, "redis: AUTH refused: %.300s", r->str);
        else
            snprintf(err, errlen, "redis: AUTH refused: unexpected reply type %d", r->type);
    }
    sodium_memzero(cmd, (size_t)len);
    redisFreeCommand(cmd);
    freeReplyObject(reply);
    return rc;
}
