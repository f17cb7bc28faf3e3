/* Token format, checksum rejection, hint, keyed hash and ids (SPEC §3). */
#include "check.h"
#include "kgc_keys.h"
#include "kgc_token.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define TEAM "t_Ab3dEf9hIj0L"

static void test_generated_tokens_are_wellformed_and_distinct(void)
{
    char a[KGC_TOKEN_LEN + 1], b[KGC_TOKEN_LEN + 1];

    for (int i = 0; i < 2000; i++) {
        CHECK(kgc_token_generate(TEAM, a) == 0);
        CHECK(strlen(a) == KGC_TOKEN_LEN);
        CHECK(strncmp(a, "kg_", 3) == 0);
        CHECK(kgc_token_wellformed(a, strlen(a)));
    }
    CHECK(kgc_token_generate(TEAM, b) == 0);
    CHECK(strcmp(a, b) != 0);
}

static void test_the_token_names_its_team(void)
{
    char t[KGC_TOKEN_LEN + 1], team[KGC_ID_MAX], old[KGC_TOKEN_LEN + 1];

    CHECK(KGC_TOKEN_LEN == 64);
    CHECK(kgc_token_generate(TEAM, t) == 0);
    kgc_token_team(t, team);
    CHECK(strcmp(team, TEAM) == 0);
    CHECK(memcmp(t + KGC_TOKEN_TEAM_AT, TEAM + 2, 12) == 0);
    /* Not a team id: refused, nothing written. */
    memset(old, 'x', sizeof old);
    CHECK(kgc_token_generate("t_short", old) == -1);
    CHECK(kgc_token_generate("u_Ab3dEf9hIj0L", old) == -1);
    CHECK(kgc_token_generate("t_Ab3dEf9hIj0!", old) == -1);
    CHECK(kgc_token_generate(NULL, old) == -1);
    CHECK(old[0] == 'x');
    /* The old 52-character format (no team part, CRC over kg_ + 43) is
     * malformed now, even with a right checksum of its own. */
    {
        char o[53];
        uint32_t crc;
        static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        memcpy(o, t, 46);
        crc = kgc_crc32(o, 46);
        for (int i = 5; i >= 0; i--) {
            o[46 + i] = b62[crc % 62];
            crc /= 62;
        }
        o[52] = '\0';
        CHECK(!kgc_token_wellformed(o, 52));
    }
    /* Another team in a token changes its checksum: not a valid token. */
    memcpy(t + KGC_TOKEN_TEAM_AT, "Zb3dEf9hIj0L", 12);
    CHECK(!kgc_token_wellformed(t, KGC_TOKEN_LEN));
}

static void test_every_single_typo_is_rejected(void)
{
    static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    char t[KGC_TOKEN_LEN + 1];

    CHECK(kgc_token_generate(TEAM, t) == 0);
    for (size_t pos = 0; pos < KGC_TOKEN_LEN; pos++) {
        char orig = t[pos];
        for (size_t k = 0; k < sizeof alphabet - 1; k++) {
            if (alphabet[k] == orig)
                continue;
            t[pos] = alphabet[k];
            CHECK(!kgc_token_wellformed(t, KGC_TOKEN_LEN));
        }
        t[pos] = orig;
    }
    /* A swap of two adjacent different characters is caught as well. */
    for (size_t pos = 3; pos + 1 < KGC_TOKEN_LEN; pos++) {
        if (t[pos] == t[pos + 1])
            continue;
        char x = t[pos]; t[pos] = t[pos + 1]; t[pos + 1] = x;
        CHECK(!kgc_token_wellformed(t, KGC_TOKEN_LEN));
        x = t[pos]; t[pos] = t[pos + 1]; t[pos + 1] = x;
    }
    CHECK(kgc_token_wellformed(t, KGC_TOKEN_LEN));
}

