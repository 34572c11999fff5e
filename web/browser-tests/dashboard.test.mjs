// Browser tests of the gridmesh dashboard in Debian's headless Chromium.
// Needs GRIDMESH_DASHBOARD_URL (a running dashboard with data) and logins as `name:password`:
// GRIDMESH_LOGIN_ADMIN, GRIDMESH_LOGIN_VIEWER, and two households as
// `name:password:participant` in GRIDMESH_LOGIN_HOUSEHOLD_A and GRIDMESH_LOGIN_HOUSEHOLD_B
// (scripts/browser-test creates them with `gridmesh-web user add`). Screenshots go to
// $GRIDMESH_ARTIFACTS/screenshots (default ../../artifacts relative to this folder).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const base = (process.env.GRIDMESH_DASHBOARD_URL || '').replace(/\/+$/, '');
const artifacts = resolve(process.env.GRIDMESH_ARTIFACTS || join(here, '..', '..', 'artifacts'));
const shots = join(artifacts, 'screenshots');
const TIMEOUT = 20_000;

/** A login from the environment: { name, password, participant }. */
function login(variable) {
  const [name, password, participant] = (process.env[variable] || '').split(':');
  assert.ok(name && password, `set ${variable} to name:password (scripts/browser-test does)`);
  return { name, password, participant };
}

const sessions = new Map();
/** Logs `user` in over HTTP (the login form's POST) and returns its session id. */
async function sessionOf(user) {
  if (sessions.has(user.name)) return sessions.get(user.name);
  const r = await fetch(base + '/login', {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ name: user.name, password: user.password }),
  });
  assert.equal(r.status, 303, `login of ${user.name} failed: ${r.status}`);
  const cookie = r.headers.get('set-cookie') || '';
  assert.match(cookie, /HttpOnly/);
  assert.match(cookie, /SameSite=Strict/);
  const id = /gridmesh_session=([0-9a-f]{64})/.exec(cookie)[1];
  sessions.set(user.name, id);
  return id;
}

/** GETs a dashboard path as `user` (the admin by default) from Node. */
async function apiGet(path, user) {
  const id = await sessionOf(user || login('GRIDMESH_LOGIN_ADMIN'));
  return fetch(base + path, { headers: { cookie: 'gridmesh_session=' + id, accept: 'application/json' } });
}

let browser;
before(async () => {
  assert.ok(base, 'set GRIDMESH_DASHBOARD_URL to the dashboard, e.g. http://127.0.0.1:8080');
  mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
});
after(async () => { await browser?.close(); });

/** A fresh page, logged in as `user` (the admin by default; `null`: not logged in), that
 * records console errors and uncaught exceptions. */
const WIDE = { width: 1400, height: 900 };
const PHONE = { width: 390, height: 844 };

async function openPage(viewport = WIDE, user = undefined) {
  const context = await browser.newContext({ viewport });
  if (user !== null) {
    const id = await sessionOf(user || login('GRIDMESH_LOGIN_ADMIN'));
    await context.addCookies([{ name: 'gridmesh_session', value: id, url: base, httpOnly: true, sameSite: 'Strict' }]);
  }
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push('console: ' + m.text()); });
  page.on('pageerror', (e) => errors.push('exception: ' + e.message));
  // The live page keeps fetching (server-sent updates); drop any request interception still in
  // flight before the context goes, so no route callback outlives its test.
  const close = async () => {
    await page.unrouteAll({ behavior: 'ignoreErrors' });
    await context.close();
  };
  return { page, errors, close };
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, name + '.png'), fullPage: true });
}

/** Waits until `selector` matches at least one element. */
async function waitForAny(page, selector) {
  await page.waitForSelector(selector, { state: 'attached', timeout: TIMEOUT });
  return page.locator(selector).count();
}

const PAGES = [
  { path: '/grid', heading: 'Grid', ready: '#grid-flows tbody tr.branch' },
  { path: '/history', heading: 'History', ready: '#page-history .chart svg' },
  { path: '/market', heading: 'Market', ready: '#chart-prices svg' },
  { path: '/participants', heading: 'Participants', ready: '#participants tbody tr[data-participant]' },
  { path: '/ledger', heading: 'Ledger', ready: '#ledger-blocks tbody a[href^="/ledger/blocks/"]' },
  { path: '/alerts', heading: 'Alerts', ready: '#alerts tbody tr' },
];

