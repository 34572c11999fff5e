// Incidents, exports and ledger search (issue 17) against the live demo's dashboard: the operator
// acknowledges an incident (stored with who and when, the nav badge drops it), a viewer sees no
// action and is refused; CSV exports download; a household's statements export holds only its
// own home; the ledger is searched by height.
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

/** Waits (polling the API, no timing asserted) until the demo has an active, unacknowledged incident. */
async function openIncident(admin) {
  for (let tries = 0; tries < 240; tries++) {
    const a = await (await api('/api/incidents', admin)).json();
    const i = a.incidents.find((x) => x.state === 'active' && !x.acknowledged_by);
    if (i) return i;
    await new Promise((ok) => setTimeout(ok, 500));
  }
  assert.fail('the demo raised no active incident to acknowledge (no alert at all)');
}

test('a viewer sees incidents but no acknowledge action, and is refused one', async () => {
  const admin = login('GRIDMESH_LOGIN_ADMIN');
  const viewer = login('GRIDMESH_LOGIN_VIEWER');
  const incident = await openIncident(admin);
  const { page, errors, close } = await openPage(viewer);
  try {
    await page.goto(base + '/alerts');
    await page.waitForSelector('#incidents tbody tr[data-incident]');
    assert.equal(await page.locator('#incidents button.ack').count(), 0, 'no acknowledge button for a viewer');
    await page.screenshot({ path: join(shots, 'incidents-viewer.png'), fullPage: true });
    const me = await (await api('/api/me', viewer)).json();
    const r = await api('/api/incidents/' + incident.id + '/ack', viewer, { method: 'POST', headers: { 'x-csrf-token': me.csrf } });
    assert.equal(r.status, 403);
    assert.equal((await r.json()).code, 'forbidden');
    assert.deepEqual(errors, []);
  } finally { await close(); }
});

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
    await page.screenshot({ path: join(shots, 'incidents-acknowledged.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally { await close(); }
});

test('CSV exports download for a chosen range; a household exports only its own statements', async () => {
  const admin = login('GRIDMESH_LOGIN_ADMIN');
  const { page, errors, close } = await openPage(admin);
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
    await page.screenshot({ path: join(shots, 'export-panel.png'), fullPage: true });
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

test('the ledger is searched by height and paged', async () => {
  const admin = login('GRIDMESH_LOGIN_ADMIN');
  const { page, errors, close } = await openPage(admin);
  try {
    await page.goto(base + '/ledger');
    await page.waitForSelector('#ledger-blocks tbody a[href^="/ledger/blocks/"]');
    await page.fill('#ledger-q', '0');
    await page.locator('#ledger-search button[type="submit"]').click();
    await page.waitForSelector('#ledger-results a[href="/ledger/blocks/0"]');
    await page.locator('#ledger-older').click();
    await page.waitForFunction(() => document.querySelectorAll('#ledger-blocks tbody tr').length > 0);
    await page.screenshot({ path: join(shots, 'ledger-search.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally { await close(); }
});
