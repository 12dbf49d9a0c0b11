// The SDL drift check with an independent printer: graphql-js builds a schema from the
// live server's introspection (`buildClientSchema`) and from the committed
// `schema.graphql` (`buildSchema`), and prints both (`printSchema`, types sorted). Any
// difference (types, fields, nullability, defaults, descriptions, `@specifiedBy`) fails.
// Env: EXAMSYNC_URL, EXAMSYNC_SDL (path of schema.graphql). Prints the live SDL.
import { readFileSync } from 'node:fs';
import {
  buildClientSchema,
  buildSchema,
  getIntrospectionQuery,
  lexicographicSortSchema,
  printSchema,
} from 'graphql';

const response = await fetch(`${process.env.EXAMSYNC_URL}/graphql`, {
  method: 'POST',
  headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json' },
  body: JSON.stringify({
    query: getIntrospectionQuery({ descriptions: true, specifiedByUrl: true, directiveIsRepeatable: true }),
  }),
});
const result = await response.json();
if (response.status !== 200 || result.errors) {
  console.error(`introspection failed: ${response.status} ${JSON.stringify(result)}`);
  process.exit(2);
}
const print = (schema) => printSchema(lexicographicSortSchema(schema));
const live = print(buildClientSchema(result.data));
const committed = print(buildSchema(readFileSync(process.env.EXAMSYNC_SDL, 'utf8')));
console.log(live);
if (live !== committed) {
  const a = live.split('\n');
  const b = committed.split('\n');
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) {
      console.error(`first difference at line ${i + 1}:\n  served:    ${a[i]}\n  committed: ${b[i]}`);
      break;
    }
  }
  process.exit(1);
}
