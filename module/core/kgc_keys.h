/*
 * kgc_keys.h - Redis key names and object ids (docs/redis-schema.md).
 *
 * Every key of one team carries the hash tag "{t:<team_id>}" so that each
 * script touches one slot. Key and wallet ids embed their team's id, so the
 * team (and so the slot) of any id is known without a lookup.
 */
#ifndef KGC_KEYS_H
#define KGC_KEYS_H

#include <stddef.h>

#define KGC_ID_TEAM_RAND 12
#define KGC_ID_OWN_RAND  8
#define KGC_ID_MAX       40
#define KGC_RKEY_MAX     512

/* New ids: "u_" + 16, "t_" + 12, "k_"/"w_" + team's 12 + 8, "tk_" + 12. */
void kgc_id_user(char *out);
void kgc_id_team(char *out);
void kgc_id_key(const char *team_id, char *out);
void kgc_id_wallet(const char *team_id, char *out);
void kgc_id_token(char *out);

/* Writes the team id that key or wallet id `id` (prefix 'k' or 'w') belongs
 * to into out[KGC_ID_MAX]. Returns 0, or -1 if id has not that shape. */
int kgc_id_team_of(const char *id, char kind, char *out);

/* 1 if s is a plausible id: 1..KGC_ID_MAX-1 of [A-Za-z0-9_]. */
int kgc_id_plausible(const char *s);

/* Formats prefix + name into out[KGC_RKEY_MAX]; printf-style name.
 * Returns the length, or -1 if it did not fit. */
