// Browser check of RFC 9842 dictionary transport: headless Chromium fetches version N of a
// package, then version N+1, and must get N+1 as `Content-Encoding: dcz` (compressed with N
// as the dictionary) and read bytes identical to the identity download.
//
//   EXAMSYNC_URL=http://localhost:8080 EXAMSYNC_TOKEN=<token> OLD_ID=<uuid> NEW_ID=<uuid> node dcz.mjs
//
// The page is the server's own origin (`/livez`), so the fetches are same-origin; Chromium
// treats http://localhost as a secure context, which dictionaries need. Prints one JSON
// summary line; exit 0 on success, 1 on failure.
//
// Optional env: CHROMIUM (default /usr/bin/chromium), TIMEOUT_MS (default 30000).

import { chromium } from 'playwright-core';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const baseUrl = process.env.EXAMSYNC_URL;
const token = process.env.EXAMSYNC_TOKEN ?? '';
const oldId = process.env.OLD_ID;
const newId = process.env.NEW_ID;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const timeout = Number(process.env.TIMEOUT_MS || 30000);

const summary = { ok: false, reason: null, responses: [], identitySha256: null, pageSha256: null };

function finish(code) {
  console.log(JSON.stringify(summary));
  process.exit(code);
}

if (!baseUrl || !oldId || !newId) {
  summary.reason = 'EXAMSYNC_URL, OLD_ID and NEW_ID are required';
  finish(1);
}

const path = (id) => `/api/v1/tests/packages/${id}`;

// The identity bytes, fetched outside the browser (Node's fetch, no compression asked).
const identity = await fetch(new URL(path(newId), baseUrl), {
  headers: { authorization: `Bearer ${token}`, 'accept-encoding': 'identity' },
});
const identityBytes = Buffer.from(await identity.arrayBuffer());
summary.identitySha256 = createHash('sha256').update(identityBytes).digest('hex');

const userDataDir = mkdtempSync(join(tmpdir(), 'examsync-chromium-'));
let context;
let code = 1;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('response', async (response) => {
    if (!response.url().includes('/api/v1/tests/packages/')) return;
    const request = await response.request().allHeaders();
    const headers = await response.allHeaders();
    summary.responses.push({
      url: new URL(response.url()).pathname,
      status: response.status(),
      contentEncoding: headers['content-encoding'] ?? null,
      useAsDictionary: headers['use-as-dictionary'] ?? null,
      availableDictionary: request['available-dictionary'] ?? null,
      acceptEncoding: request['accept-encoding'] ?? null,
    });
  });
  await page.goto(new URL('/livez', baseUrl).href, { timeout });
  const result = await page.evaluate(async ({ oldPath, newPath, token }) => {
    const get = async (p) => {
      const r = await fetch(p, { headers: { Authorization: `Bearer ${token}` } });
      return new Uint8Array(await r.arrayBuffer());
    };
    const hex = async (bytes) =>
      Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)))
        .map((b) => b.toString(16).padStart(2, '0')).join('');
    await get(oldPath);
    // Chromium stores the dictionary after the response completes: give it a moment.
    await new Promise((r) => setTimeout(r, 500));
    const bytes = await get(newPath);
    return { sha256: await hex(bytes), length: bytes.length };
  }, { oldPath: path(oldId), newPath: path(newId), token });
  summary.pageSha256 = result.sha256;
  summary.pageLength = result.length;
  await new Promise((r) => setTimeout(r, 200));
  const second = summary.responses.find((r) => r.url === path(newId));
  if (!second) {
    summary.reason = 'no response recorded for version N+1';
  } else if (second.contentEncoding !== 'dcz') {
    summary.reason = `version N+1 came as ${second.contentEncoding ?? 'identity'}, not dcz`;
  } else if (result.sha256 !== summary.identitySha256) {
    summary.reason = 'the page read bytes that differ from the identity download';
  } else {
    summary.ok = true;
    code = 0;
  }
} catch (e) {
  summary.reason = `error: ${e.message}`;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
finish(code);
