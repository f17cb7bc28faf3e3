// wallets.js - the Wallets tab (owners and admins): balances (and what
// gateways hold for unsettled requests), top-ups, low-balance alerts, each
// wallet's ledger with the debits per key, service and model, and the
// team's webhook with its deliveries (docs/protocol.md, "Low-balance
// alerts and webhooks").
import { call } from './api.js';
import { el, clear, icon, field, openDialog, confirmDialog, secretDialog, toast, describe, money, parseMoney, when,
  randomRef } from './ui.js';
import { spendChart } from './charts.js';

export async function renderWallets(ctx, panel) {
  clear(panel, el('p', { class: 'muted', text: 'Loading wallets…' }));
  let wallets;
  try {
    wallets = (await call('wallet.list', { team: ctx.team.team_id })).wallets;
    ctx.wallets = wallets;
  } catch (e) {
    clear(panel, el('p', { class: 'page-error', role: 'alert', text: describe(e) }));
    return;
  }
  const head = el('div', { class: 'block-head' }, el('h2', { text: 'Wallets' }),
    el('button', { type: 'button', class: 'btn primary', dataset: { action: 'create-wallet' },
      onclick: () => createWalletDialog(ctx) }, icon('plus'), 'NEW WALLET'));
  clear(panel, el('section', { class: 'block' }, head,
    el('p', { class: 'muted', text: 'Pay-as-you-go requests are charged to a wallet, per request. Amounts are in ' + ctx.catalog.currency + '.' }),
    wallets.length ? wallets.map((w) => walletCard(ctx, w)) : el('p', { class: 'empty', text: 'No wallet yet.' })),
  webhookBlock(ctx));
}

function walletCard(ctx, w) {
  const cur = ctx.catalog.currency;
  const ledger = el('div', { class: 'ledger', hidden: true });
  const msg = el('p', { class: 'card-error', role: 'alert', hidden: true });
  const toggle = el('button', { type: 'button', class: 'btn secondary', dataset: { action: 'ledger' }, text: 'Ledger' });
  toggle.addEventListener('click', async () => {
    if (!ledger.hidden) { ledger.hidden = true; return; }
    msg.hidden = true;
    try {
      const r = await call('wallet.ledger', { wallet: w.wallet_id, limit: 100 });
      showLedger(ctx, w, ledger, msg, r.entries, r.next_cursor, cur);
      ledger.hidden = false;
    } catch (e) {
      msg.textContent = describe(e);
      msg.hidden = false;
    }
  });
  const held = Number(w.held_micros || 0);
  return el('article', { class: 'wallet-card', dataset: { walletId: w.wallet_id } },
    el('header', { class: 'key-head' }, el('h3', { text: w.name }),
      el('span', { class: 'balance', dataset: { micros: String(w.balance_micros) }, text: money(w.balance_micros, cur) }),
      el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'btn primary', dataset: { action: 'topup' },
          onclick: () => topUpDialog(ctx, w) }, 'Top up'),
        el('button', { type: 'button', class: 'btn secondary', dataset: { action: 'alert' },
          onclick: () => alertDialog(ctx, w) }, icon('bell'), 'Low-balance alert'), toggle)),
    held > 0 ? el('p', { class: 'figures' },
      el('span', {}, 'Held for unsettled requests: ',
        el('strong', { class: 'held', dataset: { micros: String(held) }, text: money(held, cur) })),
      el('span', {}, 'Available: ',
        el('strong', { class: 'available', dataset: { micros: String(w.balance_micros - held) },
          text: money(w.balance_micros - held, cur) }))) : null,
    alertLine(w, cur),
    msg,
    ctx.isAdmin ? spendChart(ctx, { wallet: w.wallet_id }, `wallet ${w.name}`) : null,
    el('footer', { class: 'key-foot muted' }, el('code', { text: w.wallet_id }), ` · created ${when(w.created_at)}`),
    ledger);
}

// The wallet's low-balance alert in words: its threshold, and whether the
// available balance is under it now.
function alertLine(w, cur) {
  if (!w.alert_threshold_micros) {
    return el('p', { class: 'alert-line muted', dataset: { below: 'none' }, text: 'No low-balance alert.' });
  }
  const below = !!w.alert_below;
  return el('p', { class: 'alert-line', dataset: { below: String(below) } },
    `Low-balance alert when under ${money(w.alert_threshold_micros, cur)} available `,
    el('span', { class: 'state ' + (below ? 'state-warn' : 'state-ok'), text: below ? 'below now' : 'not below' }));
}

