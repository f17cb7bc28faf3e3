// keys.js - the Key Management tab: the Free Service Key block, the Paid
// for Service Keys block, and every action on a key.
//
// An action is a labelled button (icon + word) shown only to the roles
// allowed to use it (SPEC §1), and disabled where the rules forbid it: the
// free key has no revoke and no services edit; a revoked key has none.
// The rule is written under the buttons, not only in a tooltip.
import { call, callAll } from './api.js';
import { el, clear, icon, actionButton, whyNotes, field, openDialog, confirmDialog, secretDialog, toast, describe, when, money, CHECK }
  from './ui.js';
import { servicesEditor, policyText } from './services.js';
import { limitsEditor, limitsSummary } from './limits.js';
import { spendChart } from './charts.js';

export async function renderKeys(ctx, panel) {
  const status = el('p', { class: 'muted', text: 'Loading keys…' });
  clear(panel, status);
  let keys;
  try {
    keys = (await callAll('key.list', { team: ctx.team.team_id }, 'keys')).keys;
  } catch (e) {
    clear(panel, el('p', { class: 'page-error', role: 'alert', text: describe(e) }));
    return;
  }
  const free = keys.filter((k) => k.kind === 'free');
  const paid = keys.filter((k) => k.kind !== 'free').sort((a, b) => b.created_at - a.created_at);

  const freeBlock = el('section', { class: 'block', id: 'free-block', 'aria-labelledby': 'free-title' },
    el('div', { class: 'block-head' }, el('h2', { id: 'free-title', text: 'Free Service Key' })),
    el('p', { class: 'muted', text: 'Every free service of the catalog, within its daily quota. Created with the team; it cannot be revoked.' }),
    free.length ? free.map((k) => keyCard(ctx, k)) : el('p', { class: 'empty', text: 'You are not assigned to the free key.' }));

  const paidHead = el('div', { class: 'block-head' }, el('h2', { id: 'paid-title', text: 'Paid for Service Keys' }));
  if (ctx.isAdmin) {
    paidHead.appendChild(el('button', { type: 'button', class: 'btn primary', dataset: { action: 'create-key' },
      onclick: () => createKeyDialog(ctx) }, icon('plus'), 'CREATE NEW KEY'));
  }
  const paidBlock = el('section', { class: 'block', id: 'paid-block', 'aria-labelledby': 'paid-title' },
    paidHead,
    el('p', { class: 'muted', text: 'Keys whose Pay-as-you-go services are charged to a wallet of the team.' }),
    paid.length ? paid.map((k) => keyCard(ctx, k))
      : el('p', { class: 'empty', text: ctx.isAdmin ? 'No paid keys yet: create one.' : 'You are not assigned to any paid key.' }));

  clear(panel, freeBlock, paidBlock, notificationsBlock(ctx));
}

function memberName(ctx, uid) {
  const m = ctx.memberById.get(uid);
  return m ? m.name : uid;
}