static void test_bad_shapes_are_rejected(void)
{
    char t[KGC_TOKEN_LEN + 2];

    CHECK(kgc_token_generate(TEAM, t) == 0);
    CHECK(!kgc_token_wellformed(t, KGC_TOKEN_LEN - 1));
    CHECK(!kgc_token_wellformed(NULL, 0));
    CHECK(!kgc_token_wellformed("", 0));
    t[KGC_TOKEN_LEN] = 'x';
    CHECK(!kgc_token_wellformed(t, KGC_TOKEN_LEN + 1));
    t[KGC_TOKEN_LEN] = '\0';
    t[0] = 'K';
    CHECK(!kgc_token_wellformed(t, KGC_TOKEN_LEN));
    CHECK(!kgc_token_wellformed("kg_", 3));
    CHECK(!kgc_token_wellformed("Bearer kg_abc", 13));
}

static void test_hint_shows_prefix_first_and_last_four(void)
{
    char t[KGC_TOKEN_LEN + 1], hint[KGC_HINT_MAX], want[KGC_HINT_MAX];

    CHECK(kgc_token_generate(TEAM, t) == 0);
    kgc_token_hint(t, KGC_TOKEN_LEN, hint);
    snprintf(want, sizeof want, "kg_%.4s\xE2\x80\xA6%s", t + 3, t + KGC_TOKEN_LEN - 4);
    CHECK(strcmp(hint, want) == 0);
    CHECK(strstr(hint, t + 7) == NULL);
}

static void test_hash_is_keyed_and_deterministic(void)
{
    unsigned char p1[KGC_PEPPER_LEN], p2[KGC_PEPPER_LEN];
    char t[KGC_TOKEN_LEN + 1], h1[65], h2[65], h3[65];

    randombytes_buf(p1, sizeof p1);
    memcpy(p2, p1, sizeof p2);
    p2[0] ^= 1;
    CHECK(kgc_token_generate(TEAM, t) == 0);
    CHECK(kgc_token_hash_hex(p1, t, KGC_TOKEN_LEN, h1) == 0);
    CHECK(kgc_token_hash_hex(p1, t, KGC_TOKEN_LEN, h2) == 0);
    CHECK(kgc_token_hash_hex(p2, t, KGC_TOKEN_LEN, h3) == 0);
    CHECK(strlen(h1) == 64);
    CHECK(strcmp(h1, h2) == 0);
    CHECK(strcmp(h1, h3) != 0);
    CHECK(strstr(h1, t) == NULL);
}

static void test_crc32_matches_the_standard_check_value(void)
{
    CHECK_EQ_LL(kgc_crc32("123456789", 9), 0xCBF43926LL);
}

static void test_ids_carry_their_team(void)
{
    char t[KGC_ID_MAX], k[KGC_ID_MAX], w[KGC_ID_MAX], back[KGC_ID_MAX];

    kgc_id_team(t);
    kgc_id_key(t, k);
    kgc_id_wallet(t, w);
    CHECK(kgc_id_team_of(k, 'k', back) == 0 && strcmp(back, t) == 0);
    CHECK(kgc_id_team_of(w, 'w', back) == 0 && strcmp(back, t) == 0);
    CHECK(kgc_id_team_of(k, 'w', back) != 0);
    CHECK(kgc_id_team_of("k_short", 'k', back) != 0);
    CHECK(kgc_id_team_of("k_{t:x}:evil_injection", 'k', back) != 0);
    CHECK(!kgc_id_plausible("a b"));
    CHECK(!kgc_id_plausible(""));
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    test_generated_tokens_are_wellformed_and_distinct();
    test_the_token_names_its_team();
    test_every_single_typo_is_rejected();
    test_bad_shapes_are_rejected();
    test_hint_shows_prefix_first_and_last_four();
    test_hash_is_keyed_and_deterministic();
    test_crc32_matches_the_standard_check_value();
    test_ids_carry_their_team();
    return CHECK_DONE();
}
