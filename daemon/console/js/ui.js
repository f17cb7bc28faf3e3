// ui.js - small DOM helpers shared by the views: elements, icons, dialogs,
// errors shown in words next to what caused them, money and times.

// el('div', {class: 'x', onclick: fn, dataset: {a: 1}}, child, 'text', ...)
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'value') e.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'selected') e[k] = !!v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  append(e, children);
  return e;
}

function append(parent, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    parent.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

// Line icons, 24x24, drawn with the current text colour.
const ICONS = {
  edit: ['M4 20h4L19 9l-4-4L4 16z', 'M13.5 6.5l4 4'],
  members: ['M9 11.5a3.5 3.5 0 1 0 0-7 3.5 3.5 0 0 0 0 7z', 'M2.5 20c0-3.6 2.9-6 6.5-6s6.5 2.4 6.5 6',
            'M16.5 11a2.5 2.5 0 1 0 0-5', 'M18 14.2c2 .6 3.5 2.4 3.5 4.8'],
  services: ['M4 6h9', 'M17 6h3', 'M4 12h3', 'M11 12h9', 'M4 18h11', 'M19 18h1',
             'M15 8a2 2 0 1 0 0-4 2 2 0 0 0 0 4z', 'M9 14a2 2 0 1 0 0-4 2 2 0 0 0 0 4z',
             'M17 20a2 2 0 1 0 0-4 2 2 0 0 0 0 4z'],
  token: ['M8 19a4 4 0 1 0 0-8 4 4 0 0 0 0 8z', 'M10.9 12.1L20 3', 'M16 7l3 3', 'M13.5 9.5l2 2'],
  newtoken: ['M7 20a4 4 0 1 0 0-8 4 4 0 0 0 0 8z', 'M9.9 13.1L16 7', 'M13 10l2 2', 'M18 2v6', 'M15 5h6'],
  logo: ['M12 3l8 3v6c0 4.5-3.4 8-8 9-4.6-1-8-4.5-8-9V6z', 'M12 9v6', 'M9 12h6'],
  rotate: ['M20 12a8 8 0 1 1-2.3-5.7', 'M20 4v5h-5'],
  revoke: ['M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z', 'M5.6 5.6l12.8 12.8'],
  plus: ['M12 5v14', 'M5 12h14'],
  copy: ['M9 9h11v11H9z', 'M5 15H4V4h11v1'],
  download: ['M12 4v11', 'M7 10l5 5 5-5', 'M5 20h14'],
  wallet: ['M3 7h16v12H3z', 'M3 7l12-3v3', 'M15 13h2'],
  team: ['M12 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8z', 'M4 21c0-4.4 3.6-7 8-7s8 2.6 8 7'],
  close: ['M6 6l12 12', 'M18 6L6 18'],
  bell: ['M6 16V11a6 6 0 0 1 12 0v5l1.5 2h-15z', 'M10 20.5a2 2 0 0 0 4 0'],
};

export function icon(name) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'icon');
  for (const d of ICONS[name] || []) {
    const p = document.createElementNS(ns, 'path');
    p.setAttribute('d', d);
    svg.appendChild(p);
  }
  return svg;
}

// A square icon button. opts: {action, label, disabled, why, onclick}
// `why` explains a disabled button (its tooltip) so the rule is visible.
export function iconButton(name, opts) {
  const b = el('button', {
    type: 'button', class: 'icon-btn' + (opts.danger ? ' danger' : ''),
    dataset: { action: opts.action }, 'aria-label': opts.label,
    title: opts.disabled && opts.why ? `${opts.label}: ${opts.why}` : opts.label,
    disabled: !!opts.disabled, onclick: opts.onclick,
  }, icon(name));
  return b;
}

// A labelled action: icon + a short word, readable without a tooltip
// (phones have none). opts: {action, word, label, kind, disabled, why,
// onclick, extra}. kind: 'go' (green), 'danger'. `extra` is text for
// screen readers only, after the word ("Rotate" + " Uma's token"). A
// disabled action's rule is not left to its tooltip: the caller shows
// `why` as text (see whyNotes).
export function actionButton(name, opts) {
  return el('button', {
    type: 'button', class: 'act' + (opts.kind ? ' act-' + opts.kind : ''),
    dataset: { action: opts.action }, title: opts.label || opts.word,
    disabled: !!opts.disabled, onclick: opts.onclick,
  }, icon(name), el('span', { class: 'act-word', text: opts.word }),
  opts.extra ? el('span', { class: 'sr-only', text: opts.extra }) : null);
}

