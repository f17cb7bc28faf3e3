/*
 * cli_fsck_secrets.c - secrets in `keygate fsck`: looking for a plain token
 * (anything kgc_token_wellformed accepts) or the pepper (raw bytes, lower-
 * or upper-case hex) in every key name and value pass 1 reads, and keeping
 * both out of every report line (a token is shown by its hint only).
 */
#include "cli_fsck.h"

#include <stdio.h>
#include <string.h>

/* The display hint of the token at tok, in ASCII ("kg_AbCd...wXyZ"), so that
 * report lines stay plain ASCII. out[KGC_HINT_MAX]. */
static const char *hint_ascii(const char *tok, char *out)
{
    const char *body = tok + KGC_TOKEN_PREFIX_LEN;
    const char *end = tok + KGC_TOKEN_LEN;
    snprintf(out, KGC_HINT_MAX, "%s%.4s...%.4s", KGC_TOKEN_PREFIX, body, end - 4);
    return out;
}

/* A printable copy of s[0..len) into out[cap]: bytes outside printable
 * ASCII as \xNN, every well-formed token replaced by its hint and the
 * pepper (hex) by <pepper>, so that no report line carries a secret. */
const char *fsck_safe_text(const fsck *f, const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    const size_t hexlen = KGC_PEPPER_LEN * 2;

    for (size_t i = 0; i < len && o + 16 < cap;) {
        if (len - i >= KGC_TOKEN_LEN && memcmp(s + i, KGC_TOKEN_PREFIX, KGC_TOKEN_PREFIX_LEN) == 0 &&
            kgc_token_wellformed(s + i, KGC_TOKEN_LEN)) {
            char hint[KGC_HINT_MAX];
            o += (size_t)snprintf(out + o, cap - o, "<token %s>", hint_ascii(s + i, hint));
            i += KGC_TOKEN_LEN;
            continue;
        }
        if (f->sec != NULL && len - i >= hexlen &&
            (memcmp(s + i, f->sec->hex, hexlen) == 0 || memcmp(s + i, f->sec->HEX, hexlen) == 0)) {
            o += (size_t)snprintf(out + o, cap - o, "<pepper>");
            i += hexlen;
            continue;
        }
        unsigned char c = (unsigned char)s[i++];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    if (o >= cap)
        o = cap - 1;
    out[o] = '\0';
    return out;
}

void fsck_scan_value(fsck *f, const char *key, size_t keylen, const char *s, size_t len)
{
    const size_t hexlen = KGC_PEPPER_LEN * 2;

    f->n.values++;
    for (size_t i = 0; i + KGC_PEPPER_LEN <= len; i++) {
        if (memcmp(s + i, f->sec->pepper, KGC_PEPPER_LEN) == 0)
            fsck_problem(f, key, keylen, "holds the pepper (raw bytes)");
        if (len - i >= KGC_TOKEN_LEN && s[i] == 'k' &&
            memcmp(s + i, KGC_TOKEN_PREFIX, KGC_TOKEN_PREFIX_LEN) == 0 &&
            kgc_token_wellformed(s + i, KGC_TOKEN_LEN)) {
            char hint[KGC_HINT_MAX];
            fsck_problem(f, key, keylen, "holds a plain token (%s)", hint_ascii(s + i, hint));
        }
        if (len - i >= hexlen && (memcmp(s + i, f->sec->hex, hexlen) == 0 ||
                                  memcmp(s + i, f->sec->HEX, hexlen) == 0))
            fsck_problem(f, key, keylen, "holds the pepper (hex)");
    }
}

void fsck_scan_reply(fsck *f, const char *key, size_t keylen, const redisReply *r)
{
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
        fsck_scan_value(f, key, keylen, r->str, r->len);
    else if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++)
            fsck_scan_reply(f, key, keylen, r->element[i]);
}
