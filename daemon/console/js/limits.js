// limits.js - a paid key's expiry, daily and monthly budgets and
// per-service rate limits (docs/protocol.md, "Expiry, budgets, rate
// limits"): the part of the edit dialog that sets them, and the lines of
// the key card that show them (to every role: a `user` reads them there).
//
// Times are UTC on the page as in the daemon: the date-time field is read
// and written as UTC, never the browser's zone. Budgets are typed in
// currency units and sent as integer micros (no floating point).
import { el, field, fieldError, money } from './ui.js';

export const RATE_MAX = { per_second: 1000, per_minute: 10000 };

// ms -> "2027-01-31T12:00" (UTC), the value of a datetime-local input.
function toInput(ms) {
  return new Date(Number(ms)).toISOString().slice(0, 16);
}

// "2027-01-31T12:00" (UTC) -> ms; NaN when it is not one.
function fromInput(v) {
  return /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?$/.test(v) ? Date.parse(v + (v.length === 16 ? ':00' : '') + 'Z') : NaN;
}

// ms -> "2027-01-31 12:00 UTC"
export function utcText(ms) {
  return new Date(Number(ms)).toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
}

// "expires in 3 days" / "expires in 5 hours" / "expired"
export function expiryText(ms, now = Date.now()) {
  const left = Number(ms) - now;
  if (left <= 0) return 'expired';
  const units = [['day', 86400000], ['hour', 3600000], ['minute', 60000]];
  for (const [name, size] of units) {
    const n = Math.floor(left / size);
    if (n >= 1) return `expires in ${n} ${name}${n === 1 ? '' : 's'}`;
  }
  return 'expires in less than a minute';
}

// "2.5" -> 2500000 micros; '' -> null (no cap); undefined when it is not
// an amount (at most 9 digits before the point, 6 after).
function parseBudget(text) {
  const t = String(text).trim();
  if (t === '') return null;
  const m = /^(\d{1,9})(?:\.(\d{1,6}))?$/.exec(t);
  if (!m) return undefined;
  const micros = Number(BigInt(m[1]) * 1000000n + BigInt((m[2] || '').padEnd(6, '0')));
  return micros === 0 ? null : micros;
}

function budgetInput(micros) {
  if (micros === undefined || micros === null) return '';
  return money(micros, '').replace(/,/g, '').trim();
}

const checkExpiry = (v) => {
  if (v === '') return '';
  const ms = fromInput(v);
  if (Number.isNaN(ms)) return 'Enter a date and time, or leave it empty for no expiry.';
  return ms > Date.now() ? '' : 'Expiry must be in the future.';
};
const checkBudget = (cur) => (v) => (parseBudget(v) === undefined
  ? `Enter an amount in ${cur}, like 25.00, or leave it empty for no cap.` : '');

function rateText(name, v) {
  const t = String(v).trim();
  if (t === '') return null;
  return /^\d{1,5}$/.test(t) && Number(t) <= RATE_MAX[name] ? Number(t) : undefined;
}

