// Shared helpers of the operator and accessibility browser tests (issue 17): logins from the
// environment, pages opened with a session, screenshots, axe-core injected through
// playwright-core.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const base = (process.env.GRIDMESH_DASHBOARD_URL || '').replace(/\/+$/, '');
const artifacts = resolve(process.env.GRIDMESH_ARTIFACTS || join(here, '..', '..', 'artifacts'));
export const shots = join(artifacts, 'screenshots');
export const TIMEOUT = 20_000;
export const WIDE = { width: 1400, height: 900 };
export const PHONE = { width: 390, height: 844 };

/** A login from the environment: { name, password, participant }. */
export function login(variable) {
  const [name, password, participant] = (process.env[variable] || '').split(':');
  assert.ok(name && password, `set ${variable} to name:password (scripts/browser-test does)`);
  return { name, password, participant };
}

const sessions = new Map();
/** Logs `user` in over HTTP and returns its session id. */
export async function sessionOf(user) {
  if (sessions.has(user.name)) return sessions.get(user.name);
  const r = await fetch(base + '/login', {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ name: user.name, password: user.password }),
  });
  assert.equal(r.status, 303, `login of ${user.name} failed: ${r.status}`);
  const id = /gridmesh_session=([0-9a-f]{64})/.exec(r.headers.get('set-cookie') || '')[1];
  sessions.set(user.name, id);
  return id;
}

/** GETs a dashboard path as the admin from Node. */
export async function apiGet(path) {
  const id = await sessionOf(login('GRIDMESH_LOGIN_ADMIN'));
  return fetch(base + path, { headers: { cookie: 'gridmesh_session=' + id, accept: 'application/json' } });
}

let browser;
export async function launch() {
  assert.ok(base, 'set GRIDMESH_DASHBOARD_URL to the dashboard, e.g. http://127.0.0.1:8080');
  mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}
export async function shutdown() { await browser?.close(); }

/** A fresh page (admin session unless `user` is null) recording console errors. */
export async function openPage(viewport = WIDE, user = undefined) {
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
  const close = async () => {
    await page.unrouteAll({ behavior: 'ignoreErrors' });
    await context.close();
  };
  return { page, errors, close };
}

export async function shot(page, name) {
  await page.screenshot({ path: join(shots, name + '.png'), fullPage: true });
}

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** Runs axe-core (WCAG 2.x A/AA rules) in the page and returns its violations. */
export async function axe(page) {
  await page.addScriptTag({ content: AXE });
  return page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'], runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length, targets: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
}

/** WCAG contrast ratio of two CSS colours (rgb()/rgba()). */
export function contrast(a, b) {
  const parse = (c) => (c.match(/[\d.]+/g) || []).slice(0, 3).map(Number);
  const lum = (rgb) => {
    const [r, g, b2] = rgb.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b2;
  };
  const [l1, l2] = [lum(parse(a)), lum(parse(b))].sort((x, y) => y - x);
  return (l1 + 0.05) / (l2 + 0.05);
}
