// gridmesh dashboard, operator tools: the verified ledger entry view, ledger search and paging,
// CSV exports, and incidents with acknowledgement. Loaded before app.js and called from it; uses
// its helpers (h, $, getJson, postJson, link, cell, fillBody, short, intervalText, kwh, ...)
// at call time. Text from data is inserted with textContent only.
'use strict';

// ---------- "Verified" means verified: the entry view ----------
// The dashboard server checks the entry (its bytes hash to the hash), the block (header hash and
// ed25519 signature with the pinned settlement authority key), the Merkle proof against the
// signed header's root, the prev-hash chain, and each signed reading's key against the gateway
// registry (GET /api/ledger/verify/{hash}). Values are shown only from the verified bytes; the
// browser re-checks the inclusion proof with WebCrypto against the signed header's root.
const CHECK_NAMES = {
  entry_hash: 'Entry bytes hash to the entry hash',
  block_signature: 'Block header signed by the pinned settlement authority key',
  merkle_root: 'Inclusion proof leads to the signed header\'s Merkle root',
  chain: 'Previous-hash chain back to a verified block',
  reading_digest: 'Payload hashes to the digest the mint names',
  reading_signature: 'Signature verifies',
  reading_key: 'Signed by the gateway\'s enrolled key (registry)',
};
function checkList(checks, attrs) {
  return h('ul', Object.assign({ class: 'checks' }, attrs || {}), ...checks.map((c) =>
    h('li', { 'data-check': c.name, 'data-ok': String(c.ok) },
      h('strong', { text: (c.ok ? '✓ passed: ' : '✗ FAILED: ') + (CHECK_NAMES[c.name] || c.name) }), ' — ', c.message)));
}
function verifiedReading(p) {
  const li = h('li', { 'data-reading': p.digest }, h('span', { class: 'hash', text: p.digest }));
  const out = h('div', { class: 'reading', 'data-verified': String(p.ok) });
  const rd = p.reading;
  if (rd) {
    const d = rd.deltas || {};
    out.append(h('p', { text: 'Gateway ' + rd.gateway + ', sequence ' + rd.sequence + ', interval ' + intervalText(rd.interval.start + '/' + rd.interval.minutes) +
      ': export ' + d.grid_export + ' Wh, import ' + d.grid_import + ' Wh, PV ' + d.pv + ' Wh (from the verified signed payload).' }));
  } else if (p.ok) {
    out.append(h('p', { text: 'Verified; its values belong to another household.' }));
  } else {
    out.append(h('p', { class: 'failed', text: 'NOT VERIFIED: its values are not shown.' }));
  }
  out.append(checkList(p.checks));
  li.append(out);
  return li;
}
async function renderVerifiedEntry(hash, detail, token) {
  const v = await getJson('/api/ledger/verify/' + encodeURIComponent(hash));
  if (token !== state.detailToken) return;
  const body = v.body;
  const failed = v.checks.filter((c) => !c.ok).concat(...v.readings.map((r) => r.checks.filter((c) => !c.ok)));
  const summary = h('p', { class: 'verdict', id: 'trust-verdict', role: 'status', 'data-ok': String(v.verified),
    text: v.verified ? 'VERIFIED: the entry, its signed block, the chain and every reading behind it check out.'
      : 'NOT VERIFIED: ' + failed.length + ' check(s) failed — ' + failed.map((c) => CHECK_NAMES[c.name] || c.name).join('; ') + '.' });
  const prov = [];
  if (!body) {
    prov.push(h('p', { class: 'failed', text: 'The entry\'s bytes do not hash to ' + hash + ', so none of its values are shown.' }));
  } else if (body.kind === 'mint') {
    prov.push(h('p', { 'data-verified-body': '' }, 'Minted ' + Number(body.amount).toLocaleString('en') + ' tokens (Wh) for trade ' + body.trade_index + ' of interval ' + intervalText(body.interval) +
      ': ' + body.seller + ' sold to ' + body.buyer + ' at ' + cPerKwh(body.price) + ' c/kWh, source ' + body.source + '.'));
    for (const [who, list] of [['Seller ' + body.seller, body.seller_readings || []], ['Buyer ' + body.buyer, body.buyer_readings || []]]) {
      const proofs = list.map((d) => v.readings.find((r) => r.digest === d)).filter(Boolean);
      prov.push(h('h4', { text: who + '\'s signed readings' }),
        h('ul', { class: 'plain', 'data-readings': who }, ...(proofs.length ? proofs.map(verifiedReading) : [h('li', { class: 'empty', text: 'none listed' })])));
    }
  } else if (body.kind === 'transfer' || body.kind === 'retire') {
    prov.push(h('p', { 'data-verified-body': '' }, (body.kind === 'transfer' ? 'Transfer of ' + body.amount + ' Wh from ' + body.from + ' to ' + body.to : 'Retirement of ' + body.amount + ' Wh by ' + body.holder) + ', taken from lot ',
      link('/ledger/entries/' + body.lot, short(body.lot), { class: 'hash' }), ' — follow it back to the mint and its readings.'));
  }
  const browserVerdict = h('p', { class: 'verdict', id: 'proof-verdict', 'data-ok': 'pending', role: 'status', text: 'Checking the inclusion proof in your browser…' });
  const block = v.block;
  detail.replaceChildren(h('h2', { text: 'Ledger entry ' + short(hash) }),
    h('p', {}, 'Kind ', h('strong', { text: body ? body.kind : 'unknown (not verified)' }), block ? ' in block ' : '', block ? link('/ledger/blocks/' + block.height, String(block.height)) : ''),
    summary,
    h('h3', { text: 'Checks (by the dashboard)' }), checkList(v.checks, { id: 'trust-checks' }),
    h('h3', { text: 'Provenance' }), ...prov,
    h('h3', { text: 'Inclusion proof, checked again in your browser' }), browserVerdict,
    body ? h('details', {}, h('summary', { text: 'Entry fields (from the verified bytes)' }), kvList(body, ['envelope'])) : '');
  detail.hidden = false;
  // The browser's own check: the same bytes and proof, against the root in the header whose
  // signature the dashboard verified (never the entry answer's own root).
  const result = block
    ? await verifyInclusion({ hash, body_base64: v.body_base64, proof: v.proof }, block.merkle_root).catch((err) => ({ ok: false, text: 'Verification failed: ' + err.message }))
    : { ok: false, text: 'Proof FAILED: no block header with a verified signature to check against.' };
  browserVerdict.dataset.ok = String(result.ok);
  browserVerdict.textContent = result.text;
}