// Every page at 1400 px and at phone width, where nothing may overflow the screen sideways.
for (const [label, viewport] of [['1400', WIDE], ['phone', PHONE]]) {
  for (const p of PAGES) {
    test(`${p.heading} page loads with data and without console errors (${label})`, async () => {
      const { page, errors, close } = await openPage(viewport);
      try {
        await page.goto(base + p.path);
        await waitForAny(page, p.ready);
        assert.equal(await page.locator('h1:visible').innerText(), p.heading);
        assert.equal(await page.locator('nav a[aria-current="page"]').innerText().then((t) => t.split(/\s/)[0]), p.heading);
        // Both services reachable: the banner naming an unreachable service is hidden.
        assert.equal(await page.locator('#banner').isHidden(), true, 'service banner: ' + (await page.locator('#banner').innerText().catch(() => '')));
        if (viewport === PHONE) {
          const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
          assert.ok(overflow <= 1, `${p.path} overflows the phone width by ${overflow}px`);
        }
        await shot(page, p.path.slice(1) + '-' + label);
        assert.deepEqual(errors, []);
      } finally { await close(); }
    });
  }
}

test('market charts are drawn from real data', async () => {
  const { page, errors, close } = await openPage();
  try {
    await page.goto(base + '/market');
    await waitForAny(page, '#chart-prices svg');
    await waitForAny(page, '#chart-volume svg');
    await waitForAny(page, '#chart-depth svg');
    for (const id of ['prices', 'volume']) {
      assert.equal(await page.locator(`#chart-${id} svg[data-empty]`).count(), 0, `${id} chart is not the placeholder`);
    }
    // Price lines: at least one polyline with two or more points.
    const pricePoints = await page.$$eval('#chart-prices svg polyline', (ls) => ls.map((l) => (l.getAttribute('points') || '').trim().split(/\s+/).filter(Boolean).length));
    assert.ok(pricePoints.some((n) => n >= 2), 'price chart has a line with data: ' + JSON.stringify(pricePoints));
    // Volume bars: filled rectangles with a positive height besides the background.
    const bars = await page.$$eval('#chart-volume svg rect', (rs) => rs.filter((r) => Number(r.getAttribute('height')) > 0 && r.getAttribute('fill') !== '#FFFFFF').length);
    assert.ok(bars >= 2, 'volume chart has bars: ' + bars);
    const depthEmpty = await page.locator('#chart-depth svg[data-empty]').count();
    if (depthEmpty === 0) {
      const shapes = await page.$$eval('#chart-depth svg polygon, #chart-depth svg polyline', (ps) => ps.filter((p) => (p.getAttribute('points') || '').trim().split(/\s+/).length >= 2).length);
      assert.ok(shapes >= 1, 'depth chart draws its curves');
    } else {
      test.diagnostic?.('the open interval has no orders yet, so the depth chart shows its placeholder');
    }
    assert.deepEqual(errors, []);
  } finally { await close(); }
});

