// services.js - choosing a key's enabled services and their billing
// policies; Pay-as-you-go opens a second dialog to pick the models and the
// wallet, where the expected cost of a request is shown as you type
// (price.estimate).
import { call } from './api.js';
import { el, clear, field, openDialog, money, describe, fieldError, clearFormErrors } from './ui.js';

const POLICY_LABEL = { off: 'Off', free: 'Free tier', payg: 'Pay-as-you-go' };

// "0.00015 USD per 1000 input_tokens + ..." for a model's price.
export function priceText(model, currency) {
  const p = model.price || {};
  const parts = [];
  if (p.base_micros) parts.push(money(p.base_micros, currency) + ' per request');
  for (const per of p.per || []) {
    parts.push(`${money(per.micros, currency)} per ${per.units === 1 ? '' : per.units + ' '}${per.param}`);
  }
  return parts.join(' + ') || 'no charge';
}

// A wallet's name: from the team's wallets (owners and admins), else from
// the key's read-only wallet_names (key.get/key.list), for the user role.
export function walletName(ctx, walletId, key) {
  const w = (ctx.wallets || []).find((x) => x.wallet_id === walletId);
  if (w) return w.name;
  const n = key && key.wallet_names && key.wallet_names[walletId];
  return n || 'a wallet that no longer exists';
}

// One line about a policy, for the key cards.
export function policyText(ctx, serviceId, policy, key) {
  const svc = ctx.catalog.services.find((s) => s.id === serviceId);
  if (policy.policy === 'free') {
    const q = svc && svc.free_quota && svc.free_quota.requests_per_day;
    return 'Free tier' + (q ? ` (${q} requests a day)` : '');
  }
  return `Pay-as-you-go · models ${policy.models.join(', ')} · wallet ${walletName(ctx, policy.wallet, key)}`;
}

// The editor of a whole services set, for the create and edit dialogs.
// Returns {element, value()} where value() is the services object of
// key.services.set.
export function servicesEditor(ctx, initial) {
  const chosen = {};                       // service id -> policy object
  for (const [id, p] of Object.entries(initial || {})) chosen[id] = JSON.parse(JSON.stringify(p));
  const rows = el('div', { class: 'svc-rows', dataset: { field: 'services' } });

  function row(svc) {
    const sel = el('select', { 'aria-label': `Billing policy of ${svc.name}`, dataset: { service: svc.id } },
      el('option', { value: 'off', text: POLICY_LABEL.off }),
      el('option', { value: 'free', text: POLICY_LABEL.free, disabled: !svc.free }),
      el('option', { value: 'payg', text: POLICY_LABEL.payg }));
    const summary = el('div', { class: 'svc-summary' });
    const change = el('button', { type: 'button', class: 'btn link', dataset: { action: 'payg-edit' },
      text: 'Models and wallet…' });
    const err = el('div', { class: 'field-error', role: 'alert', hidden: true, dataset: { errorFor: 'service-' + svc.id } });
    let current = chosen[svc.id] ? chosen[svc.id].policy : 'off';
    sel.value = current;

    function paint() {
      const p = chosen[svc.id];
      change.hidden = !p || p.policy !== 'payg';
      clear(summary, p ? policyText(ctx, svc.id, p) : 'Not enabled on this key');
    }
    async function pickPayg() {
      const p = await paygDialog(ctx, svc, chosen[svc.id] && chosen[svc.id].policy === 'payg' ? chosen[svc.id] : null);
      if (p) { chosen[svc.id] = p; current = 'payg'; }
      sel.value = current;
      paint();
    }
    sel.addEventListener('change', () => {
      err.hidden = true;
      if (sel.value === 'payg') { pickPayg(); return; }
      current = sel.value;
      if (current === 'off') delete chosen[svc.id];
      else chosen[svc.id] = { policy: current };
      paint();
    });
    change.addEventListener('click', pickPayg);
    paint();
    return el('div', { class: 'svc-row', dataset: { service: svc.id } },
      el('div', { class: 'svc-name' }, el('strong', { text: svc.name }), ' ',
        el('code', { text: svc.id }), svc.free ? el('span', { class: 'tag', text: 'free tier' }) : null),
      sel, el('div', { class: 'svc-detail' }, summary, change), err);
  }

  for (const svc of ctx.catalog.services) rows.appendChild(row(svc));
  return {
    element: el('div', { class: 'field' }, el('div', { class: 'label', text: 'Enabled services' }), rows,
      el('div', { class: 'field-error', role: 'alert', hidden: true, dataset: { errorFor: 'services' } })),
    value: () => JSON.parse(JSON.stringify(chosen)),
  };
}