// The visible reasons of an actions row's disabled buttons, one line per
// reason ("Services, Revoke: the free key ..."); each button points to its
// line (aria-describedby). Returns the list, or null when none is off.
let whyIds = 0;
export function whyNotes(items) {
  const byWhy = new Map();
  for (const it of items) {
    if (!it.disabled || !it.why) continue;
    if (!byWhy.has(it.why)) byWhy.set(it.why, []);
    byWhy.get(it.why).push(it);
  }
  if (!byWhy.size) return null;
  const list = el('ul', { class: 'why' });
  for (const [why, its] of byWhy) {
    const id = 'why-' + (++whyIds);
    list.appendChild(el('li', { id, dataset: { why: its.map((i) => i.action).join(' ') } },
      el('strong', { text: its.map((i) => i.word).join(', ') }), `: ${why}.`));
    for (const it of its) if (it.button) it.button.setAttribute('aria-describedby', id);
  }
  return list;
}

// ---- errors -----------------------------------------------------------

const CODE_WORDS = {
  unavailable: 'The key store cannot be reached; nothing was changed. Try again in a moment.',
  network: 'keygated cannot be reached: check that it is running, then try again.',
  internal: 'keygated hit an internal error; nothing was changed.',
};

export function describe(err) {
  if (!err) return '';
  if (CODE_WORDS[err.code]) return CODE_WORDS[err.code];
  // "'team_name' must be ..." reads "Team name must be ..."
  const m = String(err.message || err).replace(/^'([a-z_]+)'/, (_, f) => f.replace(/_/g, ' '));
  return m.charAt(0).toUpperCase() + m.slice(1) + (/[.!?:]$/.test(m) ? '' : '.');
}

// The field an error message names, e.g. "'name' must be ..." -> "name".
export function fieldOf(err) {
  if (err && err.field) return err.field;
  const m = /'([a-z_]+)'/.exec(String(err && err.message || ''));
  return m ? m[1] : null;
}

// Field checks: the same rules as keygated, so that an error shown under a
// field goes away as soon as the field is right (and sign-up can report
// every bad field at once). Each returns '' when the value is fine.
export const CHECK = {
  name: (v) => (/^[^\u0000-\u001f\u007f]{1,200}$/u.test(v.trim()) && [...v.trim()].length <= 200
    ? '' : 'Name must be 1-200 printable characters.'),
  teamName: (v) => (v.trim() === '' || CHECK.name(v) === '' ? '' : 'Team name must be 1-200 printable characters.'),
  // keygated's email_normalize: 3-254 bytes, one '@' neither first nor
  // last, no spaces or control characters.
  email: (v) => {
    const t = v.trim();
    const at = t.indexOf('@');
    const ok = t.length >= 3 && new TextEncoder().encode(t).length <= 254 && at > 0 && at < t.length - 1 &&
      t.indexOf('@', at + 1) < 0 && !/[\u0000-\u0020\u007f]/.test(t);
    return ok ? '' : 'Email is not an email address.';
  },
  // keygated's PASSWORD_RULE (daemon/http.h): characters, not bytes; not
  // only white space (C isspace: space, \t \n \v \f \r).
  password: (v) => ([...v].length >= 8 && /[^ \t\n\v\f\r]/.test(v) && new TextEncoder().encode(v).length <= 1024
    ? '' : PASSWORD_RULE_TEXT),
};
export const PASSWORD_HINT = 'At least 8 characters, not only spaces.';
export const PASSWORD_RULE_TEXT = 'Password must be at least 8 characters and not only spaces (at most 1024 bytes).';

// Once a form shows an error, editing a field with an error clears it when
// the field is right: by its check (input.check, set by field()), else as
// soon as its value changed (a server-side rule the page cannot test).
function liveClear(form) {
  if (form.dataset.liveClear) return;
  form.dataset.liveClear = '1';
  const onEdit = (ev) => {
    const f = ev.target.closest('[data-field]');
    if (!f || !form.contains(f)) return;
    const name = f.dataset.field;
    const holder = form.querySelector(`[data-error-for="${name}"]`);
    const shown = (holder && !holder.hidden) || f.getAttribute('aria-invalid') === 'true';
    if (!shown) return;
    const ok = f.check ? f.check(f) === '' : true;
    if (!ok) return;
    if (holder) { holder.textContent = ''; holder.hidden = true; }
    f.removeAttribute('aria-invalid');
  };
  form.addEventListener('input', onEdit);
  form.addEventListener('change', onEdit);
}

