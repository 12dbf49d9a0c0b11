// Browser check of examsync's offline GraphiQL page.
//
//   EXAMSYNC_URL=http://127.0.0.1:8080 EXAMSYNC_TOKEN=<access token> node graphiql.mjs
//
// Opens ${EXAMSYNC_URL}/graphql as a normal page navigation (Accept: text/html), records every
// request the page makes, runs `{ packages { id name versionHash } }` with the token in the
// headers editor, and checks that the result holds "packages" and that no request went to a host
// other than EXAMSYNC_URL's. Prints one JSON summary line; exit 0 on success, 1 on failure.
//
// Optional env: CHROMIUM (default /usr/bin/chromium), SCREENSHOT (path of a PNG to write),
// TIMEOUT_MS (default 30000).

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const QUERY = '{ packages { id name versionHash } }';
const baseUrl = process.env.EXAMSYNC_URL;
const token = process.env.EXAMSYNC_TOKEN ?? '';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const screenshot = process.env.SCREENSHOT || '';
const timeout = Number(process.env.TIMEOUT_MS || 30000);

const summary = {
  ok: false,
  reason: null,
  url: null,
  pageStatus: null,
  pageContentType: null,
  requests: [],
  foreignRequests: [],
  failedRequests: [],
  graphqlPosts: 0,
  authorizationSent: false,
  consoleErrors: [],
  defaultHeaders: null,
  result: null,
};

function finish(code) {
  console.log(JSON.stringify(summary));
  process.exit(code);
}

if (!baseUrl) {
  summary.reason = 'EXAMSYNC_URL is not set (e.g. http://127.0.0.1:8080)';
  finish(1);
}

let origin;
try {
  origin = new URL(baseUrl);
} catch (e) {
  summary.reason = `EXAMSYNC_URL is not a URL: ${e.message}`;
  finish(1);
}
summary.url = new URL('/graphql', origin).href;

const userDataDir = mkdtempSync(join(tmpdir(), 'examsync-chromium-'));
let context;
let code = 1;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
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
    viewport: { width: 1400, height: 900 },
    timeout,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeout);

  // Every request the page (and its workers) makes, by URL; anything not on EXAMSYNC_URL's
  // host counts as foreign. data: and blob: URLs make no network request.
  context.on('request', (req) => {
    const url = req.url();
    summary.requests.push(`${req.method()} ${url}`);
    if (url.startsWith('data:') || url.startsWith('blob:')) return;
    let host;
    try {
      host = new URL(url).host;
    } catch {
      host = '?';
    }
    if (host !== origin.host) summary.foreignRequests.push(url);
    if (req.method() === 'POST' && new URL(url).pathname === '/graphql') {
      summary.graphqlPosts += 1;
      const auth = req.headers()['authorization'];
      if (token && auth === `Bearer ${token}`) summary.authorizationSent = true;
    }
  });
  context.on('requestfailed', (req) => {
    summary.failedRequests.push(`${req.method()} ${req.url()}: ${req.failure()?.errorText}`);
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error') summary.consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => summary.consoleErrors.push(`pageerror: ${err.message}`));

  const response = await page.goto(summary.url, { waitUntil: 'load' });
  summary.pageStatus = response?.status() ?? null;
  summary.pageContentType = response?.headers()['content-type'] ?? null;
  if (!summary.pageContentType?.includes('text/html')) {
    throw new Error(`GET /graphql did not answer HTML (status ${summary.pageStatus}, ${summary.pageContentType})`);
  }

  // GraphiQL 3 editors are CodeMirror 5 instances.
  await page.waitForSelector('.graphiql-query-editor .CodeMirror');
  await page.evaluate((q) => {
    document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(q);
  }, QUERY);

  // The headers editor lives in the editor tools pane (section.graphiql-editor-tool, labelled
  // with the active tab); open its "Headers" tab unless it is already the one shown.
  const activeTool = () =>
    page.evaluate(() => document.querySelector('section.graphiql-editor-tool')?.getAttribute('aria-label') ?? null);
  if ((await activeTool()) !== 'Headers') {
    await page.locator('.graphiql-editor-tools button', { hasText: 'Headers' }).click();
    await page.waitForFunction(
      () => document.querySelector('section.graphiql-editor-tool')?.getAttribute('aria-label') === 'Headers',
    );
  }
  const visibleHeadersEditor = 'section.graphiql-editor-tool[aria-label="Headers"] .graphiql-editor:not(.hidden) .CodeMirror';
  await page.waitForSelector(visibleHeadersEditor, { state: 'visible' });
  summary.defaultHeaders = await page.evaluate((sel) => document.querySelector(sel).CodeMirror.getValue(), visibleHeadersEditor);
  const headersText = JSON.stringify({ Authorization: `Bearer ${token}` });
  await page.evaluate(
    ([sel, text]) => document.querySelector(sel).CodeMirror.setValue(text),
    [visibleHeadersEditor, headersText],
  );

  const postsBefore = summary.graphqlPosts;
  await page.locator('button.graphiql-execute-button').click();

  // The result pane is a read-only CodeMirror too: wait for an answer (data or errors).
  await page.waitForFunction(
    () => {
      const cm = document.querySelector('.graphiql-response .CodeMirror');
      const text = cm ? cm.CodeMirror.getValue() : '';
      return text.includes('"packages"') || text.includes('"errors"');
    },
    null,
    { polling: 100 },
  );
  summary.result = await page.evaluate(
    () => document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue(),
  );
  // Let any late request (e.g. a font or an analytics beacon) show up before judging.
  await page.waitForLoadState('networkidle').catch(() => {});

  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });

  const reasons = [];
  let data = null;
  try {
    data = JSON.parse(summary.result)?.data ?? null;
  } catch {
    // reported below
  }
  if (!summary.result.includes('"packages"') || !Array.isArray(data?.packages)) {
    reasons.push('result has no "packages" list in data');
  }
  if (summary.foreignRequests.length) {
    reasons.push(`requests to other hosts: ${summary.foreignRequests.join(', ')}`);
  }
  const cspViolations = summary.consoleErrors.filter((m) => m.includes('Content Security Policy'));
  if (cspViolations.length) reasons.push(`Content-Security-Policy violations: ${cspViolations.join(' | ')}`);
  if (summary.graphqlPosts <= postsBefore) reasons.push('the run button sent no POST /graphql');
  if (token && !summary.authorizationSent) {
    reasons.push('no POST /graphql carried the Authorization header from the headers editor');
  }
  if (reasons.length) {
    summary.reason = reasons.join('; ');
  } else {
    summary.ok = true;
    code = 0;
  }
} catch (e) {
  summary.reason = `${e.name}: ${e.message.split('\n')[0]}`;
} finally {
  await context?.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
finish(code);
