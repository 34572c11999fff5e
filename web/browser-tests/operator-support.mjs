// Shared helpers of the operator, accessibility, trust and webhook browser tests (issue 17):
// logins from the environment, pages opened with a session, screenshots, axe-core injected
// through playwright-core, and a second dashboard started from the demo's settings.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
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

/** Launches the headless Chromium of the tests, with `extraArgs` on its command line. */
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', ...extraArgs],
  });
}

let browser;
export async function launch() {
  assert.ok(base, 'set GRIDMESH_DASHBOARD_URL to the dashboard, e.g. http://127.0.0.1:8080');
  mkdirSync(shots, { recursive: true });
  browser = await launchChromium(['--disable-background-networking']);
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

// ---------- a second dashboard, started from the demo's settings ----------

/** The admin login from GRIDMESH_LOGIN_ADMIN (`name:password`); empty strings when unset. */
export function adminLogin() {
  const [name = '', password = ''] = (process.env.GRIDMESH_LOGIN_ADMIN || '').split(':');
  return { name, password };
}

/** The demo dashboard's settings (GRIDMESH_DASHBOARD_ENV, its dashboard.env) as an object. */
export function dashboardEnv() {
  return Object.fromEntries(readFileSync(process.env.GRIDMESH_DASHBOARD_ENV || '/nonexistent-dashboard.env', 'utf8')
    .split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/** Logs the admin (GRIDMESH_LOGIN_ADMIN) in at the dashboard at `url`; returns the session id. */
export async function adminSessionAt(url) {
  const { name, password } = adminLogin();
  const r = await fetch(url + '/login', { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ name, password }) });
  assert.equal(r.status, 303, 'admin login at ' + url);
  return /gridmesh_session=([0-9a-f]{64})/.exec(r.headers.get('set-cookie'))[1];
}

/** GETs `url` with the session `id`; asserts a 200 and returns the JSON. */
export async function getJsonAs(url, id) {
  const r = await fetch(url, { headers: { cookie: 'gridmesh_session=' + id, accept: 'application/json' } });
  assert.equal(r.status, 200, url);
  return r.json();
}

/**
 * Starts a second dashboard (GRIDMESH_DASHBOARD_BIN, users from GRIDMESH_DASHBOARD_USERS) on a
 * free local port with `settings` (see `dashboardEnv`) and then `overrides`, its data in a fresh
 * temporary directory named `dirPrefix`…; the caller's GRIDMESH_WEB_* variables are not passed
 * on. Resolves when it listens, to { child, base }; rejects, naming it `what`, if it exits first.
 */
export async function startDashboard(settings, overrides, { what, dirPrefix }) {
  const childEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GRIDMESH_WEB_')));
  Object.assign(childEnv, settings, {
    GRIDMESH_WEB_LISTEN: '127.0.0.1:0',
    GRIDMESH_WEB_USERS_FILE: process.env.GRIDMESH_DASHBOARD_USERS,
    GRIDMESH_WEB_DATA_DIR: mkdtempSync(join(tmpdir(), dirPrefix)),
    RUST_LOG: 'info',
    NO_COLOR: '1',
  }, overrides);
  const child = spawn(process.env.GRIDMESH_DASHBOARD_BIN, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  const url = await new Promise((ok, fail) => {
    let log = '';
    const seen = (chunk) => {
      log += chunk.toString();
      const m = /dashboard listening.*?addr=(127\.0\.0\.1:\d+)/.exec(log.replace(/\x1b\[[0-9;]*m/g, ''));
      if (m) ok('http://' + m[1]);
    };
    child.stdout.on('data', seen);
    child.stderr.on('data', seen);
    child.on('exit', (code) => fail(new Error('the ' + what + ' dashboard exited with ' + code + ':\n' + log)));
  });
  return { child, base: url };
}

/** Stops a dashboard of `startDashboard` (SIGINT, SIGKILL after 5 s) and ends its output pipes. */
export async function stopDashboard(child) {
  if (child && child.exitCode === null) {
    const exited = new Promise((ok) => child.once('exit', ok));
    child.kill('SIGINT');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
  child?.stdout?.destroy();
  child?.stderr?.destroy();
}
