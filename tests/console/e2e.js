// e2e.js - the Key Management console in a real browser (Debian's
// chromium, driven by playwright-core), against a live keygated.
//
// Run by test_browser.py, which starts redis-server and keygated and
// passes: KG_HTTP_PORT, KG_SOCKET (the admin socket, used to check every
// result independently of the page), KG_SHOTS (screenshot folder),
// KG_REDIS and KG_PREFIX (Redis' Unix socket and the key prefix: the test
// places a hold as a gateway would, since it starts no gateway).
//
// Scenario: sign-up; add a member; CREATE NEW KEY; edit members with
// notify; edit services with Pay-as-you-go reading the cost estimate;
// generate a token (copy, download, gone after CLOSE); rotate; top up a
// wallet; a low-balance alert, a hold taking the wallet under it, the
// webhook (http:// only, its secret shown once) and the alert's delivery;
// the audit log and notifications a page at a time; revoke; then a user-role login sees no create/revoke actions,
// gets a clear error for a wrong password, and rotates her own token.
'use strict';

const assert = require('assert/strict');
const fs = require('fs');
const net = require('net');
const path = require('path');
const { chromium } = require('playwright-core');

const PORT = Number(process.env.KG_HTTP_PORT);
const SOCKET = process.env.KG_SOCKET;
const SHOTS = process.env.KG_SHOTS;
const BASE = `http://127.0.0.1:${PORT}`;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PW = 'correct horse battery';
const run = `${process.pid}${Date.now() % 100000}`;
const TOKEN_RE = /^kg_[0-9A-Za-z]{61}$/;
const REDIS = process.env.KG_REDIS;
const PREFIX = process.env.KG_PREFIX || '';

// One Redis command over its Unix socket (RESP), answered as a string.
function redis(...args) {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path: REDIS });
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', (d) => {
      buf += d;
      if (buf.endsWith('\r\n')) {
        s.end();
        if (buf[0] === '-') reject(new Error(buf.trim())); else resolve(buf.slice(1).trim());
      }
    });
    s.on('error', reject);
    s.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join(''));
  });
}

// A loopback port nothing listens on: the webhook's deliveries fail
// ("connection failed") and are retried, which the page shows.
function closedPort() {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => { const p = srv.address().port; srv.close(() => resolve(p)); });
  });
}

async function until(what, fn, ms = 8000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    assert.ok(Date.now() < end, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---- the admin socket: one JSON request per line ------------------------

class Admin {
  constructor(file) {
    this.sock = net.createConnection({ path: file });
    this.buf = '';
    this.waiting = [];
    this.sock.setEncoding('utf8');
    this.sock.on('data', (d) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        this.waiting.shift()(JSON.parse(line));
      }
    });
  }
  call(cmd, actor, args = {}) {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.sock.write(JSON.stringify({ cmd, actor, ...args }) + '\n');
    });
  }
  async ok(cmd, actor, args) {
    const r = await this.call(cmd, actor, args);
    assert.equal(r.ok, true, `${cmd} over the socket failed: ${JSON.stringify(r)}`);
    return r.result;
  }
  close() { this.sock.end(); }
}

// ---- steps --------------------------------------------------------------

let shotNo = 0;
async function shot(page, name) {
  shotNo += 1;
  const w = page.viewportSize().width;
  const file = path.join(SHOTS, `${String(shotNo).padStart(2, '0')}-${w}-${name}.png`);
  // a modal is seen in the viewport, as people see it; a page whole
  const modal = await page.locator('dialog[open]').count() > 0;
  await page.screenshot({ path: file, fullPage: !modal });
}

function step(name) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${name}`);
}

const card = (page, keyId) => page.locator(`.key-card[data-key-id="${keyId}"]`);

// Spend per day (charts.js) on a card: ready, and the same 30 days and
// total as usage.summary over the admin socket; one bar per day, drawn
// only where the day cost something. Returns the summary.
const DAY_MS = 86400000;
const usd = (micros) => {
  const v = BigInt(micros);
  let f = (v % 1000000n).toString().padStart(6, '0').replace(/0+$/, '');
  return `${(v / 1000000n).toLocaleString('en-US')}.${f.padEnd(2, '0')} USD`;
};
const utcDay = (ms) => new Date(ms).toISOString().slice(0, 10);
async function spendChecked(where, admin, actor, team, filter) {
  const sp = where.locator('.spend[data-spend=ready]');
  await sp.waitFor();
  const from = Math.floor(Date.now() / DAY_MS) * DAY_MS - 29 * DAY_MS;
  const sum = await admin.ok('usage.summary', actor, { team, ...filter, from, to: Date.now() });
  assert.equal(sum.buckets.length, 30);
  assert.equal(await sp.getAttribute('data-total-micros'), String(sum.total.cost_micros));
  assert.equal(await sp.locator('.spend-sum').innerText(), usd(sum.total.cost_micros));
  const svg = sp.locator('svg[role=img]');
  assert.ok((await svg.getAttribute('aria-label')).includes(usd(sum.total.cost_micros)), 'the chart\'s label says the total');
  const bars = await svg.locator('rect.bar').evaluateAll((rs) => rs.map((r) => Number(r.getAttribute('height')) > 0));
  assert.deepEqual(bars, sum.buckets.map((b) => b.cost_micros > 0));
  const rows = await sp.locator('.spend-table tbody tr').evaluateAll((trs) =>
    trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  assert.deepEqual(rows, sum.buckets.map((b) => [utcDay(b.start), String(b.requests), usd(b.cost_micros)]));
  return sum;
}
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

// No sideways scroll, and no element sticking out of the viewport (the
// offenders are named in the failure).
async function fits(page, what) {
  const r = await page.evaluate(() => {
    const w = window.innerWidth;
    const out = [];
    for (const e of document.querySelectorAll('body *')) {
      const b = e.getBoundingClientRect();
      if (b.width === 0 || b.height === 0) continue;
      if (b.right > w + 0.5 || b.left < -0.5) {
        out.push(`${e.tagName.toLowerCase()}.${e.className && e.className.baseVal === undefined ? e.className : ''}` +
          ` [${Math.round(b.left)}..${Math.round(b.right)}]`);
      }
    }
    return { scroll: document.documentElement.scrollWidth, w, out: out.slice(0, 8) };
  });
  assert.ok(r.scroll <= r.w, `${what}: page is ${r.scroll} px wide in a ${r.w} px viewport`);
  assert.deepEqual(r.out, [], `${what}: elements wider than the ${r.w} px viewport`);
}

// axe-core in the page: no serious or critical accessibility violation.
// Injected through the debugging protocol, so the page's strict CSP stays.
let axeRuns = 0;
async function axe(page, what) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE);
  const bad = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.impact} ${v.id}: ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | ')}`);
  });
  axeRuns += 1;
  assert.deepEqual(bad, [], `${what}: axe-core found serious/critical violations`);
}

// Both checks, and a screenshot.
async function look(page, name) {
  await fits(page, name);
  await axe(page, name);
  await shot(page, name);
}

async function rgbOf(loc, prop) {
  const c = await loc.evaluate((e, p) => getComputedStyle(e)[p], prop);
  return c.match(/\d+/g).slice(0, 3).map(Number);
}
const dialog = (page) => page.locator('dialog[open]').last();