function keyCard(ctx, key) {
  const me = ctx.me.user_id;
  const isFree = key.kind === 'free';
  const revoked = key.status !== 'active';
  const assigned = key.users.includes(me);
  const myToken = key.tokens[me];
  const msg = el('p', { class: 'card-error', role: 'alert', hidden: true });
  const act = (fn) => async () => {
    msg.hidden = true;
    try {
      await fn();
    } catch (e) {
      msg.textContent = describe(e);
      msg.hidden = false;
    }
  };

  const items = [];
  const add = (iconName, opts) => { opts.button = actionButton(iconName, opts); items.push(opts); };
  if (ctx.isAdmin) {
    add('edit', { action: 'edit', word: 'Edit', label: isFree ? 'Edit name and description' : 'Edit name, description, expiry and limits',
      disabled: revoked,
      why: 'the key is revoked', onclick: act(() => editKeyDialog(ctx, key)) });
    add('members', { action: 'members', word: 'Members', label: 'Edit members', disabled: revoked,
      why: 'the key is revoked', onclick: act(() => membersDialog(ctx, key)) });
    add('services', { action: 'services', word: 'Services', label: 'Edit services', disabled: isFree || revoked,
      why: revoked ? 'the key is revoked' : 'the free key\'s services are fixed',
      onclick: act(() => editServicesDialog(ctx, key)) });
  }
  if (assigned || ctx.isAdmin) {
    add('newtoken', { action: 'generate', word: 'Generate token', label: 'Generate personal token', kind: 'go',
      disabled: revoked || !assigned || !!myToken,
      why: revoked ? 'the key is revoked' : !assigned ? 'assign yourself to the key first (Members)'
        : 'you have a token already; Rotate replaces it',
      onclick: act(() => generateToken(ctx, key)) });
    add('rotate', { action: 'rotate', word: 'Rotate', label: 'Rotate my token', disabled: revoked || !myToken,
      why: revoked ? 'the key is revoked' : 'you have no token on this key yet',
      onclick: act(() => rotateDialog(ctx, key, me)) });
  }
  if (ctx.isAdmin) {
    add('revoke', { action: 'revoke', word: 'Revoke', label: 'Revoke key', kind: 'danger',
      disabled: isFree || revoked, why: revoked ? 'the key is revoked' : 'the free key cannot be revoked',
      onclick: act(() => revokeKey(ctx, key)) });
  }
  const actions = items.length ? el('div', { class: 'actions', role: 'toolbar', 'aria-label': `Actions on ${key.name}` },
    items.map((i) => i.button)) : null;
  const why = whyNotes(items);

  const users = key.users.length
    ? el('ul', { class: 'users' }, key.users.map((uid) => {
      const t = key.tokens[uid];
      return el('li', { dataset: { user: uid } },
        el('span', { class: 'user-name', text: memberName(ctx, uid) + (uid === me ? ' (you)' : '') }),
        t ? el('span', { class: 'hint' }, el('code', { class: 'token-hint', text: t.hint }),
          ` since ${when(t.created_at)}`) : el('span', { class: 'muted', text: 'no token yet' }),
        ctx.isAdmin && t && uid !== me && !revoked
          ? actionButton('rotate', { action: 'rotate-user', word: 'Rotate', extra: ` ${memberName(ctx, uid)}'s token`,
            label: `Rotate ${memberName(ctx, uid)}'s token`, onclick: act(() => rotateDialog(ctx, key, uid)) }) : null);
    }))
    : el('p', { class: 'muted', text: 'Nobody is assigned.' });

  const svcIds = Object.keys(key.services);
  const services = svcIds.length
    ? el('ul', { class: 'services' }, svcIds.map((sid) => {
      const svc = ctx.catalog.services.find((s) => s.id === sid);
      return el('li', { dataset: { service: sid } }, el('strong', { text: svc ? svc.name : sid }), ' — ',
        policyText(ctx, sid, key.services[sid], key));
    }))
    : el('p', { class: 'muted', text: 'No service enabled.' });

  return el('article', { class: 'key-card' + (revoked ? ' revoked' : ''), dataset: { keyId: key.key_id, kind: key.kind } },
    el('header', { class: 'key-head' },
      el('h3', { class: 'key-name', text: key.name }),
      el('span', { class: 'status status-' + key.status, text: key.status })),
    actions, why,
    key.description ? el('p', { class: 'key-desc', text: key.description }) : el('p', { class: 'key-desc muted', text: 'No description.' }),
    msg,
    isFree ? null : limitsSummary(ctx, key),
    el('div', { class: 'key-body' },
      el('div', {}, el('h4', { text: 'Assigned users and token hints' }), users),
      el('div', {}, el('h4', { text: 'Enabled services' }), services)),
    !isFree && ctx.isAdmin ? spendChart(ctx, { key: key.key_id }, `key ${key.name}`) : null,
    el('footer', { class: 'key-foot muted' }, el('code', { text: key.key_id }), ` · created ${when(key.created_at)}`));
}

