// Apollo's own JavaScript client against a server running trusted documents: the
// operations in operations/*.graphql are in the manifest the test generated with
// @apollo/generate-persisted-query-manifest; the client sends only their ids
// (@apollo/persisted-query-lists + PersistedQueryLink, queries over GET), and an
// unlisted id or text is refused with the documented codes.
// Env: EXAMSYNC_URL, EXAMSYNC_TOKEN, EXAMSYNC_MANIFEST. Exit 0 on success.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { generatePersistedQueryIdsFromManifest } from '@apollo/persisted-query-lists';

const uri = `${process.env.EXAMSYNC_URL}/graphql`;
const headers = { authorization: `Bearer ${process.env.EXAMSYNC_TOKEN}` };
const manifest = JSON.parse(readFileSync(process.env.EXAMSYNC_MANIFEST, 'utf8'));
const document = (name) => gql(readFileSync(new URL(`operations/${name}.graphql`, import.meta.url), 'utf8'));

// Every request the client makes, to check what went over the wire.
const sent = [];
const recordingFetch = (input, init = {}) => {
  sent.push({ url: String(input), method: init.method ?? 'GET', body: init.body });
  return fetch(input, init);
};

const client = (loadManifest) =>
  new ApolloClient({
    cache: new InMemoryCache(),
    link: ApolloLink.from([
      new PersistedQueryLink({
        ...generatePersistedQueryIdsFromManifest({ loadManifest }),
        useGETForHashedQueries: true,
      }),
      new HttpLink({ uri, headers, fetch: recordingFetch }),
    ]),
  });

const codes = (error) => (error?.errors ?? []).map((e) => e.extensions?.code);

const trusted = client(() => manifest);

// Queries run by id over GET, with no query text.
const status = await trusted.query({ query: document('status'), fetchPolicy: 'network-only' });
assert.equal(status.data.syncStatus.ackedCount, 0);
const packages = await trusted.query({ query: document('packages'), fetchPolicy: 'network-only' });
assert.ok(packages.data.packages.length >= 1, JSON.stringify(packages.data));
assert.ok(packages.data.packages[0].questions.length >= 1);
for (const request of sent) {
  assert.equal(request.method, 'GET', JSON.stringify(request));
  const url = new URL(request.url);
  assert.equal(url.searchParams.get('query'), null, 'no query text is sent');
  assert.match(url.searchParams.get('extensions'), /sha256Hash/);
}

// A mutation runs by id over POST; the resolver's error comes back as a GraphQL error.
sent.length = 0;
const submitted = await trusted.mutate({
  mutation: document('submit'),
  variables: { id: '00000000-0000-0000-0000-000000000000' },
  errorPolicy: 'all',
});
assert.deepEqual(codes(submitted.error), ['NOT_FOUND']);
assert.equal(sent.length, 1);
assert.equal(sent[0].method, 'POST');
assert.equal(JSON.parse(sent[0].body).query, undefined, 'no query text is sent');

// An app built with another manifest: its id is not in the server's list.
const stale = client(() => ({
  operations: manifest.operations.map((op) => ({ ...op, id: 'f'.repeat(64) })),
}));
const refused = await stale.query({ query: document('status'), errorPolicy: 'all', fetchPolicy: 'network-only' });
assert.deepEqual(codes(refused.error), ['PERSISTED_QUERY_NOT_IN_LIST']);

// Plain Apollo Client sending text that is not listed.
const plain = new ApolloClient({ cache: new InMemoryCache(), link: new HttpLink({ uri, headers }) });
const unlisted = await plain.query({
  query: gql`query Sessions { mySessions { id } }`,
  errorPolicy: 'all',
});
assert.deepEqual(codes(unlisted.error), ['QUERY_NOT_IN_SAFELIST']);

console.log(JSON.stringify({ ok: true, operations: manifest.operations.length }));