// Clicks `button` until `shows` is visible (3 tries of 5 s).
async function clickUntil(button, shows) {
  for (let i = 0; ; i++) {
    await button.click();
    try {
      await shows.waitFor({ timeout: 5000 });
      return;
    } catch (e) {
      if (i === 2) throw e;
    }
  }
}

async function whoami(page) {
  return page.evaluate(async () => {
    const r = await fetch('/api/session.whoami', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    return (await r.json()).result;
  });
}

async function signIn(page, email, password) {
  await page.fill('#signin-form [data-field=email]', email);
  await page.fill('#signin-form [data-field=password]', password);
  await page.click('[data-action=signin]');
}

const t0 = Date.now();

// The owner's whole console at a phone's width: sign-in, sign-up errors,
// the keys, every dialog, wallets and team. Each view must fit (no
// sideways scroll) and pass axe-core; Escape closes each dialog.
async function narrow(browser, width, admin, s) {
  const context = await browser.newContext({ viewport: { width, height: 760 }, hasTouch: true });
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const escape = async () => {
    const n = await page.locator('dialog[open]').count();
    await page.keyboard.press('Escape');
    await page.waitForFunction((k) => document.querySelectorAll('dialog[open]').length === k - 1, n);
  };
  try {
    step(`${width} px`);
    await page.goto(BASE + '/');
    await page.waitForSelector('#signin-form');
    await look(page, 'sign-in');
    await page.click('[data-action=to-signup]');
    await page.click('[data-action=signup]');
    await page.locator('#signup-form [data-error-for=password]').waitFor({ state: 'visible' });
    await look(page, 'sign-up-errors');
    await page.click('[data-action=to-signin]');
    await signIn(page, s.ownerEmail, PW);
    await card(page, s.longKey).waitFor();
    await spendChecked(card(page, s.longKey), admin, s.owner, s.team, { key: s.longKey });
    await look(page, 'keys');
    const lc = card(page, s.longKey);
    assert.match(await lc.locator('[data-limit=expires]').innerText(), /^Expires in (29|30) days on /);
    assert.equal(await lc.locator('[data-limit=budget-day]').innerText(), 'Daily budget: 12.345678 USD');
    await lc.screenshot({ path: path.join(SHOTS, `${String(++shotNo).padStart(2, '0')}-${width}-limits-card.png`) });
    const box = await lc.locator('.actions').boundingBox();
    assert.ok(box.height > 40, 'the actions wrap onto more rows on a phone');

    await page.click('[data-action=create-key]');
    await dialog(page).locator('[data-field=name]').waitFor();
    await look(page, 'create-key-dialog');
    await dialog(page).locator('select[data-service="text-generation"]').selectOption('payg');
    await page.locator('dialog.payg[open]').waitFor();
    await page.locator('dialog.payg[open] input[type=checkbox][value=small]').check();
    await page.locator('dialog.payg[open] .cost-value').waitFor();
    await look(page, 'payg-dialog');
    await escape();
    await escape();
    for (const a of ['edit', 'members', 'services']) {
      await lc.locator(`[data-action=${a}]`).click();
      await dialog(page).waitFor();
      await look(page, `${a}-dialog`);
      if (a === 'edit') {
        // the limits at a phone's width, with an error under a field
        const d = dialog(page);
        assert.equal(await d.locator('[data-field=budget_month_micros]').inputValue(), '250.00');
        await d.locator('input[data-service="speech-to-text"][data-rate=per_second]').fill('x');
        await d.locator('[data-action=save]').click();
        await d.locator('[data-error-for=rate_limits]').waitFor({ state: 'visible' });
        await d.locator('[data-error-for=rate_limits]').scrollIntoViewIfNeeded();
        await look(page, 'limits-error');
      }
      await escape();
    }
    const gen = lc.locator('[data-action=generate]');
    if (await gen.isDisabled()) {
      await lc.locator('[data-action=rotate]').click();
      await dialog(page).locator('[data-action=rotate]').waitFor();
      await look(page, 'rotate-dialog');
      await dialog(page).locator('[data-action=rotate]').click();
    } else {
      await gen.click();
    }
    const td = page.locator('dialog.token-dialog[open]');
    await td.waitFor();
    const secret = await td.locator('input.token').inputValue();
    await look(page, 'token-dialog');
    await page.keyboard.press('Escape');
    await td.waitFor({ state: 'detached' });
    assert.equal((await page.content()).includes(secret), false, 'Escape wipes the token like CLOSE');
    // The card is drawn again once the new token is listed: a click that
    // lands on the card being replaced opens nothing (seen under ASan on a
    // loaded machine), so click again until the confirmation is up.
    await clickUntil(lc.locator('[data-action=revoke]'),
      dialog(page).locator('[data-action=confirm-revoke]'));
    await look(page, 'revoke-confirm');
    await escape();
    assert.equal((await admin.ok('key.get', s.owner, { key: s.longKey })).status, 'active');

    await page.click('[data-tab=wallets]');
    const wc = page.locator(`.wallet-card[data-wallet-id="${s.W}"]`);
    await wc.locator('[data-action=ledger]').click();
    await wc.locator('tr.entry-credit').first().waitFor();
    const wb = page.locator('#webhook-block');
    await wb.locator('tr[data-delivery]').first().waitFor();
    await wc.locator('.held').waitFor();
    const ws = await spendChecked(wc, admin, s.owner, s.team, { wallet: s.W });
    assert.equal(ws.total.cost_micros, 1734567);
    await wc.locator('.spend-numbers summary').click();
    await wc.locator('.spend-table').waitFor();
    await look(page, 'wallets');
    await wc.locator('[data-action=topup]').click();
    await dialog(page).locator('[data-field=amount_micros]').waitFor();
    await look(page, 'topup-dialog');
    await escape();
    await wc.locator('[data-action=alert]').click();
    await dialog(page).locator('[data-field=threshold_micros]').waitFor();
    assert.equal(await dialog(page).locator('[data-field=threshold_micros]').inputValue(), '20.00');
    await look(page, 'alert-dialog');
    if (s.max) {
      await escape();
    } else {
      // the last run (320 px) removes the alert
      await dialog(page).locator('[data-action=remove-alert]').click();
      await wc.locator('.alert-line[data-below=none]').waitFor();
      assert.equal((await admin.ok('wallet.get', s.owner, { wallet: s.W })).alert_threshold_micros, undefined);
    }
    await wb.locator('[data-action=webhook-set]').click();
    const hd = dialog(page);
    await hd.locator('[data-field=url]').waitFor();
    await look(page, 'webhook-dialog');
    if (s.max) {
      // a new signing secret, shown once; Escape wipes it like CLOSE
      await hd.locator('input[data-field=rotate_secret]').check();
      await hd.locator('[data-action=save-webhook]').click();
      const sd = page.locator('dialog.webhook-secret[open]');
      await sd.waitFor();
      const whsec = await sd.locator('input.token').inputValue();
      await look(page, 'webhook-secret');
      await page.keyboard.press('Escape');
      await sd.waitFor({ state: 'detached' });
      assert.equal((await page.content()).includes(whsec), false, 'Escape wipes the webhook secret like CLOSE');
      assert.equal((await admin.ok('webhook.get', s.owner, { team: s.team })).secret_hint, `whsec_…${whsec.slice(-4)}`);
    } else {
      await escape();
    }

    await page.click('[data-tab=team]');
    await page.waitForSelector(`tr[data-user="${s.uma}"]`);
    await page.locator('#audit-block tbody tr').first().waitFor();
    await look(page, 'team');
    await page.click('[data-action=add-member]');
    await dialog(page).locator('[data-field=email]').waitFor();
    await look(page, 'add-member-dialog');
    await escape();

    if (s.max) {
      // a member whose keys are in another team lands there
      step(`${width} px: a member of two teams`);
      await page.click('[data-action=signout]');
      await signIn(page, s.max.email, PW);
      await card(page, s.max.key).waitFor();
      assert.equal(await page.locator('select[data-action=team]').inputValue(), s.team);
      await look(page, 'member-lands-on-keys');
      await page.locator('select[data-action=team]').selectOption(s.max.ownTeam);
      await page.locator(`.elsewhere p[data-team="${s.team}"]`).waitFor();
      assert.match(await page.locator('.elsewhere').innerText(), /You have 1 key in the team Acme Robotics\. Open Acme Robotics/);
      await look(page, 'member-pointer');
      await page.locator('.elsewhere [data-action=switch-team]').click();
      await card(page, s.max.key).waitFor();
    }
    assert.deepEqual(errors, [], 'the page threw');
  } catch (e) {
    try { await shot(page, 'FAILED'); } catch (_) { /* the page is gone */ }
    throw e;
  } finally {
    await context.close();
  }
}

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  for (const f of fs.readdirSync(SHOTS)) if (f.endsWith('.png')) fs.unlinkSync(path.join(SHOTS, f));
  const admin = new Admin(SOCKET);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));

  try {
    // 1. sign-up: the team's free key is there at once
    step('sign-up');
    await page.goto(BASE + '/');
    await page.waitForSelector('#signin-form');
    await look(page, 'sign-in');
    await page.click('[data-action=to-signup]');
    // every bad field at once; the hint and the error say keygated's rule
    const su = (f) => page.locator(`#signup-form [data-error-for=${f}]`);
    assert.equal(await page.locator('#signup-form .hint').first().innerText(), 'At least 8 characters, not only spaces.');
    await page.click('[data-action=signup]');
    for (const f of ['name', 'email', 'password']) await su(f).waitFor({ state: 'visible' });
    assert.equal(await su('team_name').isVisible(), false);
    await page.fill('#signup-form [data-field=password]', '        ');
    await page.click('[data-action=signup]');
    const spaces = await admin.call('user.signup', undefined, { email: `spaces-${run}@example.test`, name: 'S', password: '        ' });
    assert.equal(spaces.error.code, 'bad_request');
    const daemonRule = spaces.error.message.replace(/^'password'/, 'Password') + '.';
    assert.equal(await su('password').innerText(), daemonRule);
    const eight = await admin.call('user.signup', undefined, { email: `eight-${run}@example.test`, name: 'E', password: 'ééééééé ' });
    assert.equal(eight.ok, true, 'eight characters in more bytes are a good password');
    await look(page, 'sign-up-errors');
    // an error goes as soon as its field is right; the others stay
    await page.fill('#signup-form [data-field=name]', 'Olivia Owner');
    await su('name').waitFor({ state: 'hidden' });
    assert.equal(await su('email').isVisible(), true);
    assert.equal(await page.locator('#signup-form [data-field=name]').getAttribute('aria-invalid'), null);
    await page.fill('#signup-form [data-field=password]', 'short');
    assert.equal(await su('password').isVisible(), true);
    const ownerEmail = `olivia-${run}@example.test`;
    await page.fill('#signup-form [data-field=name]', 'Olivia Owner');
    await page.fill('#signup-form [data-field=email]', ownerEmail);
    await page.fill('#signup-form [data-field=password]', PW);
    await page.fill('#signup-form [data-field=team_name]', 'Acme Robotics');
    await shot(page, 'sign-up');
    await page.click('[data-action=signup]');
    await page.waitForSelector('#free-block .key-card');
    const me = await whoami(page);
    const owner = me.user.user_id;
    const team = me.teams[0].team_id;
    assert.equal(me.teams[0].role, 'owner');
    const freeKey = me.teams[0].free_key_id;
    let keys = (await admin.ok('key.list', owner, { team })).keys;
    assert.deepEqual(keys.map((k) => [k.key_id, k.kind, k.users]), [[freeKey, 'free', [owner]]]);
    await card(page, freeKey).waitFor();
    // the free key: no revoke, no services edit (disabled, the rule in words)
    const fc = card(page, freeKey);
    assert.equal(await fc.locator('[data-action=revoke]').isDisabled(), true);
    assert.equal(await fc.locator('[data-action=services]').isDisabled(), true);
    assert.equal(await fc.locator('.why li[data-why=services]').innerText(), 'Services: the free key\'s services are fixed.');
    assert.equal(await fc.locator('.why li[data-why=revoke]').innerText(), 'Revoke: the free key cannot be revoked.');
    assert.equal(await fc.locator('.why').isVisible(), true);
    // labelled actions; Generate personal token is green
    assert.deepEqual(await fc.locator('.actions button').allInnerTexts(),
      ['Edit', 'Members', 'Services', 'Generate token', 'Rotate', 'Revoke']);
    const [r, g, b] = await rgbOf(fc.locator('[data-action=generate]'), 'backgroundColor');
    assert.ok(g > r + 60 && g > b + 30, `Generate personal token is green, not rgb(${r},${g},${b})`);
    assert.equal(await fc.locator('[data-action=generate]').getAttribute('title'), 'Generate personal token');
    await look(page, 'free-key');

    // keyboard: every action is reachable with Tab, and the focus is visible
    await page.locator('body').click({ position: { x: 1, y: 1 } });
    const reached = [];
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press('Tab');
      const f = await page.evaluate(() => {
        const e = document.activeElement;
        const cs = getComputedStyle(e);
        return { a: e.dataset.action || e.dataset.tab || e.tagName, outline: cs.outlineStyle, width: cs.outlineWidth };
      });
      reached.push(f.a);
      if (f.a !== 'BODY') assert.notEqual(f.outline, 'none', `focus on ${f.a} is not visible`);
    }
    for (const a of ['signout', 'keys', 'team', 'edit', 'members', 'generate']) assert.ok(reached.includes(a), `${a} not reachable by Tab: ${reached}`);
    // a dialog opened from the keyboard keeps the focus, and Escape closes it
    await fc.locator('[data-action=edit]').focus();
    await page.keyboard.press('Enter');
    await dialog(page).waitFor();
    for (const key of ['Tab', 'Tab', 'Tab', 'Tab', 'Tab', 'Tab', 'Shift+Tab', 'Shift+Tab', 'Shift+Tab', 'Shift+Tab']) {
      await page.keyboard.press(key);
      assert.equal(await page.evaluate(() => !!document.activeElement.closest('dialog[open]')), true, `${key} left the dialog`);
    }
    await page.keyboard.press('Escape');
    await dialog(page).waitFor({ state: 'detached' });
    assert.equal(await page.evaluate(() => document.activeElement.dataset.action), 'edit', 'the focus goes back to the opener');

    // 2. a member with role user, added from the Team view
    step('add a member');
    const umaEmail = `uma-${run}@example.test`;
    const uma = (await admin.ok('user.signup', undefined, { email: umaEmail, name: 'Uma User', password: PW })).user_id;
    await page.click('[data-tab=team]');
    await page.click('[data-action=add-member]');
    await dialog(page).locator('[data-field=email]').fill(umaEmail);
    await dialog(page).locator('[data-field=role]').selectOption('user');
    await dialog(page).locator('[data-action=add]').click();
    await page.waitForSelector(`tr[data-user="${uma}"]`);
    const teamDoc = await admin.ok('team.get', owner, { team });
    assert.equal(teamDoc.members.find((m) => m.user_id === uma).role, 'user');
    await look(page, 'team');

    // 3. CREATE NEW KEY
    step('create a key');
    await page.click('[data-tab=keys]');
    await page.click('[data-action=create-key]');
    const d1 = dialog(page);
    await d1.locator('[data-field=name]').fill('Production backend');
    await d1.locator('[data-field=description]').fill('Servers in eu-west');
    await d1.locator('select[data-service="speech-to-text"]').selectOption('free');
    await look(page, 'create-key-dialog');
    // an error from the server is shown next to its field
    await d1.locator('[data-field=name]').fill('   ');
    await d1.locator('[data-action=create]').click();
    await d1.locator('[data-error-for=name]').waitFor({ state: 'visible' });
    assert.match(await d1.locator('[data-error-for=name]').innerText(), /^Name must be 1-200 printable characters\.$/);
    await look(page, 'create-key-error');
    await d1.locator('[data-field=name]').fill('Production backend');
    await d1.locator('[data-error-for=name]').waitFor({ state: 'hidden' });
    assert.equal(await d1.locator('[data-field=name]').getAttribute('aria-invalid'), null);
    await d1.locator('[data-action=create]').click();
    await page.waitForSelector('#paid-block .key-card');
    keys = (await admin.ok('key.list', owner, { team })).keys;
    const paid = keys.find((k) => k.kind === 'paid');
    assert.equal(paid.name, 'Production backend');
    assert.equal(paid.description, 'Servers in eu-west');
    assert.deepEqual(paid.users, [owner]);
    assert.deepEqual(paid.services, { 'speech-to-text': { policy: 'free' } });
    const K = paid.key_id;
    await card(page, K).waitFor();

    // 4. edit members, with notify
    step('edit members');
    await card(page, K).locator('[data-action=members]').click();
    const d2 = dialog(page);
    const order = await d2.locator('.picker-list input[type=checkbox]').evaluateAll((l) => l.map((i) => i.value));
    assert.equal(order[0], owner, 'the owner comes first');
    assert.deepEqual(order.slice().sort(), [owner, uma].sort());
    await d2.locator('.picker-search').fill('UMA');
    assert.equal(await d2.locator('.picker-list .check:visible').count(), 1);
    await d2.locator('.picker-search').press('Enter');
    await d2.locator(`.chip[data-user="${uma}"]`).waitFor();
    assert.equal(await d2.locator(`input[value="${uma}"]`).isChecked(), true);
    await d2.locator('.picker-search').fill('nobody-like-this');
    await d2.locator('.picker-none').waitFor({ state: 'visible' });
    await d2.locator('.picker-search').fill('');
    assert.equal(await d2.locator('[data-field=notify]').isChecked(), true);
    assert.match(await d2.innerText(), /Notify the users of their changed keys/);
    await look(page, 'members-dialog');
    await d2.locator('[data-action=save]').click();
    await page.waitForSelector(`.key-card[data-key-id="${K}"] li[data-user="${uma}"]`);
    assert.deepEqual((await admin.ok('key.get', owner, { key: K })).users.sort(), [owner, uma].sort());
    const notes = (await admin.ok('notification.list', uma)).notifications;
    assert.equal(notes[0].type, 'key.assigned');
    assert.equal(notes[0].key_id, K);
    assert.equal(notes[0].by, owner);

    // 5. edit services: Pay-as-you-go with models, a wallet, the estimate
    step('edit services (pay-as-you-go)');
    await card(page, K).locator('[data-action=services]').click();
    const d3 = dialog(page);
    await d3.locator('select[data-service="text-generation"]').selectOption('payg');
    const pg = page.locator('dialog.payg[open]');
    await pg.waitFor();
    const estSel = pg.locator('select[aria-label="Model to estimate"]');
    const offered = () => estSel.locator('option').evaluateAll((l) => l.map((o) => o.value));
    assert.equal(await estSel.isDisabled(), true, 'no model ticked: nothing to estimate');
    await pg.locator('[data-action=ok]').click();
    await pg.locator('[data-error-for=models]').waitFor({ state: 'visible' });
    await pg.locator('input[type=checkbox][value=small]').check();
    await pg.locator('[data-error-for=models]').waitFor({ state: 'hidden' });
    assert.deepEqual(await offered(), ['small']);
    await pg.locator('[data-action=ok]').click();
    await pg.locator('[data-error-for=wallet]').waitFor({ state: 'visible' });
    assert.equal(await pg.locator('[data-error-for=wallet]').innerText(), 'Choose the wallet that pays, or create one.');
    await look(page, 'payg-errors');
    await pg.locator('input[placeholder="New wallet name"]').fill('Main wallet');
    await pg.locator('[data-action=create-wallet]').click();
    await pg.locator('[data-field=wallet] option', { hasText: 'Main wallet' }).waitFor({ state: 'attached' });
    await pg.locator('[data-error-for=wallet]').waitFor({ state: 'hidden' });
    const wallets = (await admin.ok('wallet.list', owner, { team })).wallets;
    assert.equal(wallets.length, 1);
    const W = wallets[0].wallet_id;
    assert.equal(await pg.locator('[data-field=wallet]').inputValue(), W);
    await pg.locator('input[type=checkbox][value=large]').check();
    assert.deepEqual(await offered(), ['small', 'large']);
    await estSel.selectOption('large');
    await pg.locator('input[data-param=input_tokens]').fill('2000');
    await pg.locator('input[data-param=output_tokens]').fill('500');
    const est = await admin.ok('price.estimate', undefined,
      { service: 'text-generation', model: 'large', params: { input_tokens: 2000, output_tokens: 500 } });
    assert.equal(est.cost_micros, 500 + 1800 + 1500);
    await page.waitForFunction((m) => {
      const e = document.querySelector('dialog.payg .cost-value');
      return e && e.dataset.micros === m;
    }, String(est.cost_micros));
    assert.equal(await pg.locator('.cost-value').innerText(), '0.0038 USD');
    // another model keeps the typed values, and prices them for that model
    await estSel.selectOption('small');
    assert.equal(await pg.locator('input[data-param=input_tokens]').inputValue(), '2000');
    assert.equal(await pg.locator('input[data-param=output_tokens]').inputValue(), '500');
    const estSmall = await admin.ok('price.estimate', undefined,
      { service: 'text-generation', model: 'small', params: { input_tokens: 2000, output_tokens: 500 } });
    await page.waitForFunction((m) => {
      const e = document.querySelector('dialog.payg .cost-value');
      return e && e.dataset.model === 'small' && e.dataset.micros === m;
    }, String(estSmall.cost_micros));
    // unticking the estimated model moves the estimate to a ticked one
    await estSel.selectOption('large');
    await pg.locator('input[type=checkbox][value=large]').uncheck();
    assert.deepEqual(await offered(), ['small']);
    await pg.locator('input[type=checkbox][value=large]').check();
    await estSel.selectOption('large');
    // a bad parameter is explained next to the inputs
    await pg.locator('input[data-param=output_tokens]').fill('-5');
    await pg.locator('[data-error-for=params]').waitFor({ state: 'visible' });
    assert.match(await pg.locator('[data-error-for=params]').innerText(), /negative|must/i);
    await pg.locator('input[data-param=output_tokens]').fill('500');
    await page.waitForFunction((m) => {
      const e = document.querySelector('dialog.payg .cost-value');
      return e && e.dataset.micros === m;
    }, String(est.cost_micros));
    await look(page, 'payg-estimate');
    await pg.locator('[data-action=ok]').click();
    await pg.waitFor({ state: 'detached' });
    assert.match(await d3.locator('.svc-row[data-service="text-generation"] .svc-summary').innerText(), /Pay-as-you-go · models small, large · wallet Main wallet/);
    await look(page, 'services-dialog');
    await d3.locator('[data-action=save]').click();
    await d3.waitFor({ state: 'detached' });
    const afterSvc = await admin.ok('key.get', owner, { key: K });
    assert.deepEqual(afterSvc.services, {
      'speech-to-text': { policy: 'free' },
      'text-generation': { policy: 'payg', models: ['small', 'large'], wallet: W },
    });
    await page.waitForSelector(`.key-card[data-key-id="${K}"] li[data-service="text-generation"]`);

    // 5b. expiry, budgets and rate limits in the edit dialog: each bad
    // field's error under it, gone once the field is right; what the page
    // set is what the daemon stored
    step('expiry, budgets, rate limits');
    await card(page, K).locator('[data-action=edit]').click();
    const dl5 = dialog(page);
    await dl5.locator('fieldset.limits-edit').waitFor();
    assert.equal(await dl5.locator('[data-field=expires_at]').inputValue(), '');
    const rl = (sid, n) => dl5.locator(`input[data-service="${sid}"][data-rate="${n}"]`);
    const err5 = (f) => dl5.locator(`[data-error-for=${f}]`);
    await dl5.locator('[data-field=expires_at]').fill('2001-01-01T00:00');
    await dl5.locator('[data-field=budget_day_micros]').fill('two');
    await rl('text-generation', 'per_second').fill('5000');
    await dl5.locator('[data-action=save]').click();
    for (const f of ['expires_at', 'budget_day_micros', 'rate_limits']) await err5(f).waitFor({ state: 'visible' });
    assert.equal(await err5('expires_at').innerText(), 'Expiry must be in the future.');
    assert.equal(await err5('budget_day_micros').innerText(), 'Enter an amount in USD, like 25.00, or leave it empty for no cap.');
    assert.match(await err5('rate_limits').innerText(), /at most 1000 per second/);
    assert.equal(await rl('text-generation', 'per_second').getAttribute('aria-invalid'), 'true');
    assert.equal(await err5('budget_month_micros').isVisible(), false);
    await look(page, 'limits-errors');
    let k5 = await admin.ok('key.get', owner, { key: K });
    for (const f of ['expires_at', 'budget_day_micros', 'budget_month_micros', 'rate_limits']) assert.equal(k5[f], undefined, f);
    // the focus stays in the (wide) dialog
    for (let i = 0; i < 24; i++) {
      await page.keyboard.press(i % 5 === 4 ? 'Shift+Tab' : 'Tab');
      assert.equal(await page.evaluate(() => !!document.activeElement.closest('dialog[open]')), true, 'Tab left the limits dialog');
    }
    const expMs = Math.floor((Date.now() + 3 * 86400000 + 2 * 3600000) / 60000) * 60000;
    const expText = new Date(expMs).toISOString().slice(0, 16);
    await dl5.locator('[data-field=expires_at]').fill(expText);
    await err5('expires_at').waitFor({ state: 'hidden' });
    assert.equal(await err5('budget_day_micros').isVisible(), true, 'another field\'s error stays');
    await dl5.locator('[data-field=budget_day_micros]').fill('2.5');
    await err5('budget_day_micros').waitFor({ state: 'hidden' });
    await rl('text-generation', 'per_second').fill('5');
    await err5('rate_limits').waitFor({ state: 'hidden' });
    assert.equal(await rl('text-generation', 'per_second').getAttribute('aria-invalid'), null);
    await rl('text-generation', 'per_minute').fill('100');
    await rl('speech-to-text', 'per_minute').fill('30');
    await dl5.locator('[data-field=budget_month_micros]').fill('40');
    await look(page, 'limits-dialog');
    await dl5.locator('[data-action=save]').click();
    await dl5.waitFor({ state: 'detached' });
    k5 = await admin.ok('key.get', owner, { key: K });
    assert.equal(k5.expires_at, expMs);
    assert.equal(k5.budget_day_micros, 2500000);
    assert.equal(k5.budget_month_micros, 40000000);
    assert.deepEqual(k5.rate_limits, { 'text-generation': { per_second: 5, per_minute: 100 }, 'speech-to-text': { per_minute: 30 } });
    const lim = card(page, K).locator('.key-limits');
    await lim.waitFor();
    assert.match(await lim.locator('[data-limit=expires]').innerText(), /^Expires in 3 days on \d{4}-\d\d-\d\d \d\d:\d\d UTC$/);
    assert.ok((await lim.locator('[data-limit=expires]').innerText()).endsWith(expText.replace('T', ' ') + ' UTC'));
    assert.equal(await lim.locator('[data-limit=budget-day]').innerText(), 'Daily budget: 2.50 USD');
    assert.equal(await lim.locator('[data-limit=budget-month]').innerText(), 'Monthly budget: 40.00 USD');
    assert.match(await lim.locator('[data-limit=rate][data-rate-service="text-generation"]').innerText(), /: 5 per second, 100 per minute$/);
    await look(page, 'limits-card');
    // reopened, the dialog shows what is stored; a name change alone sends
    // no limit; No expiry and an empty budget remove them
    await card(page, K).locator('[data-action=edit]').click();
    await dl5.locator('fieldset.limits-edit').waitFor();
    assert.equal(await dl5.locator('[data-field=expires_at]').inputValue(), expText);
    assert.equal(await dl5.locator('[data-field=budget_day_micros]').inputValue(), '2.50');
    assert.equal(await rl('speech-to-text', 'per_minute').inputValue(), '30');
    await dl5.locator('[data-action=clear-expiry]').click();
    assert.equal(await dl5.locator('[data-field=expires_at]').inputValue(), '');
    await dl5.locator('[data-field=budget_day_micros]').fill('');
    await rl('speech-to-text', 'per_minute').fill('');
    await dl5.locator('[data-action=save]').click();
    await dl5.waitFor({ state: 'detached' });
    k5 = await admin.ok('key.get', owner, { key: K });
    assert.equal(k5.expires_at, undefined);
    assert.equal(k5.budget_day_micros, undefined);
    assert.equal(k5.budget_month_micros, 40000000);
    assert.deepEqual(k5.rate_limits, { 'text-generation': { per_second: 5, per_minute: 100 } });
    await page.waitForFunction((k) => !document.querySelector(`.key-card[data-key-id="${k}"] [data-limit=expires]`), K);
    assert.equal(await lim.locator('[data-limit=budget-day]').count(), 0);

    // 6. generate a personal token: copy, download; gone after CLOSE
    step('generate a token');
    await card(page, K).locator('[data-action=generate]').click();
    const td = page.locator('dialog.token-dialog[open]');
    await td.waitFor();
    const token = await td.locator('input.token').inputValue();
    assert.match(token, TOKEN_RE);
    await td.locator('[data-action=copy]').click();
    await td.locator('.copy-note', { hasText: 'Copied' }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), token);
    const [download] = await Promise.all([page.waitForEvent('download'), td.locator('[data-action=download]').click()]);
    assert.equal(download.suggestedFilename(), `keygate-token-${K}.txt`);
    const dlPath = path.join(SHOTS, 'downloaded-token.txt');
    await download.saveAs(dlPath);
    assert.equal(fs.readFileSync(dlPath, 'utf8'), token + '\n');
    fs.unlinkSync(dlPath);
    await look(page, 'token-dialog');
    await td.locator('[data-action=close]').click();
    await td.waitFor({ state: 'detached' });
    await page.evaluate(() => navigator.clipboard.writeText(''));
    const hint = `${token.slice(0, 7)}…${token.slice(-4)}`;
    await page.waitForSelector(`.key-card[data-key-id="${K}"] li[data-user="${owner}"] .token-hint`);
    assert.equal(await card(page, K).locator(`li[data-user="${owner}"] .token-hint`).innerText(), hint);
    assert.equal((await page.content()).includes(token), false, 'the token is still in the page after CLOSE');
    assert.equal(await card(page, K).locator('[data-action=generate]').isDisabled(), true);
    assert.equal(await card(page, K).locator('.why li[data-why=generate]').innerText(),
      'Generate token: you have a token already; Rotate replaces it.');
    let kdoc = await admin.ok('key.get', owner, { key: K });
    assert.equal(kdoc.tokens[owner].hint, hint);
    const firstTokenId = kdoc.tokens[owner].token_id;
    await shot(page, 'token-hint');

    // 7. rotate it
    step('rotate the token');
    await card(page, K).locator('[data-action=rotate]').click();
    await look(page, 'rotate-dialog');
    await dialog(page).locator('[data-action=rotate]').click();
    await td.waitFor();
    const token2 = await td.locator('input.token').inputValue();
    assert.match(token2, TOKEN_RE);
    assert.notEqual(token2, token);
    await td.locator('[data-action=close]').click();
    await td.waitFor({ state: 'detached' });
    kdoc = await admin.ok('key.get', owner, { key: K });
    assert.notEqual(kdoc.tokens[owner].token_id, firstTokenId);
    assert.equal(kdoc.tokens[owner].hint, `${token2.slice(0, 7)}…${token2.slice(-4)}`);
    assert.equal((await page.content()).includes(token2), false);

    // 8. top up the wallet
    step('top up');
    await page.click('[data-tab=wallets]');
    const wc = page.locator(`.wallet-card[data-wallet-id="${W}"]`);
    await wc.locator('[data-action=topup]').click();
    await dialog(page).locator('[data-field=amount_micros]').fill('25.5');
    await dialog(page).locator('[data-action=credit]').click();
    await page.waitForSelector(`.wallet-card[data-wallet-id="${W}"] .balance[data-micros="25500000"]`);
    assert.equal((await admin.ok('wallet.get', owner, { wallet: W })).balance_micros, 25500000);
    await page.locator(`.wallet-card[data-wallet-id="${W}"] [data-action=ledger]`).click();
    await page.waitForSelector(`.wallet-card[data-wallet-id="${W}"] tr.entry-credit`);
    // spend per day: no gateway ran, so 30 days of 0 (a top-up is no spend)
    const zero = await spendChecked(wc, admin, owner, team, { wallet: W });
    assert.equal(zero.total.cost_micros, 0);
    assert.equal(await wc.locator('.spend-table tbody tr', { hasText: /\t?0\.00 USD$/ }).count(), 30);
    await wc.locator('.spend-numbers summary').click();
    await wc.locator('.spend-table').waitFor();
    await look(page, 'wallets');

    // 8b. a low-balance alert (its error clears when fixed), the webhook
    // (http:// only; the secret shown once), then a hold takes the wallet
    // under the threshold: held and available shown, the alert's
    // notification, and its delivery retrying with the next retry time
    step('low-balance alert and webhook');
    assert.equal(await wc.locator('.alert-line').getAttribute('data-below'), 'none');
    await wc.locator('[data-action=alert]').click();
    const ad = dialog(page);
    await ad.locator('[data-field=threshold_micros]').fill('twenty');
    await ad.locator('[data-action=save-alert]').click();
    await ad.locator('[data-error-for=threshold_micros]').waitFor({ state: 'visible' });
    assert.equal(await ad.locator('[data-error-for=threshold_micros]').innerText(), 'Enter a positive amount in USD, like 10.00.');
    await ad.locator('[data-field=threshold_micros]').fill('20');
    await ad.locator('[data-error-for=threshold_micros]').waitFor({ state: 'hidden' });
    await look(page, 'alert-dialog');
    await ad.locator('[data-action=save-alert]').click();
    await page.waitForSelector(`.wallet-card[data-wallet-id="${W}"] .alert-line[data-below=false]`);
    let wdoc = await admin.ok('wallet.get', owner, { wallet: W });
    assert.equal(wdoc.alert_threshold_micros, 20000000);
    assert.equal(wdoc.alert_below, false);
    assert.match(await wc.locator('.alert-line').innerText(), /when under 20\.00 USD available not below/i);
    assert.equal(await wc.locator('.held').count(), 0, 'nothing held: no held line');

    const HOOK_URL = `http://127.0.0.1:${await closedPort()}/keygate`;
    const wb = page.locator('#webhook-block');
    await wb.locator('.hook-card[data-hook=none]').waitFor();
    await wb.locator('[data-action=webhook-set]').click();
    const hd = dialog(page);
    assert.match(await hd.innerText(), /http:\/\/ only/);
    await hd.locator('[data-field=url]').fill('https://hooks.example.test/keygate');
    await hd.locator('[data-action=save-webhook]').click();
    await hd.locator('[data-error-for=url]').waitFor({ state: 'visible' });
    assert.match(await hd.locator('[data-error-for=url]').innerText(), /must start with http:\/\//);
    await look(page, 'webhook-dialog-error');
    assert.equal((await admin.call('webhook.get', owner, { team })).error.code, 'not_found');
    await hd.locator('[data-field=url]').fill(HOOK_URL);
    await hd.locator('[data-error-for=url]').waitFor({ state: 'hidden' });
    await hd.locator('[data-action=save-webhook]').click();
    const sd = page.locator('dialog.webhook-secret[open]');
    await sd.waitFor();
    const whsec = await sd.locator('input.token').inputValue();
    assert.match(whsec, /^whsec_[0-9a-f]{64}$/);
    await sd.locator('[data-action=copy]').click();
    await sd.locator('.copy-note', { hasText: 'Copied' }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), whsec);
    await look(page, 'webhook-secret');
    await sd.locator('[data-action=close]').click();
    await sd.waitFor({ state: 'detached' });
    await page.evaluate(() => navigator.clipboard.writeText(''));
    await wb.locator('.hook-card[data-hook=set]').waitFor();
    assert.equal((await page.content()).includes(whsec), false, 'the webhook secret is still in the page after CLOSE');
    const hook = await admin.ok('webhook.get', owner, { team });
    assert.equal(hook.url, HOOK_URL);
    assert.equal(hook.secret_hint, `whsec_…${whsec.slice(-4)}`);
    assert.equal(await wb.locator('.hook-url').innerText(), HOOK_URL);
    assert.equal(await wb.locator('.secret-hint').innerText(), hook.secret_hint);

    // 8.00 held, as a gateway's reserve holds it (docs/module.md): 17.50
    // available, under the 20.00 threshold
    await redis('HINCRBY', `${PREFIX}{t:${team}}:wallet:${W}`, 'held_micros', '8000000');
    const dl = await until('the alert and its delivery', async () => {
      const d = (await admin.ok('webhook.deliveries', owner, { team })).deliveries;
      return d.length && d[0].attempts >= 1 && d[0].last_result ? d : null;
    });
    assert.equal(dl.length, 1);
    assert.equal(dl[0].type, 'wallet.low_balance');
    assert.equal(dl[0].wallet_id, W);
    assert.equal(dl[0].last_result, 'connection failed');
    wdoc = await admin.ok('wallet.get', owner, { wallet: W });
    assert.equal(wdoc.held_micros, 8000000);
    assert.equal(wdoc.alert_below, true);
    await page.click('[data-tab=wallets]');
    await page.waitForSelector(`.wallet-card[data-wallet-id="${W}"] .alert-line[data-below=true]`);
    assert.equal(await wc.locator('.held').getAttribute('data-micros'), '8000000');
    assert.equal(await wc.locator('.available').getAttribute('data-micros'), '17500000');
    assert.match(await wc.locator('.figures').innerText(), /Held for unsettled requests: 8\.00 USD\s+Available: 17\.50 USD/);
    assert.match(await wc.locator('.alert-line').innerText(), /below now/i);
    const row = wb.locator(`tr[data-delivery="${dl[0].id}"]`);
    await row.waitFor();
    const shownStatus = await row.getAttribute('data-status');
    assert.ok(['pending', 'failed'].includes(shownStatus), shownStatus);
    assert.ok(Number(await row.locator('.attempts').innerText()) >= 1);
    if (shownStatus === 'pending') assert.match(await row.locator('.next-retry').innerText(), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
    assert.match(await row.innerText(), /connection failed/);
    assert.match(await row.innerText(), /Main wallet/);
    await look(page, 'wallet-held-alert-webhook');
    await page.click('[data-tab=keys]');
    const lowNote = page.locator('#notifications li[data-type="wallet.low_balance"]');
    await lowNote.waitFor();
    assert.match(await lowNote.innerText(), /Wallet Main wallet is low: 17\.50 USD available, under the alert at 20\.00 USD\./);

    // 8c. the audit log a page at a time (and Uma's notifications, below):
    // a key whose members change often fills both past a page
    step('audit log pages');
    const churn = (await admin.ok('key.create', owner, { team, name: 'Churn' })).key_id;
    for (let i = 0; i < 24; i++) {            // 26 notifications to Uma, 48 audit entries
      await admin.ok('key.users.set', owner, { key: churn, users: [uma], notify: i < 13 });
      await admin.ok('key.users.set', owner, { key: churn, users: [], notify: i < 13 });
    }
    const audit = [];
    let ac = null;
    do {
      const r = await admin.ok('audit.list', owner, ac ? { team, limit: 1000, cursor: ac } : { team, limit: 1000 });
      audit.push(...r.entries);
      ac = r.next_cursor;
    } while (ac);
    assert.ok(audit.length > 50 && audit.length <= 100, `audit entries: ${audit.length}`);
    await page.click('[data-tab=team]');
    const ab = page.locator('#audit-block');
    await ab.locator('table.audit tbody tr').first().waitFor();
    assert.equal(await ab.locator('tbody tr').count(), 50);
    assert.deepEqual(await ab.locator('tbody tr td:nth-child(3)').allInnerTexts(), audit.slice(0, 50).map((e) => e.cmd));
    await ab.locator('[data-action=audit-older]').click();
    await page.waitForFunction((n) => document.querySelectorAll('#audit-block tbody tr').length === n, audit.length);
    assert.deepEqual(await ab.locator('tbody tr td:nth-child(3)').allInnerTexts(), audit.map((e) => e.cmd));
    await ab.locator('[data-action=audit-older]').waitFor({ state: 'hidden' });
    const refused = (await admin.ok('audit.list', owner, { team, only: 'refused' })).entries;
    assert.ok(refused.length > 0, 'the blank key name was refused and audited');
    await ab.locator('select[data-action=audit-only]').selectOption('refused');
    await page.waitForFunction((n) => document.querySelectorAll('#audit-block tbody tr').length === n, refused.length);
    assert.deepEqual(await ab.locator('tbody tr td:nth-child(5)').allInnerTexts(), refused.map((e) => e.outcome));
    await look(page, 'audit-refused');

    // 8c. spend per day: the usage counters as a gateway's debits write
    // them (docs/redis-schema.md; the test starts no gateway), today and
    // three days ago
    step('spend per day');
    const field = (m) => `${K} ${W} text-generation small ${m}`;
    for (const [ago, n, c] of [[0, 3, 1234567], [3, 2, 500000]]) {
      const d = utcDay(Date.now() - ago * DAY_MS).replace(/-/g, '');
      await redis('HINCRBY', `${PREFIX}{t:${team}}:usage:d:${d}`, field('n'), String(n));
      await redis('HINCRBY', `${PREFIX}{t:${team}}:usage:d:${d}`, field('c'), String(c));
    }
    await page.click('[data-tab=keys]');
    const spent = await spendChecked(card(page, K), admin, owner, team, { key: K });
    assert.equal(spent.total.cost_micros, 1734567);
    assert.equal(await card(page, K).locator('.spend-sum').innerText(), '1.734567 USD');
    await card(page, K).locator('.spend-numbers summary').click();
    await card(page, K).locator('.spend-table').scrollIntoViewIfNeeded();
    await look(page, 'spend-chart');
    await card(page, K).locator('.spend').screenshot({ path: path.join(SHOTS, `${String(++shotNo).padStart(2, '0')}-1280-spend-card.png`) });
    assert.equal(await card(page, freeKey).locator('.spend').count(), 0, 'no chart on the free key');

    // 9. revoke, with a confirmation
    step('revoke');
    await page.click('[data-tab=keys]');
    await card(page, K).locator('[data-action=revoke]').click();
    await dialog(page).waitFor();
    assert.match(await dialog(page).innerText(), /Every token of this key stops working at once/);
    await look(page, 'revoke-confirm');
    await dialog(page).locator('[data-action=confirm-revoke]').click();
    await page.waitForSelector(`.key-card.revoked[data-key-id="${K}"]`);
    assert.equal((await admin.ok('key.get', owner, { key: K })).status, 'revoked');
    for (const a of ['edit', 'members', 'services', 'generate', 'rotate', 'revoke']) {
      assert.equal(await card(page, K).locator(`[data-action=${a}]`).isDisabled(), true, a);
    }
    assert.match(await card(page, K).locator('.why').innerText(),
      /^Edit, Members, Services, Generate token, Rotate, Revoke: the key is revoked\.$/);
    await look(page, 'revoked');

    // 10. a user-role login: no create, no revoke, her own token only
    step('user-role login');
    const staging = await admin.ok('key.create', owner, { team, name: 'Staging', users: [uma] });
    // a key that expires at once: Uma reads its expiry and limits, and
    // cannot change them
    const oldExp = Date.now() + 1500;
    const contractor = (await admin.ok('key.create', owner, { team, name: 'Contractor', users: [uma], expires_at: oldExp,
      budget_day_micros: 1000000, rate_limits: { 'text-generation': { per_second: 2 } } })).key_id;
    await until('the contractor key to expire', () => Date.now() > oldExp + 50);
    await page.click('[data-action=signout]');
    await page.waitForSelector('#signin-form');
    await signIn(page, umaEmail, 'not her password');
    await page.locator('#signin-form [data-error-for=password]').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#signin-form [data-error-for=password]').innerText(), 'Wrong email or password.');
    await shot(page, 'wrong-password');
    await signIn(page, umaEmail, PW);
    await page.waitForSelector(`.key-card[data-key-id="${staging.key_id}"]`);
    assert.equal(await page.locator('#my-role').textContent(), 'user');
    assert.equal(await page.locator('[data-action=create-key]').count(), 0);
    assert.equal(await page.locator('[data-action=revoke]').count(), 0);
    for (const a of ['edit', 'members', 'services', 'rotate-user']) {
      assert.equal(await page.locator(`[data-action=${a}]`).count(), 0, a);
    }
    assert.equal(await page.locator('[data-tab=wallets]').count(), 0);
    assert.equal(await page.locator('.spend').count(), 0, 'a user sees no spend chart');
    assert.deepEqual(await page.locator('.card-error:visible, .page-error:visible').allInnerTexts(), [], 'and no error');
    const cc = card(page, contractor);
    assert.match(await cc.locator('[data-limit=expires]').innerText(), /^Expired at \d{4}-\d\d-\d\d \d\d:\d\d UTC$/);
    assert.equal(await cc.locator('[data-limit=budget-day]').innerText(), 'Daily budget: 1.00 USD');
    assert.match(await cc.locator('[data-limit=rate]').innerText(), /: 2 per second$/);
    assert.equal(await cc.locator('button').count(), await cc.locator('.actions button, .users button').count());
    assert.equal(await cc.locator('input').count(), 0, 'read-only for a user');
    assert.equal(await page.locator(`.key-card[data-key-id="${freeKey}"]`).count(), 0);
    // the wallet is named for her too (key.list's wallet_names)
    const umaPaid = card(page, K).locator('li[data-service="text-generation"]');
    assert.match(await umaPaid.innerText(), /wallet Main wallet$/);
    assert.equal((await umaPaid.innerText()).includes(W), false);
    // her notifications a page (20) at a time: Production backend is older
    // than the Churn key's 26
    const notesBox = page.locator('#notifications');
    await notesBox.locator('li').first().waitFor();
    assert.equal(await notesBox.locator('li').count(), 20);
    assert.equal(await notesBox.locator('li', { hasText: 'Production backend' }).count(), 0);
    await look(page, 'user-notifications');
    await notesBox.locator('[data-action=notes-older]').click();
    await notesBox.locator('li', { hasText: 'You were assigned to key Production backend by Olivia Owner' }).waitFor();
    const umaNotes = (await admin.ok('notification.list', uma, { limit: 1000 })).notifications;
    assert.equal(await notesBox.locator('li').count(), Math.min(40, umaNotes.length));
    const sc = card(page, staging.key_id);
    assert.equal(await sc.locator('[data-action=rotate]').isDisabled(), true);
    await sc.locator('[data-action=generate]').click();
    await td.waitFor();
    const umaToken = await td.locator('input.token').inputValue();
    await td.locator('[data-action=close]').click();
    await td.waitFor({ state: 'detached' });
    await sc.locator('[data-action=rotate]').waitFor();
    await page.waitForFunction((k) => {
      const b = document.querySelector(`.key-card[data-key-id="${k}"] [data-action=rotate]`);
      return b && !b.disabled;
    }, staging.key_id);
    await sc.locator('[data-action=rotate]').click();
    await dialog(page).locator('[data-action=rotate]').click();
    await td.waitFor();
    const umaToken2 = await td.locator('input.token').inputValue();
    assert.notEqual(umaToken2, umaToken);
    await shot(page, 'user-rotated-token');
    await td.locator('[data-action=close]').click();
    await td.waitFor({ state: 'detached' });
    const sdoc = await admin.ok('key.get', owner, { key: staging.key_id });
    assert.equal(sdoc.tokens[uma].hint, `${umaToken2.slice(0, 7)}…${umaToken2.slice(-4)}`);
    await look(page, 'user-view');

    assert.deepEqual(pageErrors, [], 'the page threw');

    // 11. phones: 375 and 320 px
    const longKey = (await admin.ok('key.create', owner, {
      team, name: 'Customer-facing production backend for the EU region (primary)',
      description: 'Serves every customer request of the EU region; rotate monthly, never share outside ops@example.test',
      users: [owner, uma], services: { 'text-generation': { policy: 'payg', models: ['small'], wallet: W },
        'speech-to-text': { policy: 'free' } },
      expires_at: Date.now() + 30 * 86400000, budget_day_micros: 12345678, budget_month_micros: 250000000,
      rate_limits: { 'text-generation': { per_second: 10, per_minute: 300 }, 'speech-to-text': { per_minute: 60 } },
    })).key_id;
    const maxEmail = `max-${run}@example.test`;
    const mx = await admin.ok('user.signup', undefined, { email: maxEmail, name: 'Max Member', password: PW, team_name: 'Max home' });
    await admin.ok('team.member.add', owner, { team, user: mx.user_id, role: 'user' });
    const maxKey = (await admin.ok('key.create', owner, { team, name: 'Max key', users: [mx.user_id] })).key_id;
    const s = { ownerEmail, owner, team, W, uma, longKey };
    await narrow(browser, 375, admin, { ...s, max: { email: maxEmail, key: maxKey, ownTeam: mx.team_id } });
    await narrow(browser, 320, admin, s);
    console.log(`axe-core ran ${axeRuns} times`);
    step('done');
  } catch (e) {
    try { await shot(page, 'FAILED'); } catch (_) { /* the page is gone */ }
    throw e;
  } finally {
    await browser.close();
    admin.close();
  }
}

main().then(() => {
  console.log(`e2e: passed in ${((Date.now() - t0) / 1000).toFixed(1)} s; screenshots in ${SHOTS}`);
}, (e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