// The editor. Returns {element, args()}: args() gives key.update's
// arguments for what changed (absent = unchanged, null = removed), or
// null after showing each bad field's error under it.
export function limitsEditor(ctx, key) {
  const cur = ctx.catalog.currency;
  const expires = el('input', { type: 'datetime-local', step: '60', value: key.expires_at ? toInput(key.expires_at) : '' });
  const clearBtn = el('button', { type: 'button', class: 'btn secondary', dataset: { action: 'clear-expiry' },
    text: 'No expiry', onclick: () => {
      expires.value = '';
      expires.dispatchEvent(new Event('input', { bubbles: true }));
      expires.focus();
    } });
  const day = el('input', { type: 'text', inputmode: 'decimal', autocomplete: 'off', value: budgetInput(key.budget_day_micros) });
  const month = el('input', { type: 'text', inputmode: 'decimal', autocomplete: 'off', value: budgetInput(key.budget_month_micros) });

  const limits = key.rate_limits || {};
  const inputs = [];
  const rows = ctx.catalog.services.map((s) => {
    const one = limits[s.id] || {};
    const pair = ['per_second', 'per_minute'].map((name) => {
      const id = `rl-${s.id}-${name}-${Math.random().toString(36).slice(2, 6)}`;
      const i = el('input', { type: 'text', inputmode: 'numeric', id, autocomplete: 'off',
        value: one[name] !== undefined ? String(one[name]) : '', dataset: { service: s.id, rate: name } });
      inputs.push(i);
      return el('div', { class: 'rl-cell' },
        el('label', { for: id, text: name === 'per_second' ? 'Per second' : 'Per minute' },
          el('span', { class: 'sr-only', text: ` (${s.name})` })), i);
    });
    return el('div', { class: 'rl-row', dataset: { service: s.id } }, el('div', { class: 'rl-name', text: s.name }), pair);
  });
  const rateBox = el('div', { class: 'rl-rows', role: 'group', 'aria-label': 'Rate limits per service',
    dataset: { field: 'rate_limits' } }, rows);
  const rateErr = () => (inputs.some((i) => rateText(i.dataset.rate, i.value) === undefined)
    ? `Limits are whole numbers: at most ${RATE_MAX.per_second} per second and ${RATE_MAX.per_minute} per minute; empty or 0 is no limit.` : '');
  rateBox.check = rateErr;
  // an input's own mark, so that a screen reader hears which one is wrong
  rateBox.addEventListener('input', (ev) => {
    const i = ev.target;
    if (rateText(i.dataset.rate, i.value) !== undefined) i.removeAttribute('aria-invalid');
  });

  const element = el('fieldset', { class: 'limits-edit' },
    el('legend', { text: 'Expiry, budgets and rate limits' }),
    el('div', { class: 'expiry-row' },
      field('Expires (UTC)', expires, 'expires_at', 'Tokens of the key stop working from then on. Empty: never.', checkExpiry),
      clearBtn),
    el('div', { class: 'budget-row' },
      field(`Daily budget (${cur})`, day, 'budget_day_micros', 'Per UTC day. Empty: no cap.', checkBudget(cur)),
      field(`Monthly budget (${cur})`, month, 'budget_month_micros', 'Per calendar month. Empty: no cap.', checkBudget(cur))),
    el('div', { class: 'field' },
      el('div', { class: 'label', id: 'rl-label', text: 'Rate limits (requests)' }),
      el('div', { class: 'hint', text: 'Empty or 0: no limit. Saving replaces every limit of the key.' }),
      rateBox,
      el('div', { class: 'field-error', role: 'alert', hidden: true, dataset: { errorFor: 'rate_limits' } })));

  function args(form) {
    const out = {};
    let bad = false;
    const e = checkExpiry(expires.value);
    if (e) { fieldError(form, 'expires_at', e); bad = true; }
    const newExp = expires.value === '' ? null : fromInput(expires.value);
    const oldExp = key.expires_at === undefined ? null : key.expires_at;
    // unchanged (to the minute shown) is not sent: a past expiry must not
    // stop a rename
    if (!e && (newExp === null ? oldExp !== null : oldExp === null || toInput(oldExp) !== expires.value)) {
      out.expires_at = newExp;
    }
    for (const [input, name] of [[day, 'budget_day_micros'], [month, 'budget_month_micros']]) {
      const v = parseBudget(input.value);
      if (v === undefined) { fieldError(form, name, checkBudget(cur)(input.value)); bad = true; continue; }
      const old = key[name] === undefined ? null : key[name];
      if (v !== old) out[name] = v;
    }
    const rl = {};
    const re = rateErr();
    if (re) {
      fieldError(form, 'rate_limits', re);
      for (const i of inputs) if (rateText(i.dataset.rate, i.value) === undefined) i.setAttribute('aria-invalid', 'true');
      bad = true;
    } else {
      for (const i of inputs) {
        const v = rateText(i.dataset.rate, i.value);
        if (!v) continue;
        (rl[i.dataset.service] = rl[i.dataset.service] || {})[i.dataset.rate] = v;
      }
      const want = Object.keys(rl).length ? rl : null;
      if (JSON.stringify(sorted(want)) !== JSON.stringify(sorted(key.rate_limits || null))) out.rate_limits = want;
    }
    if (bad) {
      const first = form.querySelector('input[aria-invalid=true]');
      if (first) first.focus();
      return null;
    }
    return out;
  }
  return { element, args };
}

function sorted(o) {
  if (!o) return null;
  const r = {};
  for (const k of Object.keys(o).sort()) {
    r[k] = {};
    for (const n of ['per_second', 'per_minute']) if (o[k][n]) r[k][n] = o[k][n];
  }
  return r;
}

// The card's lines; null when the key has none of them.
export function limitsSummary(ctx, key) {
  const cur = ctx.catalog.currency;
  const items = [];
  if (key.expires_at) {
    const past = Number(key.expires_at) <= Date.now();
    items.push(el('li', { class: 'expiry' + (past ? ' expired' : ''), dataset: { limit: 'expires', expired: String(past) } },
      el('strong', { text: past ? 'Expired' : expiryText(key.expires_at).replace(/^e/, 'E') }),
      el('span', { class: 'muted', text: ` ${past ? 'at' : 'on'} ${utcText(key.expires_at)}` })));
  }
  if (key.budget_day_micros) {
    items.push(el('li', { dataset: { limit: 'budget-day' } }, 'Daily budget: ', el('strong', { text: money(key.budget_day_micros, cur) })));
  }
  if (key.budget_month_micros) {
    items.push(el('li', { dataset: { limit: 'budget-month' } }, 'Monthly budget: ', el('strong', { text: money(key.budget_month_micros, cur) })));
  }
  for (const [sid, l] of Object.entries(key.rate_limits || {})) {
    const svc = ctx.catalog.services.find((s) => s.id === sid);
    const parts = [];
    if (l.per_second) parts.push(`${l.per_second} per second`);
    if (l.per_minute) parts.push(`${l.per_minute} per minute`);
    items.push(el('li', { dataset: { limit: 'rate', rateService: sid } }, `Rate limit, ${svc ? svc.name : sid}: `,
      el('strong', { text: parts.join(', ') })));
  }
  if (!items.length) return null;
  return el('div', { class: 'key-limits' }, el('h4', { text: 'Expiry and limits' }), el('ul', { class: 'limits' }, items));
}
