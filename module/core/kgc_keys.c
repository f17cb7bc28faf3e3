/*
 * kgc_keys.c - Redis key names and object ids.
 */
#include "kgc_keys.h"
#include "kgc_token.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void kgc_id_user(char *out)  { kgc_random_id("u_", 16, out); }
void kgc_id_team(char *out)  { kgc_random_id("t_", KGC_ID_TEAM_RAND, out); }
void kgc_id_token(char *out) { kgc_random_id("tk_", 12, out); }

static void id_in_team(char kind, const char *team_id, char *out)
{
    char own[KGC_ID_OWN_RAND + 1];

    kgc_random_id("", KGC_ID_OWN_RAND, own);
    snprintf(out, KGC_ID_MAX, "%c_%s%s", kind, team_id + 2, own);
}

void kgc_id_key(const char *team_id, char *out)    { id_in_team('k', team_id, out); }
void kgc_id_wallet(const char *team_id, char *out) { id_in_team('w', team_id, out); }

int kgc_id_plausible(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= KGC_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return 1;
}

int kgc_id_team_of(const char *id, char kind, char *out)
{
    if (!kgc_id_plausible(id) || id[0] != kind || id[1] != '_' ||
        strlen(id) != 2 + KGC_ID_TEAM_RAND + KGC_ID_OWN_RAND)
        return -1;
    /* on every paid request (kg_flow.c decide): memcpy, not snprintf */
    memcpy(out, "t_", 2);
    memcpy(out + 2, id + 2, KGC_ID_TEAM_RAND);
    out[2 + KGC_ID_TEAM_RAND] = '\0';
    return 0;
}

int kgc_rkey(char *out, const char *prefix, const char *fmt, ...)
{
    va_list ap;
    int p = snprintf(out, KGC_RKEY_MAX, "%s", prefix), n;

    if (p < 0 || p >= KGC_RKEY_MAX)
        return -1;
    va_start(ap, fmt);
    n = vsnprintf(out + p, KGC_RKEY_MAX - (size_t)p, fmt, ap);
    va_end(ap);
    if (n < 0 || p + n >= KGC_RKEY_MAX)
        return -1;
    return p + n;
}
