/*
 * spop.c - SPOP 2.0 encoding and decoding (see spop.h for the grammar).
 *
 * Decoders trust nothing: every length is checked against `end` before a
 * byte is read, varints are refused past 64 bits, and a list item of an
 * unknown type ends the decoding with an error (its size is unknowable).
 */
#include "spop.h"

#include <string.h>

/* ---- varint ("Peers encoding", SPOE.txt §3.1) ----------------------------
 *
 * Below 240 a value is one byte. Otherwise the first byte is 0xF0 | (the
 * value's low 4 bits), and (value - 240) >> 4 follows in groups of 7 bits,
 * low first, each but the last with bit 7 set; every group after the
 * first has had 128 taken off before the shift, which is why decoding is
 * a plain sum of (byte << shift).
 */
int spop_get_varint(const char **p, const char *end, uint64_t *v)
{
    const unsigned char *s = (const unsigned char *)*p;
    const unsigned char *e = (const unsigned char *)end;
    uint64_t val, add;
    unsigned shift = 4;

    if (s >= e)
        return -1;
    val = *s++;
    if (val >= 240) {
        for (;;) {
            if (s >= e || shift > 63)
                return -1;
            add = (uint64_t)*s << shift;
            if ((add >> shift) != *s || val + add < val)
                return -1;                      /* more than 64 bits */
            val += add;
            shift += 7;
            if (*s++ < 128)
                break;
        }
    }
    *p = (const char *)s;
    *v = val;
    return 0;
}

int spop_put_varint(char **p, char *end, uint64_t v)
{
    unsigned char *s = (unsigned char *)*p;
    unsigned char *e = (unsigned char *)end;

    if (s >= e)
        return -1;
    if (v < 240) {
        *s++ = (unsigned char)v;
        *p = (char *)s;
        return 0;
    }
    *s++ = (unsigned char)(v | 0xF0);
    v = (v - 240) >> 4;
    while (v >= 128) {
        if (s >= e)
            return -1;
        *s++ = (unsigned char)(v | 0x80);
        v = (v - 128) >> 7;
    }
    if (s >= e)
        return -1;
    *s++ = (unsigned char)v;
    *p = (char *)s;
    return 0;
}

/* ---- strings and typed data ------------------------------------------- */

int spop_get_string(const char **p, const char *end, const char **s, size_t *len)
{
    uint64_t n;

    if (spop_get_varint(p, end, &n) != 0 || n > (uint64_t)(end - *p))
        return -1;
    *s = *p;
    *len = (size_t)n;
    *p += n;
    return 0;
}

int spop_put_string(char **p, char *end, const char *s, size_t len)
{
    if (spop_put_varint(p, end, len) != 0 || len > (size_t)(end - *p))
        return -1;
    memcpy(*p, s, len);
    *p += len;
    return 0;
}

int spop_get_data(const char **p, const char *end, spop_data *d)
{
    unsigned char tb;
    uint64_t u;

    memset(d, 0, sizeof *d);
    if (*p >= end)
        return -1;
    tb = (unsigned char)*(*p)++;
    d->type = tb & 0x0F;
    switch (d->type) {
    case SPOP_DATA_NULL:
        return 0;
    case SPOP_DATA_BOOL:
        d->b = (tb & 0x10) != 0;
        return 0;
    case SPOP_DATA_INT32:
    case SPOP_DATA_INT64:
        if (spop_get_varint(p, end, &u) != 0)
            return -1;
        d->i = (int64_t)u;                      /* haproxy sends the two's complement */
        if (d->type == SPOP_DATA_INT32 && (d->i < INT32_MIN || d->i > INT32_MAX))
            return -1;
        return 0;
    case SPOP_DATA_UINT32:
    case SPOP_DATA_UINT64:
        if (spop_get_varint(p, end, &u) != 0)
            return -1;
        if (d->type == SPOP_DATA_UINT32 && u > UINT32_MAX)
            return -1;
        d->u = u;
        return 0;
    case SPOP_DATA_IPV4:
    case SPOP_DATA_IPV6:
        d->len = d->type == SPOP_DATA_IPV4 ? 4 : 16;
        if ((size_t)(end - *p) < d->len)
            return -1;
        d->ptr = *p;
        *p += d->len;
        return 0;
    case SPOP_DATA_STRING:
    case SPOP_DATA_BINARY:
        return spop_get_string(p, end, &d->ptr, &d->len);
    default:
        return -1;                              /* 10..15: reserved */
    }
}