// The members of a key: a searchable multi-select (the dropdown list of
// the Key Management document). The chosen people show as chips above a
// search box that filters the list by name or email; the list keeps the
// team's order (owner first). data-field=users, for errors.
function memberPicker(ctx, selected) {
  const listId = 'pick-' + Math.random().toString(36).slice(2, 8);
  const chips = el('ul', { class: 'chips', 'aria-label': 'Chosen members' });
  const search = el('input', { type: 'search', class: 'picker-search', placeholder: 'Search by name or email',
    'aria-label': 'Search members', 'aria-controls': listId, autocomplete: 'off' });
  const none = el('p', { class: 'muted picker-none', hidden: true, text: 'No member matches.' });
  const boxes = ctx.members.map((m) => el('input', { type: 'checkbox', value: m.user_id, checked: selected.includes(m.user_id) }));
  const options = ctx.members.map((m, i) => el('label', { class: 'check', dataset: { find: `${m.name} ${m.email}`.toLowerCase() } },
    boxes[i], el('span', {}, el('strong', { text: m.name + (m.user_id === ctx.me.user_id ? ' (you)' : '') }),
      el('span', { class: 'muted', text: ` ${m.email} · ${m.role}` }))));
  const list = el('div', { class: 'checklist picker-list', id: listId, role: 'group', 'aria-label': 'Team members' }, options);
  const picker = el('div', { class: 'picker', dataset: { field: 'users' } }, chips, search, list, none);

  function paintChips() {
    const on = ctx.members.filter((m, i) => boxes[i].checked);
    clear(chips, on.length ? on.map((m) => el('li', { class: 'chip', dataset: { user: m.user_id } },
      el('span', { text: m.name }),
      el('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove ${m.name}`, text: '×',
        onclick: () => {
          const b = boxes[ctx.members.indexOf(m)];
          b.checked = false;
          b.dispatchEvent(new Event('change', { bubbles: true }));
          search.focus();
        } }))) : el('li', { class: 'muted chip-none', text: 'Nobody chosen yet.' }));
  }
  function filter() {
    const q = search.value.trim().toLowerCase();
    let shown = 0;
    for (const o of options) {
      o.hidden = q !== '' && !o.dataset.find.includes(q);
      if (!o.hidden) shown++;
    }
    none.hidden = shown > 0;
  }
  search.addEventListener('input', filter);
  // Enter in the search box picks the only match instead of submitting.
  search.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Enter') return;
    ev.preventDefault();
    const vis = options.filter((o) => !o.hidden);
    if (vis.length === 1) {
      const b = vis[0].querySelector('input');
      b.checked = !b.checked;
      b.dispatchEvent(new Event('change', { bubbles: true }));
    }
  });
  list.addEventListener('change', paintChips);
  paintChips();
  return picker;
}

function checked(list) {
  return [...list.querySelectorAll('input[type=checkbox]:checked')].map((i) => i.value);
}

function createKeyDialog(ctx) {
  const name = el('input', { type: 'text', maxlength: '200', required: true });
  const desc = el('textarea', { rows: '2', maxlength: '2000' });
  const users = memberPicker(ctx, [ctx.me.user_id]);
  const svc = servicesEditor(ctx, {});
  openDialog({
    title: 'Create a new key', className: 'wide',
    body: [field('Name', name, 'name', null, CHECK.name), field('Description', desc, 'description'),
      el('div', { class: 'field' }, el('div', { class: 'label', text: 'Assigned users' }), users,
        el('div', { class: 'field-error', role: 'alert', hidden: true, dataset: { errorFor: 'users' } })),
      svc.element],
    actions: [
      { label: 'Cancel', kind: 'secondary', action: 'cancel' },
      { label: 'CREATE KEY', kind: 'primary', action: 'create', submit: true, run: async () => {
        const key = await call('key.create', { team: ctx.team.team_id, name: name.value.trim(),
          description: desc.value, users: checked(users), services: svc.value() });
        toast(`Key "${key.name}" created.`);
        ctx.refresh();
      } },
    ],
  });
  name.focus();
}

