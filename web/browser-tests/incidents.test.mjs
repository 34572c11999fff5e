// Incidents, exports and ledger search (issue 17) against the live demo's dashboard: the operator
// acknowledges an incident (stored with who and when, the nav badge drops it), a viewer sees no
// action and is refused; CSV exports download; a household's statements export holds only its
// own home; the ledger is searched by height, entry hash and participant, and paged. Each at
// 1400 px and phone width.
// Needs GRIDMESH_DASHBOARD_URL and GRIDMESH_LOGIN_ADMIN, _VIEWER, _HOUSEHOLD_A (scripts/browser-test).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const base = (process.env.GRIDMESH_DASHBOARD_URL || '').replace(/\/+$/, '');
const shots = join(resolve(process.env.GRIDMESH_ARTIFACTS || join(here, '..', '..', 'artifacts')), 'screenshots');
const TIMEOUT = 30_000;
const WIDTHS = [['1400', { width: 1400, height: 900 }], ['phone', { width: 390, height: 844 }]];
const shot = (page, name) => page.screenshot({ path: join(shots, name + '.png'), fullPage: true });

function login(variable) {
  const [name, password, participant] = (process.env[variable] || '').split(':');
  assert.ok(name && password, `set ${variable} to name:password (scripts/browser-test does)`);
  return { name, password, participant };
}
const sessions = new Map();
async function sessionOf(user) {
  if (sessions.has(user.name)) return sessions.get(user.name);
  const r = await fetch(base + '/login', { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ name: user.name, password: user.password }) });
  assert.equal(r.status, 303, `login of ${user.name}`);
  const id = /gridmesh_session=([0-9a-f]{64})/.exec(r.headers.get('set-cookie'))[1];
  sessions.set(user.name, id);
  return id;
}
async function api(path, user, init = {}) {
  const id = await sessionOf(user);
  return fetch(base + path, { ...init, headers: { cookie: 'gridmesh_session=' + id, accept: 'application/json', ...(init.headers || {}) } });
}

let browser;
before(async () => {
  assert.ok(base, 'set GRIDMESH_DASHBOARD_URL');
  mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu'] });
});
after(async () => { await browser?.close(); });

async function openPage(user, viewport = { width: 1400, height: 900 }) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  await context.addCookies([{ name: 'gridmesh_session', value: await sessionOf(user), url: base, httpOnly: true, sameSite: 'Strict' }]);
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on('pageerror', (e) => errors.push('exception: ' + e.message));
  return { page, errors, close: () => context.close() };
}

/** Waits (polling the API, no timing asserted) until the demo has an active, unacknowledged
 * incident. At 60x the demo's first one (a branch cleared at its limit, an imbalance spike…)
 * can take a few simulated hours, i.e. a few real minutes on a loaded machine: at most 300 s. */
async function openIncident(admin) {
  const deadline = Date.now() + 300_000;
  let seen = [];
  while (Date.now() < deadline) {
    const a = await (await api('/api/incidents', admin)).json();
    const i = a.incidents.find((x) => x.state === 'active' && !x.acknowledged_by);
    if (i) return i;
    seen = a.incidents.map((x) => `${x.title} (${x.state}${x.acknowledged_by ? ', acknowledged' : ''})`);
    await new Promise((ok) => setTimeout(ok, 500));
  }
  assert.fail('the demo raised no active, unacknowledged incident within 300 s; incidents: ' + (seen.join('; ') || 'none'));
}

for (const [label, viewport] of WIDTHS) {
  test(`a viewer sees incidents but no acknowledge action, and is refused one (${label})`, async () => {
    const admin = login('GRIDMESH_LOGIN_ADMIN');
    const viewer = login('GRIDMESH_LOGIN_VIEWER');
    const incident = await openIncident(admin);
    const { page, errors, close } = await openPage(viewer, viewport);
    try {
      await page.goto(base + '/alerts');
      await page.waitForSelector('#incidents tbody tr[data-incident]');
      assert.equal(await page.locator('#incidents button.ack').count(), 0, 'no acknowledge button for a viewer');
      await shot(page, `incidents-viewer-${label}`);
      const me = await (await api('/api/me', viewer)).json();
      const r = await api('/api/incidents/' + incident.id + '/ack', viewer, { method: 'POST', headers: { 'x-csrf-token': me.csrf } });
      assert.equal(r.status, 403);
      assert.equal((await r.json()).code, 'forbidden');
      assert.deepEqual(errors, []);
    } finally { await close(); }
  });
}

