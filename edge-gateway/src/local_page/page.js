// The gateway's local page: refreshes the live numbers every 3 s, today's intervals and the
// household's settlement data less often. Text only (textContent), never HTML from data.
'use strict';
(function () {
  const main = document.querySelector('main');
  const currency = main ? main.dataset.currency : '';
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const watts = (w) => (w === null || w === undefined) ? '–'
    : (Math.abs(w) >= 10000 ? (w / 1000).toFixed(1) + ' kW' : w + ' W');
  const dash = (v) => (v === null || v === undefined) ? '–' : v;
  const money = (minor) => (minor === null || minor === undefined) ? '–'
    : (minor / 100).toFixed(2) + ' ' + currency;
  const cents = (perMwh) => (perMwh === null || perMwh === undefined) ? '–' : (perMwh / 1000).toFixed(1);
  function set(id, text) {
    const e = document.querySelector('[data-live="' + id + '"]');
    if (e && e.textContent !== text) e.textContent = text;
  }
  function note(id, text) {
    const e = document.querySelector('[data-note="' + id + '"]');
    if (e && e.textContent !== text) e.textContent = text;
  }
  async function get(path) {
    const r = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
    if (r.status === 401) { window.location.href = '/'; throw new Error('logged out'); }
    if (!r.ok) throw new Error(path + ' answered ' + r.status);
    return r.json();
  }
  function renderLive(d) {
    const l = d.live || {};
    set('pv', watts(l.pv_w));
    set('battery', watts(l.battery_w));
    set('house', watts(l.house_w));
    set('grid', watts(l.grid_w));
    set('clock', l.at ? l.at.replace('T', ' ').replace(/\.\d+/, '').replace('Z', ' UTC') : '');
    const soc = (l.soc_permille === null || l.soc_permille === undefined) ? '–' : (l.soc_permille / 10).toFixed(1) + ' %';
    note('battery', (l.battery_w > 0 ? 'discharging' : l.battery_w < 0 ? 'charging' : 'idle') + ' · state of charge ' + soc);
    note('grid', l.grid_w > 0 ? 'importing' : l.grid_w < 0 ? 'exporting' : 'balanced');
    const h = $('#health');
    if (!h) return;
    const list = el('ul');
    for (const [name, dev] of Object.entries(d.devices || {})) {
      const li = el('li', null, dev.ok ? 'ok' : 'bad');
      li.append(el('strong', name), el('span', dev.ok ? ' answers' : ' not answering: ' + (dev.last_error || '')));
      list.append(li);
    }
    const outbox = el('li', null, d.outbox_count > 4 ? 'bad' : 'ok');
    outbox.append(el('strong', 'Outbox'), el('span', ' ' + d.outbox_count + ' reading(s) waiting (' + d.outbox_bytes + ' bytes); '
      + d.readings_signed + ' signed, ' + (d.delivered_mqtt + d.delivered_http) + ' delivered since start'));
    outbox.dataset.outbox = d.outbox_count;
    list.append(outbox);
    const up = el('li', null, d.mqtt_connected ? 'ok' : 'bad');
    up.append(el('strong', 'Broker'), el('span', d.mqtt_connected ? ' connected' : ' not connected' + (d.mqtt_error ? ': ' + d.mqtt_error : '')));
    list.append(up);
    const c = d.control;
    if (c) {
      const env = el('li', null, c.violations_in_a_row > 0 ? 'bad' : 'ok');
      env.append(el('strong', 'Envelope'), el('span', ' ' + c.source + ': export ≤ ' + c.export_limit_wh + ' Wh, import ≤ '
        + c.import_limit_wh + ' Wh this interval; curtailed ' + c.curtailed_wh + ' Wh'));
      list.append(env);
    }
    h.replaceChildren(list);
  }
  function renderToday(rows) {
    const body = $('#today tbody');
    if (!body) return;
    const out = [];
    for (const r of rows.slice().reverse()) {
      const tr = el('tr');
      const orders = (r.orders || []).map((o) => o.side + ' ' + o.quantity_wh + ' Wh @ ' + cents(o.limit_price)).join(', ');
      const cells = [r.start.slice(11, 16), dash(r.imported_wh), dash(r.exported_wh), dash(r.pv_wh),
        r.cleared ? (orders || 'none') : '…', dash(r.sold_wh), dash(r.bought_wh), cents(r.price),
        r.export_limit_wh === null ? '–' : r.export_limit_wh + ' / ' + r.import_limit_wh + (r.envelope_source === 'default' ? ' (default)' : ''),
        dash(r.curtailed_wh)];
      cells.forEach((c, i) => { const td = el('td', c); if (i > 0) td.className = 'num'; tr.append(td); });
      out.push(tr);
    }
    if (out.length === 0) { const tr = el('tr'); const td = el('td', 'No interval yet today.'); td.colSpan = 10; tr.append(td); out.push(tr); }
    body.replaceChildren(...out);
  }
  function renderHousehold(v) {
    const box = $('#household');
    if (!box) return;
    const parts = [];
    if (v.error) parts.push(el('p', 'Settlement could not be read: ' + v.error, 'error'));
    if (!v.fetched_at && !v.error) parts.push(el('p', 'Waiting for settlement…'));
    if (v.month) parts.push(el('p', 'This month (' + v.month + '): ' + money(v.month_net) + ' net; sold ' + dash(v.month_sold_wh)
      + ' Wh, bought ' + dash(v.month_bought_wh) + ' Wh in the market.', 'month'));
    const st = v.statements || [];
    if (st.length) {
      const t = el('table');
      const hr = el('tr');
      ['Interval', 'Sold Wh', 'Bought Wh', 'Exported Wh', 'Imported Wh', 'Tokens Wh', 'Net'].forEach((h) => hr.append(el('th', h)));
      t.append(el('thead'));
      t.firstChild.append(hr);
      const tb = el('tbody');
      for (const s of st.slice(0, 12)) {
        const tr = el('tr');
        [s.interval.slice(0, 16).replace('T', ' ') + (s.estimated ? ' (estimated)' : ''), s.sold, s.bought, s.exported, s.imported, s.tokens, money(s.net)]
          .forEach((c, i) => { const td = el('td', c); if (i > 0) td.className = 'num'; tr.append(td); });
        tb.append(tr);
      }
      t.append(tb);
      const wrap = el('div', null, 'scroll');
      wrap.append(t);
      parts.push(el('h3', 'Latest statements'), wrap);
    }
    if (v.balances) {
      const lots = v.balances.holdings || [];
      const retired = v.balances.retired ? ', ' + v.balances.retired + ' retired' : '';
      parts.push(el('h3', 'Tokens'), el('p', dash(v.balances.balance) + ' tokens held in ' + lots.length
        + ' lot(s)' + retired + ' (1 token = 1 Wh delivered)', 'tokens'));
    }
    if (v.quarantine) {
      const q = Array.isArray(v.quarantine) ? v.quarantine : [];
      parts.push(el('h3', 'Quarantined readings'));
      if (q.length === 0) parts.push(el('p', 'None: every reading of this gateway was accepted.'));
      else {
        const ul = el('ul');
        for (const item of q.slice(0, 10)) ul.append(el('li', (item.interval || '') + ' ' + (item.reason || item.code || '') + ' (' + (item.status || '') + ')'));
        parts.push(ul);
      }
    }
    box.replaceChildren(...parts);
  }
  let ticks = 0;
  async function tick() {
    try {
      renderLive(await get('/api/live'));
      if (ticks % 3 === 0) renderToday(await get('/api/today'));
      if (ticks % 5 === 0) renderHousehold(await get('/api/household'));
    } catch (e) {
      const h = $('#health');
      if (h && e.message !== 'logged out') h.prepend(el('p', 'The gateway did not answer: ' + e.message, 'error'));
    }
    ticks += 1;
  }
  if (main && $('#health')) { tick(); setInterval(tick, 3000); }
})();
