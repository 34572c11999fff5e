// gridmesh dashboard: one page shell, five views, live updates over server-sent events.
// Every text that comes from data is inserted with textContent (never as HTML); the only HTML
// inserted is the SVG our own server drew.
'use strict';

const state = { page: null, version: -1, detailToken: 0, ledgerShown: null, me: null };

// ---------- small helpers ----------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || ['href', 'role', 'title', 'scope', 'type', 'id', 'hidden', 'colspan'].includes(k)) el.setAttribute(k, v === true ? '' : v);
    else el[k] = v;
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
const $ = (sel) => document.querySelector(sel);
// One energy unit on every page: kWh with 3 fixed decimals (exact to the Wh); money in euros.
const kwh = (wh) => (wh === null || wh === undefined) ? '–' : (wh / 1000).toLocaleString('en', { minimumFractionDigits: 3, maximumFractionDigits: 3 });
const money = (minor) => (minor === null || minor === undefined) ? '–' : (minor / 100).toLocaleString('en', { style: 'currency', currency: 'EUR', minimumFractionDigits: 2, maximumFractionDigits: 2 });
const cPerKwh = (perMwh) => (perMwh / 1000).toLocaleString('en', { minimumFractionDigits: 2, maximumFractionDigits: 3 });
const short = (hash) => (typeof hash === 'string' && hash.length > 16) ? hash.slice(0, 8) + '…' + hash.slice(-6) : String(hash ?? '–');
const intervalText = (key) => key ? String(key).replace('T', ' ').replace(':00Z/', ' UTC, ').replace(/(\d+)$/, '$1 min') : '–';
function link(href, text, attrs) { return h('a', Object.assign({ href, 'data-link': true, text }, attrs || {})); }
// Fills a table body in place: a row or cell that did not change is kept (not re-created), so a
// live update keeps the focus, a scroll position and any element the user is acting on.
function fillBody(table, rows, emptyText, cols) {
  const body = table.tBodies[0];
  const next = rows.length ? rows : [h('tr', {}, h('td', { colspan: cols, class: 'empty', text: emptyText }))];
  const old = [...body.rows];
  next.forEach((row, i) => {
    const cur = old[i];
    if (!cur) body.append(row);
    else if (cur.outerHTML === row.outerHTML) return;
    else if (cur.cloneNode(false).outerHTML === row.cloneNode(false).outerHTML && cur.cells.length === row.cells.length) {
      [...row.cells].forEach((c, j) => { if (cur.cells[j].outerHTML !== c.outerHTML) cur.cells[j].replaceWith(c); });
    } else cur.replaceWith(row);
  });
  for (const r of old.slice(next.length)) r.remove();
}
function cell(v, num) { return h('td', num ? { class: 'num' } : {}, v); }

async function getJson(url) {
  const r = await fetch(url, { headers: { accept: 'application/json' } });
  if (r.status === 401) { location.assign('/login'); throw new Error('the session ended; log in again'); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(body.message || (r.status + ' ' + r.statusText)), { status: r.status });
  return body;
}

// A write: carries the session's CSRF token (the server also checks Origin).
async function postJson(url) {
  const r = await fetch(url, { method: 'POST', headers: { accept: 'application/json', 'x-csrf-token': state.me ? state.me.csrf : '' } });
  if (r.status === 401) { location.assign('/login'); throw new Error('the session ended; log in again'); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || (r.status + ' ' + r.statusText));
  return body;
}

// ---------- who is logged in ----------
async function loadMe() {
  state.me = await getJson('/api/me');
  const name = $('#user-name');
  name.textContent = state.me.name + ' (' + state.me.role + (state.me.participant ? ' ' + state.me.participant : '') + ')';
  name.dataset.role = state.me.role;
  $('#logout-csrf').value = state.me.csrf;
  // Operator actions exist in the page only for admins (the server refuses them to others).
  for (const el of document.querySelectorAll('[data-admin-only]')) el.hidden = !state.me.operator_actions;
}

