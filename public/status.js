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

async function getJson(path) {
  const response = await fetch(path, { headers: { accept: 'application/json' } });
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

function renderTotals(totals) {
  document.getElementById('total-blobs').textContent = numberFormat.format(totals.blobs);
  const bytes = document.getElementById('total-bytes');
  bytes.textContent = formatBytes(totals.bytes);
  bytes.title = `${numberFormat.format(totals.bytes)} bytes`;
  document.getElementById('total-names').textContent = numberFormat.format(totals.names);
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

function renderResults(data) {
  const list = document.getElementById('search-results');
  const status = document.getElementById('search-status');
  list.replaceChildren(
    ...data.results.map((result) => {
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
    }),
  );
  const count = data.results.length;
  status.textContent =
    count === 0
      ? `No name starts with “${data.prefix}”.`
      : `${count} name${count === 1 ? '' : 's'}${data.truncated ? ` shown; more start with “${data.prefix}”` : ''}.`;
}

async function search(prefix) {
  const status = document.getElementById('search-status');
  status.textContent = 'Searching…';
  try {
    const data = await getJson(`/api/v1/search?${new URLSearchParams({ prefix, limit: '50' })}`);
    renderResults(data);
  } catch (err) {
    document.getElementById('search-results').replaceChildren();
    status.textContent = `Search failed: ${err.message}`;
  }
}

async function loadStatus() {
  try {
    const data = await getJson('/api/v1/status?recent=20');
    renderTotals(data.totals);
    renderRecent(data.recent);
    document.getElementById('generated-at').textContent = `as of ${formatTime(data.generatedAt)}`;
  } catch (err) {
    document.getElementById('generated-at').textContent = `status unavailable: ${err.message}`;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('mirror-base').textContent = window.location.origin;
  const form = document.getElementById('search-form');
  const input = document.getElementById('search-prefix');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const prefix = input.value;
    if (prefix === '') return;
    // Shareable searches: the prefix lives in the fragment, which never reaches the server or a CDN.
    window.history.replaceState(null, '', `#q=${encodeURIComponent(prefix)}`);
    search(prefix);
  });
  const searchFromAddress = () => {
    const fromHash = new URLSearchParams(window.location.hash.slice(1)).get('q');
    if (fromHash && fromHash !== input.value) {
      input.value = fromHash;
      search(fromHash);
    }
  };
  // A pasted or edited #q=… link changes only the fragment: no reload, so listen for it.
  window.addEventListener('hashchange', searchFromAddress);
  searchFromAddress();
  loadStatus();
});