test('click-through: congested feeder → its participants → a token\'s provenance with a verified proof', async () => {
  const { page, errors, close } = await openPage();
  try {
    await page.goto(base + '/grid');
    await waitForAny(page, '#grid-flows tbody tr.branch');
    // A branch whose measured flow is over or near its limit; else one the market cleared at its
    // limit (now, or in the shown history).
    const branch = (sel) => page.locator(`#grid-flows tr.branch${sel}:not([data-utility="true"]) a.name`).first();
    let link = branch('[data-status="over"]');
    if (await link.count() === 0) link = branch('[data-status="near"]');
    if (await link.count() === 0) link = branch('[data-cleared-at-limit="true"]');
    if (await link.count() === 0) link = page.locator('#grid-congestion a[data-congested-node]').first();
    if (await link.count() === 0) {
      // The control loop keeps the solar street below 90 % of its limit (batteries, then PV
      // curtailment), and its households offer only what their envelopes allow: take the feeder
      // with the tight limit, f1.
      test.diagnostic?.('no branch at or near its limit: the control loop kept every feeder inside it; following f1');
      link = page.locator('#grid-flows tr.branch:not([data-utility="true"]) a.name', { hasText: /^f1$/ }).first();
    }
    assert.ok(await link.count() > 0, 'the Grid page lists no branch f1');
    const feeder = (await link.innerText()).trim();
    await link.click();
    await page.waitForURL((u) => u.pathname === '/participants' && u.searchParams.get('node') === feeder);
    await page.waitForSelector('#participant-filter:not([hidden])');
    assert.match(await page.locator('#participant-filter').innerText(), new RegExp('Within ' + feeder));
    await waitForAny(page, '#participants tbody tr[data-participant]');
    const rows = page.locator('#participants tbody tr[data-participant]');
    assert.ok(await rows.count() > 0, 'the congested branch has participants');
    // A participant of that branch holding tokens (last column); else any holder, noted.
    const pickHolder = async () => {
      const n = await rows.count();
      for (let i = 0; i < n; i++) {
        const tokens = (await rows.nth(i).locator('td').last().innerText()).replace(/[,–\s]/g, '');
        if (Number(tokens) > 0) return rows.nth(i).locator('td').first().locator('a');
      }
      return null;
    };
    let holder = await pickHolder();
    if (!holder) {
      test.diagnostic?.(`no participant below ${feeder} holds tokens; following a holder elsewhere`);
      await page.locator('#participant-filter a').click();
      await page.waitForSelector('#participant-filter[hidden]', { state: 'attached' });
      await waitForAny(page, '#participants tbody tr[data-participant]');
      holder = await pickHolder();
    }
    assert.ok(holder, 'some participant holds tokens');
    const who = (await holder.innerText()).trim();
    await holder.click();
    await page.waitForURL((u) => u.pathname === '/participants/' + who);
    await waitForAny(page, '#holdings tbody tr[data-lot] a');
    await shot(page, 'participant-detail');
    await page.locator('#holdings tbody tr[data-lot] a').first().click();
    await page.waitForURL((u) => u.pathname.startsWith('/ledger/entries/'));
    // Follow transfers back to their mint.
    for (let hops = 0; hops < 10; hops++) {
      await page.waitForSelector('#proof-verdict:not([data-ok="pending"])');
      const back = page.locator('#ledger-detail a[href^="/ledger/entries/"]');
      const isMint = await page.locator('#ledger-detail [data-readings]').count() > 0;
      if (isMint || await back.count() === 0) break;
      await back.first().click();
      await page.waitForURL((u) => u.pathname.startsWith('/ledger/entries/'));
    }
    const verdict = page.locator('#proof-verdict');
    assert.equal(await verdict.getAttribute('data-ok'), 'true', 'inclusion proof: ' + (await verdict.innerText()));
    const readings = await page.locator('#ledger-detail [data-reading]').count();
    assert.ok(readings > 0, 'the mint names the signed readings behind it');
    // Down to the signed readings: fetched, hashed, signature-checked and their keys checked
    // against the gateway registry by the dashboard.
    await page.waitForSelector('#ledger-detail .reading:not([data-verified="pending"])');
    const checked = page.locator('#ledger-detail .reading');
    for (let i = 0; i < await checked.count(); i++) {
      await page.waitForFunction((n) => document.querySelectorAll('#ledger-detail .reading')[n].dataset.verified !== 'pending', i);
      assert.equal(await checked.nth(i).getAttribute('data-verified'), 'true', 'signed reading: ' + await checked.nth(i).innerText());
    }
    await shot(page, 'ledger-provenance');
    assert.deepEqual(errors, []);
  } finally { await close(); }
});