// Shows err in a form: under the element with data-field=<field named by
// the message> when the form has one, else in the form's own error line.
export function showFormError(form, err, fallbackField) {
  clearFormErrors(form);
  liveClear(form);
  const f = fieldOf(err) || fallbackField;
  let holder = f ? form.querySelector(`[data-error-for="${f}"]`) : null;
  if (!holder) holder = form.querySelector('.form-error');
  if (holder) {
    holder.textContent = describe(err);
    holder.hidden = false;
  }
  const input = f ? form.querySelector(`[data-field="${f}"]`) : null;
  if (input) { input.setAttribute('aria-invalid', 'true'); input.focus && input.focus(); }
}

// Shows text under the form's field `name` (its data-error-for line).
export function fieldError(form, name, text) {
  liveClear(form);
  const h = form.querySelector(`[data-error-for="${name}"]`) || form.querySelector('.form-error');
  if (h) { h.textContent = text; h.hidden = false; }
  const input = form.querySelector(`[data-field="${name}"]`);
  if (input) input.setAttribute('aria-invalid', 'true');
}

export function clearFormErrors(form) {
  for (const e of form.querySelectorAll('.field-error, .form-error')) { e.textContent = ''; e.hidden = true; }
  for (const e of form.querySelectorAll('[aria-invalid]')) e.removeAttribute('aria-invalid');
}

// A labelled field with its own error line. input gets data-field=name;
// check(value) -> '' or the error (CHECK above) lets its error clear live.
export function field(label, input, name, hint, check) {
  input.dataset.field = name;
  if (check) input.check = (i) => check(i.value);
  const id = 'f-' + name + '-' + Math.random().toString(36).slice(2, 8);
  input.id = id;
  const hintEl = hint ? el('div', { class: 'hint', id: id + '-hint', text: hint }) : null;
  const errEl = el('div', { class: 'field-error', id: id + '-err', role: 'alert', hidden: true, dataset: { errorFor: name } });
  input.setAttribute('aria-describedby', (hintEl ? id + '-hint ' : '') + id + '-err');
  return el('div', { class: 'field' },
    el('label', { for: id, text: label }),
    input, hintEl, errEl);
}

// ---- dialogs ----------------------------------------------------------

// Opens a modal dialog. body: nodes; actions: [{label, kind, action, run}]
// where run(ctx) may be async: while it runs the buttons are disabled, a
// thrown error is shown in the dialog (next to its field), and the dialog
// closes when run returns anything but false. Returns {dlg, form, close}.
export function openDialog({ title, body, actions, className, onClose }) {
  const form = el('form', { class: 'dialog-form', novalidate: true });
  const errorLine = el('p', { class: 'form-error', role: 'alert', hidden: true });
  const bar = el('div', { class: 'dialog-actions' });
  const dlg = el('dialog', { class: 'dialog ' + (className || '') },
    el('h2', { class: 'dialog-title', text: title }), form);
  append(form, [body, errorLine, bar]);
  let closed = false;
  const api = {
    dlg, form,
    close(result) {
      if (closed) return;
      closed = true;
      dlg.close();
      dlg.remove();
      if (onClose) onClose(result);
    },
  };
  const buttons = [];
  for (const a of actions) {
    const b = el('button', {
      type: a.submit ? 'submit' : 'button', class: 'btn ' + (a.kind || ''),
      dataset: { action: a.action || a.label.toLowerCase() }, text: a.label,
    });
    b.addEventListener('click', async (ev) => {
      ev.preventDefault();
      if (!a.run) { api.close(); return; }
      buttons.forEach((x) => { x.disabled = true; });
      clearFormErrors(form);
      try {
        const r = await a.run(api);
        if (r !== false) api.close(r);
      } catch (err) {
        showFormError(form, err, a.errorField);
      } finally {
        buttons.forEach((x) => { x.disabled = false; });
      }
    });
    buttons.push(b);
    bar.appendChild(b);
  }
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const primary = buttons.find((b) => b.type === 'submit');
    if (primary && !primary.disabled) primary.click();
  });
  // Escape closes any dialog (the token dialog too: closing wipes it).
  dlg.addEventListener('cancel', (ev) => { ev.preventDefault(); api.close(); });
  dlg.addEventListener('keydown', (ev) => trapTab(dlg, ev));
  const opener = document.activeElement;
  dlg.addEventListener('close', () => {
    if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
  });
  document.body.appendChild(dlg);
  dlg.showModal();
  return api;
}