// The Pay-as-you-go dialog of one service. Resolves to the policy object,
// or null when cancelled.
export function paygDialog(ctx, svc, current) {
  return new Promise((resolve) => {
    let result = null;
    const currency = ctx.catalog.currency;
    const models = el('div', { class: 'checklist', dataset: { field: 'models' } },
      svc.models.map((m) => el('label', { class: 'check' },
        el('input', { type: 'checkbox', value: m.id, checked: current ? current.models.includes(m.id) : svc.models.length === 1 }),
        el('span', {}, el('strong', { text: m.id }), ' — ', priceText(m, currency)))));
    const walletSel = el('select', {});
    const walletBox = el('div', {});
    const newWalletName = el('input', { type: 'text', placeholder: 'New wallet name', 'aria-label': 'New wallet name', maxlength: '200' });
    const newWalletErr = el('div', { class: 'field-error', role: 'alert', hidden: true });

    function paintWallets() {
      clear(walletSel, el('option', { value: '', text: '— choose a wallet —' }),
        (ctx.wallets || []).map((w) => el('option', { value: w.wallet_id,
          text: `${w.name} (${money(w.balance_micros, currency)})` })));
      if (current && current.wallet) walletSel.value = current.wallet;
      else if ((ctx.wallets || []).length === 1) walletSel.value = ctx.wallets[0].wallet_id;
    }
    paintWallets();
    const createWallet = el('button', { type: 'button', class: 'btn secondary small', dataset: { action: 'create-wallet' },
      text: 'Create wallet' });
    createWallet.addEventListener('click', async () => {
      newWalletErr.hidden = true;
      try {
        const w = await call('wallet.create', { team: ctx.team.team_id, name: newWalletName.value.trim() });
        ctx.wallets = [...(ctx.wallets || []), w];
        newWalletName.value = '';
        paintWallets();
        walletSel.value = w.wallet_id;
        walletSel.dispatchEvent(new Event('change', { bubbles: true }));
      } catch (e) {
        newWalletErr.textContent = describe(e);
        newWalletErr.hidden = false;
      }
    });
    newWalletName.addEventListener('input', () => { newWalletErr.hidden = true; });
    walletBox.append(field('Wallet that pays for every request', walletSel, 'wallet'),
      el('div', { class: 'inline-form' }, newWalletName, createWallet), newWalletErr);

    // Expected cost per request, for one of the ticked models and its
    // parameters. Typed values are kept per parameter name across a change
    // of model (models of a service mostly share their parameters).
    const estModel = el('select', { 'aria-label': 'Model to estimate' });
    const paramBox = el('div', { class: 'params' });
    const costOut = el('div', { class: 'cost', role: 'status', 'aria-live': 'polite', dataset: { field: 'cost' } });
    const costErr = el('div', { class: 'field-error', role: 'alert', hidden: true, dataset: { errorFor: 'params' } });
    const typed = {};                      // param name -> text typed
    let seq = 0;
    let timer = null;

    function ticked() { return [...models.querySelectorAll('input:checked')].map((i) => i.value); }
    function paintModels() {
      const allowed = ticked();
      const keep = estModel.value;
      if (!allowed.length) {
        clear(estModel, el('option', { value: '', text: '— tick an allowed model —' }));
        estModel.disabled = true;
      } else {
        clear(estModel, allowed.map((id) => el('option', { value: id, text: id })));
        estModel.disabled = false;
        estModel.value = allowed.includes(keep) ? keep : allowed[0];
      }
      if (estModel.value !== keep || !allowed.length) paintParams();
    }
    function paintParams() {
      const m = svc.models.find((x) => x.id === estModel.value);
      if (!m) {
        seq++;
        clear(paramBox);
        costErr.hidden = true;
        clear(costOut, 'Tick an allowed model above to see what a request costs.');
        return;
      }
      clear(paramBox, ((m.price && m.price.per) || []).map((per) => el('label', { class: 'param' },
        el('span', { text: per.param }),
        el('input', { type: 'number', min: '0', step: '1', inputmode: 'numeric',
          value: per.param in typed ? typed[per.param] : '0', dataset: { param: per.param },
          oninput: (ev) => { typed[per.param] = ev.target.value; schedule(); } }))));
      estimate();
    }
    function schedule() { clearTimeout(timer); timer = setTimeout(estimate, 120); }
    async function estimate() {
      if (!estModel.value) return;
      const params = {};
      for (const input of paramBox.querySelectorAll('input')) {
        const v = input.value.trim();
        if (v === '') continue;
        if (!/^-?\d+$/.test(v)) {
          costErr.textContent = `${input.dataset.param} must be a whole number.`;
          costErr.hidden = false;
          clear(costOut, 'Expected cost per request: —');
          return;
        }
        params[input.dataset.param] = Number(v);
      }
      const mine = ++seq;
      try {
        const r = await call('price.estimate', { service: svc.id, model: estModel.value, params });
        if (mine !== seq) return;
        costErr.hidden = true;
        clear(costOut, el('span', { text: 'Expected cost per request: ' }),
          el('strong', { class: 'cost-value', dataset: { micros: String(r.cost_micros), model: estModel.value },
            text: money(r.cost_micros, r.currency) }),
          el('ul', { class: 'breakdown' },
            r.base_micros ? el('li', { text: `base ${money(r.base_micros, r.currency)}` }) : null,
            r.breakdown.map((b) => el('li', { text: `${b.param} ${b.quantity} → ${money(b.subtotal_micros, r.currency)}` }))));
      } catch (e) {
        if (mine !== seq) return;
        costErr.textContent = describe(e);
        costErr.hidden = false;
        clear(costOut, 'Expected cost per request: —');
      }
    }
    estModel.addEventListener('change', paintParams);
    models.addEventListener('change', paintModels);
    models.check = () => (ticked().length ? '' : 'Pick at least one model.');
    walletSel.check = () => (walletSel.value ? '' : 'Choose the wallet that pays, or create one.');

    const body = [
      el('p', { class: 'muted', text: `Requests to ${svc.name} are charged to the wallet, per request, at the model's price.` }),
      el('div', { class: 'field' }, el('div', { class: 'label', text: 'Allowed models' }), models,
        el('div', { class: 'field-error', role: 'alert', hidden: true, dataset: { errorFor: 'models' } })),
      walletBox,
      el('fieldset', { class: 'estimate' }, el('legend', { text: 'Expected cost per request' }),
        el('div', { class: 'inline-form' }, el('span', { text: 'Model' }), estModel), paramBox, costOut, costErr),
    ];
    const d = openDialog({
      title: `Pay-as-you-go: ${svc.name}`, className: 'payg', body,
      actions: [
        { label: 'Cancel', kind: 'secondary', action: 'cancel' },
        { label: 'OK', kind: 'primary', action: 'ok', submit: true, run: (api) => {
          clearFormErrors(api.form);
          const picked = [...models.querySelectorAll('input:checked')].map((i) => i.value);
          if (picked.length === 0) {
            fieldError(api.form, 'models', 'Pick at least one model.');
            return false;
          }
          if (!walletSel.value) {
            fieldError(api.form, 'wallet', 'Choose the wallet that pays, or create one.');
            return false;
          }
          result = { policy: 'payg', models: picked, wallet: walletSel.value };
        } },
      ],
      onClose: () => resolve(result),
    });
    d.dlg.dataset.service = svc.id;
    paintModels();
  });
}
