// Accessibility (issue 17): the first Tab reaches the skip link, the focus ring has at least
// 3:1 contrast, status has text as well as colour, and axe-core finds no serious or critical
// violation on any page, at 1400 px and phone width. The axe report is printed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { base, WIDE, PHONE, launch, shutdown, openPage, shot, axe, contrast } from './operator-support.mjs';

before(launch);
after(shutdown);

for (const [label, viewport] of [['1400', WIDE], ['phone', PHONE]]) {
  test(`the first Tab reaches the skip link, which leads to the content (${label})`, async () => {
    const { page, errors, close } = await openPage(viewport);
    try {
      await page.goto(base + '/grid');
      await page.waitForSelector('#grid-flows tbody tr.branch');
      await page.keyboard.press('Tab');
      assert.equal(await page.evaluate(() => document.activeElement.className), 'skip');
      await shot(page, `a11y-skip-link-${label}`);
      await page.keyboard.press('Enter');
      assert.equal(await page.evaluate(() => location.hash), '#main');
      assert.deepEqual(errors, []);
    } finally { await close(); }
  });

  test(`the focus ring has at least 3:1 contrast against what surrounds it (${label})`, async () => {
    const { page, close } = await openPage(viewport);
    try {
      await page.goto(base + '/participants');
      await page.waitForSelector('#participants tbody tr[data-participant]');
      const measured = [];
      // Tab through the first 12 stops: skip link, nav, header controls, page content.
      for (let i = 0; i < 12; i++) {
        await page.keyboard.press('Tab');
        measured.push(await page.evaluate(() => {
          const el = document.activeElement;
          const cs = getComputedStyle(el);
          let p = el.parentElement;
          let bg = 'rgb(255, 255, 255)';
          while (p) { const c = getComputedStyle(p).backgroundColor; if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') { bg = c; break; } p = p.parentElement; }
          return { el: el.tagName + (el.id ? '#' + el.id : '') + ' ' + (el.textContent || '').trim().slice(0, 20), outline: cs.outlineColor, style: cs.outlineStyle, width: cs.outlineWidth, bg };
        }));
      }
      for (const m of measured) {
        assert.notEqual(m.style, 'none', 'a focus ring on ' + m.el);
        const ratio = contrast(m.outline, m.bg);
        assert.ok(ratio >= 3, `focus ring of ${m.el}: ${m.outline} on ${m.bg} is ${ratio.toFixed(2)}:1`);
      }
      console.log(`# focus ring contrast (${label}):`, measured.map((m) => `${m.el.trim()} ${contrast(m.outline, m.bg).toFixed(1)}:1`).join('; '));
    } finally { await close(); }
  });

  test(`status says itself in text, not only in colour (${label})`, async () => {
    const { page, close } = await openPage(viewport);
    try {
      await page.goto(base + '/grid');
      await page.waitForFunction(() => /up|down/.test(document.querySelector('#src-market').textContent));
      for (const id of ['#src-market', '#src-settlement']) assert.match(await page.locator(id).innerText(), /(market|settlement) (up|down)/);
      const badges = await page.$$eval('.badge', (bs) => bs.filter((b) => b.offsetParent).map((b) => b.textContent.trim()));
      assert.ok(badges.length > 0 && badges.every((t) => t.length > 0), 'every visible badge has text');
      await shot(page, `a11y-status-${label}`);
    } finally { await close(); }
  });
}

const AXE_PAGES = ['/login', '/grid', '/history', '/market', '/participants', '/participants/h001', '/ledger', '/alerts'];
for (const [label, viewport] of [['1400', WIDE], ['phone', PHONE]]) {
  test(`axe-core: no serious or critical violations on any page (${label})`, async () => {
    const report = {};
    for (const path of AXE_PAGES) {
      const { page, close } = await openPage(viewport, path === '/login' ? null : undefined);
      try {
        await page.goto(base + path);
        // The page's data is in (not "network idle": the live event stream never idles).
        if (path === '/login') await page.waitForSelector('form button[type=submit]');
        else await page.waitForFunction(() => document.querySelector('main .page:not([hidden]) tbody tr, main .page:not([hidden]) .chart svg'));
        report[path] = await axe(page);
      } finally { await close(); }
    }
    console.log(`# axe-core report (${label}):`);
    for (const [path, violations] of Object.entries(report)) {
      console.log(`#   ${path}: ${violations.length ? violations.map((v) => `${v.impact} ${v.id} (${v.nodes}) ${v.help} — ${v.targets.join(', ')}`).join('; ') : 'no violations'}`);
    }
    const bad = Object.entries(report).flatMap(([path, vs]) => vs.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => `${path}: ${v.impact} ${v.id} ${v.targets.join(', ')}`));
    assert.deepEqual(bad, []);
  });
}