int spop_skip_data(const char **p, const char *end)
{
    spop_data d;

    return spop_get_data(p, end, &d);
}

int spop_data_int64(const spop_data *d, int64_t *out)
{
    switch (d->type) {
    case SPOP_DATA_INT32:
    case SPOP_DATA_INT64:
        *out = d->i;
        return 0;
    case SPOP_DATA_UINT32:
    case SPOP_DATA_UINT64:
        if (d->u > INT64_MAX)
            return -1;
        *out = (int64_t)d->u;
        return 0;
    default:
        return -1;
    }
}

/* ---- frames ------------------------------------------------------------ */

int spop_get_frame(const char *buf, size_t len, spop_frame *f)
{
    const char *p = buf, *end = buf + len;

    if (len < 5)
        return -1;
    f->type = (unsigned char)p[0];
    f->flags = (uint32_t)(unsigned char)p[1] << 24 | (uint32_t)(unsigned char)p[2] << 16 |
               (uint32_t)(unsigned char)p[3] << 8 | (uint32_t)(unsigned char)p[4];
    p += 5;
    if (spop_get_varint(&p, end, &f->stream_id) != 0 ||
        spop_get_varint(&p, end, &f->frame_id) != 0)
        return -1;
    f->payload = p;
    f->end = end;
    return 0;
}

static int name_is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

int spop_get_hello(const spop_frame *f, spop_hello *h)
{
    const char *p = f->payload, *name;
    size_t nlen;
    spop_data d;

    memset(h, 0, sizeof *h);
    while (p < f->end) {
        if (spop_get_string(&p, f->end, &name, &nlen) != 0 ||
            spop_get_data(&p, f->end, &d) != 0)
            return SPOP_ERR_INVALID;
        if (name_is(name, nlen, "supported-versions")) {
            if (d.type != SPOP_DATA_STRING)
                return SPOP_ERR_INVALID;
            h->versions = d.ptr;
            h->versions_len = d.len;
        } else if (name_is(name, nlen, "capabilities")) {
            if (d.type != SPOP_DATA_STRING)
                return SPOP_ERR_INVALID;
            h->caps = d.ptr;
            h->caps_len = d.len;
        } else if (name_is(name, nlen, "max-frame-size")) {
            int64_t v;
            if (spop_data_int64(&d, &v) != 0 || v < 0)
                return SPOP_ERR_INVALID;
            h->max_frame_size = (uint64_t)v;
            h->has_max_frame_size = 1;
        } else if (name_is(name, nlen, "healthcheck")) {
            if (d.type != SPOP_DATA_BOOL)
                return SPOP_ERR_INVALID;
            h->healthcheck = d.b;
        }
        /* "engine-id" and items we do not know: ignored */
    }
    if (h->versions == NULL)
        return SPOP_ERR_NO_VSN;
    if (!h->has_max_frame_size)
        return SPOP_ERR_NO_FRAME_SIZE;
    if (h->caps == NULL)
        return SPOP_ERR_NO_CAP;
    return SPOP_ERR_NONE;
}

/* Calls each(item, len, arg) for every comma-separated item of s with its
 * spaces removed at both ends; stops at the first nonzero return. */
static int each_item(const char *s, size_t len, int (*each)(const char *, size_t, const void *),
                     const void *arg)
{
    const char *end = s + len;

    while (s < end) {
        const char *a = s, *b;
        while (s < end && *s != ',')
            s++;
        b = s;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (each(a, (size_t)(b - a), arg))
            return 1;
        if (s < end)
            s++;                                /* the comma */
    }
    return 0;
}

static int is_major(const char *v, size_t len, const void *arg)
{
    unsigned want = *(const unsigned *)arg, got = 0;
    size_t i = 0;

    if (len == 0 || v[0] < '0' || v[0] > '9')
        return 0;
    for (; i < len && v[i] >= '0' && v[i] <= '9' && got < 1000; i++)
        got = got * 10 + (unsigned)(v[i] - '0');
    /* "Major.Minor" */
    if (i >= len || v[i] != '.' || i + 1 >= len)
        return 0;
    for (size_t j = i + 1; j < len; j++)
        if (v[j] < '0' || v[j] > '9')
            return 0;
    return got == want;
}

int spop_has_major(const char *s, size_t len, unsigned major)
{
    return each_item(s, len, is_major, &major);
}

