// The incident webhook (issue 17), end to end: a second dashboard reads the live
// neighbourhood's market and settlement through switchable proxies and sends its incidents to a
// real local HTTP receiver. A service taken down opens an incident: the receiver gets "new"
// (after refusing the first try once, so the retry is shown), an operator acknowledges it in the
// browser, the service comes back and the receiver gets "resolved" while the page shows it
// resolved. No notification carries the dashboard's upstream credential. Once at 1400 px (the
// settlement goes down) and once at phone width (the market goes down).
// Needs (scripts/browser-test sets them): GRIDMESH_LOGIN_ADMIN, GRIDMESH_DASHBOARD_ENV (the
// demo's dashboard.env), GRIDMESH_DASHBOARD_USERS and GRIDMESH_DASHBOARD_BIN.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import {
  shots, adminLogin, dashboardEnv, adminSessionAt, getJsonAs, startDashboard, stopDashboard, launchChromium,
} from './operator-support.mjs';

const TIMEOUT = 30_000;
/** How long a notification may take: a refresh notices the outage (poll + request timeout), then a
 * refused first try and its 0.5 s back-off; generous for a loaded 2-core machine. */
const NOTIFY_DEADLINE = 60_000;
const adminName = adminLogin().name;
const env = dashboardEnv();

// ---------- the webhook receiver ----------
/** Every POST it got: { auth, status (what it answered), body }. */
const received = [];
const waiters = new Set();
const receiver = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body = null;
    try { body = JSON.parse(Buffer.concat(chunks).toString()); } catch { /* recorded as null */ }
    const key = body && body.incident ? body.incident.id + '/' + body.event : '';
    // The first try of every service notification is refused: the dashboard must retry it.
    const first = body && body.incident && body.incident.kind === 'service' && !received.some((r) => r.key === key);
    const status = req.method !== 'POST' || !body ? 400 : first ? 503 : 204;
    received.push({ auth: req.headers.authorization || '', status, key, body });
    res.writeHead(status, { 'content-type': 'text/plain' });
    res.end(status === 503 ? 'busy, try again' : '');
    for (const w of waiters) w();
  });
});
/** Waits (at most `ms`) until an accepted notification matches `pred`; returns it. */
function notified(pred, what, ms = NOTIFY_DEADLINE) {
  const find = () => received.find((r) => r.status === 204 && pred(r.body));
  return new Promise((ok, fail) => {
    const check = () => {
      const hit = find();
      if (hit) { waiters.delete(check); clearTimeout(timer); ok(hit); }
    };
    const timer = setTimeout(() => {
      waiters.delete(check);
      fail(new Error(`the webhook got no ${what} within ${ms / 1000} s; it got: ` +
        JSON.stringify(received.map((r) => ({ status: r.status, key: r.key, kind: r.body?.incident?.kind, subject: r.body?.incident?.subject })))));
    }, ms);
    waiters.add(check);
    check();
  });
}

// ---------- a switchable proxy in front of each real service ----------
// "Down" is what a crashed service looks like: nothing listens on its port (connections are
// refused) and the open ones, event streams included, are cut. "Up" listens on the same port again.
function switchable(upstreamUrl) {
  const up = new URL(upstreamUrl);
  const open = new Set();
  const p = { port: 0, server: null, open };
  p.server = http.createServer((req, res) => {
    const headers = { ...req.headers, host: up.host };
    const pipe = http.request({ host: up.hostname, port: up.port, path: req.url, method: req.method, headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    pipe.on('error', () => res.destroy());
    open.add(pipe);
    pipe.on('close', () => open.delete(pipe));
    req.pipe(pipe);
  });
  p.listen = () => new Promise((ok, fail) => {
    p.server.once('error', fail);
    p.server.listen(p.port, '127.0.0.1', () => { p.server.off('error', fail); p.port = p.server.address().port; ok(); });
  });
  /** Takes the service down or brings it back on the same port. */
  p.set = async (down) => {
    if (down && p.server.listening) {
      const closed = new Promise((ok) => p.server.close(ok));
      p.server.closeAllConnections();
      for (const s of [...open]) s.destroy();
      await closed;
    } else if (!down && !p.server.listening) {
      await p.listen();
    }
  };
  p.url = () => 'http://127.0.0.1:' + p.port;
  return p;
}
const proxies = { market: switchable(env.GRIDMESH_WEB_MARKET_URL), settlement: switchable(env.GRIDMESH_WEB_SETTLEMENT_URL) };

// ---------- the second dashboard ----------
let child;
let base = '';
let session = '';
let browser;
const listen = (server) => new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const urlOf = (server) => 'http://127.0.0.1:' + server.address().port;

const apiJson = (path) => getJsonAs(base + path, session);
/** Waits (at most `ms`) until `cond()` (async) is truthy; returns its value. */
async function until(cond, what, ms = NOTIFY_DEADLINE) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) assert.fail('timed out waiting for ' + what);
    await new Promise((ok) => setTimeout(ok, 250));
  }
}