// The free key has no expiry (free_key_immutable) and no limits here: its
// dialog is name and description only.
function editKeyDialog(ctx, key) {
  const name = el('input', { type: 'text', maxlength: '200', value: key.name });
  const desc = el('textarea', { rows: '3', maxlength: '2000' });
  desc.value = key.description || '';
  const limits = key.kind === 'free' ? null : limitsEditor(ctx, key);
  openDialog({
    title: `Edit ${key.name}`, className: limits ? 'wide' : '',
    body: [field('Name', name, 'name', null, CHECK.name), field('Description', desc, 'description'),
      limits ? limits.element : null],
    actions: [
      { label: 'Cancel', kind: 'secondary', action: 'cancel' },
      { label: 'SAVE', kind: 'primary', action: 'save', submit: true, run: async (d) => {
        const more = limits ? limits.args(d.form) : {};
        if (more === null) return false;
        await call('key.update', { key: key.key_id, name: name.value.trim(), description: desc.value, ...more });
        toast('Key saved.');
        ctx.refresh();
      } },
    ],
  });
}

function membersDialog(ctx, key) {
  const users = memberPicker(ctx, key.users);
  const notify = el('input', { type: 'checkbox', checked: true, dataset: { field: 'notify' } });
  openDialog({
    title: `Members of ${key.name}`,
    body: [
      el('p', { class: 'muted', text: 'Unassigning someone deletes their personal token for this key at once.' }),
      el('div', { class: 'field' }, el('div', { class: 'label', text: 'Assigned users' }), users,
        el('div', { class: 'field-error', role: 'alert', hidden: true, dataset: { errorFor: 'users' } })),
      el('label', { class: 'check notify' }, notify, el('span', { text: 'Notify the users of their changed keys' })),
    ],
    actions: [
      { label: 'Cancel', kind: 'secondary', action: 'cancel' },
      { label: 'SAVE', kind: 'primary', action: 'save', submit: true, errorField: 'users', run: async () => {
        const r = await call('key.users.set', { key: key.key_id, users: checked(users), notify: notify.checked });
        const who = (r.notified || []).map((u) => memberName(ctx, u));
        toast(who.length ? `Members saved. Notified: ${who.join(', ')}.` : 'Members saved.');
        ctx.refresh();
      } },
    ],
  });
}

function editServicesDialog(ctx, key) {
  const svc = servicesEditor(ctx, key.services);
  openDialog({
    title: `Services of ${key.name}`, className: 'wide',
    body: [el('p', { class: 'muted', text: 'Each enabled service needs a billing policy. Saving replaces the whole set.' }), svc.element],
    actions: [
      { label: 'Cancel', kind: 'secondary', action: 'cancel' },
      { label: 'SAVE', kind: 'primary', action: 'save', submit: true, errorField: 'services', run: async () => {
        await call('key.services.set', { key: key.key_id, services: svc.value() });
        toast('Services saved.');
        ctx.refresh();
      } },
    ],
  });
}

// Shows a new token once (secretDialog). After CLOSE it is gone from the page.
export function tokenDialog(ctx, key, r) {
  const forOther = r.user_id !== ctx.me.user_id;
  const value = r.token;
  r.token = null;
  secretDialog({
    title: forOther ? `New token of ${memberName(ctx, r.user_id)}` : 'Your personal token', className: 'token-dialog',
    value, label: 'Personal token', filename: `keygate-token-${key.key_id}.txt`,
    intro: el('p', {}, el('strong', { text: 'Copy it now: it is shown only this once. ' }),
      forOther ? 'Give it to its owner over a safe channel.' : 'keygate keeps only a hash of it.'),
    outro: el('p', { class: 'muted' }, 'Hint shown from now on: ', el('code', { text: r.hint })),
    onClose: () => ctx.refresh(),
  });
}

async function generateToken(ctx, key) {
  const r = await call('token.generate', { key: key.key_id });
  tokenDialog(ctx, key, r);
}

