/*
 * kgc_token.c - token format, checksum, hint and keyed hash (SPEC §3).
 */
#include "kgc_token.h"

#include <sodium.h>
#include <string.h>

static const char b62[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

uint32_t kgc_crc32(const void *buf, size_t len)
{
    static uint32_t table[256];
    static int ready;
    const unsigned char *p = buf;
    uint32_t crc = 0xFFFFFFFFu;

    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    for (size_t i = 0; i < len; i++)
        crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

/* Big-endian base62 of a byte string into exactly outlen characters,
 * zero-padded on the left. bytes is consumed (divided down to zero). */
static void base62_fixed(unsigned char *bytes, size_t n, char *out, size_t outlen)
{
    for (size_t pos = outlen; pos-- > 0;) {
        unsigned rem = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned cur = (rem << 8) | bytes[i];
            bytes[i] = (unsigned char)(cur / 62);
            rem = cur % 62;
        }
        out[pos] = b62[rem];
    }
}

static void crc_suffix(const char *s, size_t len, char *out)
{
    uint32_t crc = kgc_crc32(s, len);
    unsigned char be[4] = {(unsigned char)(crc >> 24), (unsigned char)(crc >> 16),
                           (unsigned char)(crc >> 8), (unsigned char)crc};
    base62_fixed(be, sizeof be, out, KGC_TOKEN_CRC_LEN);
}

void kgc_token_generate(char *out)
{
    unsigned char raw[32];

    randombytes_buf(raw, sizeof raw);
    memcpy(out, KGC_TOKEN_PREFIX, KGC_TOKEN_PREFIX_LEN);
    base62_fixed(raw, sizeof raw, out + KGC_TOKEN_PREFIX_LEN, KGC_TOKEN_BODY_LEN);
    sodium_memzero(raw, sizeof raw);
    crc_suffix(out, KGC_TOKEN_PREFIX_LEN + KGC_TOKEN_BODY_LEN,
               out + KGC_TOKEN_PREFIX_LEN + KGC_TOKEN_BODY_LEN);
    out[KGC_TOKEN_LEN] = '\0';
}

static int is_b62(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

int kgc_token_wellformed(const char *tok, size_t len)
{
    char want[KGC_TOKEN_CRC_LEN];
    int ok = 1;

    if (tok == NULL || len != KGC_TOKEN_LEN ||
        memcmp(tok, KGC_TOKEN_PREFIX, KGC_TOKEN_PREFIX_LEN) != 0)
        return 0;
    for (size_t i = KGC_TOKEN_PREFIX_LEN; i < len; i++)
        ok &= is_b62(tok[i]);
    crc_suffix(tok, KGC_TOKEN_PREFIX_LEN + KGC_TOKEN_BODY_LEN, want);
    ok &= sodium_memcmp(want, tok + KGC_TOKEN_PREFIX_LEN + KGC_TOKEN_BODY_LEN,
                        KGC_TOKEN_CRC_LEN) == 0;
    return ok;
}

void kgc_token_hint(const char *tok, size_t len, char *out)
{
    const char *body = tok + KGC_TOKEN_PREFIX_LEN;

    (void)len;
    /* "kg_" + 4 + U+2026 HORIZONTAL ELLIPSIS + last 4 of the whole token. */
    memcpy(out, KGC_TOKEN_PREFIX, KGC_TOKEN_PREFIX_LEN);
    memcpy(out + 3, body, 4);
    memcpy(out + 7, "\xE2\x80\xA6", 3);
    memcpy(out + 10, tok + KGC_TOKEN_LEN - 4, 4);
    out[14] = '\0';
}

int kgc_token_hash_hex(const unsigned char *pepper, const char *tok, size_t len,
                       char *hex)
{
    unsigned char h[KGC_HASH_LEN];

    if (crypto_generichash(h, sizeof h, (const unsigned char *)tok, len,
                           pepper, KGC_PEPPER_LEN) != 0)
        return -1;
    sodium_bin2hex(hex, KGC_HASH_HEX_LEN + 1, h, sizeof h);
    return 0;
}

void kgc_random_id(const char *prefix, size_t n, char *out)
{
    unsigned char buf[64];
    size_t p = strlen(prefix), got = 0;

    memcpy(out, prefix, p);
    /* One CSPRNG draw per 64 bytes (not per character); bytes >= 248 are
     * dropped so that every base62 digit is equally likely. */
    while (got < n) {
        randombytes_buf(buf, sizeof buf);
        for (size_t i = 0; i < sizeof buf && got < n; i++)
            if (buf[i] < 248)
                out[p + got++] = b62[buf[i] % 62];
    }
    out[p + n] = '\0';
}
