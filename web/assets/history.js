// gridmesh dashboard, operator views (loaded after app.js, shares its helpers): history over a
// chosen range, the single-line diagram, charts that load on their own (one failing chart
// never empties a table) and only re-draw when a new interval clears, details revealed where
// the user is looking.
'use strict';

// The width a chart is drawn at (CSS pixels), so its text renders at the size it was drawn.
function chartWidth(el) {
  const w = el.clientWidth || (el.parentElement && el.parentElement.clientWidth) || 720;
  return Math.max(280, Math.min(1600, Math.round(w)));
}

// Loads one server-drawn SVG into `el`, on its own: a failure is said in place of that chart
// only. `key` names what the chart shows; the same key is not fetched again (charts re-draw
// only when a new interval clears or the user changes what is shown).
async function drawChart(el, url, key) {
  const full = url + (url.includes('?') ? '&' : '?') + 'w=' + chartWidth(el);
  const drawnKey = full + '|' + (key || '');
  if (el.dataset.drawn === drawnKey && el.dataset.state === 'ok') return;
  el.dataset.drawn = drawnKey;
  try {
    const r = await fetch(full, { cache: 'no-store' });
    if (r.status === 401) { location.assign('/login'); return; }
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.message || (r.status + ' ' + r.statusText));
    }
    const text = await r.text();
    if (el.dataset.drawn !== drawnKey) return; // a newer request took over
    el.innerHTML = text; // our own server's SVG
    el.dataset.state = 'ok';
  } catch (e) {
    el.dataset.state = 'error';
    el.replaceChildren(h('p', { class: 'verdict chart-error', 'data-ok': 'false', text: 'This chart could not be drawn: ' + e.message + '. The tables on this page do not depend on it; it is tried again on the next cleared interval.' }));
  }
}

// ---------- History ----------
const RANGE_TEXT = { '6h': 'last 6 hours', '24h': 'last 24 hours', '7d': 'last 7 days', custom: 'custom range' };
const utcText = (iso) => iso ? String(iso).replace('T', ' ').replace(/:00(\.0+)?(Z|\+00:00)$/, ' UTC') : '–';
// A datetime-local value (read as UTC) to RFC 3339 and back.
const localToIso = (v) => v ? v + (v.length === 16 ? ':00' : '') + 'Z' : '';
const isoToLocal = (iso) => iso ? String(iso).slice(0, 16) : '';

function historyQuery(params) {
  const qs = new URLSearchParams();
  const range = params.get('range') || '6h';
  qs.set('range', range);
  if (range === 'custom') {
    if (params.get('from')) qs.set('from', params.get('from'));
    if (params.get('to')) qs.set('to', params.get('to'));
  }
  if (params.get('node')) qs.set('node', params.get('node'));
  return qs;
}

async function renderHistory(r, pageChanged) {
  const qs = historyQuery(r.params);
  const range = qs.get('range');
  const form = $('#history-form');
  for (const input of form.querySelectorAll('input[name="range"]')) input.checked = input.value === range;
  $('#history-custom').hidden = range !== 'custom';
  if (document.activeElement !== $('#history-from')) $('#history-from').value = isoToLocal(qs.get('from'));
  if (document.activeElement !== $('#history-to')) $('#history-to').value = isoToLocal(qs.get('to'));
  const error = $('#history-error');
  let hist;
  try {
    hist = await getJson('/api/history?' + qs);
    error.hidden = true;
  } catch (e) {
    error.hidden = false;
    error.textContent = 'Cannot show this history: ' + e.message;
    return;
  }
  const select = $('#history-node');
  const current = [...select.options].map((o) => o.value).join(',');
  if (current !== hist.nodes.join(',')) {
    select.replaceChildren(...hist.nodes.map((n, i) => h('option', { value: n, text: i === 0 ? 'Substation ' + n + ' (utility connection)' : 'Branch ' + n })));
  }
  if (document.activeElement !== select) select.value = hist.node;
  const withData = hist.buckets.filter((b) => b.intervals > 0 || b.measured_intervals > 0).length;
  $('#history-lede').textContent = (hist.is_root ? 'Substation ' : 'Branch ') + hist.node + ', ' + RANGE_TEXT[hist.range] + ': ' +
    utcText(hist.from) + ' to ' + utcText(hist.to) + ' (interval time), in ' + hist.bucket_minutes + '-minute buckets; ' +
    withData + ' of ' + Math.round((Date.parse(hist.to) - Date.parse(hist.from)) / 60000 / hist.bucket_minutes) + ' buckets have data.';
  $('#history-participants').setAttribute('href', hist.is_root ? '/participants' : '/participants?node=' + encodeURIComponent(hist.node));
  // The table first: it never waits for a chart.
  const newest = hist.buckets.slice(-24).reverse();
  fillBody($('#history-table'), newest.map((b) => h('tr', {},
    cell(utcText(b.start)), cell(b.measured_peak_wh === null ? '–' : flowText(b.measured_peak_wh), true),
    cell(b.cleared_peak_wh === null ? '–' : flowText(b.cleared_peak_wh), true),
    cell((b.import_limit_wh === null ? '–' : kwh(b.import_limit_wh)) + ' / ' + (b.export_limit_wh === null ? '–' : kwh(b.export_limit_wh)), true),
    cell(kwh(b.traded_wh), true), cell(kwh(b.local_wh), true))), 'No cleared intervals in this range.', 6);
  $('#history-table').querySelector('caption').textContent = 'The newest ' + newest.length + ' buckets of ' + hist.bucket_minutes + ' minutes, ' + utcText(hist.from) + ' to ' + utcText(hist.to);
  const key = state.latestInterval || '';
  for (const el of document.querySelectorAll('#page-history .chart')) drawChart(el, el.dataset.src + '?' + qs, key);
}

