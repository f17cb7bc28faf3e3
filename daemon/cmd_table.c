/*
 * cmd_table.c - every admin command, one row each: name, handler, who may
 * call it (SPEC §1), what it acts on, and its arguments. job.c enforces the
 * rows; handlers hold only their command's own rules.
 */
#include "cmd.h"

#include <string.h>

job_step cmd_ping(job *j);
job_step cmd_user_signup(job *j);
void signup_prepare(job *j);
void signup_gate_reads(job *j, json_t *cmds);
int signup_gate_needs(job *j, json_t *replies);
job_step cmd_service_list(job *j);
job_step cmd_price_estimate(job *j);
job_step cmd_notification_list(job *j);
job_step cmd_team_get(job *j);
job_step cmd_team_member_add(job *j);
job_step cmd_team_member_set_role(job *j);
job_step cmd_team_member_remove(job *j);
job_step cmd_team_transfer_ownership(job *j);
job_step cmd_audit_list(job *j);
job_step cmd_key_create(job *j);
job_step cmd_key_list(job *j);
job_step cmd_key_get(job *j);
job_step cmd_key_update(job *j);
job_step cmd_key_users_set(job *j);
job_step cmd_key_services_set(job *j);
job_step cmd_key_revoke(job *j);
job_step cmd_token_generate(job *j);
job_step cmd_token_rotate(job *j);
job_step cmd_wallet_create(job *j);
job_step cmd_wallet_list(job *j);
job_step cmd_wallet_get(job *j);
job_step cmd_wallet_credit(job *j);
job_step cmd_wallet_ledger(job *j);
job_step cmd_wallet_alert_set(job *j);
job_step cmd_usage_summary(job *j);
job_step cmd_webhook_set(job *j);
job_step cmd_webhook_get(job *j);
job_step cmd_webhook_delete(job *j);
job_step cmd_webhook_deliveries(job *j);
job_step cmd_session_login(job *j);
job_step cmd_session_whoami(job *j);
job_step cmd_session_logout(job *j);

#define REQ 1
#define OPT 0

