// app.js - the console's shell: sign-in and sign-up, the header with the
// team and the user, the tabs (Key Management, Wallets, Team), and the
// shared context every view reads.
import { call, callAll, setCsrf, onSignedOut } from './api.js';
import { el, clear, icon, field, describe, showFormError, clearFormErrors, fieldError, CHECK, PASSWORD_HINT }
  from './ui.js';
import { renderKeys } from './keys.js';
import { renderWallets } from './wallets.js';
import { renderTeam } from './team.js';

const root = document.getElementById('root');

const ctx = {
  me: null,            // {user_id, email, name}
  teams: [],           // [{team_id, name, role, free_key_id}]
  team: null,          // the chosen one of teams
  elsewhere: [],       // other teams where the user has keys: [{team, count}]
  teamDoc: null,       // team.get: members with roles
  members: [],
  memberById: new Map(),
  catalog: null,       // service.list
  wallets: null,       // wallet.list (owners and admins), for names and payg
  isAdmin: false,
  tab: 'keys',
  refresh: () => refresh(),
  reload: () => start(),
};

onSignedOut((err) => authView(describe(err)));

// ---- sign-in / sign-up --------------------------------------------------

function authView(notice, mode = 'signin') {
  setCsrf('');
  for (const t of document.querySelectorAll('.toast, dialog')) t.remove();
  const card = el('section', { class: 'auth-card' });
  const brand = el('div', { class: 'auth-brand' }, el('span', { class: 'logo' }, icon('logo')),
    el('div', {}, el('h1', { text: 'keygate' }), el('p', { class: 'muted', text: 'Key Management console' })));

  function signIn() {
    const email = el('input', { type: 'email', autocomplete: 'username', required: true });
    const pw = el('input', { type: 'password', autocomplete: 'current-password', required: true });
    const form = el('form', { id: 'signin-form', novalidate: true },
      el('h2', { text: 'Sign in' }),
      notice ? el('p', { class: 'notice', role: 'status', text: notice }) : null,
      field('Email', email, 'email', null, CHECK.email), field('Password', pw, 'password'),
      el('p', { class: 'form-error', role: 'alert', hidden: true }),
      el('button', { type: 'submit', class: 'btn primary wide', dataset: { action: 'signin' }, text: 'SIGN IN' }),
      el('p', { class: 'switch' }, 'No account yet? ',
        el('button', { type: 'button', class: 'btn link', dataset: { action: 'to-signup' }, text: 'Sign up',
          onclick: () => { notice = ''; clear(card, brand, signUp()); } })));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearFormErrors(form);
      const btn = form.querySelector('button[type=submit]');
      btn.disabled = true;
      try {
        await login(email.value.trim(), pw.value);
      } catch (e) {
        // A wrong password names no field: show it by the password.
        showFormError(form, e, e.code === 'unauthenticated' || e.code === 'rate_limited' ? 'password' : null);
      } finally {
        btn.disabled = false;
      }
    });
    setTimeout(() => email.focus(), 0);
    return form;
  }

  function signUp() {
    const name = el('input', { type: 'text', autocomplete: 'name', maxlength: '200' });
    const email = el('input', { type: 'email', autocomplete: 'username' });
    const pw = el('input', { type: 'password', autocomplete: 'new-password', minlength: '8' });
    const team = el('input', { type: 'text', maxlength: '200' });
    const form = el('form', { id: 'signup-form', novalidate: true },
      el('h2', { text: 'Create your account' }),
      el('p', { class: 'muted', text: 'You get a team of your own, with its free service key ready at once.' }),
      field('Your name', name, 'name', null, CHECK.name), field('Email', email, 'email', null, CHECK.email),
      field('Password', pw, 'password', PASSWORD_HINT, CHECK.password),
      field('Team name', team, 'team_name', 'Optional: when empty, the team is called "<your name>\'s team".', CHECK.teamName),
      el('p', { class: 'form-error', role: 'alert', hidden: true }),
      el('button', { type: 'submit', class: 'btn primary wide', dataset: { action: 'signup' }, text: 'SIGN UP' }),
      el('p', { class: 'switch' }, 'Have an account? ',
        el('button', { type: 'button', class: 'btn link', dataset: { action: 'to-signin' }, text: 'Sign in',
          onclick: () => clear(card, brand, signIn()) })));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearFormErrors(form);
      // Every bad field at once, by keygated's own rules; the first gets
      // the focus. keygated checks again (and names one field at a time).
      const bad = [[name, 'name'], [email, 'email'], [pw, 'password'], [team, 'team_name']]
        .filter(([input, f]) => { const m = input.check(input); if (m) fieldError(form, f, m); return m; });
      if (bad.length) { bad[0][0].focus(); return; }
      const btn = form.querySelector('button[type=submit]');
      btn.disabled = true;
      try {
        const args = { name: name.value.trim(), email: email.value.trim(), password: pw.value };
        if (team.value.trim()) args.team_name = team.value.trim();
        await call('user.signup', args);
        await login(args.email, args.password);
      } catch (e) {
        showFormError(form, e, e.code === 'conflict' ? 'email' : null);
      } finally {
        btn.disabled = false;
      }
    });
    setTimeout(() => name.focus(), 0);
    return form;
  }

  clear(card, brand, mode === 'signup' ? signUp() : signIn());
  clear(root, el('main', { class: 'auth' }, card));
}