document.addEventListener('change', (e) => {
  const form = e.target.closest && e.target.closest('#history-form');
  if (!form || e.target.type === 'datetime-local') return;
  if (e.target.name === 'range') $('#history-custom').hidden = e.target.value !== 'custom';
  if (e.target.name === 'range' && e.target.value === 'custom') return; // wait for the dates
  applyHistoryForm();
});
document.addEventListener('submit', (e) => {
  if (e.target.id !== 'history-form') return;
  e.preventDefault();
  applyHistoryForm();
});
function applyHistoryForm() {
  const form = $('#history-form');
  const p = new URLSearchParams();
  const range = (form.querySelector('input[name="range"]:checked') || { value: '6h' }).value;
  p.set('range', range);
  if (range === 'custom') {
    p.set('from', localToIso($('#history-from').value));
    p.set('to', localToIso($('#history-to').value));
  }
  p.set('node', $('#history-node').value);
  history.replaceState({}, '', '/history?' + p);
  render(false);
}

// ---------- the single-line diagram (Grid page) ----------
async function renderDiagram(g) {
  const el = $('#grid-diagram');
  if (!el) return;
  // Re-drawn when a new interval clears or more homes' readings arrive for the measured one.
  await drawChart(el, '/charts/diagram.svg', (state.latestInterval || '') + '|' + (g.metered_summary || ''));
}

// ---------- details where the user is looking ----------
// Brings an opened detail into view and moves focus to its heading (once per opening, not on
// live updates).
function revealDetail(detail) {
  if (!detail || detail.hidden) return;
  const heading = detail.querySelector('h2');
  if (heading) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
  detail.scrollIntoView({ block: 'start', behavior: 'instant' });
}

// Re-renders `detail` with `build()` only when its data changed, keeping open <details> and
// the focused element (by id or data-key) across the update.
function keepDetail(detail, data, build) {
  const text = JSON.stringify(data);
  if (detail.dataset.shown === text && !detail.hidden) return false;
  const keyOf = (d) => d.dataset.key || d.querySelector('summary')?.textContent;
  const known = new Set([...detail.querySelectorAll('details')].map(keyOf));
  const open = new Set([...detail.querySelectorAll('details[open]')].map(keyOf));
  const before = detail.querySelector('h2')?.textContent;
  const active = document.activeElement && detail.contains(document.activeElement) ? (document.activeElement.id || document.activeElement.dataset.key) : null;
  build();
  detail.dataset.shown = text;
  // A section the user opened or closed stays so; a new one keeps its default.
  const same = before === detail.querySelector('h2')?.textContent;
  for (const d of detail.querySelectorAll('details')) if (same && known.has(keyOf(d))) d.open = open.has(keyOf(d));
  if (active) {
    const again = detail.querySelector('#' + CSS.escape(active)) || detail.querySelector('[data-key="' + CSS.escape(active) + '"]');
    if (again) again.focus({ preventScroll: true });
  }
  return true;
}

// ---------- live updates, coalesced ----------
// A burst of events (a new interval clears, readings arrive, blocks seal) becomes one render;
// renders are at least LIVE_GAP_MS apart, so one tab stays far under 60 requests a minute.
const LIVE_GAP_MS = 8000;
// events: live events seen; renders: renders started for them; done: renders finished.
const liveRender = { timer: null, last: 0, events: 0, renders: 0, done: 0 };
function scheduleLiveRender() {
  liveRender.events++;
  if (liveRender.timer) return;
  const wait = Math.max(250, liveRender.last + LIVE_GAP_MS - Date.now());
  liveRender.timer = setTimeout(() => {
    liveRender.timer = null;
    liveRender.last = Date.now();
    liveRender.renders++;
    render(false).finally(() => { liveRender.done++; });
  }, wait);
}

// ---------- scrollable tables reachable by keyboard ----------
// A table wider than the screen scrolls inside its box; the box takes focus (and names its
// table) so keyboard users can scroll it too.
function labelScrollBoxes(root) {
  for (const box of root.querySelectorAll('.scroll:not([tabindex])')) {
    box.tabIndex = 0;
    box.setAttribute('role', 'region');
    const caption = box.querySelector('caption');
    box.setAttribute('aria-label', caption ? caption.textContent : 'Scrollable table');
  }
}
labelScrollBoxes(document);
new MutationObserver(() => labelScrollBoxes(document)).observe(document.getElementById('main'), { childList: true, subtree: true });
