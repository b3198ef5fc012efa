// Drives the operations page in Debian's Chromium and prints what it saw as one JSON line.
// Usage: node ops_page.mjs URL SCREENSHOT_PATH   (env OPS_TOKEN: the right operator token)
// Steps: read the tenants, data sources and dead letters; screenshot; retry the first dead letter
// with a wrong token (must be refused), then with the right one (must be re-queued).
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const out = {};
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const first = await page.goto(url);
  out.status = first.status();
  out.title = await page.title();
  out.summary = await page.locator('#summary').innerText();
  out.sources = await page.locator('#sources tr[data-source]').evaluateAll((rows) =>
    rows.map((r) => ({ tenant: r.dataset.tenant, source: r.dataset.source, state: r.querySelector('.state').innerText,
      bars: r.querySelectorAll('svg.chart rect[fill]:not([fill=transparent])').length })));
  out.deadLetters = await page.locator('#dead-letters tr[data-dead-letter]').evaluateAll((rows) =>
    rows.map((r) => ({ id: Number(r.dataset.deadLetter), error: r.querySelector('.err').innerText })));
  await page.screenshot({ path: screenshot, fullPage: true });

  const id = out.deadLetters[0]?.id;
  const row = () => page.locator(`tr[data-dead-letter="${id}"]`);
  await row().locator('input[name=token]').fill('not-the-token');
  const [refused] = await Promise.all([page.waitForNavigation(), row().locator('button').click()]);
  out.wrongToken = { status: refused.status(), text: await page.locator('#error').innerText() };

  await page.goto(url);
  await row().locator('input[name=token]').fill(process.env.OPS_TOKEN);
  await Promise.all([page.waitForNavigation(), row().locator('button').click()]);
  out.rightToken = {
    url: page.url(),
    notice: await page.locator('#notice').innerText(),
    remaining: await page.locator('#dead-letters tr[data-dead-letter]').count(),
  };
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