async function login(email, password) {
  const r = await call('session.login', { email, password });
  setCsrf(r.csrf_token);
  ctx.tab = 'keys';                     // a sign-in opens on the keys, whoever was here before
  history.replaceState(null, '', location.pathname);
  await start();
}

async function signOut() {
  try { await call('session.logout', {}); } catch (e) { /* the session may be gone already */ }
  ctx.me = null;
  authView('You are signed out.');
}

// ---- the signed-in page ------------------------------------------------

async function start() {
  let me;
  try {
    me = await call('session.whoami', {});
  } catch (e) {
    authView(e.code === 'unauthenticated' ? '' : describe(e));
    return;
  }
  setCsrf(me.csrf_token);
  ctx.me = me.user;
  ctx.teams = me.teams;
  if (!ctx.catalog) ctx.catalog = await call('service.list', {});
  const saved = localStorage.getItem('kg_team');
  const where = await keysByTeam();
  ctx.team = ctx.teams.find((t) => t.team_id === saved) || landing(where) || ctx.teams[0] || null;
  ctx.elsewhere = ctx.teams.filter((t) => t !== ctx.team && where.get(t.team_id) > 0)
    .map((t) => ({ team: t, count: where.get(t.team_id) }));
  const hash = location.hash.replace('#', '');
  if (['keys', 'wallets', 'team'].includes(hash)) ctx.tab = hash;
  await refresh();
}

// How many keys other than the free key each team has assigned to the
// user: team_id -> count (teams that fail to answer count 0).
async function keysByTeam() {
  const out = new Map();
  if (ctx.teams.length < 2) return out;
  await Promise.all(ctx.teams.slice(0, 20).map(async (t) => {
    try {
      const keys = (await callAll('key.list', { team: t.team_id }, 'keys')).keys;
      out.set(t.team_id, keys.filter((k) => k.kind !== 'free' && k.status === 'active' &&
        k.users.includes(ctx.me.user_id)).length);
    } catch (e) {
      out.set(t.team_id, 0);
    }
  }));
  return out;
}

// The team to open when the user has not picked one: the one where they
// have the most keys (a member invited to another team lands where the
// keys assigned to them are), else the first.
function landing(where) {
  let best = null;
  for (const t of ctx.teams) if ((where.get(t.team_id) || 0) > (best ? where.get(best.team_id) : 0)) best = t;
  return best;
}

function switchTeam(t) {
  ctx.team = t;
  localStorage.setItem('kg_team', t.team_id);
  ctx.elsewhere = [];
  keysByTeam().then((where) => {
    ctx.elsewhere = ctx.teams.filter((x) => x !== ctx.team && where.get(x.team_id) > 0)
      .map((x) => ({ team: x, count: where.get(x.team_id) }));
    refresh();
  });
}

// Members in one order everywhere: the owner first, then by name.
function byOwnerThenName(a, b) {
  if ((a.role === 'owner') !== (b.role === 'owner')) return a.role === 'owner' ? -1 : 1;
  return a.name.localeCompare(b.name, undefined, { sensitivity: 'base' }) ||
    a.email.localeCompare(b.email) || a.user_id.localeCompare(b.user_id);
}

