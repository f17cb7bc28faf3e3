// charts.js - spend per UTC day over the last 30 days (usage.summary), on
// a paid key card and on a wallet card, for owners and admins: a small
// hand-drawn SVG bar chart (role="img", its aria-label says the total),
// and the same numbers in a table under "Show numbers".
import { call } from './api.js';
import { el, clear, describe, money } from './ui.js';

const DAYS = 30;
const DAY_MS = 86400000;
const SVG = 'http://www.w3.org/2000/svg';

// filter: {key} or {wallet}; what: words for the label ("key Production").
// Returns the box at once; it fills itself when the answer comes.
export function spendChart(ctx, filter, what) {
  const box = el('section', { class: 'spend', dataset: { spend: 'loading' } },
    el('h4', { text: 'Spend per day, last 30 days (UTC)' }),
    el('p', { class: 'muted', text: 'Loading spend…' }));
  loadSpend(ctx, filter, what, box);
  return box;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

const dayOf = (ms) => new Date(Number(ms)).toISOString().slice(0, 10);

async function loadSpend(ctx, filter, what, box) {
  const cur = ctx.catalog.currency;
  const now = Date.now();
  const from = Math.floor(now / DAY_MS) * DAY_MS - (DAYS - 1) * DAY_MS;
  const head = box.firstChild;
  let r;
  try {
    r = await call('usage.summary', { team: ctx.team.team_id, ...filter, from, to: now, granularity: 'day' });
  } catch (e) {
    // a role changed under the page: no chart, no error
    if (e.code === 'forbidden') { box.remove(); return; }
    clear(box, head, el('p', { class: 'card-error', role: 'alert', text: describe(e) }));
    box.dataset.spend = 'error';
    return;
  }
  const buckets = r.buckets || [];
  const total = Number(r.total.cost_micros);
  let peak = null;
  for (const b of buckets) if (Number(b.cost_micros) > 0 && (!peak || Number(b.cost_micros) > Number(peak.cost_micros))) peak = b;
  const max = peak ? Number(peak.cost_micros) : 0;

  const label = `Spend per day on ${what}, last ${buckets.length} days: ` +
    (total > 0 ? `${money(total, cur)} in all over ${r.total.requests} requests; highest ${money(max, cur)} on ${dayOf(peak.start)}.`
      : `no spend (${money(0, cur)}).`);
  // 10 units a day (a bar of 7 and a gap of 3), 60 high; stretched to the
  // card's width (the lines keep their width).
  const W = buckets.length * 10;
  const H = 60;
  const svg = svgEl('svg', { viewBox: `0 0 ${W || 10} ${H}`, preserveAspectRatio: 'none', role: 'img',
    'aria-label': label, class: 'spend-chart' });
  buckets.forEach((b, i) => {
    const c = Number(b.cost_micros);
    const h = max > 0 ? Math.max(c > 0 ? 1.5 : 0, (c / max) * (H - 2)) : 0;
    const bar = svgEl('rect', { x: i * 10 + 1.5, y: H - 1 - h, width: 7, height: h, class: 'bar' });
    bar.appendChild(svgEl('title', {})).textContent = `${dayOf(b.start)}: ${money(c, cur)}, ${b.requests} requests`;
    svg.appendChild(bar);
  });
  svg.appendChild(svgEl('line', { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: 'base', 'vector-effect': 'non-scaling-stroke' }));

  const first = buckets.length ? dayOf(buckets[0].start) : '';
  const last = buckets.length ? dayOf(buckets[buckets.length - 1].start) : '';
  const table = el('table', { class: 'table spend-table' },
    el('thead', {}, el('tr', {}, ['Day (UTC)', 'Requests', 'Cost'].map((h) => el('th', { text: h })))),
    el('tbody', {}, buckets.map((b) => el('tr', { dataset: { day: dayOf(b.start), micros: String(b.cost_micros) } },
      el('td', { dataset: { label: 'Day' }, text: dayOf(b.start) }),
      el('td', { class: 'num', dataset: { label: 'Requests' }, text: String(b.requests) }),
      el('td', { class: 'num', dataset: { label: 'Cost' }, text: money(b.cost_micros, cur) })))));
  box.dataset.spend = 'ready';
  box.dataset.totalMicros = String(total);
  clear(box, head, svg,
    el('p', { class: 'spend-axis muted' }, el('span', { text: first }), el('span', { text: last })),
    el('p', { class: 'spend-total' }, 'Total ', el('strong', { class: 'spend-sum', text: money(total, cur) }),
      ` · ${r.total.requests} requests`, peak ? ` · highest ${money(max, cur)} on ${dayOf(peak.start)}` : ''),
    el('details', { class: 'spend-numbers' }, el('summary', { text: 'Show numbers' }), table));
}