before(async () => {
  assert.ok(adminName && env.GRIDMESH_WEB_MARKET_URL && env.GRIDMESH_WEB_SETTLEMENT_URL,
    'set GRIDMESH_LOGIN_ADMIN and GRIDMESH_DASHBOARD_ENV (scripts/browser-test does)');
  mkdirSync(shots, { recursive: true });
  await listen(receiver);
  await proxies.market.listen();
  await proxies.settlement.listen();
  ({ child, base } = await startDashboard(env, {
    GRIDMESH_WEB_MARKET_URL: proxies.market.url(),
    GRIDMESH_WEB_SETTLEMENT_URL: proxies.settlement.url(),
    GRIDMESH_WEB_INCIDENT_WEBHOOK: urlOf(receiver) + '/hook',
  }, { what: 'webhook test', dirPrefix: 'gridmesh-webhook-' }));
  session = await adminSessionAt(base);
  await until(async () => { const s = await apiJson('/api/status'); return s.sources.market.ok && s.sources.settlement.ok; },
    'the second dashboard to read both services');
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await stopDashboard(child);
  for (const p of [proxies.market, proxies.settlement]) for (const s of p.open) s.destroy();
  for (const server of [receiver, proxies.market.server, proxies.settlement.server]) {
    if (!server.listening) continue;
    server.closeAllConnections();
    server.close();
  }
});

for (const [label, viewport, service] of [['1400', { width: 1400, height: 900 }, 'settlement'], ['phone', { width: 390, height: 844 }, 'market']]) {
  test(`webhook: ${service} down opens an incident the receiver gets (retried), the operator acknowledges it, recovery resolves it (${label})`, async () => {
    const isOurs = (b) => b && b.incident.kind === 'service' && b.incident.subject === service;
    const context = await browser.newContext({ viewport });
    await context.addCookies([{ name: 'gridmesh_session', value: session, url: base, httpOnly: true, sameSite: 'Strict' }]);
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    const errors = [];
    page.on('pageerror', (e) => errors.push('exception: ' + e.message));
    try {
      await page.goto(base + '/alerts');
      await page.waitForSelector('#incidents-section');
      await proxies[service].set(true);
      const opened = await notified((b) => isOurs(b) && b.event === 'new', `"new" notification for ${service} down`);
      const id = opened.body.incident.id;
      assert.equal(opened.body.incident.state, 'active');
      assert.equal(opened.body.incident.severity, 'critical');
      assert.match(opened.body.incident.title, new RegExp(service + ' unreachable'));
      const tries = received.filter((r) => r.key === id + '/new');
      assert.deepEqual(tries.map((r) => r.status), [503, 204], 'refused once, then retried and accepted');
      // The operator sees it active and acknowledges it in the browser.
      const row = page.locator(`#incidents tr[data-incident="${id}"]`);
      await row.waitFor();
      await page.waitForSelector(`#incidents tr[data-incident="${id}"][data-state="active"]`);
      await row.scrollIntoViewIfNeeded();
      await row.locator('button.ack').click();
      await page.waitForFunction((x) => /by /.test(document.querySelector(`#incidents tr[data-incident="${x}"]`)?.textContent || ''), id);
      assert.match(await row.innerText(), new RegExp('by ' + adminName));
      await page.screenshot({ path: join(shots, `webhook-incident-acknowledged-${label}.png`), fullPage: true });
      // The service comes back: "resolved" is sent (retried as well) and the page shows it.
      await proxies[service].set(false);
      const resolved = await notified((b) => isOurs(b) && b.event === 'resolved' && b.incident.id === id, `"resolved" notification for ${service}`);
      assert.equal(resolved.body.incident.state, 'resolved');
      assert.ok(!Number.isNaN(Date.parse(resolved.body.incident.resolved_at)), 'resolved_at: ' + resolved.body.incident.resolved_at);
      assert.deepEqual(received.filter((r) => r.key === id + '/resolved').map((r) => r.status), [503, 204]);
      await page.waitForSelector(`#incidents tr[data-incident="${id}"][data-state="resolved"]`, { timeout: NOTIFY_DEADLINE });
      assert.match(await row.innerText(), new RegExp('by ' + adminName), 'the acknowledgement stays on the resolved incident');
      await page.screenshot({ path: join(shots, `webhook-incident-resolved-${label}.png`), fullPage: true });
      // The acknowledgement is stored with who and when.
      const stored = (await apiJson('/api/incidents')).incidents.find((i) => i.id === id);
      assert.equal(stored.acknowledged_by, adminName);
      assert.ok(!Number.isNaN(Date.parse(stored.acknowledged_at)));
      // The webhook is a third party: the auditor credential never goes there.
      assert.deepEqual(received.filter((r) => r.auth !== '').map((r) => r.key), [], 'notifications sent with an Authorization header');
      assert.deepEqual(errors, []);
    } finally {
      await proxies[service].set(false);
      await context.close();
    }
  });
}
