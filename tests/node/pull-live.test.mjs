// Runs the JavaScript pull-merge recipe of docs/mobile/offline.md (11.4) against a live server:
// tests/api/changes.rs::javascript_pull_recipe_restores_from_a_live_server starts one, syncs
// answers, and runs this file with EXAMSYNC_URL, EXAMSYNC_TOKEN and EXAMSYNC_EXPECT (the
// answers the server holds). Without EXAMSYNC_URL (a plain `node --test tests/node/`) it skips.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const doc = readFileSync(path.join(here, '..', '..', 'docs', 'mobile', 'offline.md'), 'utf8');
const base = process.env.EXAMSYNC_URL;

/** The body of the js block whose first line is `// recipe: pull-merge.js`. */
function recipe() {
  const match = /```js\n(\/\/ recipe: pull-merge\.js\n[\s\S]*?)\n```/.exec(doc);
  assert.ok(match, 'no pull-merge.js block in offline.md');
  return match[1];
}

test('the pull-merge recipe restores from a live server in pages of one', { skip: !base }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'examsync-pull-'));
  try {
    const file = path.join(dir, 'pull-merge.mjs');
    writeFileSync(file, `${recipe()}\n\nexport default { newStore, pullAll, shownAnswer };\n`);
    const { newStore, pullAll, shownAnswer } = (await import(pathToFileURL(file).href)).default;
    const token = process.env.EXAMSYNC_TOKEN;
    const expected = JSON.parse(process.env.EXAMSYNC_EXPECT);
    let pulls = 0;
    const fetchPage = async (since) => {
      pulls += 1;
      const url = new URL(`${base}/api/v1/sync/changes`);
      if (since) url.searchParams.set('since', since);
      url.searchParams.set('limit', '1');
      const res = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
      return { status: res.status, body: res.status === 200 ? await res.json() : null };
    };
    const store = await pullAll(newStore(), fetchPage);
    assert.ok(pulls > 1, 'pages of one take several pulls');
    assert.equal(store.answers.size, Object.keys(expected).length);
    for (const [key, value] of Object.entries(expected)) {
      const got = store.answers.get(key);
      assert.ok(got, `missing ${key}`);
      assert.equal(got.selected_option_index, value.selected_option_index, key);
      assert.equal(got.answered_at, value.answered_at, key);
    }
    // Nothing new: one more pull, nothing changes.
    const before = store.cursor;
    await pullAll(store, fetchPage);
    assert.equal(store.cursor, before);
    // An expired cursor restores from scratch.
    store.cursor = 'MS4w';
    const restored = await pullAll(store, async (since) => {
      if (since === 'MS4w') return { status: 410, body: null };
      return fetchPage(since);
    });
    assert.equal(restored.answers.size, Object.keys(expected).length);
    // An unsent later change wins on screen over the pulled answer.
    const [key, pulled] = [...store.answers.entries()][0];
    const later = new Date(Date.parse(pulled.answered_at) + 1000).toISOString();
    const shown = shownAnswer(pulled, [{ selected_option_index: 0, answered_at: later }]);
    assert.equal(shown.from_queue, true, key);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
