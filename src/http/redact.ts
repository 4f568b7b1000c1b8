const SECRET_PARAM = /(^|&)([^=&]*(?:token|secret|password|passwd|auth|key)[^=&]*)=[^&]*/gi;
const TOKEN_SECRET = /fp_[A-Za-z0-9_-]{16,}/g;

/**
 * The API never reads credentials from the URL, but a misconfigured client may still put one
 * there, and the request log keeps URLs. Credential-looking query parameters and anything shaped
 * like a fastpull token secret are masked. URLs without a query (every download) return as is.
 */
export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  if (q === -1) return url;
  const query = url
    .slice(q + 1)
    .replace(SECRET_PARAM, '$1$2=[redacted]')
    .replace(TOKEN_SECRET, 'fp_[redacted]');
  return `${url.slice(0, q + 1)}${query}`;
}