// ---------- Ledger search, paging and exports ----------
function ensureLedgerTools() {
  if ($('#ledger-tools')) return;
  const input = h('input', { id: 'ledger-q', type: 'search', placeholder: 'height, entry hash or participant', 'aria-label': 'Search the ledger by block height, entry hash or participant' });
  const form = h('form', { id: 'ledger-search', class: 'tools', role: 'search' }, input, h('button', { type: 'submit', text: 'Search' }));
  const results = h('div', { id: 'ledger-results', 'aria-live': 'polite' });
  const pager = h('div', { id: 'ledger-pager', class: 'tools' },
    h('button', { type: 'button', id: 'ledger-older', text: 'Older blocks' }),
    h('button', { type: 'button', id: 'ledger-newest', text: 'Newest blocks' }));
  const tools = h('div', { id: 'ledger-tools' }, form, results, pager, exportPanel());
  const table = $('#ledger-blocks').closest('.scroll') || $('#ledger-blocks');
  table.before(tools);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const a = await getJson('/api/ledger/search?q=' + encodeURIComponent(input.value));
      results.replaceChildren(h('p', { text: 'Found ' + a.message + ':' }),
        h('ul', { class: 'plain' }, ...a.blocks.map((b) => h('li', {}, link('/ledger/blocks/' + b.height, 'Block ' + b.height), ' · ' + intervalText(b.interval))),
          ...a.entries.map((x) => h('li', {}, link('/ledger/entries/' + x, short(x), { class: 'hash' })))));
    } catch (err) { results.replaceChildren(h('p', { class: 'failed', role: 'alert', text: 'Search failed: ' + err.message })); }
  });
  $('#ledger-older').addEventListener('click', () => ledgerPage(state.ledgerBefore));
  $('#ledger-newest').addEventListener('click', () => ledgerPage(null));
}
async function ledgerPage(before) {
  const p = await getJson('/api/ledger/page?limit=20' + (before ? '&before=' + before : ''));
  state.ledgerPaged = before !== null && before !== undefined;
  state.ledgerBefore = p.next_before;
  $('#ledger-older').disabled = p.next_before === null;
  fillBlocks(p.blocks);
}
function fillBlocks(blocks) {
  fillBody($('#ledger-blocks'), blocks.map((b) => h('tr', {}, cell(link('/ledger/blocks/' + b.height, String(b.height)), true), cell(intervalText(b.interval)),
    cell(String(b.entry_count), true), cell(h('span', { class: 'hash', text: short(b.merkle_root) })), cell(String(b.sealed_at || '–')))), 'No blocks sealed yet.', 5);
}
function exportPanel() {
  const from = h('input', { id: 'export-from', type: 'date', 'aria-label': 'Export from (UTC date, included)' });
  const to = h('input', { id: 'export-to', type: 'date', 'aria-label': 'Export to (UTC date, excluded)' });
  const links = ['intervals', 'statements', 'incidents', 'ledger'].map((name) =>
    h('a', { href: '/api/export/' + name + '.csv', download: 'gridmesh-' + name + '.csv', 'data-export': name, class: 'button', text: name + '.csv' }));
  const update = () => {
    const q = new URLSearchParams();
    if (from.value) q.set('from', from.value);
    if (to.value) q.set('to', to.value);
    for (const a of links) a.href = '/api/export/' + a.dataset.export + '.csv' + (q.toString() ? '?' + q : '');
  };
  from.addEventListener('change', update);
  to.addEventListener('change', update);
  return h('details', { id: 'export-panel' }, h('summary', { text: 'Export CSV (intervals, statements, congestion incidents, ledger entries)' }),
    h('p', { class: 'tools' }, h('label', {}, 'From ', from), ' ', h('label', {}, 'to ', to), ' (UTC dates; empty = everything held)'), h('p', { class: 'tools' }, ...links));
}