static int is_cap(const char *v, size_t len, const void *arg)
{
    return name_is(v, len, (const char *)arg);
}

int spop_has_cap(const char *s, size_t len, const char *cap)
{
    return each_item(s, len, is_cap, cap);
}

int spop_put_head(char **p, char *end, unsigned type, uint32_t flags,
                  uint64_t stream_id, uint64_t frame_id)
{
    unsigned char *s = (unsigned char *)*p;

    if (end - *p < 9)
        return -1;
    memset(s, 0, 4);                            /* the length, by spop_finish */
    s[4] = (unsigned char)type;
    s[5] = (unsigned char)(flags >> 24);
    s[6] = (unsigned char)(flags >> 16);
    s[7] = (unsigned char)(flags >> 8);
    s[8] = (unsigned char)flags;
    *p += 9;
    if (spop_put_varint(p, end, stream_id) != 0 || spop_put_varint(p, end, frame_id) != 0)
        return -1;
    return 0;
}

long spop_finish(char *buf, const char *p, uint32_t max_frame_size)
{
    size_t n = (size_t)(p - buf) - 4;
    unsigned char *s = (unsigned char *)buf;

    if (n > max_frame_size)
        return -1;
    s[0] = (unsigned char)(n >> 24);
    s[1] = (unsigned char)(n >> 16);
    s[2] = (unsigned char)(n >> 8);
    s[3] = (unsigned char)n;
    return (long)n + 4;
}

int spop_put_kv_string(char **p, char *end, const char *name, const char *val, size_t len)
{
    if (spop_put_string(p, end, name, strlen(name)) != 0 || *p >= end)
        return -1;
    *(*p)++ = SPOP_DATA_STRING;
    return spop_put_string(p, end, val, len);
}

int spop_put_kv_uint32(char **p, char *end, const char *name, uint32_t val)
{
    if (spop_put_string(p, end, name, strlen(name)) != 0 || *p >= end)
        return -1;
    *(*p)++ = SPOP_DATA_UINT32;
    return spop_put_varint(p, end, val);
}

/* <SET-VAR:1> <NB-ARGS:1 = 3> <SCOPE:1> <NAME:STRING> */
static int put_setvar_head(char **p, char *end, int scope, const char *name)
{
    if (end - *p < 3)
        return -1;
    *(*p)++ = SPOP_ACTION_SET_VAR;
    *(*p)++ = 3;
    *(*p)++ = (char)scope;
    return spop_put_string(p, end, name, strlen(name));
}

int spop_put_setvar_string(char **p, char *end, int scope, const char *name,
                           const char *val, size_t len)
{
    if (put_setvar_head(p, end, scope, name) != 0 || *p >= end)
        return -1;
    *(*p)++ = SPOP_DATA_STRING;
    return spop_put_string(p, end, val, len);
}

int spop_put_setvar_int64(char **p, char *end, int scope, const char *name, int64_t val)
{
    if (put_setvar_head(p, end, scope, name) != 0 || *p >= end)
        return -1;
    *(*p)++ = SPOP_DATA_INT64;
    return spop_put_varint(p, end, (uint64_t)val);
}

const char *spop_strerror(int code)
{
    static const char *const text[] = {
        [SPOP_ERR_NONE] = "normal",
        [SPOP_ERR_IO] = "I/O error",
        [SPOP_ERR_TIMEOUT] = "a timeout occurred",
        [SPOP_ERR_TOO_BIG] = "frame is too big",
        [SPOP_ERR_INVALID] = "invalid frame received",
        [SPOP_ERR_NO_VSN] = "version value not found",
        [SPOP_ERR_NO_FRAME_SIZE] = "max-frame-size value not found",
        [SPOP_ERR_NO_CAP] = "capabilities value not found",
        [SPOP_ERR_BAD_VSN] = "unsupported version",
        [SPOP_ERR_BAD_FRAME_SIZE] = "max-frame-size too big or too small",
        [SPOP_ERR_FRAG_NOT_SUPPORTED] = "payload fragmentation is not supported",
        [SPOP_ERR_INTERLACED_FRAMES] = "invalid interlaced frames",
        [SPOP_ERR_FRAMEID_NOTFOUND] = "frame-id not found",
        [SPOP_ERR_RES] = "resource allocation error",
    };

    if (code >= 0 && (size_t)code < sizeof text / sizeof text[0] && text[code] != NULL)
        return text[code];
    return "an unknown error occurred";
}
