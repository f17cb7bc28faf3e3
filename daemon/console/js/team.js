// team.js - the Team tab: members and roles. Owners manage every member
// but themselves; admins add and remove members with role "user"; users
// only see the list (SPEC §1, "Roles"). Owners and admins also read the
// team's audit log, a page at a time.
import { call } from './api.js';
import { el, clear, field, openDialog, confirmDialog, toast, describe, when, CHECK } from './ui.js';

export async function renderTeam(ctx, panel) {
  const t = ctx.teamDoc;
  const rows = ctx.members.map((m) => memberRow(ctx, m));      // owner first, then by name
  const blocks = [el('section', { class: 'block' },
    el('div', { class: 'block-head' }, el('h2', { text: `Team ${t.name}` })),
    el('p', { class: 'muted' }, 'Your role here: ', el('strong', { text: ctx.team.role }), '. Team id ', el('code', { text: t.team_id })),
    el('table', { class: 'table members' },
      el('thead', {}, el('tr', {}, ['Name', 'Email', 'Role', 'Actions'].map((h) => el('th', { text: h })))),
      el('tbody', {}, rows)))];
  if (ctx.isAdmin) blocks.push(addMemberBlock(ctx), auditBlock(ctx));
  clear(panel, ...blocks);
}

function memberRow(ctx, m) {
  const me = ctx.me.user_id;
  const owner = ctx.team.role === 'owner';
  const msg = el('div', { class: 'field-error', role: 'alert', hidden: true });
  const act = (fn) => async () => {
    msg.hidden = true;
    try { await fn(); } catch (e) { msg.textContent = describe(e); msg.hidden = false; }
  };
  let role = el('span', { class: 'role role-' + m.role, text: m.role });
  const tools = el('div', { class: 'row-tools' });
  if (owner && m.role !== 'owner') {
    role = el('select', { 'aria-label': `Role of ${m.name}`, dataset: { action: 'set-role' } },
      el('option', { value: 'admin', text: 'admin' }), el('option', { value: 'user', text: 'user' }));
    role.value = m.role;
    role.addEventListener('change', act(async () => {
      try {
        await call('team.member.set_role', { team: ctx.team.team_id, user: m.user_id, role: role.value });
        toast(`${m.name} is now ${role.value}.`);
        ctx.refresh();
      } catch (e) { role.value = m.role; throw e; }
    }));
    tools.append(el('button', { type: 'button', class: 'btn secondary small', dataset: { action: 'transfer' }, text: 'Make owner',
      onclick: act(async () => {
        const yes = await confirmDialog({ title: `Make ${m.name} the owner?`, confirmLabel: 'TRANSFER OWNERSHIP',
          text: 'You become an admin of the team. Only the new owner can give ownership back.', danger: true, action: 'confirm-transfer' });
        if (!yes) return;
        await call('team.transfer_ownership', { team: ctx.team.team_id, user: m.user_id });
        ctx.reload();
      }) }));
  }
  const mayRemove = m.user_id !== me && m.role !== 'owner' && (owner || (ctx.isAdmin && m.role === 'user'));
  if (mayRemove) {
    tools.append(el('button', { type: 'button', class: 'btn danger small', dataset: { action: 'remove' }, text: 'Remove',
      onclick: act(async () => {
        const yes = await confirmDialog({ title: `Remove ${m.name} from the team?`, confirmLabel: 'REMOVE', danger: true,
          text: 'They are unassigned from every key of the team and their tokens stop working at once.', action: 'confirm-remove' });
        if (!yes) return;
        await call('team.member.remove', { team: ctx.team.team_id, user: m.user_id });
        toast(`${m.name} removed.`);
        ctx.refresh();
      }) }));
  }
  return el('tr', { dataset: { user: m.user_id } },
    el('td', { dataset: { label: 'Name' }, text: m.name + (m.user_id === me ? ' (you)' : '') }),
    el('td', { dataset: { label: 'Email' }, text: m.email }),
    el('td', { dataset: { label: 'Role' } }, role), el('td', { class: 'tools-cell' }, tools, msg));
}

