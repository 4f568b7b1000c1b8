import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/server.js';
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

  beforeAll(async () => {
    server = await startTestServer();
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

  it('loaded without script errors or CSP violations', () => {
    expect(pageProblems).toEqual([]);
  });
});