test('Grid page shows measured (metered) beside cleared (plan) flows, coloured by the measured flow', async () => {
  const { page, errors, close } = await openPage();
  try {
    await page.goto(base + '/grid');
    await waitForAny(page, '#grid-flows tbody tr.branch');
    const headers = await page.$$eval('#grid-flows thead th', (ths) => ths.map((t) => t.textContent.trim()));
    for (const label of ['Measured (metered)', 'Cleared (plan)', 'Limit']) {
      assert.ok(headers.includes(label), `the Grid table has a "${label}" column: ${JSON.stringify(headers)}`);
    }
    // The live neighbourhood delivers verified readings, so settlement's measured flows arrive.
    await page.waitForSelector('#grid-flows td[data-measured="true"]', { state: 'attached', timeout: 60_000 });
    await page.waitForSelector('#grid-metered[data-measured="true"]', { state: 'attached' });
    assert.match(await page.locator('#grid-metered').innerText(), /^Metered interval .*: \d+ of \d+ homes reported$/);
    // Every row's status is the measured flow against the limit (over it red, from 90 % amber),
    // never the plan; a row without metered data says so instead of showing the plan.
    const g = await (await apiGet('/api/grid')).json();
    const expected = (b) => {
      if (!b.measured) return 'no_data';
      if (b.limit_wh === null) return 'unlimited';
      const flow = Math.abs(b.measured.flow_wh);
      if (flow > b.limit_wh) return 'over';
      return flow > 0 && flow * 10 >= b.limit_wh * 9 ? 'near' : 'normal';
    };
    for (const b of [g.utility, ...g.branches]) assert.equal(b.status, expected(b), 'status of ' + b.node + ': ' + JSON.stringify(b));
    const shown = await page.$$eval('#grid-flows tbody tr.branch', (rows) => rows.map((r) => ({
      node: r.dataset.node, status: r.dataset.status, measured: r.querySelector('td[data-measured]').dataset.measured,
      text: r.querySelector('td[data-measured]').textContent })));
    const byNode = new Map([g.utility, ...g.branches].map((b) => [b.node, b]));
    for (const row of shown) {
      const b = byNode.get(row.node);
      if (!b) continue; // the page refreshed between the two reads
      if (row.measured === 'false') {
        assert.equal(row.status, 'no_data', row.node);
        assert.match(row.text, /no metered data yet|no home below reported/, row.node);
      }
    }
    await shot(page, 'grid-measured');
    assert.deepEqual(errors, []);
  } finally { await close(); }
});

test('search box filters participants without reloading the page', async () => {
  const { page, errors, close } = await openPage();
  try {
    await page.goto(base + '/participants');
    await waitForAny(page, '#participants tbody tr[data-participant]');
    const first = await page.locator('#participants tbody tr[data-participant]').first().getAttribute('data-participant');
    await page.evaluate(() => { window.__noReload = true; });
    await page.getByLabel('Search participants').fill(first);
    await page.waitForFunction((id) => {
      const rows = [...document.querySelectorAll('#participants tbody tr[data-participant]')];
      return rows.length > 0 && rows.every((r) => r.textContent.toLowerCase().includes(id.toLowerCase()));
    }, first);
    assert.equal(await page.evaluate(() => window.__noReload), true, 'no full-page reload');
    await page.getByLabel('Search participants').fill('no-such-participant-zz');
    await page.waitForSelector('#participants tbody td.empty');
    assert.deepEqual(errors, []);
  } finally { await close(); }
});

test('a tampered inclusion proof is rejected in the browser', async () => {
  const { page, close } = await openPage();
  try {
    // Find an entry through the ledger: the newest block's first entry.
    const blocks = await (await apiGet('/api/ledger/blocks')).json();
    const block = blocks.blocks.find((b) => (b.entries || []).length > 0);
    assert.ok(block, 'a block with entries');
    const first = block.entries[0];
    const hash = typeof first === 'string' ? first : first.hash;
    // Flip one bit of the first sibling (or of the root when the block has a single entry).
    // The browser's own re-check of the proof (against the root of the header whose signature
    // the dashboard verified) must catch a proof altered on its way to the browser.
    await page.route('**/api/ledger/verify/*', async (route) => {
      const response = await route.fetch();
      const entry = await response.json();
      const flip = (hx) => (parseInt(hx[0], 16) ^ 1).toString(16) + hx.slice(1);
      if (Array.isArray(entry.proof) && entry.proof.length) entry.proof[0].sibling = flip(entry.proof[0].sibling);
      else entry.proof = [{ sibling: '00'.repeat(32), side: 'right' }];
      await route.fulfill({ response, json: entry });
    });
    await page.goto(base + '/ledger/entries/' + hash);
    await page.waitForSelector('#proof-verdict:not([data-ok="pending"])');
    assert.equal(await page.locator('#proof-verdict').getAttribute('data-ok'), 'false');
    assert.match(await page.locator('#proof-verdict').innerText(), /FAILED/);
  } finally { await close(); }
});

// ---------- who may see and do what (issue 13) ----------