const cmd_def cmd_table[] = {
    {"ping", cmd_ping, NEED_NOBODY, SCOPE_NONE, 0, 0, {{0}}, NULL, NULL, NULL},
    {"user.signup", cmd_user_signup, NEED_NOBODY, SCOPE_NONE, 1, 0,
     {{"email", A_STR, REQ}, {"name", A_STR, REQ}, {"team_name", A_STR, OPT},
      {"password", A_STR, OPT}}, signup_prepare, signup_gate_reads, signup_gate_needs},
    {"service.list", cmd_service_list, NEED_NOBODY, SCOPE_NONE, 0, 0, {{0}}, NULL, NULL, NULL},
    {"price.estimate", cmd_price_estimate, NEED_NOBODY, SCOPE_NONE, 0, 0,
     {{"service", A_STR, REQ}, {"model", A_STR, OPT}, {"params", A_OBJ, REQ}}, NULL, NULL, NULL},
    {"notification.list", cmd_notification_list, NEED_USER, SCOPE_NONE, 0, 0,
     {{"limit", A_INT, OPT}, {"cursor", A_STR, OPT}}, NULL, NULL, NULL},

    {"team.get", cmd_team_get, NEED_MEMBER, SCOPE_TEAM, 0, 0,
     {{"team", A_STR, REQ}, {"limit", A_INT, OPT}, {"cursor", A_STR, OPT}}, NULL, NULL, NULL},
    {"team.member.add", cmd_team_member_add, NEED_ADMIN, SCOPE_TEAM, 1, 0,
     {{"team", A_STR, REQ}, {"user", A_STR, OPT}, {"email", A_STR, OPT}, {"role", A_STR, REQ}}, NULL, NULL, NULL},
    {"team.member.set_role", cmd_team_member_set_role, NEED_ADMIN, SCOPE_TEAM, 1, 0,
     {{"team", A_STR, REQ}, {"user", A_STR, REQ}, {"role", A_STR, REQ}}, NULL, NULL, NULL},
    {"team.member.remove", cmd_team_member_remove, NEED_ADMIN, SCOPE_TEAM, 1, 0,
     {{"team", A_STR, REQ}, {"user", A_STR, REQ}}, NULL, NULL, NULL},
    {"team.transfer_ownership", cmd_team_transfer_ownership, NEED_OWNER, SCOPE_TEAM, 1, 0,
     {{"team", A_STR, REQ}, {"user", A_STR, REQ}}, NULL, NULL, NULL},
    {"audit.list", cmd_audit_list, NEED_ADMIN, SCOPE_TEAM, 0, 0,
     {{"team", A_STR, REQ}, {"limit", A_INT, OPT}, {"only", A_STR, OPT}, {"cursor", A_STR, OPT}},
     NULL, NULL, NULL},

    {"key.create", cmd_key_create, NEED_ADMIN, SCOPE_TEAM, 1, 0,
     {{"team", A_STR, REQ}, {"name", A_STR, REQ}, {"description", A_STR, OPT},
      {"users", A_STRS, OPT}, {"services", A_OBJ, OPT}}, NULL, NULL, NULL},
    {"key.list", cmd_key_list, NEED_MEMBER, SCOPE_TEAM, 0, 0,
     {{"team", A_STR, REQ}, {"limit", A_INT, OPT}, {"cursor", A_STR, OPT},
      {"summary", A_BOOL, OPT}}, NULL, NULL, NULL},
    {"key.get", cmd_key_get, NEED_MEMBER, SCOPE_KEY, 0, 0, {{"key", A_STR, REQ}}, NULL, NULL, NULL},
    {"key.update", cmd_key_update, NEED_ADMIN, SCOPE_KEY, 1, 0,
     {{"key", A_STR, REQ}, {"name", A_STR, OPT}, {"description", A_STR, OPT}}, NULL, NULL, NULL},
    {"key.users.set", cmd_key_users_set, NEED_ADMIN, SCOPE_KEY, 1, 0,
     {{"key", A_STR, REQ}, {"users", A_STRS, REQ}, {"notify", A_BOOL, OPT}}, NULL, NULL, NULL},
    {"key.services.set", cmd_key_services_set, NEED_ADMIN, SCOPE_KEY, 1, 0,
     {{"key", A_STR, REQ}, {"services", A_OBJ, REQ}}, NULL, NULL, NULL},
    {"key.revoke", cmd_key_revoke, NEED_ADMIN, SCOPE_KEY, 1, 0, {{"key", A_STR, REQ}}, NULL, NULL, NULL},

    {"token.generate", cmd_token_generate, NEED_MEMBER, SCOPE_KEY, 1, 1, {{"key", A_STR, REQ}}, NULL, NULL, NULL},
    {"token.rotate", cmd_token_rotate, NEED_MEMBER, SCOPE_KEY, 1, 1,
     {{"key", A_STR, REQ}, {"user", A_STR, OPT}, {"grace_seconds", A_INT, OPT}}, NULL, NULL, NULL},

    {"wallet.create", cmd_wallet_create, NEED_ADMIN, SCOPE_TEAM, 1, 0,
     {{"team", A_STR, REQ}, {"name", A_STR, REQ}}, NULL, NULL, NULL},
    {"wallet.list", cmd_wallet_list, NEED_ADMIN, SCOPE_TEAM, 0, 0, {{"team", A_STR, REQ}}, NULL, NULL, NULL},
    {"wallet.get", cmd_wallet_get, NEED_ADMIN, SCOPE_WALLET, 0, 0, {{"wallet", A_STR, REQ}}, NULL, NULL, NULL},
    {"wallet.credit", cmd_wallet_credit, NEED_ADMIN, SCOPE_WALLET, 1, 0,
     {{"wallet", A_STR, REQ}, {"amount_micros", A_INT, REQ}, {"reference", A_STR, REQ}}, NULL, NULL, NULL},
    {"wallet.ledger", cmd_wallet_ledger, NEED_ADMIN, SCOPE_WALLET, 0, 0,
     {{"wallet", A_STR, REQ}, {"limit", A_INT, OPT}, {"cursor", A_STR, OPT}, {"key", A_STR, OPT},
      {"service", A_STR, OPT}, {"from", A_INT, OPT}, {"to", A_INT, OPT}}, NULL, NULL, NULL},
    {"wallet.alert.set", cmd_wallet_alert_set, NEED_ADMIN, SCOPE_WALLET, 1, 0,
     {{"wallet", A_STR, REQ}, {"threshold_micros", A_INT, REQ}}, NULL, NULL, NULL},

    /* Usage analytics (cmd_usage.c): read-only, owner and admin, as the ledger. */
    {"usage.summary", cmd_usage_summary, NEED_ADMIN, SCOPE_TEAM, 0, 0,
     {{"team", A_STR, REQ}, {"key", A_STR, OPT}, {"wallet", A_STR, OPT}, {"service", A_STR, OPT},
      {"model", A_STR, OPT}, {"from", A_INT, OPT}, {"to", A_INT, OPT}, {"granularity", A_STR, OPT}},
     NULL, NULL, NULL},

    /* Webhooks (cmd_webhook.c): the owner sets the URL and gets the secret. */
    {"webhook.set", cmd_webhook_set, NEED_OWNER, SCOPE_TEAM, 1, 1,
     {{"team", A_STR, REQ}, {"url", A_STR, REQ}, {"rotate_secret", A_BOOL, OPT}}, NULL, NULL, NULL},
    {"webhook.get", cmd_webhook_get, NEED_ADMIN, SCOPE_TEAM, 0, 0, {{"team", A_STR, REQ}}, NULL, NULL, NULL},
    {"webhook.delete", cmd_webhook_delete, NEED_OWNER, SCOPE_TEAM, 1, 0, {{"team", A_STR, REQ}}, NULL, NULL, NULL},
    {"webhook.deliveries", cmd_webhook_deliveries, NEED_ADMIN, SCOPE_TEAM, 0, 0,
     {{"team", A_STR, REQ}, {"limit", A_INT, OPT}}, NULL, NULL, NULL},

    /* The console's sign-in (cmd_session.c). They write no team state, so
     * they are not serialized with the mutating commands. */
    {"session.login", cmd_session_login, NEED_NOBODY, SCOPE_NONE, 0, 1,
     {{"email", A_STR, REQ}, {"password", A_STR, REQ}}, NULL, NULL, NULL},
    {"session.whoami", cmd_session_whoami, NEED_USER, SCOPE_NONE, 0, 0,
     {{"session", A_STR, OPT}}, NULL, NULL, NULL},
    {"session.logout", cmd_session_logout, NEED_USER, SCOPE_NONE, 0, 0,
     {{"session", A_STR, REQ}}, NULL, NULL, NULL},
    {NULL, NULL, 0, 0, 0, 0, {{0}}, NULL, NULL, NULL},
};

const cmd_def *cmd_find(const char *name)
{
    for (const cmd_def *d = cmd_table; d->name != NULL; d++)
        if (strcmp(d->name, name) == 0)
            return d;
    return NULL;
}
