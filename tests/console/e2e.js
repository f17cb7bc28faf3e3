// e2e.js - the Key Management console in a real browser (Debian's
// chromium, driven by playwright-core), against a live keygated.
//
// Run by test_browser.py, which starts redis-server and keygated and
// passes: KG_HTTP_PORT, KG_SOCKET (the admin socket, used to check every
// result independently of the page), KG_SHOTS (screenshot folder).
//
// Scenario: sign-up; add a member; CREATE NEW KEY; edit members with
// notify; edit services with Pay-as-you-go reading the cost estimate;
// generate a token (copy, download, gone after CLOSE); rotate; top up a
// wallet; revoke; then a user-role login sees no create/revoke actions,
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
const TOKEN_RE = /^kg_[0-9A-Za-z]{43,50}$/;

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
  const file = path.join(SHOTS, `${String(shotNo).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
}

function step(name) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${name}`);
}

const card = (page, keyId) => page.locator(`.key-card[data-key-id="${keyId}"]`);
const dialog = (page) => page.locator('dialog[open]').last();

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
    await shot(page, 'sign-in');
    await page.click('[data-action=to-signup]');
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
    // the free key: no revoke, no services edit (disabled, with the rule)
    assert.equal(await card(page, freeKey).locator('[data-action=revoke]').isDisabled(), true);
    assert.equal(await card(page, freeKey).locator('[data-action=services]').isDisabled(), true);
    assert.match(await card(page, freeKey).locator('[data-action=revoke]').getAttribute('title'), /cannot be revoked/);
    await shot(page, 'free-key');

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
    await shot(page, 'team');

    // 3. CREATE NEW KEY
    step('create a key');
    await page.click('[data-tab=keys]');
    await page.click('[data-action=create-key]');
    const d1 = dialog(page);
    await d1.locator('[data-field=name]').fill('Production backend');
    await d1.locator('[data-field=description]').fill('Servers in eu-west');
    await d1.locator('select[data-service="speech-to-text"]').selectOption('free');
    await shot(page, 'create-key-dialog');
    // an error from the server is shown next to its field
    await d1.locator('[data-field=name]').fill('   ');
    await d1.locator('[data-action=create]').click();
    await d1.locator('[data-error-for=name]').waitFor({ state: 'visible' });
    assert.match(await d1.locator('[data-error-for=name]').innerText(), /^Name must be 1-200 printable characters\.$/);
    await shot(page, 'create-key-error');
    await d1.locator('[data-field=name]').fill('Production backend');
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
    await d2.locator(`input[value="${uma}"]`).check();
    assert.equal(await d2.locator('[data-field=notify]').isChecked(), true);
    assert.match(await d2.innerText(), /Notify the users of their changed keys/);
    await shot(page, 'members-dialog');
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
    await pg.locator('input[placeholder="New wallet name"]').fill('Main wallet');
    await pg.locator('[data-action=create-wallet]').click();
    await pg.locator('[data-field=wallet] option', { hasText: 'Main wallet' }).waitFor({ state: 'attached' });
    const wallets = (await admin.ok('wallet.list', owner, { team })).wallets;
    assert.equal(wallets.length, 1);
    const W = wallets[0].wallet_id;
    assert.equal(await pg.locator('[data-field=wallet]').inputValue(), W);
    await pg.locator('input[type=checkbox][value=small]').check();
    await pg.locator('input[type=checkbox][value=large]').check();
    await pg.locator('select[aria-label="Model to estimate"]').selectOption('large');
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
    // a bad parameter is explained next to the inputs
    await pg.locator('input[data-param=output_tokens]').fill('-5');
    await pg.locator('[data-error-for=params]').waitFor({ state: 'visible' });
    assert.match(await pg.locator('[data-error-for=params]').innerText(), /negative|must/i);
    await pg.locator('input[data-param=output_tokens]').fill('500');
    await page.waitForFunction((m) => {
      const e = document.querySelector('dialog.payg .cost-value');
      return e && e.dataset.micros === m;
    }, String(est.cost_micros));
    await shot(page, 'payg-estimate');
    await pg.locator('[data-action=ok]').click();
    await pg.waitFor({ state: 'detached' });
    assert.match(await d3.locator('.svc-row[data-service="text-generation"] .svc-summary').innerText(), /Pay-as-you-go · models small, large · wallet Main wallet/);
    await shot(page, 'services-dialog');
    await d3.locator('[data-action=save]').click();
    await d3.waitFor({ state: 'detached' });
    const afterSvc = await admin.ok('key.get', owner, { key: K });
    assert.deepEqual(afterSvc.services, {
      'speech-to-text': { policy: 'free' },
      'text-generation': { policy: 'payg', models: ['small', 'large'], wallet: W },
    });
    await page.waitForSelector(`.key-card[data-key-id="${K}"] li[data-service="text-generation"]`);

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
    await shot(page, 'token-dialog');
    await td.locator('[data-action=close]').click();
    await td.waitFor({ state: 'detached' });
    await page.evaluate(() => navigator.clipboard.writeText(''));
    const hint = `${token.slice(0, 7)}…${token.slice(-4)}`;
    await page.waitForSelector(`.key-card[data-key-id="${K}"] li[data-user="${owner}"] .token-hint`);
    assert.equal(await card(page, K).locator(`li[data-user="${owner}"] .token-hint`).innerText(), hint);
    assert.equal((await page.content()).includes(token), false, 'the token is still in the page after CLOSE');
    assert.equal(await card(page, K).locator('[data-action=generate]').isDisabled(), true);
    let kdoc = await admin.ok('key.get', owner, { key: K });
    assert.equal(kdoc.tokens[owner].hint, hint);
    const firstTokenId = kdoc.tokens[owner].token_id;
    await shot(page, 'token-hint');

    // 7. rotate it
    step('rotate the token');
    await card(page, K).locator('[data-action=rotate]').click();
    await shot(page, 'rotate-dialog');
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
    await shot(page, 'wallets');

    // 9. revoke, with a confirmation
    step('revoke');
    await page.click('[data-tab=keys]');
    await card(page, K).locator('[data-action=revoke]').click();
    await dialog(page).waitFor();
    assert.match(await dialog(page).innerText(), /Every token of this key stops working at once/);
    await shot(page, 'revoke-confirm');
    await dialog(page).locator('[data-action=confirm-revoke]').click();
    await page.waitForSelector(`.key-card.revoked[data-key-id="${K}"]`);
    assert.equal((await admin.ok('key.get', owner, { key: K })).status, 'revoked');
    for (const a of ['edit', 'members', 'services', 'generate', 'rotate', 'revoke']) {
      assert.equal(await card(page, K).locator(`[data-action=${a}]`).isDisabled(), true, a);
    }
    await shot(page, 'revoked');

    // 10. a user-role login: no create, no revoke, her own token only
    step('user-role login');
    const staging = await admin.ok('key.create', owner, { team, name: 'Staging', users: [uma] });
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
    assert.equal(await page.locator(`.key-card[data-key-id="${freeKey}"]`).count(), 0);
    const notesShown = await page.locator('#notifications').innerText();
    assert.match(notesShown, /You were assigned to key Production backend by Olivia Owner/);
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
    await shot(page, 'user-view');

    assert.deepEqual(pageErrors, [], 'the page threw');
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