// Sets or removes the wallet's threshold (wallet.alert.set; 0 removes).
function alertDialog(ctx, w) {
  const cur = ctx.catalog.currency;
  const amount = el('input', { type: 'text', inputmode: 'decimal', placeholder: '10.00',
    value: w.alert_threshold_micros ? money(w.alert_threshold_micros).replace(/,/g, '') : '' });
  const set = (micros) => async () => {
    await call('wallet.alert.set', { wallet: w.wallet_id, threshold_micros: micros });
    toast(micros ? `Alert set under ${money(micros, cur)}.` : 'Alert removed.');
    ctx.refresh();
  };
  const actions = [{ label: 'Cancel', kind: 'secondary', action: 'cancel' }];
  if (w.alert_threshold_micros) actions.push({ label: 'REMOVE ALERT', kind: 'secondary', action: 'remove-alert', run: set(0) });
  actions.push({ label: 'SAVE', kind: 'primary', action: 'save-alert', submit: true, run: async (d) => {
    const micros = parseMoney(amount.value);
    if (micros === null) throw { code: 'bad_request', field: 'threshold_micros', message: THRESHOLD_RULE(cur) };
    return set(micros)(d);
  } });
  openDialog({
    title: `Low-balance alert of ${w.name}`,
    body: [el('p', { class: 'muted', text: `Available now: ${money(w.balance_micros - Number(w.held_micros || 0), cur)}` +
      (w.alert_threshold_micros ? ` · alert under ${money(w.alert_threshold_micros, cur)}` : ' · no alert') }),
    field(`Alert when the available balance is under (${cur})`, amount, 'threshold_micros',
      'Owners and admins get a notification, and the team\'s webhook a delivery, once per fall under it.',
      (v) => (parseMoney(v) === null ? THRESHOLD_RULE(cur) : ''))],
    actions,
  });
  amount.focus();
}
const THRESHOLD_RULE = (cur) => `Enter a positive amount in ${cur}, like 10.00`;

// The ledger's table, newest first, and while older entries remain a
// button that fetches the next page (the cursor of docs/protocol.md).
function showLedger(ctx, w, ledger, msg, entries, cursor, cur) {
  const parts = [ledgerTable(ctx, entries, cur)];
  if (cursor) {
    parts.push(el('button', { type: 'button', class: 'btn secondary', dataset: { action: 'ledger-older' },
      text: 'Older entries', onclick: async () => {
        msg.hidden = true;
        try {
          const r = await call('wallet.ledger', { wallet: w.wallet_id, limit: 100, cursor });
          showLedger(ctx, w, ledger, msg, entries.concat(r.entries), r.next_cursor, cur);
        } catch (e) {
          msg.textContent = describe(e);
          msg.hidden = false;
        }
      } }));
  }
  clear(ledger, ...parts);
}

function ledgerTable(ctx, entries, cur) {
  if (!entries.length) return el('p', { class: 'empty', text: 'No movement yet.' });
  const name = (uid) => (ctx.memberById.get(uid) || {}).name || uid || '';
  return el('table', { class: 'table' },
    el('thead', {}, el('tr', {}, ['When', 'Type', 'Amount', 'Balance after', 'Key', 'User', 'Service', 'Model', 'Request / reference']
      .map((h) => el('th', { text: h })))),
    el('tbody', {}, entries.map((e) => el('tr', { class: 'entry-' + e.type },
      cell('When', { text: when(e.at) }),
      cell('Type', { text: e.type }),
      cell('Amount', { class: 'num', text: (e.type === 'debit' ? '−' : '+') + money(e.amount_micros, cur) }),
      cell('Balance after', { class: 'num', text: money(e.balance_micros, cur) }),
      cell('Key', {}, e.key_id ? el('code', { text: e.key_id }) : ''),
      cell('User', { text: e.type === 'credit' ? name(e.actor) : name(e.user_id) }),
      cell('Service', { text: e.service || '' }),
      cell('Model', { text: e.model || '' }),
      cell('Request / reference', { text: e.request_id || e.reference || '' })))));
}

// A table cell that names its column: narrow screens stack each row as a
// card and print the name beside the value (console.css).
// An empty cell is left out there.
function cell(label, attrs, ...children) {
  const blank = !attrs.text && children.every((c) => !c);
  return el('td', { ...attrs, class: [attrs.class, blank ? 'blank' : ''].join(' ').trim() || null, dataset: { label } },
    ...children);
}

function createWalletDialog(ctx) {
  const name = el('input', { type: 'text', maxlength: '200' });
  openDialog({
    title: 'New wallet', body: [field('Name', name, 'name')],
    actions: [
      { label: 'Cancel', kind: 'secondary', action: 'cancel' },
      { label: 'CREATE', kind: 'primary', action: 'create', submit: true, run: async () => {
        await call('wallet.create', { team: ctx.team.team_id, name: name.value.trim() });
        toast('Wallet created.');
        ctx.refresh();
      } },
    ],
  });
  name.focus();
}

