// Bootstrap for examsync's offline GraphiQL page (served at GET /graphql to browsers).
// Kept out of index.html so the page's Content-Security-Policy can say script-src 'self'.
(function () {
  'use strict';

  var PLACEHOLDER = '<paste a token>';
  var DEFAULT_HEADERS = '{\n  "Authorization": "Bearer ' + PLACEHOLDER + '"\n}';
  var DEFAULT_QUERY =
    '# examsync GraphQL API.\n' +
    '# Put a token in Headers (below), then run: Ctrl-Enter.\n' +
    '\n' +
    '{\n' +
    '  packages {\n' +
    '    id\n' +
    '    name\n' +
    '    versionHash\n' +
    '  }\n' +
    '}\n';

  var base = GraphiQL.createFetcher({ url: '/graphql' });

  // GraphiQL passes the parsed headers editor as opts.headers. While the
  // Authorization header still holds the placeholder, leave it out, so schema
  // introspection (anonymous) works before a token has been pasted.
  function fetcher(params, opts) {
    if (opts && opts.headers && typeof opts.headers === 'object') {
      var headers = {};
      Object.keys(opts.headers).forEach(function (name) {
        var value = opts.headers[name];
        if (name.toLowerCase() === 'authorization' &&
            typeof value === 'string' && value.indexOf(PLACEHOLDER) !== -1) {
          return;
        }
        headers[name] = value;
      });
      opts = Object.assign({}, opts, { headers: headers });
    }
    return base(params, opts);
  }

  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: DEFAULT_QUERY,
      defaultHeaders: DEFAULT_HEADERS,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      defaultEditorToolsVisibility: 'headers',
    })
  );
})();