// Tab and Shift+Tab go round the dialog's own controls: a modal keeps
// the focus (the page behind is inert, but the browser's own UI is not).
function trapTab(dlg, ev) {
  if (ev.key !== 'Tab') return;
  const all = [...dlg.querySelectorAll('button, input, select, textarea, a[href], [tabindex]:not([tabindex="-1"])')]
    .filter((e) => !e.disabled && e.getClientRects().length > 0 && e.closest('dialog') === dlg);
  if (!all.length) return;
  const first = all[0];
  const last = all[all.length - 1];
  if (ev.shiftKey && document.activeElement === first) { ev.preventDefault(); last.focus(); }
  else if (!ev.shiftKey && document.activeElement === last) { ev.preventDefault(); first.focus(); }
}

// Shows a secret once (a personal token, a webhook's signing secret), with
// COPY and DOWNLOAD (a text file). After CLOSE (or Escape) it is gone
// from the page: the field is emptied and every reference dropped.
// opts: {title, value, label (of the field), filename, intro: [nodes],
// outro: [nodes], className, onClose}. opts.value is read once here.
export function secretDialog(opts) {
  let secret = opts.value;
  const out = el('input', { type: 'text', readonly: true, class: 'token', value: secret,
    'aria-label': opts.label, spellcheck: 'false', dataset: { field: 'token' } });
  const note = el('p', { class: 'copy-note', role: 'status' });
  const copyBtn = el('button', { type: 'button', class: 'btn secondary', dataset: { action: 'copy' } }, icon('copy'), 'COPY');
  const dlBtn = el('button', { type: 'button', class: 'btn secondary', dataset: { action: 'download' } }, icon('download'), 'DOWNLOAD');
  copyBtn.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(secret);
      note.textContent = 'Copied to the clipboard.';
    } catch (e) {
      out.select();
      note.textContent = document.execCommand('copy') ? 'Copied to the clipboard.'
        : 'The browser refused the clipboard: select it and copy it by hand.';
    }
  });
  dlBtn.addEventListener('click', () => {
    const blob = new Blob([secret + '\n'], { type: 'text/plain' });
    const a = el('a', { href: URL.createObjectURL(blob), download: opts.filename });
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    note.textContent = 'Saved as a text file. Keep it private.';
  });
  const d = openDialog({
    title: opts.title, className: 'secret-dialog ' + (opts.className || ''),
    body: [opts.intro, el('div', { class: 'token-row' }, out),
      el('div', { class: 'token-tools' }, copyBtn, dlBtn), note, opts.outro],
    actions: [{ label: 'CLOSE', kind: 'primary', action: 'close', submit: true }],
    onClose: () => {
      out.value = '';
      out.removeAttribute('value');
      secret = null;
      if (opts.onClose) opts.onClose();
    },
  });
  out.select();
  return d;
}

// Asks a yes/no question; resolves to true when confirmed.
export function confirmDialog({ title, text, confirmLabel, danger, action }) {
  return new Promise((resolve) => {
    let yes = false;
    openDialog({
      title, body: [el('p', { text })],
      actions: [
        { label: 'Cancel', kind: 'secondary', action: 'cancel' },
        { label: confirmLabel, kind: danger ? 'danger' : 'primary', action, submit: true,
          run: () => { yes = true; } },
      ],
      onClose: () => resolve(yes),
    });
  });
}

// A short message that fades by itself (e.g. "Members saved").
export function toast(text) {
  for (const old of document.querySelectorAll('.toast')) old.remove();
  const t = el('div', { class: 'toast', role: 'status', text });
  document.body.appendChild(t);
  setTimeout(() => t.remove(), 4000);
}

// ---- money and time ----------------------------------------------------

// micros (integer) -> "12.50 USD"; at least 2 decimals, up to 6.
export function money(micros, currency) {
  const neg = micros < 0;
  const v = BigInt(Math.abs(Number(micros)));
  const units = v / 1000000n;
  let frac = (v % 1000000n).toString().padStart(6, '0').replace(/0+$/, '');
  if (frac.length < 2) frac = frac.padEnd(2, '0');
  const s = units.toLocaleString('en-US') + '.' + frac;
  return (neg ? '-' : '') + s + (currency ? ' ' + currency : '');
}

// "12.5" -> 12500000 micros; null when it is not a positive amount with at
// most 6 decimals. Exact: no floating point.
export function parseMoney(text) {
  const m = /^\s*(\d{1,10})(?:\.(\d{1,6}))?\s*$/.exec(String(text));
  if (!m) return null;
  const micros = BigInt(m[1]) * 1000000n + BigInt((m[2] || '').padEnd(6, '0') || '0');
  return micros > 0n ? Number(micros) : null;
}

export function when(ms) {
  if (!ms) return '';
  const d = new Date(Number(ms));
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

export function randomRef(prefix) {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return prefix + '-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