function rotateDialog(ctx, key, uid) {
  const mine = uid === ctx.me.user_id;
  const grace = el('select', {},
    el('option', { value: '0', text: 'At once' }),
    el('option', { value: '3600', text: 'In 1 hour' }),
    el('option', { value: '86400', text: 'In 1 day' }),
    el('option', { value: '604800', text: 'In 7 days' }));
  openDialog({
    title: mine ? `Rotate your token on ${key.name}` : `Rotate ${memberName(ctx, uid)}'s token on ${key.name}`,
    body: [el('p', { text: 'A new token replaces the current one and is shown once.' }),
      field('The old token stops working', grace, 'grace_seconds')],
    actions: [
      { label: 'Cancel', kind: 'secondary', action: 'cancel' },
      { label: 'ROTATE', kind: 'primary', action: 'rotate', submit: true, run: async () => {
        const args = { key: key.key_id, grace_seconds: Number(grace.value) };
        if (!mine) args.user = uid;
        const r = await call('token.rotate', args);
        setTimeout(() => tokenDialog(ctx, key, r), 0);
      } },
    ],
  });
}

async function revokeKey(ctx, key) {
  const yes = await confirmDialog({
    title: `Revoke ${key.name}?`,
    text: 'Every token of this key stops working at once. The key stays listed as revoked, with its history. This cannot be undone.',
    confirmLabel: 'REVOKE KEY', danger: true, action: 'confirm-revoke',
  });
  if (!yes) return;
  await call('key.revoke', { key: key.key_id });
  toast(`Key "${key.name}" revoked.`);
  ctx.refresh();
}

// Your notifications of this team, newest first, a page at a time: while
// older ones remain, "Older entries" fetches the next page (the cursor of
// docs/protocol.md, "Paging"). The list holds every team's: a page may
// show fewer than it fetched.
const NOTES_PAGE = 20;
function notificationsBlock(ctx) {
  const list = el('ul', { class: 'notifications', hidden: true });
  const empty = el('p', { class: 'empty', text: 'Nothing new.', hidden: true });
  const msg = el('p', { class: 'page-error', role: 'alert', hidden: true });
  const more = el('button', { type: 'button', class: 'btn secondary older', dataset: { action: 'notes-older' },
    text: 'Older entries', hidden: true });
  let cursor = null;
  const load = async () => {
    msg.hidden = true;
    more.disabled = true;
    try {
      const r = await call('notification.list', cursor ? { limit: NOTES_PAGE, cursor } : { limit: NOTES_PAGE });
      for (const n of r.notifications) {
        if (n.team_id === ctx.team.team_id) list.appendChild(noteItem(ctx, n));
      }
      cursor = r.next_cursor || null;
      list.hidden = !list.children.length;
      empty.hidden = !list.hidden;
      empty.textContent = cursor ? 'Nothing new in this team on this page.' : 'Nothing new.';
      more.hidden = !cursor;
    } catch (e) {
      msg.textContent = describe(e);
      msg.hidden = false;
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener('click', load);
  load();
  return el('section', { class: 'block', id: 'notifications' },
    el('div', { class: 'block-head' }, el('h2', { text: 'Your notifications' })), list, empty, msg, more);
}

function noteItem(ctx, n) {
  const at = el('span', { class: 'muted', text: when(n.at) + ' ' });
  if (n.type === 'wallet.low_balance') {
    const cur = ctx.catalog.currency;
    return el('li', { dataset: { type: n.type } }, at, 'Wallet ', el('strong', { text: n.wallet_name }),
      ` is low: ${money(n.available_micros, cur)} available, under the alert at ${money(n.threshold_micros, cur)}.`);
  }
  if (n.type === 'wallet.funds_refused') {
    return el('li', { dataset: { type: n.type } }, at, 'Wallet ', el('strong', { text: n.wallet_name }),
      ` refused requests for lack of funds: ${money(n.available_micros, ctx.catalog.currency)} available.`);
  }
  if (n.type === 'key.expiring') {
    const days = n.days_left === 1 ? '1 day' : `${n.days_left} days`;
    return el('li', { dataset: { type: n.type } }, at, 'Key ', el('strong', { text: n.key_name }),
      ` expires in ${days}, on ${when(n.expires_at)}.`);
  }
  return el('li', { dataset: { type: n.type } }, at,
    n.type === 'key.assigned' ? 'You were assigned to key ' : 'You were removed from key ',
    el('strong', { text: n.key_name }), ` by ${memberName(ctx, n.by)}.`);
}