// ---------- Incidents ----------
function ensureIncidentSection() {
  let s = $('#incidents-section');
  if (s) return s;
  s = h('section', { id: 'incidents-section', 'aria-labelledby': 'h-incidents' },
    h('h2', { id: 'h-incidents', text: 'Incidents' }),
    h('p', { class: 'lede', text: 'Consecutive alerts of one kind on one subject form one incident. Active first, then by severity.' }),
    h('div', { class: 'scroll' }, h('table', { id: 'incidents' }, h('caption', { class: 'sr', text: 'Incidents, active first, by severity' }),
      h('thead', {}, h('tr', {}, ...['Severity', 'State', 'Incident', 'Acknowledged', 'Action'].map((t) => h('th', { scope: 'col', text: t })))), h('tbody'))),
    h('h2', { text: 'Alerts' }));
  const table = $('#alerts').closest('.scroll') || $('#alerts');
  table.before(s);
  return s;
}
async function renderIncidents() {
  ensureIncidentSection();
  const a = await getJson('/api/incidents');
  fillBody($('#incidents'), a.incidents.map((i) => h('tr', { 'data-incident': i.id, 'data-state': i.state },
    cell(h('span', { class: 'badge ' + i.severity, text: i.severity })),
    cell(h('span', { class: 'pill-text', text: i.state })),
    h('td', { class: 'wrap' }, h('strong', { text: i.title }), h('br'), i.message),
    cell(i.acknowledged_by ? 'by ' + i.acknowledged_by + ' at ' + new Date(i.acknowledged_at).toLocaleString() : 'not yet'),
    cell(a.may_acknowledge && !i.acknowledged_by ? h('button', { type: 'button', class: 'ack', 'data-id': i.id, text: 'Acknowledge' }) : ''))), 'No incidents.', 5);
}
document.addEventListener('click', async (e) => {
  const b = e.target.closest('button.ack');
  if (!b) return;
  b.disabled = true;
  try { await postJson('/api/incidents/' + encodeURIComponent(b.dataset.id) + '/ack'); await renderIncidents(); refreshAlertCount(); }
  catch (err) { b.disabled = false; const banner = $('#banner'); banner.hidden = false; banner.replaceChildren(h('p', { role: 'alert', text: 'Acknowledge failed: ' + err.message })); }
});