test('the operator acknowledges an incident: stored with who and when, the badge drops it', async () => {
  const admin = login('GRIDMESH_LOGIN_ADMIN');
  const incident = await openIncident(admin);
  const { page, errors, close } = await openPage(admin);
  try {
    await page.goto(base + '/alerts');
    const row = page.locator(`#incidents tr[data-incident="${incident.id}"]`);
    await row.waitFor();
    const before = (await (await api('/api/status', admin)).json()).incidents_unacknowledged;
    assert.ok(before >= 1, 'the badge counts the open incident');
    await row.locator('button.ack').click();
    await page.waitForFunction((id) => {
      const r = document.querySelector(`#incidents tr[data-incident="${id}"]`);
      return r && /by /.test(r.textContent);
    }, incident.id);
    assert.match(await row.innerText(), new RegExp('by ' + admin.name));
    const after = (await (await api('/api/incidents', admin)).json()).incidents.find((i) => i.id === incident.id);
    assert.equal(after.acknowledged_by, admin.name);
    assert.ok(!Number.isNaN(Date.parse(after.acknowledged_at)));
    // The nav badge counts active incidents nobody acknowledged: this one no longer.
    const status = await (await api('/api/status', admin)).json();
    const stillOpen = (await (await api('/api/incidents', admin)).json()).incidents.filter((i) => i.state === 'active' && !i.acknowledged_by).length;
    assert.equal(status.incidents_unacknowledged, stillOpen);
    // Sorted: active before resolved, then by severity (critical, warning, info).
    const order = await page.$$eval('#incidents tbody tr[data-incident]', (trs) => trs.map((tr) => [tr.dataset.state, tr.cells[0].textContent.trim()]));
    const rank = ([state, severity]) => (state === 'active' ? 0 : 10) + ({ critical: 0, warning: 1, info: 2 }[severity] ?? 3);
    for (let i = 1; i < order.length; i++) assert.ok(rank(order[i - 1]) <= rank(order[i]), 'incidents sorted: ' + JSON.stringify(order));
    await shot(page, 'incidents-acknowledged-1400');
    assert.deepEqual(errors, []);
  } finally { await close(); }
  // The same acknowledged incident at phone width (the webhook test acknowledges at both widths).
  const phone = await openPage(admin, WIDTHS[1][1]);
  try {
    await phone.page.goto(base + '/alerts');
    const row = phone.page.locator(`#incidents tr[data-incident="${incident.id}"]`);
    await row.waitFor();
    assert.match(await row.innerText(), new RegExp('by ' + admin.name));
    assert.equal(await row.locator('button.ack').count(), 0, 'no acknowledge button on an acknowledged incident');
    const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the Alerts page overflows the phone width by ${overflow}px`);
    await shot(phone.page, 'incidents-acknowledged-phone');
    assert.deepEqual(phone.errors, []);
  } finally { await phone.close(); }
});

for (const [label, viewport] of WIDTHS) {
  test(`CSV exports download for a chosen range; a household exports only its own statements (${label})`, async () => {
    const admin = login('GRIDMESH_LOGIN_ADMIN');
    const { page, errors, close } = await openPage(admin, viewport);
    try {
      await page.goto(base + '/ledger');
      await page.locator('#export-panel summary').click();
      await page.fill('#export-from', '2000-01-01');
      await page.locator('#export-to').fill('2100-01-01');
      await page.locator('#export-to').dispatchEvent('change');
      const link = page.locator('a[data-export="ledger"]');
      assert.match(await link.getAttribute('href'), /from=2000-01-01&to=2100-01-01/);
      const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
      const text = readFileSync(await download.path(), 'utf8');
      const lines = text.trim().split(/\r?\n/);
      assert.equal(lines[0], 'block_height,interval,sealed_at,block_hash,position,entry_hash');
      assert.ok(lines.length > 1, 'ledger entries exported');
      await shot(page, `export-panel-${label}`);
      for (const name of ['intervals', 'statements', 'incidents']) {
        const r = await api('/api/export/' + name + '.csv', admin);
        assert.equal(r.status, 200, name);
        assert.match(r.headers.get('content-type'), /text\/csv/);
        assert.match(r.headers.get('content-disposition'), /attachment/);
      }
      const home = login('GRIDMESH_LOGIN_HOUSEHOLD_A');
      const own = (await (await api('/api/export/statements.csv', home)).text()).trim().split(/\r?\n/).slice(1);
      assert.ok(own.every((l) => l.startsWith(home.participant + ',')), 'only the household\'s own statements');
      const bad = await api('/api/export/intervals.csv?from=yesterday', admin);
      assert.equal(bad.status, 400);
      assert.deepEqual(errors, []);
    } finally { await close(); }
  });
}

for (const [label, viewport] of WIDTHS) {
  test(`the ledger is searched by height, entry hash and participant, and paged (${label})`, async () => {
    const admin = login('GRIDMESH_LOGIN_ADMIN');
    const { page, errors, close } = await openPage(admin, viewport);
    try {
      await page.goto(base + '/ledger');
      await page.waitForSelector('#ledger-blocks tbody a[href^="/ledger/blocks/"]');
      const search = async (q, found) => {
        await page.fill('#ledger-q', q);
        await page.locator('#ledger-search button[type="submit"]').click();
        await page.waitForFunction((x) => document.querySelector('#ledger-results').textContent.includes(x), found);
      };
      // By height.
      await search('0', 'Found block 0:');
      await page.waitForSelector('#ledger-results a[href="/ledger/blocks/0"]');
      await shot(page, `ledger-search-height-${label}`);
      // By entry hash: an entry of the newest block with entries, found and linked.
      const blocks = (await (await api('/api/ledger/blocks', admin)).json()).blocks;
      const withEntries = blocks.find((b) => (b.entries || []).length > 0);
      assert.ok(withEntries, 'a block with entries');
      const entry = typeof withEntries.entries[0] === 'string' ? withEntries.entries[0] : withEntries.entries[0].hash;
      await search(entry, 'the entry with this hash');
      await page.waitForSelector(`#ledger-results a[href="/ledger/entries/${entry}"]`);
      await shot(page, `ledger-search-entry-${label}`);
      // By participant: the entries behind its lots, as the API lists them.
      const who = login('GRIDMESH_LOGIN_HOUSEHOLD_A').participant;
      const expected = await (await api('/api/ledger/search?q=' + encodeURIComponent(who), admin)).json();
      await search(who, 'behind participant ' + who);
      const shown = await page.$$eval('#ledger-results a[href^="/ledger/entries/"]', (as) => as.map((a) => a.getAttribute('href').split('/').pop()));
      // Its lots may have grown between the two reads: the page lists at least what the API did.
      assert.ok(expected.entries.every((e) => shown.includes(e)), `the participant's entries: page ${JSON.stringify(shown)}, API ${JSON.stringify(expected.entries)}`);
      await shot(page, `ledger-search-participant-${label}`);
      // Paging: "Older blocks" continues below the lowest block shown; "Newest blocks" returns.
      const heights = () => page.$$eval('#ledger-blocks tbody tr a', (as) => as.map((a) => Number(a.textContent)));
      const before = await heights();
      const lowest = Math.min(...before);
      if (lowest > 0) {
        await page.locator('#ledger-older').click();
        await page.waitForFunction((low) => Number(document.querySelector('#ledger-blocks tbody tr a')?.textContent) < low, lowest);
        const older = await heights();
        assert.equal(older[0], lowest - 1, 'the older page starts right below the lowest block shown: ' + JSON.stringify(older));
        assert.ok(older.every((h, i) => i === 0 || h === older[i - 1] - 1), 'newest first, no gap: ' + JSON.stringify(older));
      } else {
        assert.equal(await page.locator('#ledger-older').isDisabled(), true, 'every block down to 0 is shown: no older page');
      }
      await shot(page, `ledger-paged-${label}`);
      await page.locator('#ledger-newest').click();
      await page.waitForFunction((top) => Number(document.querySelector('#ledger-blocks tbody tr a')?.textContent) >= top, before[0]);
      assert.deepEqual(errors, []);
    } finally { await close(); }
  });
}