function addMemberBlock(ctx) {
  const email = el('input', { type: 'email', placeholder: 'name@example.com', autocomplete: 'off' });
  email.check = (i) => CHECK.email(i.value);
  const role = el('select', {}, el('option', { value: 'user', text: 'user' }),
    ctx.team.role === 'owner' ? el('option', { value: 'admin', text: 'admin' }) : null);
  const btn = el('button', { type: 'button', class: 'btn primary', dataset: { action: 'add-member' }, text: 'ADD MEMBER' });
  btn.addEventListener('click', () => {
    openDialog({
      title: 'Add a member',
      body: [el('p', { class: 'muted', text: 'The person signs up first; then add them by their email.' }),
        field('Email', email, 'email'), field('Role', role, 'role')],
      actions: [
        { label: 'Cancel', kind: 'secondary', action: 'cancel' },
        { label: 'ADD', kind: 'primary', action: 'add', submit: true, errorField: 'email', run: async () => {
          const m = await call('team.member.add', { team: ctx.team.team_id, email: email.value.trim(), role: role.value });
          toast(`${m.name} added as ${m.role}.`);
          email.value = '';
          ctx.refresh();
        } },
      ],
    });
  });
  return el('section', { class: 'block' }, el('div', { class: 'block-head' }, el('h2', { text: 'Add a member' }), btn));
}

// The audit log, newest first (accepted changes and refusals merged, or
// one of them), AUDIT_PAGE entries at a time: "Older entries" follows
// next_cursor (docs/protocol.md, "Paging"); another filter starts over.
const AUDIT_PAGE = 50;
function auditBlock(ctx) {
  const only = el('select', { 'aria-label': 'Which entries', dataset: { action: 'audit-only' } },
    el('option', { value: '', text: 'Changes and refusals' }),
    el('option', { value: 'accepted', text: 'Changes only' }),
    el('option', { value: 'refused', text: 'Refusals only' }));
  const rows = el('tbody');
  const table = el('table', { class: 'table audit', hidden: true },
    el('thead', {}, el('tr', {}, ['When', 'Who', 'Command', 'Target', 'Outcome'].map((h) => el('th', { text: h })))), rows);
  const empty = el('p', { class: 'empty', text: 'Nothing recorded.', hidden: true });
  const msg = el('p', { class: 'page-error', role: 'alert', hidden: true });
  const more = el('button', { type: 'button', class: 'btn secondary older', dataset: { action: 'audit-older' },
    text: 'Older entries', hidden: true });
  const who = (uid) => (ctx.memberById.get(uid) || {}).name || uid || '';
  let cursor = null;
  const load = async (fresh) => {
    if (fresh) { cursor = null; rows.replaceChildren(); }
    msg.hidden = true;
    more.disabled = true;
    try {
      const args = { team: ctx.team.team_id, limit: AUDIT_PAGE };
      if (only.value) args.only = only.value;
      if (cursor) args.cursor = cursor;
      const r = await call('audit.list', args);
      for (const e of r.entries) {
        rows.appendChild(el('tr', { class: 'audit-' + (e.outcome === 'ok' ? 'ok' : 'refused') },
          el('td', { dataset: { label: 'When' }, text: when(e.at) }),
          el('td', { dataset: { label: 'Who' }, text: who(e.actor) }),
          el('td', { dataset: { label: 'Command' } }, el('code', { text: e.cmd })),
          el('td', { dataset: { label: 'Target' } }, el('code', { text: e.target || '' })),
          el('td', { dataset: { label: 'Outcome' }, text: e.outcome })));
      }
      cursor = r.next_cursor || null;
      table.hidden = !rows.children.length;
      empty.hidden = !table.hidden;
      more.hidden = !cursor;
    } catch (e) {
      msg.textContent = describe(e);
      msg.hidden = false;
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener('click', () => load(false));
  only.addEventListener('change', () => load(true));
  load(true);
  return el('section', { class: 'block', id: 'audit-block', 'aria-labelledby': 'audit-title' },
    el('div', { class: 'block-head' }, el('h2', { id: 'audit-title', text: 'Audit log' }), only),
    el('p', { class: 'muted', text: 'Who changed what in this team, and what was refused; newest first.' }),
    table, empty, msg, more);
}