int kgc_rkey(char *out, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Name shapes, to be used with kgc_rkey (team id first where there is one):
 *   KGC_RK_TEAM      "{t:%s}:team"             JSON team document
 *   KGC_RK_MEMBERS   "{t:%s}:members"          hash user_id -> role
 *   KGC_RK_KEYS      "{t:%s}:keys"             zset key_id by created ms
 *   KGC_RK_USERKEYS  "{t:%s}:ukeys:%s"         zset: the keys a member is a user of, by created ms
 *   KGC_RK_KEY       "{t:%s}:key:%s"           JSON key document
 *   KGC_RK_WALLETS   "{t:%s}:wallets"          zset wallet_id by created ms
 *   KGC_RK_WALLET    "{t:%s}:wallet:%s"        hash (balance_micros, ...)
 *   KGC_RK_LEDGER    "{t:%s}:ledger:%s"        list of JSON entries, newest first
 *   KGC_RK_CREDIT    "{t:%s}:credit:%s:%s"     credit idempotency (wallet, ref hash)
 *   KGC_RK_REQ       "{t:%s}:req:%s:%s"        debit idempotency (key, request id)
 *   KGC_RK_HOLDS     "{t:%s}:holds:%s"         hash: open holds of a wallet ("<kid> <rid>" -> amount user service model)
 *   KGC_RK_HOLDEXP   "{t:%s}:holdexp:%s"       zset: the same holds by expiry (ms)
 *   KGC_RK_LEASE     "{t:%s}:lease:%s"         hash: leases of a wallet (lease id -> micros), issue 14
 *   KGC_RK_LEASEEXP  "{t:%s}:leaseexp:%s"      zset: the same leases by expiry (ms)
 *   KGC_RK_LEASESEQ  "{t:%s}:leaseseq:%s"      hash: lease id -> highest journal seq charged
 *   KGC_RK_QUOTA     "{t:%s}:quota:%s:%s"      free requests of the team (service, yyyymmdd)
 *   KGC_RK_SPEND_DAY "{t:%s}:spend:%s:d:%s"    a key's spend that UTC day (micros), while budgeted
 *   KGC_RK_SPEND_MONTH "{t:%s}:spend:%s:m:%s"  a key's spend that month (yyyymm), while budgeted
 *   KGC_RK_RATE      "{t:%s}:rate:%s:%s"       zset: a key's admitted requests of a service, last 60 s (1 s)
 *   KGC_RK_USAGE_DAY "{t:%s}:usage:d:%s"       hash: the team's usage that UTC day (yyyymmdd), 400 days
 *   KGC_RK_USAGE_HOUR "{t:%s}:usage:h:%s"      hash: the team's usage that UTC hour (yyyymmddhh), 14 days
 *   KGC_RK_AUDIT     "{t:%s}:audit"            stream of accepted changes (field e: JSON), kept by time
 *   KGC_RK_AUDIT_REFUSED "{t:%s}:refused:audit" stream of refused mutations, kept by count
 *   KGC_RK_TOKEN     "{t:%s}:tok:%s"           hash: key_id team_id user_id token_id expires_ms
 *   KGC_RK_USER      "user:%s"                 JSON user document
 *   KGC_RK_EMAIL     "email:%s"                user id by lower-cased email; while a
 *                                              sign-up holds it, KGC_EMAIL_CLAIM + user id, with a TTL
 *   KGC_RK_NOTIF     "notif:%s"                list of JSON notifications
 *   KGC_RK_USERTEAMS "uteams:%s"               set of the team ids a user belongs to
 *   KGC_RK_SESSION   "session:%s"              console session (keyed hash of its id), expires
 *   KGC_RK_LOGINFAIL "loginfail:%s"            console sign-in attempts per lower-cased email
 *   KGC_RK_SIGNUPRATE "signuprate:%s"          console sign-ups per client address, a minute
 *   KGC_RK_CATALOG   "catalog"                 the catalog JSON the daemon loaded
 *   KGC_RK_CHANNEL   "inval"                   pub/sub channel of invalidations
 */
#define KGC_RK_TEAM    "{t:%s}:team"
#define KGC_RK_MEMBERS "{t:%s}:members"
#define KGC_RK_KEYS    "{t:%s}:keys"
#define KGC_RK_USERKEYS "{t:%s}:ukeys:%s"
#define KGC_RK_KEY     "{t:%s}:key:%s"
#define KGC_RK_WALLETS "{t:%s}:wallets"
#define KGC_RK_WALLET  "{t:%s}:wallet:%s"
#define KGC_RK_LEDGER  "{t:%s}:ledger:%s"
#define KGC_RK_CREDIT  "{t:%s}:credit:%s:%s"
#define KGC_RK_REQ     "{t:%s}:req:%s:%s"
#define KGC_RK_HOLDS   "{t:%s}:holds:%s"
#define KGC_RK_HOLDEXP "{t:%s}:holdexp:%s"
#define KGC_RK_LEASE    "{t:%s}:lease:%s"
#define KGC_RK_LEASEEXP "{t:%s}:leaseexp:%s"
#define KGC_RK_LEASESEQ "{t:%s}:leaseseq:%s"
#define KGC_RK_QUOTA   "{t:%s}:quota:%s:%s"
#define KGC_RK_SPEND_DAY   "{t:%s}:spend:%s:d:%s"
#define KGC_RK_SPEND_MONTH "{t:%s}:spend:%s:m:%s"
#define KGC_RK_RATE        "{t:%s}:rate:%s:%s"
#define KGC_RK_USAGE_DAY   "{t:%s}:usage:d:%s"
#define KGC_RK_USAGE_HOUR  "{t:%s}:usage:h:%s"
#define KGC_RK_AUDIT   "{t:%s}:audit"
#define KGC_RK_AUDIT_REFUSED "{t:%s}:refused:audit"
#define KGC_RK_TOKEN   "{t:%s}:tok:%s"
#define KGC_RK_USER    "user:%s"
#define KGC_RK_EMAIL   "email:%s"
#define KGC_EMAIL_CLAIM "claim "   /* value of an email claimed by a sign-up in progress */
#define KGC_RK_NOTIF   "notif:%s"
#define KGC_RK_USERTEAMS "uteams:%s"
#define KGC_RK_SESSION   "session:%s"
#define KGC_RK_LOGINFAIL "loginfail:%s"
#define KGC_RK_SIGNUPRATE "signuprate:%s"
#define KGC_RK_CATALOG "catalog"
#define KGC_RK_CHANNEL "inval"

#endif
