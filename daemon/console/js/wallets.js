// wallets.js - the Wallets tab (owners and admins): balances, top-ups and
// each wallet's ledger, with the debits per key, service and model.
import { call } from './api.js';
import { el, clear, icon, field, openDialog, toast, describe, money, parseMoney, when, randomRef } from './ui.js';

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
    wallets.length ? wallets.map((w) => walletCard(ctx, w)) : el('p', { class: 'empty', text: 'No wallet yet.' })));
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
  return el('article', { class: 'wallet-card', dataset: { walletId: w.wallet_id } },
    el('header', { class: 'key-head' }, el('h3', { text: w.name }),
      el('span', { class: 'balance', dataset: { micros: String(w.balance_micros) }, text: money(w.balance_micros, cur) }),
      el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'btn primary', dataset: { action: 'topup' },
          onclick: () => topUpDialog(ctx, w) }, 'Top up'), toggle)),
    msg,
    el('footer', { class: 'key-foot muted' }, el('code', { text: w.wallet_id }), ` · created ${when(w.created_at)}`),
    ledger);
}

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