test('without login only the login page shows', async () => {
  const { page, errors, close } = await openPage(undefined, null);
  try {
    for (const path of ['/grid', '/participants', '/alerts', '/ledger']) {
      await page.goto(base + path);
      assert.equal(new URL(page.url()).pathname, '/login', path);
      assert.equal(await page.locator('h1').innerText(), 'Log in');
      assert.equal(await page.locator('nav').count(), 0, 'no navigation before login');
      assert.equal(await page.locator('script').count(), 0, 'the login page runs no script');
    }
    const api = await page.evaluate(async () => {
      const r = await fetch('/api/participants');
      return { status: r.status, body: await r.json() };
    });
    assert.equal(api.status, 401);
    assert.equal(api.body.code, 'unauthorized');
    await shot(page, 'login');
    // A wrong password stays on the login page with a message.
    await page.fill('#name', 'admin');
    await page.fill('#password', 'not the password');
    await page.click('button[type=submit]');
    await page.waitForSelector('#login-error');
    assert.equal(new URL(page.url()).pathname, '/login');
    // The right one opens the dashboard.
    const admin = login('GRIDMESH_LOGIN_ADMIN');
    await page.fill('#name', admin.name);
    await page.fill('#password', admin.password);
    await page.click('button[type=submit]');
    await page.waitForSelector('#grid-flows tbody tr.branch');
    assert.match(await page.locator('#user-name').innerText(), /admin/);
    // Logging out ends the session.
    await page.click('#logout-form button');
    await page.waitForURL('**/login');
    await page.goto(base + '/grid');
    assert.equal(new URL(page.url()).pathname, '/login');
    assert.deepEqual(errors.filter((e) => !e.includes('401')), []);
  } finally { await close(); }
});

test('a viewer cannot reach operator actions', async () => {
  const viewer = login('GRIDMESH_LOGIN_VIEWER');
  const { page, close } = await openPage(undefined, viewer);
  try {
    await page.goto(base + '/alerts');
    await waitForAny(page, '#alerts tbody tr');
    await page.waitForSelector('#quarantine-section:not([hidden])');
    assert.equal(await page.locator('#user-name').getAttribute('data-role'), 'viewer');
    // No operator action in the page…
    assert.equal(await page.locator('button.accept').count(), 0);
    assert.equal(await page.locator('th[data-admin-only]').isHidden(), true);
    // …and the server refuses it even when sent by hand with the viewer's CSRF token.
    const refused = await page.evaluate(async () => {
      const me = await (await fetch('/api/me')).json();
      const r = await fetch('/api/quarantine/1/accept', { method: 'POST', headers: { 'x-csrf-token': me.csrf } });
      return { status: r.status, body: await r.json(), role: me.role, actions: me.operator_actions };
    });
    assert.equal(refused.role, 'viewer');
    assert.equal(refused.actions, false);
    assert.equal(refused.status, 403);
    assert.equal(refused.body.code, 'forbidden');
    await shot(page, 'alerts-viewer');
  } finally { await close(); }
  // The admin sees the operator column on the same page.
  const admin = await openPage();
  try {
    await admin.page.goto(base + '/alerts');
    await admin.page.waitForSelector('#quarantine-section:not([hidden])');
    await admin.page.waitForSelector('th[data-admin-only]:not([hidden])');
  } finally { await admin.close(); }
});

test("one household's detail is refused to another household", async () => {
  const a = login('GRIDMESH_LOGIN_HOUSEHOLD_A');
  const b = login('GRIDMESH_LOGIN_HOUSEHOLD_B');
  assert.ok(a.participant && b.participant && a.participant !== b.participant);
  const { page, close } = await openPage(undefined, a);
  try {
    // Its own detail shows.
    await page.goto(base + '/participants/' + a.participant);
    await page.waitForSelector('#holdings');
    const own = await page.evaluate(async (id) => (await fetch('/api/participants/' + id)).status, a.participant);
    assert.equal(own, 200);
    // Another household's is refused, in the API and on the page.
    const other = await page.evaluate(async (id) => {
      const r = await fetch('/api/participants/' + id);
      return { status: r.status, body: await r.json() };
    }, b.participant);
    assert.equal(other.status, 403);
    assert.equal(other.body.code, 'forbidden');
    await page.goto(base + '/participants/' + b.participant);
    await page.waitForSelector('#participant-refused');
    assert.match(await page.locator('#participant-refused').innerText(), /another household/);
    assert.equal(await page.locator('#holdings').count(), 0, 'no holdings of another household');
    // The list shows only its own row.
    const list = await page.evaluate(async () => (await (await fetch('/api/participants')).json()).participants.map((p) => p.id));
    assert.deepEqual(list, [a.participant]);
    await shot(page, 'household-refused');
  } finally { await close(); }
});
