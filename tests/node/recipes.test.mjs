// Runs the JavaScript hash recipes published in docs/mobile/offline.md against the repository's
// test vectors (vectors/), so the guide the mobile teams copy from cannot drift from the API.
//
//   cd <repo> && node --test tests/node/
//

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');
const docPath = path.join(repoRoot, 'docs', 'mobile', 'offline.md');
const vectorsDir = path.join(repoRoot, 'vectors');

const payloadVectors = JSON.parse(readFileSync(path.join(vectorsDir, 'payload_hash.json'), 'utf8'));
const versionVector = JSON.parse(readFileSync(path.join(vectorsDir, 'version_hash.json'), 'utf8'));
const deltaVector = JSON.parse(readFileSync(path.join(vectorsDir, 'delta.json'), 'utf8'));
const mediaVector = JSON.parse(readFileSync(path.join(vectorsDir, 'media.json'), 'utf8'));

/** Every fenced code block of a Markdown document: { info, body }. */
function fencedBlocks(markdown) {
  const blocks = [];
  const lines = markdown.split(/\r?\n/);
  let open = null; // { fence, info, lines }
  for (const line of lines) {
    if (open === null) {
      const m = /^ {0,3}(`{3,}|~{3,})\s*([^`]*)$/.exec(line);
      if (m) open = { fence: m[1], info: m[2].trim(), lines: [] };
    } else if (new RegExp(`^ {0,3}${open.fence[0]}{${open.fence.length},}\\s*$`).test(line)) {
      blocks.push({ info: open.info, body: open.lines.join('\n') });
      open = null;
    } else {
      open.lines.push(line);
    }
  }
  assert.equal(open, null, 'offline.md has an unterminated code block');
  return blocks;
}

/** The one block whose first line is exactly `firstLine`. */
function recipeBlock(markdown, firstLine) {
  const found = fencedBlocks(markdown).filter((b) => b.body.split('\n')[0].trim() === firstLine);
  assert.equal(found.length, 1, `expected exactly one code block starting with "${firstLine}", found ${found.length}`);
  return found[0];
}

const doc = readFileSync(docPath, 'utf8');
let workDir;
let payloadRecipe;
let versionRecipe;
let deltaRecipe;
let mediaRecipe;

/** Evaluate a recipe block as an ES module and collect the named functions (undefined if absent). */
async function loadRecipe(firstLine, fileName, names) {
  const block = recipeBlock(doc, firstLine);
  const exportsExpr = names.map((n) => `${n}: typeof ${n} === 'undefined' ? undefined : ${n}`).join(', ');
  const file = path.join(workDir, fileName);
  writeFileSync(file, `${block.body}\n\nexport default { ${exportsExpr} };\n`);
  const mod = await import(pathToFileURL(file).href);
  return { block, fns: mod.default };
}

before(async () => {
  workDir = mkdtempSync(path.join(tmpdir(), 'examsync-recipes-'));
  payloadRecipe = await loadRecipe('// recipe: payload-hash.js', 'payload-hash.mjs', ['payloadHash', 'canonicalPayload']);
  versionRecipe = await loadRecipe('// recipe: version-hash.js', 'version-hash.mjs', ['versionHash', 'canonicalSnapshotArray']);
  // The delta recipe builds on the version-hash one (versionHash), as the guide says.
  const deltaBlock = recipeBlock(doc, '// recipe: apply-delta.js');
  const versionBlock = recipeBlock(doc, '// recipe: version-hash.js');
  const deltaFile = path.join(workDir, 'apply-delta.mjs');
  writeFileSync(deltaFile, `${versionBlock.body}\n\n${deltaBlock.body}\n\nexport default { applyDelta, versionHash };\n`);
  deltaRecipe = { block: deltaBlock, fns: (await import(pathToFileURL(deltaFile).href)).default };
  // The media recipe, with versionHash (11.2) to verify the package it reads.
  const mediaBlock = recipeBlock(doc, '// recipe: media.js');
  const mediaFile = path.join(workDir, 'media.mjs');
  writeFileSync(
    mediaFile,
    `${versionBlock.body}\n\n${mediaBlock.body}\n\nexport default { mediaOf, missingMedia, verifyObject, readMediaBundle, versionHash };\n`,
  );
  mediaRecipe = { block: mediaBlock, fns: (await import(pathToFileURL(mediaFile).href)).default };
});

