/*
 * paging.c - the cursors of paging.h: strict decimal fields, nothing else.
 */
#include "paging.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A decimal field of s from *p up to the next '.' or the end: digits only,
 * no sign, no leading zero but "0", at most 19 digits. Advances *p past the
 * separator. 0 or -1. */
static int field_u(const char **p, unsigned long long *out)
{
    const char *s = *p;
    size_t n = 0;
    unsigned long long v = 0;

    while (s[n] >= '0' && s[n] <= '9')
        n++;
    if (n == 0 || n > 19 || (n > 1 && s[0] == '0') || (s[n] != '.' && s[n] != '\0'))
        return -1;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (unsigned long long)(s[i] - '0');
    *out = v;
    *p = s[n] == '.' ? s + n + 1 : s + n;
    return 0;
}

static int field_ll(const char **p, long long *out)
{
    unsigned long long v;

    if (field_u(p, &v) != 0 || v > (unsigned long long)INT64_MAX)
        return -1;
    *out = (long long)v;
    return 0;
}

/* Checks the "X1." prefix and returns what follows it, or NULL. */
static const char *prefix(const char *s, char kind)
{
    if (s == NULL || s[0] != kind || s[1] != '1' || s[2] != '.')
        return NULL;
    return s + 3;
}

void page_ledger_cursor(char *out, long long pos)
{
    snprintf(out, PAGE_CURSOR_MAX, "L1.%lld", pos);
}

int page_ledger_parse(const char *s, long long *pos)
{
    const char *p = prefix(s, 'L');

    return p != NULL && field_ll(&p, pos) == 0 && *p == '\0' && p[-1] != '.' ? 0 : -1;
}

void page_key_cursor(char *out, long long score, const char *key_id)
{
    snprintf(out, PAGE_CURSOR_MAX, "K1.%lld.%s", score, key_id);
}

int page_key_parse(const char *s, long long *score, char key_id[KGC_ID_MAX])
{
    const char *p = prefix(s, 'K');

    if (p == NULL || field_ll(&p, score) != 0 || p[-1] != '.' || !kgc_id_plausible(p))
        return -1;
    snprintf(key_id, KGC_ID_MAX, "%s", p);
    return 0;
}

void page_audit_cursor(char *out, const page_audit_pos *a)
{
    snprintf(out, PAGE_CURSOR_MAX, "A1.%llu.%llu.%lld.%d", a->ms, a->seq, a->n + 1, a->stream);
}

int page_audit_parse(const char *s, page_audit_pos *a)
{
    const char *p = prefix(s, 'A');
    unsigned long long st;

    if (p == NULL || field_u(&p, &a->ms) != 0 || p[-1] != '.' || field_u(&p, &a->seq) != 0 ||
        p[-1] != '.' || field_ll(&p, &a->n) != 0 || p[-1] != '.' || field_u(&p, &st) != 0 ||
        *p != '\0' || p[-1] == '.' || st > 1)
        return -1;
    a->n -= 1;                    /* stored +1: -1 (no sequence) is written 0 */
    a->stream = (int)st;
    return 0;
}

int page_audit_of(json_t *entry, int stream, page_audit_pos *a)
{
    const char *id = json_string_value(json_array_get(entry, 0));
    json_t *fv = json_array_get(entry, 1);
    char *end;

    if (id == NULL)
        return -1;
    errno = 0;
    a->ms = strtoull(id, &end, 10);
    if (*end != '-' || errno != 0)
        return -1;
    a->seq = strtoull(end + 1, &end, 10);
    if (*end != '\0' || errno != 0)
        return -1;
    a->n = -1;
    for (size_t i = 0; i + 1 < json_array_size(fv); i += 2) {
        json_t *f = json_array_get(fv, i), *v = json_array_get(fv, i + 1);
        if (json_is_string(f) && strcmp(json_string_value(f), "n") == 0 && json_is_string(v))
            a->n = strtoll(json_string_value(v), NULL, 10);
    }
    a->stream = stream;
    return 0;
}

/* The order of job.c's audit streams (model.c used it before paging):
 * the millisecond Redis gave the entry, then the daemon's sequence (one
 * run writes both streams), then the stream's own counter, then the stream. */
int page_audit_cmp(const page_audit_pos *a, const page_audit_pos *b)
{
    if (a->ms != b->ms)
        return a->ms > b->ms ? 1 : -1;
    if (a->n >= 0 && b->n >= 0 && a->n != b->n)
        return a->n > b->n ? 1 : -1;
    if (a->stream == b->stream && a->seq != b->seq)
        return a->seq > b->seq ? 1 : -1;
    if (a->stream != b->stream)
        return a->stream < b->stream ? 1 : -1;
    return 0;
}

void page_notif_cursor(char *out, long long at, uint64_t hash, long long k)
{
    snprintf(out, PAGE_CURSOR_MAX, "N1.%lld.%016" PRIx64 ".%lld", at, hash, k);
}

int page_notif_parse(const char *s, long long *at, uint64_t *hash, long long *k)
{
    const char *p = prefix(s, 'N');
    uint64_t h = 0;

    if (p == NULL || field_ll(&p, at) != 0 || p[-1] != '.')
        return -1;
    for (int i = 0; i < 16; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        h = h << 4 | (uint64_t)d;
    }
    if (p[16] != '.')
        return -1;
    p += 17;
    if (field_ll(&p, k) != 0 || *p != '\0' || p[-1] == '.')
        return -1;
    *hash = h;
    return 0;
}

uint64_t page_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}
