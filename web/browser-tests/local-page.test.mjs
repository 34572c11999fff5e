// The gateway's local page (issue 18), served by one household's gateway in the demo: login,
// a wrong password refused, live values changing, and a phone-width layout without sideways
// scrolling. Screenshots land in artifacts/screenshots/local-page-*.png.
// Needs (scripts/browser-test sets them from the demo's output): GRIDMESH_LOCAL_PAGE_URL and
// GRIDMESH_LOCAL_PAGE_PASSWORD.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const base = (process.env.GRIDMESH_LOCAL_PAGE_URL || '').replace(/\/+$/, '');
const password = process.env.GRIDMESH_LOCAL_PAGE_PASSWORD || '';
const shots = join(resolve(process.env.GRIDMESH_ARTIFACTS || join(here, '..', '..', 'artifacts')), 'screenshots');
const TIMEOUT = 30_000;
let browser;

before(async () => {
  assert.ok(base && password, 'GRIDMESH_LOCAL_PAGE_URL and GRIDMESH_LOCAL_PAGE_PASSWORD must be set (scripts/browser-test reads them from the demo)');
  mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
});
after(async () => { if (browser) await browser.close(); });

async function login(page, pw) {
  await page.goto(base + '/', { timeout: TIMEOUT });
  await page.fill('#password', pw);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/login') && r.request().method() === 'POST', { timeout: TIMEOUT }),
    page.click('button[type=submit]'),
  ]);
  await page.waitForLoadState('domcontentloaded');
  return response;
}

test('a wrong password is refused and says so; the API answers 401 without a session', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const response = await login(page, password + 'x');
  assert.equal(response.status(), 401);
  await page.getByRole('alert').waitFor({ timeout: TIMEOUT });
  assert.match(await page.getByRole('alert').innerText(), /Wrong password/);
  assert.equal(await page.locator('[data-live="pv"]').count(), 0, 'the dashboard must not show');
  const api = await page.request.get(base + '/api/live');
  assert.equal(api.status(), 401);
  const cookies = await context.cookies();
  assert.equal(cookies.filter((c) => c.name === 'gm_local').length, 0);
  await page.screenshot({ path: join(shots, 'local-page-wrong-password.png') });
  await context.close();
});

test('login with the installed password shows live values that change', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const response = await login(page, password);
  assert.equal(response.status(), 303);
  const cookie = (await context.cookies()).find((c) => c.name === 'gm_local');
  assert.ok(cookie, 'a session cookie');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  // JavaScript cannot read the session cookie.
  assert.equal(await page.evaluate(() => document.cookie.includes('gm_local')), false);
  const clock = page.locator('[data-live="clock"]');
  await page.waitForFunction(() => /UTC/.test(document.querySelector('[data-live="clock"]').textContent), null, { timeout: TIMEOUT });
  const values = async () => page.evaluate(() => ['clock', 'pv', 'battery', 'house', 'grid']
    .map((k) => document.querySelector('[data-live="' + k + '"]').textContent));
  const first = await values();
  // Live: the page refreshes every 3 s; the demo's clock runs at 60x, so the simulated time
  // shown moves, and the power values with it.
  await page.waitForFunction((before) => {
    const now = ['clock', 'pv', 'battery', 'house', 'grid']
      .map((k) => document.querySelector('[data-live="' + k + '"]').textContent);
    return now[0] !== before[0] && now.slice(1).some((v, i) => v !== before[i + 1]);
  }, first, { timeout: TIMEOUT });
  const second = await values();
  assert.notEqual(second[0], first[0]);
  assert.match(second[1], /W$/, 'PV shows a power: ' + second[1]);
  // Device health and the outbox from the gateway, and today's intervals with the market's
  // clearing.
  await page.locator('#health li', { hasText: 'Outbox' }).waitFor({ timeout: TIMEOUT });
  await page.locator('#today tbody tr td.num').first().waitFor({ timeout: TIMEOUT });
  await page.locator('#household h3', { hasText: 'Tokens' }).waitFor({ timeout: TIMEOUT });
  assert.ok(await clock.isVisible());
  await page.screenshot({ path: join(shots, 'local-page.png'), fullPage: true });
  await context.close();
});

test('at phone width the page fits without scrolling sideways', async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  await login(page, password);
  await page.waitForFunction(() => /W$/.test(document.querySelector('[data-live="pv"]').textContent), null, { timeout: TIMEOUT });
  await page.locator('#today tbody tr').first().waitFor({ timeout: TIMEOUT });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 1, 'the page is ' + overflow + ' px wider than the phone');
  // The four flows are readable: each tile fully inside the viewport's width, text at least 12 px.
  const tiles = await page.$$eval('.tile', (els) => els.map((e) => {
    const r = e.getBoundingClientRect();
    return { left: r.left, right: r.right, font: parseFloat(getComputedStyle(e.querySelector('.value')).fontSize) };
  }));
  assert.equal(tiles.length, 4);
  for (const t of tiles) {
    assert.ok(t.left >= 0 && t.right <= 390 + 0.5, JSON.stringify(t));
    assert.ok(t.font >= 12, JSON.stringify(t));
  }
  await page.screenshot({ path: join(shots, 'local-page-phone.png'), fullPage: true });
  await context.close();
});
