import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { get, startTestServer, type TestServer } from './helpers/server.js';
import { LOOPBACK_CIDRS } from './helpers/upstream.js';
import { haveTool } from './helpers/tools.js';

const CHROMIUM = '/usr/bin/chromium';
/** The page fetches after load; on a busy two-core machine that can take longer than expect.poll's 1 s default. */
const POLL = { timeout: 20_000, interval: 100 };
const sha512 = (b: Buffer | string) => createHash('sha512').update(b).digest('hex');

const HAVE_CHROMIUM = haveTool(CHROMIUM, 'chromium');
const TITLE = HAVE_CHROMIUM
  ? 'status page in headless Chromium'
  : `status page in headless Chromium: SKIPPED, ${CHROMIUM} is absent (apt-get install chromium)`;

describe.skipIf(!HAVE_CHROMIUM)(TITLE, () => {
  let server: TestServer;
  let context: BrowserContext;
  let page: Page;
  let profileDir: string;
  const pageProblems: string[] = [];

  const file = randomBytes(200 * 1024);
  const name = 'hello-browser-1.0.tar.gz';
  // Would run script if the page ever used innerHTML with a name.
  const hostile = `<img src=x onerror="window.__pwned=1">'q".tar.gz`;

  let mirrorPort: number;
  let shotDir: string;

  beforeAll(async () => {
    // A mirror that refuses connections: one miss opens its breaker, which the page must show.
    const dead = createServer();
    await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve));
    mirrorPort = (dead.address() as AddressInfo).port;
    await new Promise<void>((resolve) => dead.close(() => resolve()));
    server = await startTestServer({
      pullThrough: true,
      upstreams: [{ kind: 'gentoo', url: `http://127.0.0.1:${mirrorPort}/gentoo` }],
      upstreamFailureThreshold: 1,
      upstreamCooldownSeconds: 3600,
      fetchRetries: 0,
      fetchAllowCidrs: LOOPBACK_CIDRS,
      highWatermarkBytes: 10 * 1024 ** 3,
      // A webhook nobody answers: its pending events and last error are what the page must show.
      webhooks: [`http://127.0.0.1:${mirrorPort}/hook`],
      eventRetryBaseMs: 50,
      eventPollMs: 50,
    });
    shotDir = await mkdtemp(path.join(tmpdir(), 'fastpull-status-shots-'));
    expect((await server.upload(name, file)).status).toBe(201);
    expect((await server.upload('hello-browser-0.9.tar.gz', 'older\n')).status).toBe(201);
    expect((await server.upload(hostile, 'hostile\n')).status).toBe(201);

    profileDir = await mkdtemp(path.join(tmpdir(), 'fastpull-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      acceptDownloads: true,
      viewport: { width: 1100, height: 900 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
    // CSP violations and script errors surface here; the page must produce none.
    page.on('pageerror', (err) => pageProblems.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error') pageProblems.push(`console: ${msg.text()}`);
    });
  });

  afterAll(async () => {
    await context?.close();
    await server?.stop();
    if (profileDir) await rm(profileDir, { recursive: true, force: true });
    // The screenshots stay for a person to look at; their paths were printed.
  });

  it('shows the totals and recent ingests', async () => {
    await page.goto(`${server.baseUrl}/`);
    await expect.poll(() => page.textContent('#total-blobs'), POLL).toBe('3');
    expect(await page.textContent('#total-names')).toBe('3');
    const bytes = file.length + 'older\n'.length + 'hostile\n'.length;
    expect(await page.getAttribute('#total-bytes', 'title')).toBe(`${bytes.toLocaleString('en-US')} bytes`);
    const recentNames = await page.locator('#recent-body tr td:first-child').allTextContents();
    expect(recentNames).toEqual([hostile, 'hello-browser-0.9.tar.gz', name]);
    expect(await page.textContent('#mirror-base')).toBe(server.baseUrl);
  });

  it('finds an uploaded file by prefix and downloads its exact bytes from each link', async () => {
    await page.fill('#search-prefix', 'hello-browser-1');
    await page.press('#search-prefix', 'Enter');
    const result = page.locator('#search-results > li');
    await expect.poll(() => result.count(), POLL).toBe(1);
    expect(await result.locator('.name').textContent()).toBe(name);
    expect(await result.locator('.hash').first().textContent()).toBe(sha512(file));

    const forms = await result.locator('.links a').evaluateAll((links) => links.map((a) => a.getAttribute('data-form')));
    expect(forms).toEqual(['flat', 'filenameHash', 'contentHash', 'direct', 'hash']);
    for (const form of forms) {
      const [download] = await Promise.all([
        page.waitForEvent('download'),
        result.locator(`.links a[data-form="${form}"]`).click(),
      ]);
      expect(download.suggestedFilename(), form).toBe(name);
      const saved = await download.path();
      expect(sha512(await readFile(saved)), form).toBe(sha512(file));
    }
    expect(await page.textContent('#search-status')).toBe('1 name.');
  });

  it('renders hostile names as text', async () => {
    await page.fill('#search-prefix', '<img');
    await page.press('#search-prefix', 'Enter');
    const result = page.locator('#search-results > li');
    await expect.poll(() => result.locator('.name').allTextContents(), POLL).toEqual([hostile]);
    expect(await page.locator('#search-results img, #recent-body img').count()).toBe(0);
    expect(await page.evaluate(() => (globalThis as { __pwned?: number }).__pwned)).toBeUndefined();
  });

  it('says when nothing matches, and restores a search from the address', async () => {
    await page.fill('#search-prefix', 'no-such-name');
    await page.press('#search-prefix', 'Enter');
    await expect.poll(() => page.textContent('#search-status'), POLL).toBe('No name starts with “no-such-name”.');
    expect(await page.locator('#search-results > li').count()).toBe(0);

    await page.goto(`${server.baseUrl}/#q=${encodeURIComponent('hello-browser')}`);
    await expect.poll(() => page.locator('#search-results .name').allTextContents(), POLL).toEqual([
      'hello-browser-0.9.tar.gz',
      name,
    ]);
    if (process.env.FASTPULL_TEST_SCREENSHOT) await page.screenshot({ path: process.env.FASTPULL_TEST_SCREENSHOT, fullPage: true });
  });

  it('shows health, disk, totals, the last hour, mirrors and breakers; each element visible, with content, photographed', async () => {
    // A few responses of each class for the chart, and a miss that opens the mirror's breaker.
    expect((await get(`${server.baseUrl}/distfiles/${name}`)).status).toBe(200);
    expect((await get(`${server.baseUrl}/distfiles/no-such-file-1.0.tar.gz`)).status).toBe(404);
    expect((await get(`${server.baseUrl}/distfiles/${name}`, { 'if-none-match': `"${sha512(file)}"` })).status).toBe(304);

    await page.goto(`${server.baseUrl}/`);
    await expect.poll(() => page.textContent('#readiness'), POLL).toBe('Ready');
    const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));
    expect(await page.textContent('#version')).toBe(pkg.version);
    expect(await page.textContent('#uptime')).toMatch(/^\d+m \d+s$/);
    expect(await page.textContent('#disk-text')).toMatch(/ free of /);
    expect(await page.textContent('#disk-limits')).toMatch(/^Not ready below 1\.00 GiB free · stored .* of the 10\.0 GiB high watermark \(0%\)$/);
    expect(await page.locator('#disk-bar rect.used').count()).toBe(1);
    expect(await page.textContent('#total-dedup')).toBe('0 B');
    expect(await page.textContent('#total-quarantined')).toBe('0');
    expect(await page.textContent('#total-pinned')).toBe('0');

    // The chart: one bar per class that had responses this minute, each with its numbers as a tooltip.
    for (const cls of ['s2xx', 's3xx', 's4xx']) {
      await expect.poll(() => page.locator(`#chart-requests rect.${cls}`).count(), POLL).toBeGreaterThan(0);
    }
    expect(await page.locator('#chart-requests rect.s5xx').count()).toBe(0);
    expect(await page.locator('#chart-bytes rect.bytes-bar').count()).toBeGreaterThan(0);
    expect(await page.locator('#chart-requests rect title').first().textContent()).toMatch(/^\d\d:\d\d UTC: \d+ requests \(\d+ 2xx, \d+ 3xx, \d+ 4xx, 0 5xx\), /);
    expect(await page.textContent('#traffic-summary')).toMatch(/^\d+ requests, .* sent: \d+ 2xx, 1 3xx, \d+ 4xx, 0 5xx/);

    expect(await page.locator('#upstreams-body tr td').allTextContents()).toEqual(['gentoo', `127.0.0.1:${mirrorPort}`, 'open (skipped)', '0']);
    expect(await page.isVisible('#upstreams-empty')).toBe(false);

    // Event delivery: the three uploads are waiting for the dead webhook, which has never succeeded.
    await expect.poll(() => page.locator('#events-body tr').count(), POLL).toBe(1);
    const eventCells = await page.locator('#events-body tr td').allTextContents();
    expect(eventCells[0]).toMatch(new RegExp(`^webhook:127\\.0\\.0\\.1:${mirrorPort}#[0-9a-f]{8}$`));
    expect(Number(eventCells[1])).toBeGreaterThanOrEqual(3);
    expect(eventCells.slice(2, 4)).toEqual(['0', 'never']);
    expect(eventCells[4]).not.toBe('');
    expect(await page.isVisible('#events-empty')).toBe(false);

    const elements = [
      '#health',
      '#readiness',
      '#version',
      '#uptime',
      '#disk',
      '#total-dedup',
      '#total-quarantined',
      '#total-pinned',
      '#chart-requests',
      '#chart-bytes',
      '#traffic-summary',
      '#upstreams-table',
      '#events-table',
    ];
    for (const selector of elements) {
      const locator = page.locator(selector);
      expect(await locator.isVisible(), selector).toBe(true);
      const box = await locator.boundingBox();
      expect(box && box.width > 0 && box.height > 0, selector).toBe(true);
      const hasContent = await locator.evaluate((node) => (node.textContent ?? '').trim().length > 0 || node.querySelectorAll('rect').length > 0);
      expect(hasContent, selector).toBe(true);
      const shot = path.join(shotDir, `${selector.slice(1)}.png`);
      const png = await locator.screenshot({ path: shot });
      // A PNG of some size: the element was drawn.
      expect(png.subarray(1, 4).toString(), selector).toBe('PNG');
      expect(png.length, selector).toBeGreaterThan(200);
    }
    const full = path.join(shotDir, 'status-page.png');
    await page.screenshot({ path: full, fullPage: true });
    console.log(`status page screenshots: ${full} and ${elements.length} element shots in ${shotDir}`);
  });

  it('searches in any case and pages with More', async () => {
    for (let i = 0; i < 55; i++) expect((await server.upload(`Paged-${String(i).padStart(2, '0')}.tar.gz`, `paged ${i}\n`)).status).toBe(201);
    await page.goto(`${server.baseUrl}/`);
    await page.fill('#search-prefix', 'paged-');
    await page.press('#search-prefix', 'Enter');
    await expect.poll(() => page.textContent('#search-status'), POLL).toBe('No name starts with “paged-”.');
    await page.check('#search-ignore-case');
    await page.press('#search-prefix', 'Enter');
    await expect.poll(() => page.locator('#search-results > li').count(), POLL).toBe(50);
    expect(await page.textContent('#search-status')).toBe('50 names shown; more start with “paged-” (any case).');
    expect(await page.isVisible('#search-more')).toBe(true);
    await page.click('#search-more');
    await expect.poll(() => page.locator('#search-results > li').count(), POLL).toBe(55);
    const names = await page.locator('#search-results .name').allTextContents();
    expect(names).toEqual(Array.from({ length: 55 }, (_, i) => `Paged-${String(i).padStart(2, '0')}.tar.gz`));
    expect(await page.isVisible('#search-more')).toBe(false);
    expect(page.url()).toMatch(/#q=paged-&i=1$/);
    const shot = path.join(shotDir, 'search.png');
    await page.locator('#search-heading').locator('..').screenshot({ path: shot });
    console.log(`search screenshot: ${shot}`);
  });

  it('loaded without script errors or CSP violations', () => {
    expect(pageProblems).toEqual([]);
  });
});