function topUpDialog(ctx, w) {
  const cur = ctx.catalog.currency;
  const amount = el('input', { type: 'text', inputmode: 'decimal', placeholder: '10.00' });
  const ref = el('input', { type: 'text', maxlength: '200', value: randomRef('console') });
  openDialog({
    title: `Top up ${w.name}`,
    body: [el('p', { class: 'muted', text: `Balance now: ${money(w.balance_micros, cur)}` }),
      field(`Amount (${cur})`, amount, 'amount_micros', 'Up to 6 decimals.'),
      field('Reference', ref, 'reference', 'The same reference credits only once: a repeated top-up is ignored.')],
    actions: [
      { label: 'Cancel', kind: 'secondary', action: 'cancel' },
      { label: 'TOP UP', kind: 'primary', action: 'credit', submit: true, run: async () => {
        const micros = parseMoney(amount.value);
        if (micros === null) {
          throw { code: 'bad_request', field: 'amount_micros', message: `Enter a positive amount in ${cur}, like 12.50` };
        }
        const r = await call('wallet.credit', { wallet: w.wallet_id, amount_micros: micros, reference: ref.value.trim() });
        toast(r.credited ? `Credited ${money(micros, cur)}.` : 'That reference was used already: nothing credited.');
        ctx.refresh();
      } },
    ],
  });
  amount.focus();
}

// ---- the team's webhook ------------------------------------------------

// The team's webhook (owners set and delete it; admins see it) and its
// deliveries, newest first, with status, attempts and the next retry.
function webhookBlock(ctx) {
  const owner = ctx.team.role === 'owner';
  const body = el('div', { class: 'webhook' }, el('p', { class: 'muted', text: 'Loading the webhook…' }));
  const deliveries = el('div', { class: 'deliveries' });
  const block = el('section', { class: 'block', id: 'webhook-block', 'aria-labelledby': 'webhook-title' },
    el('div', { class: 'block-head' }, el('h2', { id: 'webhook-title', text: 'Webhook' })),
    el('p', { class: 'muted', text: 'keygated posts each low-balance alert to this URL, signed with the webhook\'s secret.' }),
    body, deliveries);
  (async () => {
    let hook = null;
    try {
      hook = await call('webhook.get', { team: ctx.team.team_id });
    } catch (e) {
      if (e.code !== 'not_found') { clear(body, el('p', { class: 'page-error', role: 'alert', text: describe(e) })); return; }
    }
    clear(body, hookCard(ctx, hook, owner));
    loadDeliveries(ctx, deliveries);
  })();
  return block;
}

function hookCard(ctx, hook, owner) {
  const msg = el('p', { class: 'card-error', role: 'alert', hidden: true });
  const tools = el('div', { class: 'actions' });
  if (owner) {
    tools.append(el('button', { type: 'button', class: 'btn primary', dataset: { action: 'webhook-set' },
      onclick: () => webhookDialog(ctx, hook) }, hook ? 'Change URL' : 'SET WEBHOOK'));
    if (hook) {
      tools.append(el('button', { type: 'button', class: 'btn danger', dataset: { action: 'webhook-delete' },
        onclick: async () => {
          msg.hidden = true;
          const yes = await confirmDialog({ title: 'Delete the webhook?', confirmLabel: 'DELETE WEBHOOK', danger: true,
            action: 'confirm-webhook-delete',
            text: 'Alerts are no longer posted; pending deliveries end as failed. Notifications in the console go on.' });
          if (!yes) return;
          try {
            await call('webhook.delete', { team: ctx.team.team_id });
            toast('Webhook deleted.');
            ctx.refresh();
          } catch (e) { msg.textContent = describe(e); msg.hidden = false; }
        } }, 'Delete'));
    }
  }
  const rule = owner ? null : el('p', { class: 'muted', text: 'Only the team\'s owner sets or deletes the webhook.' });
  if (!hook) {
    return el('article', { class: 'wallet-card hook-card', dataset: { hook: 'none' } },
      el('header', { class: 'key-head' }, el('h3', { text: 'No webhook' }), tools), rule, msg);
  }
  return el('article', { class: 'wallet-card hook-card', dataset: { hook: 'set' } },
    el('header', { class: 'key-head' }, el('h3', {}, el('code', { class: 'hook-url', text: hook.url })), tools),
    el('p', { class: 'muted' }, 'Signing secret ', el('code', { class: 'secret-hint', text: hook.secret_hint }),
      ` · set ${when(hook.created_at)} · changed ${when(hook.updated_at)}`),
    rule, msg);
}