// ---------- service status banner ----------
function showSources(sources) {
  if (!sources) return;
  const problems = [];
  for (const name of ['market', 'settlement', 'broker']) {
    const s = sources[name];
    if (!s) continue;
    const pill = $('#src-' + name);
    if (pill) { pill.dataset.state = s.ok ? 'ok' : 'down'; pill.textContent = name + (s.ok ? ' up' : ' down'); pill.title = s.ok ? name + ' reachable at ' + s.url : (s.error || name + ' unreachable'); }
    if (!s.ok && s.error !== 'not contacted yet') problems.push(s.error || (name + ' unreachable at ' + s.url));
  }
  const banner = $('#banner');
  banner.hidden = problems.length === 0;
  banner.replaceChildren(...problems.map((p) => h('p', { text: p + (p.includes('retrying') ? '' : ' — retrying') })));
}

// ---------- routing ----------
function route() {
  const path = location.pathname.replace(/\/+$/, '') || '/grid';
  const seg = path.split('/').filter(Boolean);
  const page = ['grid', 'history', 'market', 'participants', 'ledger', 'alerts'].includes(seg[0]) ? seg[0] : 'grid';
  return { page, seg, params: new URLSearchParams(location.search) };
}
function navigate(href) { history.pushState({}, '', href); render(true); }
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-link]');
  if (!a || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', () => render(true));

async function render(pageChanged) {
  const r = route();
  if (pageChanged || state.page !== r.page) {
    for (const s of document.querySelectorAll('.page')) s.hidden = s.id !== 'page-' + r.page;
    for (const a of document.querySelectorAll('nav a[data-page]')) {
      if (a.dataset.page === r.page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    const title = r.page[0].toUpperCase() + r.page.slice(1);
    document.title = title + ' · gridmesh dashboard';
    // Moving to another page moves focus to it; the first load leaves focus at the top, so the
    // first Tab reaches the skip link.
    if (state.page !== null && state.page !== r.page) $('#main').focus({ preventScroll: true });
    state.page = r.page;
  }
  try {
    await ({ grid: renderGrid, history: renderHistory, market: renderMarket, participants: renderParticipants, ledger: renderLedger, alerts: renderAlerts })[r.page](r, pageChanged);
  } catch (e) {
    const banner = $('#banner');
    banner.hidden = false;
    banner.replaceChildren(h('p', { text: 'Could not load this page\'s data: ' + e.message + ' — retrying on the next update.' }));
  }
  // A detail opened by a click or a link is shown where the user is looking.
  if (pageChanged && r.seg.length > 1) revealDetail(document.querySelector('#page-' + r.page + ' .detail:not([hidden])'));
  refreshAlertCount();
}

// ---------- Grid ----------
// The grid's state is what the meters measured (settlement's flows from verified readings);
// the market's cleared flow is a plan and is always labelled as one. Status and colour follow
// the measured flow only.
const STATUS_TEXT = { normal: 'under 90 %', near: '90 % of limit or more', over: 'over limit', unlimited: 'no limit', no_data: 'no metered data' };
const flowText = (wh) => wh === null || wh === undefined ? '–' : (wh === 0 ? '0.0 kWh' : kwh(Math.abs(wh)) + ' kWh ' + (wh < 0 ? 'export' : 'import'));
async function renderGrid() {
  const g = await getJson('/api/grid');
  showSources(g.sources);
  renderDiagram(g);
  const measured = g.measured_interval !== null && g.measured_interval !== undefined;
  const metered = $('#grid-metered');
  metered.textContent = measured ? g.metered_summary.replace(g.measured_interval, intervalText(g.measured_interval)) : g.metered_summary;
  metered.dataset.measured = String(measured);
  const online = g.gateways.filter((x) => x.status === 'online').length;
  const offline = g.gateways.filter((x) => x.status === 'offline').length;
  const card = (label, value, sub, id) => h('div', { class: 'card', id }, h('div', { class: 'label', text: label }), h('div', { class: 'value', text: value }), sub ? h('div', { class: 'label', text: sub }) : null);
  const all = (g.utility && g.utility.control) || { gateways: 0, reporting: 0, on_default: 0, curtailed_wh: 0, curtailed_total_wh: 0 };
  $('#grid-cards').replaceChildren(
    card('Measured (metered) interval', measured ? intervalText(g.measured_interval) : 'no metered data yet', measured ? g.metered_summary.replace(/^.*: /, '') : 'waiting for verified readings', 'card-measured'),
    card('Cleared (plan) interval shown', intervalText(g.cleared_interval), g.latest_cleared_interval && g.latest_cleared_interval !== g.cleared_interval ? 'latest plan: ' + intervalText(g.latest_cleared_interval) : null),
    card('PV curtailed this interval', kwh(all.curtailed_wh) + ' kWh', g.control_interval ? intervalText(g.control_interval) + ' · ' + kwh(all.curtailed_total_wh) + ' kWh since the gateways started' : 'no gateway control status yet', 'card-curtailed'),
    card('Homes on default envelope', all.on_default + ' of ' + all.reporting, all.reporting < all.gateways ? (all.gateways - all.reporting) + ' of ' + all.gateways + ' gateways have not reported control status' : 'all gateways report control status', 'card-default'),
    card('Gateways online', online + ' of ' + g.gateways.length, offline ? offline + ' offline' : (g.gateways.length - online ? (g.gateways.length - online) + ' unknown' : 'all online')),
  );
  const rows = g.utility ? [g.utility, ...g.branches] : [];
  const flowRow = (b) => {
    const isUtility = b.parent === null;
    const nameText = isUtility ? 'Utility connection (' + b.node + ')' : b.node;
    const m = b.measured;
    const measuredCell = m
      ? h('td', { class: 'num', 'data-measured': 'true' }, flowText(m.flow_wh), h('div', { class: 'sub', text: m.homes_reporting + ' of ' + m.homes_enrolled + ' homes reported' }))
      : h('td', { class: 'num empty', 'data-measured': 'false', text: measured ? 'no home below reported' : 'no metered data yet' });
    const clearedCell = h('td', { class: 'num', 'data-cleared': b.cleared_flow_wh === null ? 'false' : 'true' }, flowText(b.cleared_flow_wh),
      b.cleared_at_limit ? h('div', { class: 'sub', text: 'cleared at limit' }) : null);
    const limitText = m
      ? (b.limit_wh === null ? 'no ' + (m.flow_wh < 0 ? 'export' : 'import') + ' limit' : kwh(b.limit_wh) + ' kWh ' + (m.flow_wh < 0 ? 'export' : 'import'))
      : (b.import_limit_wh === null && b.export_limit_wh === null ? 'no limit' : 'import ' + (b.import_limit_wh === null ? '–' : kwh(b.import_limit_wh)) + ' / export ' + (b.export_limit_wh === null ? '–' : kwh(b.export_limit_wh)) + ' kWh');
    const statusText = STATUS_TEXT[b.status] + (b.utilisation_pct === null || b.utilisation_pct === undefined ? '' : ' (' + b.utilisation_pct + ' %)');
    const c = b.control;
    return h('tr', { class: 'branch', 'data-node': b.node, 'data-status': b.status, 'data-cleared-at-limit': String(b.cleared_at_limit), 'data-utility': String(isUtility) },
      h('th', { scope: 'row', style: 'padding-left:' + (0.6 + Math.max(0, b.depth - 1) * 1.1) + 'rem' },
        link('/participants' + (isUtility ? '' : '?node=' + encodeURIComponent(b.node)), nameText, { class: 'name', 'aria-label': nameText + ': show its ' + b.participants + ' participants' }),
        h('div', { class: 'sub', text: b.participants + (b.participants === 1 ? ' participant' : ' participants') })),
      measuredCell, clearedCell, h('td', { class: 'num', text: limitText }),
      h('td', {}, h('span', { class: 'badge ' + b.status, text: statusText })),
      cell(c.gateways ? kwh(c.curtailed_wh) + ' kWh' : '–', true),
      cell(c.gateways ? kwh(c.curtailed_total_wh) + ' kWh' : '–', true),
      cell(c.gateways ? c.on_default + ' of ' + c.reporting : '–', true));
  };
  fillBody($('#grid-flows'), rows.map(flowRow), 'No topology yet: waiting for the market.', 8);
  fillBody($('#grid-gateways'), g.gateways.map((x) => h('tr', {}, cell(x.gateway), cell(link('/participants/' + encodeURIComponent(x.participant), x.participant)), cell(x.node),
    cell(h('span', { class: 'badge ' + x.status, text: x.status })),
    cell(x.envelope ? h('span', { class: 'badge ' + (x.envelope === 'default' ? 'warning' : 'ok'), text: x.envelope === 'default' ? 'default envelope' : 'market envelope' }) : '–'),
    cell(x.curtailed_wh === null || x.curtailed_wh === undefined ? '–' : kwh(x.curtailed_wh) + ' kWh', true))), 'No gateways enrolled yet.', 6);
  const [a, m] = await Promise.all([getJson('/api/alerts'), getJson('/api/market')]);
  const over = a.alerts.filter((x) => x.kind === 'congestion').slice(0, 8);
  $('#grid-over').replaceChildren(...(over.length ? over.map((x) => h('li', {},
    h('span', { class: 'badge over', text: 'over limit' }), ' ', link('/participants?node=' + encodeURIComponent(x.subject), x.subject, { 'data-over-node': x.subject }),
    ' · ' + intervalText(x.interval) + ' · ' + x.message))
    : [h('li', { class: 'empty', text: measured ? 'No measured flow exceeded its limit in the shown history.' : 'No metered data yet.' })]));
  const recent = m.congestion.slice(0, 8);
  $('#grid-congestion').replaceChildren(...(recent.length ? recent.map((c) => h('li', {},
    h('span', { class: 'badge info', text: 'cleared at limit' }), ' ', link('/participants?node=' + encodeURIComponent(c.node), c.node, { 'data-congested-node': c.node }),
    ' · ' + intervalText(c.interval) + ' · plan ' + kwh(Math.abs(c.flow_wh)) + ' of ' + (c.limit_wh === null ? '?' : kwh(c.limit_wh)) + ' kWh'))
    : [h('li', { class: 'empty', text: 'The market cleared no branch at its limit in the shown history.' })]));
}

// ---------- Market ----------
async function loadChart(el) {
  const r = await fetch(el.dataset.src, { cache: 'no-store' });
  if (!r.ok) throw new Error('chart ' + el.dataset.src + ' failed: ' + r.status);
  const text = await r.text();
  el.innerHTML = text; // our own server's SVG (drawn by plotters)
}
async function renderMarket() {
  const m = await getJson('/api/market');
  showSources(m.sources);
  $('#market-lede').textContent = (m.intervals.length ? m.intervals.length + ' cleared intervals shown' : 'No cleared intervals yet') +
    (m.next_interval ? '; next interval open for orders starts ' + m.next_interval.replace('T', ' ').replace('Z', ' UTC') : '') + '.';
  // Each chart loads on its own and never holds up the tables.
  for (const el of document.querySelectorAll('#page-market .chart')) drawChart(el, el.dataset.src, state.latestInterval || '');
  const latest = m.intervals[0];
  fillBody($('#market-prices'), latest ? Object.entries(latest.prices).map(([node, p]) => h('tr', {}, cell(node), cell(cPerKwh(p), true))) : [], 'No prices yet.', 2);
  fillBody($('#market-congestion'), m.congestion.slice(0, 50).map((c) => h('tr', {}, cell(intervalText(c.interval)),
    cell(link('/participants?node=' + encodeURIComponent(c.node), c.node)), cell(flowText(c.flow_wh), true), cell(c.limit_wh === null ? '–' : kwh(c.limit_wh), true))), 'The market cleared no branch at its limit in the shown history.', 4);
  fillBody($('#market-intervals'), m.intervals.slice(0, 24).map((i) => h('tr', {}, cell(intervalText(i.interval)), cell(kwh(i.traded_wh), true), cell(kwh(i.local_wh), true),
    cell(kwh(i.utility_import_wh), true), cell(kwh(i.utility_export_wh), true), cell(i.congested.join(', ') || '–'))), 'No cleared intervals yet.', 6);
}

// ---------- Participants ----------
let searchTimer = null;
$('#participant-q') && $('#participant-q').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const p = new URLSearchParams(location.search);
    const q = $('#participant-q').value.trim();
    if (q) p.set('q', q); else p.delete('q');
    history.replaceState({}, '', '/participants' + (p.toString() ? '?' + p : ''));
    render(false);
  }, 150);
});
async function renderParticipants(r) {
  const q = r.params.get('q') || '';
  const node = r.params.get('node');
  const input = $('#participant-q');
  if (document.activeElement !== input) input.value = q;
  const qs = new URLSearchParams();
  if (q) qs.set('q', q);
  if (node) qs.set('node', node);
  const data = await getJson('/api/participants' + (qs.toString() ? '?' + qs : ''));
  showSources(data.sources);
  const chip = $('#participant-filter');
  chip.hidden = !node;
  if (node) chip.replaceChildren('Within ' + node + ' ', link('/participants' + (q ? '?q=' + encodeURIComponent(q) : ''), '× clear', { 'aria-label': 'Clear the filter on ' + node }));
  fillBody($('#participants'), data.participants.map((p) => h('tr', { 'data-participant': p.id },
    cell(link('/participants/' + encodeURIComponent(p.id), p.id)), cell(p.node + (p.feeder && p.feeder !== p.node ? ' (' + p.feeder + ')' : '')),
    cell(p.gateway ? h('span', {}, p.gateway + ' ', h('span', { class: 'badge ' + p.gateway_status, text: p.gateway_status })) : '–'),
    cell(kwh(p.generation_wh), true), cell(kwh(p.consumption_wh), true), cell(kwh(p.import_wh), true), cell(kwh(p.export_wh), true),
    cell(kwh(p.bought_wh), true), cell(kwh(p.sold_wh), true), cell(money(p.earned), true), cell(money(p.spent), true), cell(money(p.settled_net), true),
    cell(kwh(p.tokens_wh), true))), q || node ? 'No participant matches.' : 'No participants registered yet.', 13);
  if (data.period) $('#participants-period').textContent = data.period;
  const detail = $('#participant-detail');
  // The list is shown again only once the detail is known not to be a 404, so a live render
  // that overlaps a 404's render never shows the list under the error, even for a moment.
  if (r.seg.length > 1) await renderParticipantDetail(decodeURIComponent(r.seg[1]), detail); else { $('#participants-list').hidden = false; detail.hidden = true; delete detail.dataset.shown; }
}
async function renderParticipantDetail(id, detail) {
  let d;
  try { d = await getJson('/api/participants/' + encodeURIComponent(id)); } catch (e) {
    if (e.status === 404) {
      // No such participant: an error, not the list.
      detail.replaceChildren(h('h2', { text: 'Participant ' + id }),
        h('p', { id: 'participant-missing', class: 'verdict', 'data-ok': 'false', role: 'alert', text: 'Not found: ' + e.message + '. Check the id, or pick a participant from the list.' }),
        link('/participants', '← all participants'));
      detail.hidden = false;
      delete detail.dataset.shown;
      $('#participants-list').hidden = true;
      return;
    }
    $('#participants-list').hidden = false;
    if (e.status !== 403) throw e;
    // Another household's detail: refused by the server, said so in place.
    detail.replaceChildren(h('h2', { text: 'Participant ' + id }),
      h('p', { id: 'participant-refused', class: 'verdict', 'data-ok': 'false', role: 'alert', text: e.message }),
      link('/participants', '← all participants'));
    detail.hidden = false;
    return;
  }
  $('#participants-list').hidden = false;
  keepDetail(detail, d, () => buildParticipantDetail(d, detail));
}
function buildParticipantDetail(d, detail) {
  const id = d.participant.id;
  const p = d.participant;
  // Settlement's Holding: the lot, its tokens and the mint it comes from (protocol::api::settlement).
  const rows = d.holdings.map((hd) => {
    const lot = hd.lot;
    const prov = hd.provenance || {};
    return h('tr', { 'data-lot': lot }, cell(lot ? link('/ledger/entries/' + lot, short(lot), { class: 'hash', 'aria-label': short(lot) + ': provenance of lot ' + lot }) : '–'),
      cell(kwh(Number(hd.amount)), true), cell(String(prov.source || '')), cell(intervalText(prov.interval || '')));
  });
  const table = h('table', { id: 'holdings' }, h('caption', { class: 'sr', text: 'Token holdings of ' + id }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Lot (provenance)' }), h('th', { scope: 'col', class: 'num', text: 'Tokens (kWh)' }), h('th', { scope: 'col', text: 'Source' }), h('th', { scope: 'col', text: 'Interval' }))),
    h('tbody', {}));
  fillBody(table, rows, 'No token holdings.', 4);
  detail.replaceChildren(
    h('h2', { text: 'Participant ' + p.id }),
    h('dl', { class: 'kv' }, h('dt', { text: 'Kind' }), h('dd', { text: p.kind }), h('dt', { text: 'Node' }), h('dd', { text: p.node + (p.feeder ? ' (feeder ' + p.feeder + ')' : '') }),
      h('dt', { text: 'Gateway' }), h('dd', { text: p.gateway ? p.gateway + ' — ' + p.gateway_status : 'none' }),
      h('dt', { text: 'Market' }), h('dd', { text: 'bought ' + kwh(p.bought_wh) + ' kWh for ' + money(p.spent) + ', sold ' + kwh(p.sold_wh) + ' kWh for ' + money(p.earned) }),
      h('dt', { text: 'Tokens' }), h('dd', { text: kwh(p.tokens_wh ?? 0) + ' kWh in ' + p.lots + ' lots' })),
    ...(d.errors.length ? [h('p', { class: 'verdict', 'data-ok': 'false', text: d.errors.join(' · ') })] : []),
    h('details', { open: true, 'data-key': 'holdings' }, h('summary', { 'data-key': 'holdings-summary', text: 'Token holdings (' + d.holdings.length + ' lots)' }), h('div', { class: 'scroll' }, table)),
    link('/participants', '← all participants'));
  detail.hidden = false;
}

// ---------- Ledger ----------
async function renderLedger(r, pageChanged) {
  ensureLedgerTools(); // ops.js: search, paging, exports
  const data = await getJson('/api/ledger/blocks');
  showSources(data.sources);
  // Settlement's BlockSummary: the header fields flat beside hash, signature and entries.
  if (!state.ledgerPaged) fillBody($('#ledger-blocks'), data.blocks.map((b) => h('tr', {}, cell(link('/ledger/blocks/' + b.height, String(b.height)), true), cell(intervalText(b.interval)),
    cell(String(b.entry_count), true), cell(h('span', { class: 'hash', text: short(b.merkle_root) })), cell(String(b.sealed_at || '–')))), 'No blocks sealed yet.', 5);
  if (!state.ledgerPaged) {
    // "Older blocks" continues below the lowest block shown (it showed the newest page again).
    const lowest = data.blocks.length ? Math.min(...data.blocks.map((b) => b.height)) : null;
    state.ledgerBefore = lowest;
    $('#ledger-older').disabled = !lowest;
  }
  const detail = $('#ledger-detail');
  // A sealed block or entry never changes: a live update keeps the detail (and its checks in
  // progress) as shown instead of starting them again.
  const shown = r.seg.slice(1, 3).join('/');
  if (!pageChanged && shown && shown === state.ledgerShown) return;
  state.ledgerShown = shown;
  const token = ++state.detailToken;
  try {
    if (r.seg[1] === 'blocks' && r.seg[2]) await renderBlock(r.seg[2], detail, token);
    else if (r.seg[1] === 'entries' && r.seg[2]) await renderVerifiedEntry(r.seg[2], detail, token); // ops.js
    else detail.hidden = true;
  } catch (e) {
    if (token === state.detailToken) state.ledgerShown = null; // try again on the next update
    throw e;
  }
}
async function renderBlock(height, detail, token) {
  const b = await getJson('/api/ledger/blocks/' + encodeURIComponent(height));
  if (token !== state.detailToken) return;
  const entries = b.entries || [];
  detail.replaceChildren(h('h2', { text: 'Block ' + height }),
    h('dl', { class: 'kv' }, ...['hash', 'prev_hash', 'merkle_root', 'entry_count', 'sealed_at'].flatMap((k) =>
      b[k] === undefined || b[k] === null ? [] : [h('dt', { text: k.replace('_', ' ') }), h('dd', { class: 'hash', text: String(b[k]) })])),
    h('h3', { text: 'Entries' }),
    h('ul', { class: 'plain' }, ...(entries.length ? entries.map((hash) =>
      h('li', {}, link('/ledger/entries/' + hash, short(hash), { class: 'hash' }), ' ')) : [h('li', { class: 'empty', text: 'No entries listed.' })])));
  detail.hidden = false;
}

// Merkle hashing as settlement documents it: leaf = SHA-256(0x00 ‖ body bytes),
// node = SHA-256(0x01 ‖ left ‖ right); a proof lists siblings with the side they are on.
const hex = (u8) => [...u8].map((b) => b.toString(16).padStart(2, '0')).join('');
const unhex = (s) => new Uint8Array((s.match(/../g) || []).map((x) => parseInt(x, 16)));
async function sha256(...parts) {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const buf = new Uint8Array(len);
  let at = 0;
  for (const p of parts) { buf.set(p, at); at += p.length; }
  return new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
}
// The exact bytes settlement hashed for an entry (its `body_base64`).
function bodyBytes(entry) {
  const b64 = entry.body_base64;
  return typeof b64 === 'string' ? Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)) : null;
}
async function verifyInclusion(entry, root) {
  if (!window.crypto || !crypto.subtle) return { ok: false, text: 'This browser offers no WebCrypto here (it needs https or localhost), so the proof cannot be checked.' };
  const bytes = bodyBytes(entry);
  const claimed = entry.hash;
  if (!bytes) return { ok: false, text: 'Settlement sent this entry without its hashed bytes; nothing to verify.' };
  const leaf = await sha256(new Uint8Array([0]), bytes);
  if (claimed && hex(leaf) !== claimed) return { ok: false, text: 'The body does not hash to the entry hash ' + claimed + ': it was altered.' };
  const steps = entry.proof || [];
  let acc = leaf;
  for (const s of steps) {
    const sib = unhex(s.sibling);
    acc = s.side === 'left' ? await sha256(new Uint8Array([1]), sib, acc) : await sha256(new Uint8Array([1]), acc, sib);
  }
  if (!root) return { ok: false, text: 'This entry is not in a sealed block yet, so there is no Merkle root to check it against; it will be once its interval\'s block is sealed.' };
  const ok = hex(acc) === String(root).toLowerCase();
  return { ok, text: ok
    ? 'Verified in your browser: SHA-256(0x00 ‖ body) is the entry hash, and ' + steps.length + ' proof steps lead to the block\'s Merkle root ' + short(root) + '.'
    : 'Proof FAILED: the steps lead to ' + hex(acc) + ', but the block\'s root is ' + root + '.' };
}
function kvList(obj, skip) {
  return h('dl', { class: 'kv' }, ...Object.entries(obj || {}).filter(([k]) => !(skip || []).includes(k)).flatMap(([k, v]) => [
    h('dt', { text: k.replaceAll('_', ' ') }), h('dd', { class: typeof v === 'string' && /^[0-9a-f]{64}$/.test(v) ? 'hash' : '', text: typeof v === 'object' ? JSON.stringify(v) : String(v) })]));
}
// Bit i of a reading's flags (docs/protocol.md).
const READING_FLAGS = ['counter reset', 'counter wrap', 'interpolated', 'clock step', 'device error', 'stale', 'partial (a device is absent)'];
function b64bytes(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}
// ---------- Alerts ----------
async function renderAlerts() {
  const a = await getJson('/api/alerts');
  showSources(a.sources);
  fillBody($('#alerts'), a.alerts.map((x) => h('tr', { 'data-kind': x.kind }, cell(h('span', { class: 'badge ' + x.severity, text: x.severity })), cell(x.kind.replaceAll('_', ' ')),
    cell(intervalText(x.interval)), cell(alertSubject(x)), h('td', { class: 'wrap', text: x.message }))), 'No alerts. All quiet.', 5);
  await renderIncidents(); // ops.js
  await renderQuarantine();
}
async function renderQuarantine() {
  const section = $('#quarantine-section');
  // Quarantined readings hold every home's raw envelopes: operator and auditors only.
  if (!state.me || state.me.role === 'household') { section.hidden = true; return; }
  section.hidden = false;
  const q = await getJson('/api/quarantine');
  const admin = state.me.operator_actions;
  fillBody($('#quarantine'), q.items.map((x) => h('tr', { 'data-id': String(x.id) },
    cell(String(x.id)), cell(x.gateway || '–'), h('td', { class: 'wrap', text: x.reason }), cell(x.status),
    admin ? h('td', {}, x.status === 'open'
      ? h('button', { type: 'button', class: 'accept', 'data-id': String(x.id), disabled: !x.acceptable, title: x.acceptable ? 'Accept this reading' : 'No operator may accept this reason', text: 'Accept' })
      : '') : null)), 'Nothing quarantined.', admin ? 5 : 4);
}
document.addEventListener('click', async (e) => {
  const b = e.target.closest('button.accept');
  if (!b) return;
  b.disabled = true;
  try { await postJson('/api/quarantine/' + encodeURIComponent(b.dataset.id) + '/accept'); b.textContent = 'Accepted'; }
  catch (err) { b.disabled = false; b.title = err.message; const banner = $('#banner'); banner.hidden = false; banner.replaceChildren(h('p', { text: 'Accept failed: ' + err.message })); }
});
function alertSubject(x) {
  if (x.kind === 'congestion' || x.kind === 'cleared_at_limit') return link('/participants?node=' + encodeURIComponent(x.subject), x.subject);
  if (x.kind === 'envelope_violation') return link('/participants/' + encodeURIComponent(x.subject), x.subject);
  return x.subject;
}
async function refreshAlertCount() {
  try {
    const s = await getJson('/api/status');
    showSources(s.sources);
    const c = $('#alert-count');
    // The badge counts active incidents nobody acknowledged yet (not every alert row).
    const open = s.incidents_unacknowledged || 0;
    c.hidden = !open;
    c.textContent = String(open);
    c.setAttribute('aria-label', open + ' active unacknowledged incidents');
    $('#updated').textContent = 'Data as of ' + (s.refreshed_at ? new Date(s.refreshed_at).toLocaleTimeString() : '–') + ' (wall clock)' + (s.latest_interval ? ' · latest cleared interval ' + intervalText(s.latest_interval) + ' (interval time)' : '');
  } catch (_) { /* the banner already says why */ }
}

// ---------- live updates ----------
function connectLive() {
  const live = $('#src-live');
  const es = new EventSource('/api/events');
  es.addEventListener('open', () => { live.dataset.state = 'ok'; live.title = 'Live updates connected'; });
  es.addEventListener('error', () => { live.dataset.state = 'down'; live.title = 'Live updates interrupted; reconnecting'; });
  es.addEventListener('update', (ev) => {
    let change = {};
    try { change = JSON.parse(ev.data); } catch (_) { return; }
    if (change.version === state.version) return;
    state.version = change.version;
    if (change.latest_interval !== undefined) state.latestInterval = change.latest_interval;
    if (document.activeElement && document.activeElement.closest('#ledger-detail details')) return;
    scheduleLiveRender();
  });
}
// history.js (deferred after this file) defines the operator views this file calls; the first
// render waits until every deferred script ran.
document.addEventListener('DOMContentLoaded', () => {
  loadMe().catch(() => {}).finally(() => { render(true); connectLive(); });
});
