/*
 * kgc_token.h - personal token format, checksum, hint and keyed hash.
 *
 * Format (SPEC §3, docs/redis-schema.md "Tokens"): "kg_" + 43 base62
 * characters encoding 32 random bytes (big-endian, zero-padded) + the 12
 * base62 characters of the team's id (t_<team12>) + 6 base62 characters of
 * the CRC32 of everything before them: 64 characters. The team part leads
 * a gateway to the team's slot ({t:<team>}) without a lookup; the CRC still
 * covers it, so a typo anywhere is refused offline. Tokens of the 52-
 * character format (no team part) are malformed: rotate them. Shared by
 * the daemon, the gateway module and the CLI.
 */
#ifndef KGC_TOKEN_H
#define KGC_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#define KGC_TOKEN_PREFIX     "kg_"
#define KGC_TOKEN_PREFIX_LEN 3
#define KGC_TOKEN_BODY_LEN   43   /* base62 of 32 bytes */
#define KGC_TOKEN_TEAM_LEN   12   /* the team id's base62 part (t_<these>) */
#define KGC_TOKEN_CRC_LEN    6    /* base62 of a CRC32 */
#define KGC_TOKEN_TEAM_AT    (KGC_TOKEN_PREFIX_LEN + KGC_TOKEN_BODY_LEN)
#define KGC_TOKEN_CRC_AT     (KGC_TOKEN_TEAM_AT + KGC_TOKEN_TEAM_LEN)
#define KGC_TOKEN_LEN        (KGC_TOKEN_CRC_AT + KGC_TOKEN_CRC_LEN)
#define KGC_HINT_MAX         32   /* "kg_" + 4 + "…" (3 bytes UTF-8) + 4 + NUL */
#define KGC_PEPPER_LEN       32
#define KGC_HASH_LEN         32   /* BLAKE2b-256 */
#define KGC_HASH_HEX_LEN     (KGC_HASH_LEN * 2)

/* CRC-32 (IEEE 802.3, the zlib polynomial) of buf. */
uint32_t kgc_crc32(const void *buf, size_t len);

/* Fills out[KGC_TOKEN_LEN + 1] with a fresh NUL-terminated token of team
 * team_id ("t_" + 12 base62) drawn from libsodium's CSPRNG. The caller
 * should keep out in secure memory and wipe it (sodium_memzero) when done.
 * Returns 0, or -1 (out untouched) if team_id has not that shape. */
int kgc_token_generate(const char *team_id, char *out);

/* Writes the team id ("t_" + 12) that a well-formed token names into
 * out[KGC_TOKEN_TEAM_LEN + 3]. Call only after kgc_token_wellformed. */
void kgc_token_team(const char *tok, char *out);

/* 1 if tok[0..len) has the token's exact shape and a valid checksum, else 0.
 * Touches no store: this is how a typo is rejected for free. Runs in time
 * independent of where the first difference lies. */
int kgc_token_wellformed(const char *tok, size_t len);

/* Writes the display hint ("kg_" + first 4 + "…" + last 4 of the body) of a
 * well-formed token into out[KGC_HINT_MAX]. */
void kgc_token_hint(const char *tok, size_t len, char *out);

/* BLAKE2b-256 of tok keyed with the pepper, as 64 lowercase hex characters
 * plus NUL into hex[KGC_HASH_HEX_LEN + 1]. Returns 0, or -1 on failure. */
int kgc_token_hash_hex(const unsigned char *pepper, const char *tok, size_t len,
                       char *hex);

/* Random identifier: prefix + n base62 characters, NUL-terminated, into out
 * (which must hold strlen(prefix) + n + 1 bytes). */
void kgc_random_id(const char *prefix, size_t n, char *out);

#endif