// keygated's rule (webhook_url_check): http:// only, at most 2000
// characters; it says why in its own words when the page cannot tell.
const URL_RULE = 'The URL must start with http:// — keygated speaks no TLS.';
function urlCheck(v) {
  const t = v.trim();
  return /^http:\/\/[^\s/?#]+/i.test(t) && t.length <= 2000 ? '' : URL_RULE;
}

function webhookDialog(ctx, hook) {
  const url = el('input', { type: 'url', placeholder: 'http://127.0.0.1:9000/keygate', value: hook ? hook.url : '',
    autocomplete: 'off', spellcheck: 'false' });
  const rotate = el('input', { type: 'checkbox', dataset: { field: 'rotate_secret' } });
  openDialog({
    title: hook ? 'Change the webhook' : 'Set the webhook',
    body: [field('URL', url, 'url',
      'http:// only: keygated links no TLS library. For an https receiver, put a local TLS-terminating proxy in front of it.',
      urlCheck),
    hook ? el('label', { class: 'check' }, rotate,
      'Make a new signing secret (the old one stops signing at once)') : null,
    hook ? null : el('p', { class: 'muted', text: 'The signing secret is made now and shown once, like a token.' })],
    actions: [
      { label: 'Cancel', kind: 'secondary', action: 'cancel' },
      { label: 'SAVE', kind: 'primary', action: 'save-webhook', submit: true, errorField: 'url', run: async () => {
        const bad = urlCheck(url.value);
        if (bad) throw { code: 'bad_request', field: 'url', message: bad };
        const args = { team: ctx.team.team_id, url: url.value.trim() };
        if (rotate.checked) args.rotate_secret = true;
        const r = await call('webhook.set', args);
        if (r.secret) {
          const value = r.secret;
          r.secret = null;
          setTimeout(() => secretDialog({
            title: 'The webhook\'s signing secret', className: 'webhook-secret', value,
            label: 'Webhook signing secret', filename: `keygate-webhook-${ctx.team.team_id}.txt`,
            intro: el('p', {}, el('strong', { text: 'Copy it now: it is shown only this once. ' }),
              'Your receiver checks X-Keygate-Signature with it (docs/protocol.md).'),
            outro: el('p', { class: 'muted' }, 'Hint shown from now on: ', el('code', { text: r.secret_hint })),
            onClose: () => ctx.refresh(),
          }), 0);
        } else {
          toast('Webhook URL saved; the secret is unchanged.');
          ctx.refresh();
        }
      } },
    ],
  });
  url.focus();
}

const STATUS_WORDS = { pending: 'pending', delivered: 'delivered', failed: 'failed' };
async function loadDeliveries(ctx, box) {
  const cur = ctx.catalog.currency;
  const refresh = el('button', { type: 'button', class: 'btn secondary small', dataset: { action: 'deliveries-refresh' },
    text: 'Refresh', onclick: () => loadDeliveries(ctx, box) });
  const head = el('div', { class: 'block-head sub' }, el('h3', { text: 'Deliveries' }), refresh);
  let list;
  try {
    list = (await call('webhook.deliveries', { team: ctx.team.team_id, limit: 50 })).deliveries;
  } catch (e) {
    clear(box, head, el('p', { class: 'page-error', role: 'alert', text: describe(e) }));
    return;
  }
  const wname = (id) => ((ctx.wallets || []).find((w) => w.wallet_id === id) || {}).name || id || '';
  if (!list.length) { clear(box, head, el('p', { class: 'empty', text: 'No delivery yet.' })); return; }
  clear(box, head, el('table', { class: 'table deliveries-table' },
    el('thead', {}, el('tr', {}, ['When', 'Event', 'Wallet', 'Status', 'Attempts', 'Next retry', 'Last result']
      .map((h) => el('th', { text: h })))),
    el('tbody', {}, list.map((d) => el('tr', { dataset: { delivery: d.id, status: d.status } },
      cell('When', { text: when(d.created_at) }),
      cell('Event', { text: d.type === 'wallet.low_balance' && d.event
        ? `Low balance: ${money(d.event.available_micros, cur)} under ${money(d.event.threshold_micros, cur)}`
        : d.type === 'wallet.funds_refused' && d.event
          ? `Refused for funds: ${money(d.event.available_micros, cur)} available` : d.type }),
      cell('Wallet', { text: wname(d.wallet_id) }),
      cell('Status', {}, el('span', { class: 'state state-' + (d.status === 'delivered' ? 'ok' : d.status === 'failed' ? 'bad' : 'warn'),
        text: STATUS_WORDS[d.status] || d.status })),
      cell('Attempts', { class: 'num attempts', text: String(d.attempts) }),
      cell('Next retry', { class: 'next-retry', text: d.status === 'pending' && d.next_attempt_at ? whenSecs(d.next_attempt_at) : '' }),
      cell('Last result', { text: d.last_result || '' }))))));
}

// A retry is seconds away: the time with seconds.
function whenSecs(ms) {
  const d = new Date(Number(ms));
  return when(ms) + ':' + String(d.getSeconds()).padStart(2, '0');
}
