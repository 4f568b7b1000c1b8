/* global document, window, fetch, URLSearchParams */
// The status page script. Everything that comes from the index (names above all: they may hold
// "<", quotes or "&") reaches the DOM through textContent or attribute setters, never as markup.
'use strict';

const LINK_LABELS = [
  ['flat', 'flat'],
  ['filenameHash', 'filename-hash'],
  ['contentHash', 'content-hash'],
  ['direct', 'direct'],
  ['hash', 'by hash'],
];

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === 'text') node.textContent = value;
    else if (key === 'class') node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const numberFormat = new Intl.NumberFormat();

function formatBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

function formatTime(isoString) {
  const date = new Date(isoString);
  return date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

function shortHash(sha512) {
  return `${sha512.slice(0, 16)}…`;
}

async function getJson(path, options) {
  const response = await fetch(path, { headers: { accept: 'application/json' }, ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
  return body;
}

function downloadLinks(urls, filename) {
  const links = el('div', { class: 'links' });
  for (const [key, label] of LINK_LABELS) {
    const href = urls[key];
    if (!href) continue;
    const link = el('a', { href, text: label });
    // Hash paths carry no name; the attribute lets the browser save them under the real one.
    if (filename) link.setAttribute('download', filename);
    link.dataset.form = key;
    links.append(link);
  }
  return links;
}

function setBytes(id, n) {
  const node = document.getElementById(id);
  node.textContent = formatBytes(n);
  node.title = `${numberFormat.format(n)} bytes`;
}

function renderTotals(totals) {
  document.getElementById('total-blobs').textContent = numberFormat.format(totals.blobs);
  setBytes('total-bytes', totals.bytes);
  document.getElementById('total-names').textContent = numberFormat.format(totals.names);
  setBytes('total-dedup', totals.dedupSavedBytes);
  const quarantined = document.getElementById('total-quarantined');
  quarantined.textContent = numberFormat.format(totals.quarantinedBlobs);
  quarantined.title = `${numberFormat.format(totals.quarantinedBytes)} bytes; damaged or missing, answering 404 until re-uploaded`;
  quarantined.className = totals.quarantinedBlobs > 0 ? 'bad' : '';
  document.getElementById('total-pinned').textContent = numberFormat.format(totals.pinnedBlobs);
}

const SVG = 'http://www.w3.org/2000/svg';

/** SVG nodes through the DOM: attributes only (no inline style, which the CSP forbids). */
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text) {
    const title = document.createElementNS(SVG, 'title');
    title.textContent = text;
    node.append(title);
  }
  return node;
}

function formatDuration(seconds) {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  return `${m}m ${Math.floor(seconds % 60)}s`;
}

function renderHealth(data) {
  const readiness = document.getElementById('readiness');
  const detail = document.getElementById('readiness-detail');
  if (data.readiness) {
    readiness.textContent = data.readiness.ready ? 'Ready' : 'Not ready';
    readiness.className = data.readiness.ready ? 'ok' : 'bad';
    detail.textContent = data.readiness.failing
      .map((name) => `${name}: ${(data.readiness.checks[name] && data.readiness.checks[name].detail) || 'failing'}`)
      .join('; ');
  } else {
    readiness.textContent = 'unknown';
  }
  document.getElementById('version').textContent = data.server.version + (data.server.readOnly ? ' (read-only)' : '');
  const uptime = document.getElementById('uptime');
  uptime.textContent = formatDuration(data.server.uptimeSeconds);
  uptime.title = `since ${formatTime(data.server.startedAt)}`;
  renderDisk(data.disk, data.totals.bytes);
}

function renderDisk(disk, storedBytes) {
  const bar = document.getElementById('disk-bar');
  const text = document.getElementById('disk-text');
  const limits = document.getElementById('disk-limits');
  if (!disk || disk.freeBytes === null || !disk.totalBytes) {
    text.textContent = 'unknown';
    bar.replaceChildren();
    return;
  }
  const used = disk.totalBytes - disk.freeBytes;
  // "Near": within twice the free-space floor readyz enforces.
  const near = disk.freeBytes < 2 * disk.minFreeBytes;
  text.textContent = `${formatBytes(disk.freeBytes)} free of ${formatBytes(disk.totalBytes)}`;
  text.className = near ? 'bad' : 'muted';
  const scale = (n) => Math.max(0, Math.min(1000, (n / disk.totalBytes) * 1000));
  const parts = [
    svg('rect', { class: 'track', x: 0, y: 0, width: 1000, height: 24 }),
    svg('rect', { class: near ? 'used near' : 'used', x: 0, y: 0, width: scale(used), height: 24 }, `${formatBytes(used)} used`),
    svg('line', { class: 'mark', x1: scale(disk.totalBytes - disk.minFreeBytes), x2: scale(disk.totalBytes - disk.minFreeBytes), y1: 0, y2: 24 },
      `readiness floor: ${formatBytes(disk.minFreeBytes)} must stay free`),
  ];
  bar.replaceChildren(...parts);
  const watermark = disk.highWatermarkBytes === null
    ? 'no high watermark set'
    : `stored ${formatBytes(storedBytes)} of the ${formatBytes(disk.highWatermarkBytes)} high watermark (${Math.round((storedBytes / disk.highWatermarkBytes) * 100)}%)`;
  limits.textContent = `Not ready below ${formatBytes(disk.minFreeBytes)} free · ${watermark}`;
}

const CLASSES = ['s2xx', 's3xx', 's4xx', 's5xx'];

function renderTraffic(minutes) {
  const requests = document.getElementById('chart-requests');
  const bytesChart = document.getElementById('chart-bytes');
  const n = minutes.length || 60;
  const width = 600 / n;
  const maxRequests = Math.max(1, ...minutes.map((m) => m.requests));
  const maxBytes = Math.max(1, ...minutes.map((m) => m.bytes));
  const reqBars = [];
  const byteBars = [];
  minutes.forEach((m, i) => {
    const label = `${formatTime(m.at).slice(11, 16)} UTC: ${m.requests} requests (${m.s2xx} 2xx, ${m.s3xx} 3xx, ${m.s4xx} 4xx, ${m.s5xx} 5xx), ${formatBytes(m.bytes)}`;
    let y = 120;
    for (const cls of CLASSES) {
      const h = (m[cls] / maxRequests) * 116;
      if (h <= 0) continue;
      y -= h;
      reqBars.push(svg('rect', { class: cls, x: i * width + 0.5, y, width: Math.max(1, width - 1), height: h }, label));
    }
    const bh = (m.bytes / maxBytes) * 76;
    if (bh > 0) byteBars.push(svg('rect', { class: 'bytes-bar', x: i * width + 0.5, y: 80 - bh, width: Math.max(1, width - 1), height: bh }, label));
  });
  requests.replaceChildren(...reqBars);
  bytesChart.replaceChildren(...byteBars);
  const total = (k) => minutes.reduce((sum, m) => sum + m[k], 0);
  document.getElementById('traffic-summary').textContent =
    `${numberFormat.format(total('requests'))} requests, ${formatBytes(total('bytes'))} sent: ` +
    `${numberFormat.format(total('s2xx'))} 2xx, ${numberFormat.format(total('s3xx'))} 3xx, ` +
    `${numberFormat.format(total('s4xx'))} 4xx, ${numberFormat.format(total('s5xx'))} 5xx (since start, at most an hour).`;
  document.getElementById('bytes-peak').textContent = `peak ${formatBytes(maxBytes === 1 ? 0 : maxBytes)}/min`;
}

function renderUpstreams(upstreams) {
  const body = document.getElementById('upstreams-body');
  const mirrors = upstreams.mirrors;
  document.getElementById('upstreams-empty').hidden = upstreams.pullThrough && mirrors.length > 0;
  document.getElementById('upstreams-table').hidden = mirrors.length === 0;
  body.replaceChildren(
    ...mirrors.map((m) =>
      el(
        'tr',
        {},
        el('td', { text: m.kind }),
        el('td', { class: 'hash', text: m.host }),
        el('td', { class: m.breakerOpen ? 'breaker-open' : 'breaker-closed', text: m.breakerOpen ? 'open (skipped)' : 'closed' }),
        el('td', { class: 'num', text: String(m.failures) }),
      ),
    ),
  );
}

/** Webhook and CDN delivery: a target whose purges do not go through leaves edges serving stale bytes. */
function renderEvents(events) {
  const targets = events ? events.targets : [];
  document.getElementById('events-empty').hidden = targets.length > 0;
  document.getElementById('events-table').hidden = targets.length === 0;
  document.getElementById('events-body').replaceChildren(
    ...targets.map((t) =>
      el(
        'tr',
        {},
        el('td', { class: 'hash', text: t.target }),
        el('td', { class: 'num', text: numberFormat.format(t.pending) }),
        el('td', { class: t.failed > 0 ? 'num breaker-open' : 'num', text: numberFormat.format(t.failed) }),
        el('td', { text: t.lastSuccessAt ? formatTime(t.lastSuccessAt) : 'never' }),
        el('td', { class: t.lastError ? 'breaker-open' : 'muted', text: t.lastError ?? '' }),
      ),
    ),
  );
}

function renderRecent(recent) {
  const body = document.getElementById('recent-body');
  body.replaceChildren(
    ...recent.map((entry) => {
      const name = entry.urls.flat ? el('a', { href: entry.urls.flat, text: entry.filename }) : el('span', { text: entry.filename });
      return el(
        'tr',
        {},
        el('td', {}, name),
        el('td', { class: 'num', text: formatBytes(entry.size), title: `${entry.size} bytes` }),
        el('td', {}, el('a', { class: 'hash', href: entry.urls.contentHash, text: shortHash(entry.sha512), title: entry.sha512 })),
        el('td', { class: 'muted', text: formatTime(entry.attachedAt) }),
      );
    }),
  );
  document.getElementById('recent-empty').hidden = recent.length > 0;
}

function renderResults(data, append) {
  const list = document.getElementById('search-results');
  const status = document.getElementById('search-status');
  const items = data.results.map((result) => {
      const hashes = el('ul', { class: 'hashes' });
      for (const hash of result.hashes) {
        const meta = el('div', { class: 'meta' });
        meta.append(`${formatBytes(hash.size)} · attached ${formatTime(hash.attachedAt)}`);
        if (!hash.current) meta.append(el('span', { class: 'badge', text: 'older hash' }));
        if (hash.quarantined) meta.append(el('span', { class: 'badge bad', text: 'quarantined' }));
        hashes.append(
          el('li', {}, el('div', { class: 'hash', text: hash.sha512 }), meta, downloadLinks(hash.urls, result.filename)),
        );
      }
      return el('li', { class: 'result' }, el('div', { class: 'name', text: result.filename }), hashes);
  });
  if (append) list.append(...items);
  else list.replaceChildren(...items);
  const count = list.children.length;
  const how = data.ignoreCase ? ' (any case)' : '';
  status.textContent =
    count === 0
      ? `No name starts with “${data.prefix}”${how}.`
      : `${count} name${count === 1 ? '' : 's'}${data.truncated ? ` shown; more start with “${data.prefix}”${how}` : ''}.`;
  const more = document.getElementById('search-more');
  more.hidden = !data.truncated;
  more.dataset.after = data.next || '';
}

const PAGE_SIZE = '50';
let lastSearch = { prefix: '', ignoreCase: false };

async function search(prefix, ignoreCase, after) {
  const status = document.getElementById('search-status');
  status.textContent = 'Searching…';
  lastSearch = { prefix, ignoreCase };
  const query = { prefix, limit: PAGE_SIZE };
  if (ignoreCase) query.ignoreCase = 'true';
  if (after) query.after = after;
  try {
    const data = await getJson(`/api/v1/search?${new URLSearchParams(query)}`);
    renderResults(data, Boolean(after));
  } catch (err) {
    if (!after) document.getElementById('search-results').replaceChildren();
    document.getElementById('search-more').hidden = true;
    status.textContent = `Search failed: ${err.message}`;
  }
}

async function loadStatus() {
  try {
    // Live numbers: the browser's copy of the last answer (max-age=10) would hide the minute just past.
    const data = await getJson('/api/v1/status?recent=20', { cache: 'no-store' });
    renderTotals(data.totals);
    renderHealth(data);
    renderTraffic(data.traffic.minutes);
    renderUpstreams(data.upstreams);
    renderEvents(data.events);
    renderRecent(data.recent);
    document.getElementById('generated-at').textContent = `as of ${formatTime(data.generatedAt)}`;
    return true;
  } catch (err) {
    document.getElementById('generated-at').textContent = `status unavailable: ${err.message}`;
    return false;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('mirror-base').textContent = window.location.origin;
  const form = document.getElementById('search-form');
  const input = document.getElementById('search-prefix');
  const ignoreCase = document.getElementById('search-ignore-case');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const prefix = input.value;
    if (prefix === '') return;
    // Shareable searches: the prefix lives in the fragment, which never reaches the server or a CDN.
    window.history.replaceState(null, '', `#${new URLSearchParams(ignoreCase.checked ? { q: prefix, i: '1' } : { q: prefix })}`);
    search(prefix, ignoreCase.checked);
  });
  document.getElementById('search-more').addEventListener('click', (event) => {
    const after = event.currentTarget.dataset.after;
    if (after) search(lastSearch.prefix, lastSearch.ignoreCase, after);
  });
  const searchFromAddress = () => {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const fromHash = params.get('q');
    const fold = params.get('i') === '1';
    if (fromHash && (fromHash !== input.value || fold !== ignoreCase.checked)) {
      input.value = fromHash;
      ignoreCase.checked = fold;
      search(fromHash, fold);
    }
  };
  // A pasted or edited #q=… link changes only the fragment: no reload, so listen for it.
  window.addEventListener('hashchange', searchFromAddress);
  searchFromAddress();
  refreshStatus();
});

/**
 * The chart and health move on their own; a minute is the chart's resolution, so every 30 s. After a failed load
 * (the origin restarting, a proxy hiccup) the page tries again within seconds instead of showing it for 30.
 */
async function refreshStatus() {
  const ok = await loadStatus();
  window.setTimeout(refreshStatus, ok ? 30_000 : 3_000);
}
