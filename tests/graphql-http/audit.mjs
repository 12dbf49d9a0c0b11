// The GraphQL-over-HTTP audit suite (npm graphql-http, `auditServer`) against a running
// examsync, with a bearer token. Exits 1 when any MUST or SHOULD audit is not ok, or when
// one of the MAY audits examsync promises (400 for parameters of the wrong JSON type)
// is not ok. Env: EXAMSYNC_URL (the server's base URL), EXAMSYNC_TOKEN.
import { auditServer } from 'graphql-http';

const url = `${process.env.EXAMSYNC_URL}/graphql`;
const token = process.env.EXAMSYNC_TOKEN;

const fetchFn = (input, init = {}) =>
  fetch(input, {
    ...init,
    headers: { ...(init.headers ?? {}), authorization: `Bearer ${token}` },
  });

const results = await auditServer({ url, fetchFn });
// The MAYs examsync promises: 400 for `query`, `operationName`, `variables` and
// `extensions` of the wrong JSON type, for a missing body and for invalid parameters.
const promised = (r) =>
  /^MAY use 400 status code (on .* \{(query|operationName|variables|extensions)\} parameter|when request body is missing|if parameters are invalid|on missing \{query\})/.test(
    r.name,
  );
const required = (r) => r.name.startsWith('MUST') || r.name.startsWith('SHOULD') || promised(r);
const counts = {};
for (const r of results) counts[r.status] = (counts[r.status] ?? 0) + 1;
const failed = results.filter((r) => required(r) && r.status !== 'ok');
for (const r of results.filter((r) => r.status !== 'ok')) {
  console.log(`${r.status} ${r.id} ${r.name}: ${r.reason}`);
}
console.log(
  JSON.stringify({ audits: results.length, ...counts, required: results.filter(required).length, failed: failed.length }),
);
process.exit(failed.length === 0 ? 0 : 1);