after(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

describe('docs/mobile/offline.md recipe blocks', () => {
  test('are self-contained: no imports, no require, JavaScript fence', () => {
    for (const line of ['// recipe: payload-hash.js', '// recipe: version-hash.js']) {
      const block = recipeBlock(doc, line);
      assert.match(block.info, /^(js|javascript|mjs)\b/i, `${line}: fence should be tagged js`);
      assert.doesNotMatch(block.body, /^\s*import\s/m, `${line}: must not import`);
      assert.doesNotMatch(block.body, /\brequire\s*\(/, `${line}: must not require`);
    }
  });

  test('define the documented functions', () => {
    assert.equal(typeof payloadRecipe.fns.payloadHash, 'function', 'payloadHash');
    assert.equal(payloadRecipe.fns.payloadHash.constructor.name, 'AsyncFunction', 'payloadHash is async');
    assert.equal(typeof payloadRecipe.fns.canonicalPayload, 'function', 'canonicalPayload');
    assert.equal(typeof versionRecipe.fns.versionHash, 'function', 'versionHash');
    assert.equal(versionRecipe.fns.versionHash.constructor.name, 'AsyncFunction', 'versionHash is async');
    assert.equal(typeof versionRecipe.fns.canonicalSnapshotArray, 'function', 'canonicalSnapshotArray');
  });
});

describe('payload_hash recipe (payload_hash.json)', () => {
  assert.ok(payloadVectors.vectors.length > 0, 'no payload vectors');
  for (const [i, v] of payloadVectors.vectors.entries()) {
    const label = `#${i} ${v.question_id} / ${v.selected_option_index} / ${v.answered_at}`;

    test(`${label}: canonical payload`, () => {
      const { canonicalPayload } = payloadRecipe.fns;
      assert.equal(canonicalPayload(v.question_id, v.selected_option_index, v.answered_at), v.canonical);
    });

    test(`${label}: payload_hash from a string`, async () => {
      const h = await payloadRecipe.fns.payloadHash(v.question_id, v.selected_option_index, v.answered_at);
      assert.match(h, /^[0-9a-f]{64}$/, 'lowercase hex SHA-256');
      assert.equal(h, v.payload_hash);
    });

    test(`${label}: payload_hash from a Date`, async () => {
      const h = await payloadRecipe.fns.payloadHash(v.question_id, v.selected_option_index, new Date(v.answered_at));
      assert.equal(h, v.payload_hash);
    });

    test(`${label}: the canonical answered_at is a fixed point`, async () => {
      const canonicalAt = JSON.parse(v.canonical).answered_at;
      const h = await payloadRecipe.fns.payloadHash(v.question_id, v.selected_option_index, canonicalAt);
      assert.equal(h, v.payload_hash);
    });

    test(`${label}: differs from the legacy form`, async () => {
      const h = await payloadRecipe.fns.payloadHash(v.question_id, v.selected_option_index, v.answered_at);
      assert.notEqual(h, v.legacy_payload_hash);
    });
  }

  test('fraction digits past milliseconds are truncated, never rounded', async () => {
    const { canonicalPayload } = payloadRecipe.fns;
    const q = '0b7f3c1e-9a4d-4c2b-8e6f-1d2a3b4c5d6e';
    const at = (s) => JSON.parse(canonicalPayload(q, 1, s)).answered_at;
    assert.equal(at('2026-03-01T23:59:59.999999999Z'), '2026-03-01T23:59:59.999Z');
    assert.equal(at('2026-03-01T23:59:59.1239+01:00'), '2026-03-01T22:59:59.123Z');
    assert.equal(at('2026-03-01T23:59:59.1Z'), '2026-03-01T23:59:59.100Z');
  });

  test('rejects input that is not a timestamp or a UUID', async () => {
    const { payloadHash } = payloadRecipe.fns;
    await assert.rejects(payloadHash('550e8400-e29b-41d4-a716-446655440000', 2, 'yesterday'));
    await assert.rejects(payloadHash('550e8400-e29b-41d4-a716-446655440000', 2, '2026-01-28T10:00:00'));
    await assert.rejects(payloadHash('not-a-uuid', 2, '2026-01-28T10:00:00Z'));
  });
});

describe('version_hash recipe (version_hash.json)', () => {
  const v = versionVector;
  assert.ok(Array.isArray(v.questions) && v.questions.length > 0, 'no version vector questions');

  test('canonical string matches byte for byte', () => {
    assert.equal(versionRecipe.fns.canonicalSnapshotArray(v.questions), v.canonical);
  });

  test('version_hash matches', async () => {
    const h = await versionRecipe.fns.versionHash(v.questions);
    assert.match(h, /^[0-9a-f]{64}$/, 'lowercase hex SHA-256');
    assert.equal(h, v.version_hash);
  });

  test('input order does not matter, and the input array is not mutated', async () => {
    const reversed = [...v.questions].reverse();
    const snapshot = JSON.stringify(reversed);
    assert.equal(await versionRecipe.fns.versionHash(reversed), v.version_hash);
    assert.equal(JSON.stringify(reversed), snapshot);
  });

  test('key order inside the snapshot objects does not matter', async () => {
    const shuffled = v.questions.map((q) => Object.fromEntries(Object.entries(q).reverse()));
    assert.equal(await versionRecipe.fns.versionHash(shuffled), v.version_hash);
  });

  test('sorts by question_id compared as lowercase strings', () => {
    const upper = v.questions.map((q) => ({ ...q, question_id: q.question_id.toUpperCase() }));
    const s = versionRecipe.fns.canonicalSnapshotArray(upper);
    const ids = JSON.parse(s).map((q) => q.question_id.toLowerCase());
    assert.deepEqual(ids, [...ids].sort());
  });

  test('dropping a null changes the hash (nulls are part of the content)', async () => {
    const withoutNull = v.questions.map((q) => {
      const copy = { ...q };
      delete copy.option_e;
      return copy;
    });
    assert.notEqual(await versionRecipe.fns.versionHash(withoutNull), v.version_hash);
  });
});

describe('apply-delta recipe (delta.json)', () => {
  const v = deltaVector;

  test('is self-contained: no imports, no require, JavaScript fence', () => {
    assert.match(deltaRecipe.block.info, /^(js|javascript|mjs)\b/i);
    assert.doesNotMatch(deltaRecipe.block.body, /^\s*import\s/m);
    assert.doesNotMatch(deltaRecipe.block.body, /\brequire\s*\(/);
    assert.equal(deltaRecipe.fns.applyDelta.constructor.name, 'AsyncFunction');
  });

  test('the vector packages hash as stated', async () => {
    assert.equal(await deltaRecipe.fns.versionHash(v.held.questions), v.held.version_hash);
    assert.equal(await deltaRecipe.fns.versionHash(v.new.questions), v.new.version_hash);
  });

  const body = {
    version_hash: v.result_version_hash,
    from_version_hash: v.held.version_hash,
    upserted: v.delta.upserted,
    removed: v.delta.removed,
  };

  test('applying the delta gives the new package, verified', async () => {
    const result = await deltaRecipe.fns.applyDelta(v.held.questions, v.held.version_hash, body);
    assert.deepEqual(result, v.new.questions);
    assert.equal(await deltaRecipe.fns.versionHash(result), v.result_version_hash);
  });

  test('the held order and the hash letter case do not matter', async () => {
    const held = [...v.held.questions].reverse();
    const result = await deltaRecipe.fns.applyDelta(held, v.held.version_hash.toUpperCase(), body);
    assert.deepEqual(result, v.new.questions);
  });

  test('refuses a delta from another version', async () => {
    await assert.rejects(deltaRecipe.fns.applyDelta(v.new.questions, v.new.version_hash, body));
  });

  test('refuses a result that does not verify', async () => {
    const tampered = { ...body, upserted: body.upserted.map((q, i) => (i === 0 ? { ...q, stem: q.stem + ' ' } : q)) };
    await assert.rejects(deltaRecipe.fns.applyDelta(v.held.questions, v.held.version_hash, tampered), /does not hash/);
    const dropped = { ...body, removed: [] };
    await assert.rejects(deltaRecipe.fns.applyDelta(v.held.questions, v.held.version_hash, dropped), /does not hash/);
  });
});

describe('media recipe (media.json)', () => {
  const v = mediaVector;
  const bundle = () => new Uint8Array(Buffer.from(v.bundle.base64, 'base64'));

  test('is self-contained: no imports, no require, JavaScript fence', () => {
    assert.match(mediaRecipe.block.info, /^(js|javascript|mjs)\b/i);
    assert.doesNotMatch(mediaRecipe.block.body, /^\s*import\s/m);
    assert.doesNotMatch(mediaRecipe.block.body, /\brequire\s*\(/);
  });

  test('the package with media verifies by version_hash', async () => {
    assert.equal(await mediaRecipe.fns.versionHash(v.questions), v.version_hash);
    // Dropping a question's media changes the hash: the references are content.
    const stripped = v.questions.map(({ media, ...rest }) => rest);
    assert.notEqual(await mediaRecipe.fns.versionHash(stripped), v.version_hash);
  });

  test('the objects a package needs are its bundle entries', () => {
    assert.deepEqual(mediaRecipe.fns.mediaOf(v.questions), v.bundle.entries.map((e) => e.name));
    const held = new Set([v.bundle.entries[0].name]);
    assert.deepEqual(
      mediaRecipe.fns.missingMedia(v.questions, held),
      v.bundle.entries.slice(1).map((e) => e.name),
    );
  });

  test('every object verifies by its hash, and a changed byte does not', async () => {
    for (const o of v.objects) {
      const bytes = new Uint8Array(Buffer.from(o.base64, 'base64'));
      assert.equal(bytes.length, o.bytes);
      assert.ok(await mediaRecipe.fns.verifyObject(bytes, o.sha256), o.sha256);
      bytes[bytes.length - 1] ^= 1;
      assert.ok(!(await mediaRecipe.fns.verifyObject(bytes, o.sha256)));
    }
  });

  test('the bundle reads back into its entries, each verified', async () => {
    const zip = bundle();
    assert.equal(zip.length, v.bundle.bytes);
    const entries = await mediaRecipe.fns.readMediaBundle(zip);
    assert.deepEqual(entries.map((e) => e.sha256), v.bundle.entries.map((e) => e.name));
    for (const e of entries) {
      const object = v.objects.find((o) => o.sha256 === e.sha256);
      assert.deepEqual(Buffer.from(e.bytes), Buffer.from(object.base64, 'base64'));
    }
  });

  test('a tampered bundle is refused', async () => {
    const zip = bundle();
    // The first entry's bytes start after its 30-byte header and 64-byte name.
    zip[30 + 64 + 5] ^= 0xff;
    await assert.rejects(mediaRecipe.fns.readMediaBundle(zip), /do not match/);
    await assert.rejects(mediaRecipe.fns.readMediaBundle(new Uint8Array(10)), /not a media bundle/);
  });

  test('an empty bundle holds no entries', async () => {
    const empty = new Uint8Array(22);
    empty.set([0x50, 0x4b, 0x05, 0x06]);
    assert.deepEqual(await mediaRecipe.fns.readMediaBundle(empty), []);
  });
});

describe('pull-merge recipe (pull_merge.json)', () => {
  const v = JSON.parse(readFileSync(path.join(vectorsDir, 'pull_merge.json'), 'utf8'));
  let fns;
  let block;
  before(async () => {
    ({ block, fns } = await loadRecipe('// recipe: pull-merge.js', 'pull-merge.mjs', [
      'newStore',
      'applyPage',
      'pullAll',
      'shownAnswer',
      'queuedFor',
    ]));
  });

  test('is self-contained: no imports, no require, JavaScript fence', () => {
    assert.match(block.info, /^(js|javascript|mjs)\b/i);
    assert.doesNotMatch(block.body, /^\s*import\s/m);
    assert.doesNotMatch(block.body, /\brequire\s*\(/);
    for (const name of ['newStore', 'applyPage', 'pullAll', 'shownAnswer', 'queuedFor']) {
      assert.equal(typeof fns[name], 'function', name);
    }
  });

  for (const c of v.merge) {
    test(`merge: ${c.name}`, () => {
      const shown = fns.shownAnswer(c.pulled, c.queued);
      if (c.shown === null) {
        assert.equal(shown, null);
      } else {
        assert.equal(shown.from_queue, c.shown.from_queue);
        assert.equal(shown.selected_option_index, c.shown.selected_option_index);
      }
    });
  }

  test('queued attempts match a pulled session by offline_session_id or session_id', () => {
    const session = { server_session_id: 's1', offline_session_id: 'o1' };
    const queue = [
      { offline_session_id: 'o1', session_id: null, question_id: 'q1' },
      { offline_session_id: null, session_id: 's1', question_id: 'q1' },
      { offline_session_id: 'o2', session_id: null, question_id: 'q1' },
      { offline_session_id: 'o1', session_id: null, question_id: 'q2' },
      { offline_session_id: null, session_id: null, question_id: 'q1' },
    ];
    assert.equal(fns.queuedFor(queue, session, 'q1').length, 2);
    assert.equal(fns.queuedFor(queue, { server_session_id: 's9', offline_session_id: null }, 'q1').length, 0);
  });

  test('a restore pulls until has_more is false and starts again on 410', async () => {
    const pages = [...v.pages];
    const store = fns.newStore();
    await fns.pullAll(store, async (since) => {
      const next = pages.shift();
      assert.ok(next, 'pulled past the last page');
      assert.equal(since, next.since, 'the cursor sent');
      return { status: next.status, body: next.body };
    });
    assert.equal(pages.length, 0, 'stopped before the last page');
    assert.equal(store.cursor, v.final.cursor);
    assert.deepEqual([...store.sessions.keys()].sort(), Object.keys(v.final.sessions).sort());
    for (const [id, expected] of Object.entries(v.final.sessions)) {
      for (const [field, value] of Object.entries(expected)) assert.equal(store.sessions.get(id)[field], value);
    }
    assert.deepEqual([...store.answers.keys()].sort(), Object.keys(v.final.answers).sort());
    for (const [key, expected] of Object.entries(v.final.answers)) {
      for (const [field, value] of Object.entries(expected)) assert.equal(store.answers.get(key)[field], value);
    }
  });

  test('a failed pull throws (the caller backs off) and keeps the store', async () => {
    const store = fns.newStore();
    store.cursor = 'kept';
    await assert.rejects(fns.pullAll(store, async () => ({ status: 503, body: null })));
    assert.equal(store.cursor, 'kept');
  });
});