async function loadTeam() {
  ctx.isAdmin = ctx.team.role === 'owner' || ctx.team.role === 'admin';
  ctx.teamDoc = await call('team.get', { team: ctx.team.team_id });
  ctx.members = [...ctx.teamDoc.members].sort(byOwnerThenName);
  ctx.memberById = new Map(ctx.members.map((m) => [m.user_id, m]));
  const mine = ctx.members.find((m) => m.user_id === ctx.me.user_id);
  if (mine) { ctx.team.role = mine.role; ctx.isAdmin = mine.role === 'owner' || mine.role === 'admin'; }
  ctx.wallets = ctx.isAdmin ? (await call('wallet.list', { team: ctx.team.team_id })).wallets : [];
}

async function refresh() {
  if (!ctx.me) return;
  if (!ctx.team) {
    clear(root, header(), el('main', { class: 'page' },
      el('p', { class: 'empty', text: 'You are not a member of any team. Ask a team owner or admin to add you, then reload.' })));
    return;
  }
  try {
    await loadTeam();
  } catch (e) {
    if (e.code === 'unauthenticated') return;
    clear(root, header(), el('main', { class: 'page' }, el('p', { class: 'page-error', role: 'alert', text: describe(e) })));
    return;
  }
  if (ctx.tab === 'wallets' && !ctx.isAdmin) ctx.tab = 'keys';
  const panel = el('section', { class: 'panel', id: 'tab-' + ctx.tab, role: 'tabpanel', 'aria-labelledby': 'tab-btn-' + ctx.tab });
  clear(root, header(), tabs(), el('main', { class: 'page' }, elsewhereNote(), panel));
  if (ctx.tab === 'keys') await renderKeys(ctx, panel);
  else if (ctx.tab === 'wallets') await renderWallets(ctx, panel);
  else await renderTeam(ctx, panel);
}

// A visible pointer to the other teams where the user has keys.
function elsewhereNote() {
  if (!ctx.elsewhere.length) return null;
  return el('aside', { class: 'notice elsewhere', 'aria-label': 'Keys in your other teams' },
    ctx.elsewhere.map(({ team, count }) => el('p', { dataset: { team: team.team_id } },
      `You have ${count} ${count === 1 ? 'key' : 'keys'} in the team `, el('strong', { text: team.name }), '. ',
      el('button', { type: 'button', class: 'btn link', dataset: { action: 'switch-team' }, text: `Open ${team.name}`,
        onclick: () => switchTeam(team) }))));
}

function header() {
  const teamPick = ctx.teams.length > 1
    ? el('select', { 'aria-label': 'Team', class: 'team-select', dataset: { action: 'team' } },
      ctx.teams.map((t) => el('option', { value: t.team_id, text: t.name, selected: ctx.team && t.team_id === ctx.team.team_id })))
    : el('span', { class: 'team-name', text: ctx.team ? ctx.team.name : '' });
  if (teamPick.tagName === 'SELECT') {
    teamPick.addEventListener('change', () => switchTeam(ctx.teams.find((t) => t.team_id === teamPick.value)));
  }
  return el('header', { class: 'topbar' },
    el('div', { class: 'brand' }, el('span', { class: 'logo' }, icon('logo')), el('strong', { text: 'keygate' })),
    el('div', { class: 'team' }, teamPick,
      ctx.team ? el('span', { class: 'role role-' + ctx.team.role, id: 'my-role', text: ctx.team.role }) : null),
    el('div', { class: 'who' }, el('span', { class: 'user', text: ctx.me.name }),
      el('span', { class: 'muted', text: ctx.me.email }),
      el('button', { type: 'button', class: 'btn secondary small', dataset: { action: 'signout' }, text: 'Sign out', onclick: signOut })));
}

function tabs() {
  const items = [['keys', 'Key Management', 'token']];
  if (ctx.isAdmin) items.push(['wallets', 'Wallets', 'wallet']);
  items.push(['team', 'Team', 'team']);
  return el('nav', { class: 'tabs', role: 'tablist' }, items.map(([id, label, ic]) =>
    el('button', { type: 'button', role: 'tab', class: 'tab', id: 'tab-btn-' + id, 'aria-selected': String(ctx.tab === id),
      'aria-controls': ctx.tab === id ? 'tab-' + id : null, dataset: { tab: id },
      onclick: () => { ctx.tab = id; history.replaceState(null, '', '#' + id); refresh(); } }, icon(ic), label)));
}

start();
