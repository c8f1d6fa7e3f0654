// An OpenID Provider that looks like one Microsoft Entra ID tenant, for the end-to-end tests —
// or, with --profile, like an Okta org, a PingOne environment or a plain OpenID Provider.
//
//   node server.mjs --port P --tenant GUID --keys KEYS_FILE --clients CLIENTS_FILE
//                   [--profile entra|okta|pingone|oidc]
//
// Profiles (the issuer's path, and what differs from Entra):
//   entra    /<tenant>/v2.0      oid, tid, login_hint claims; AADSTS errors; client_secret_post
//   okta     /oauth2/default     an Okta custom authorization server: email_verified, no tid/oid
//   pingone  /<tenant>/as        a PingOne environment (the tenant GUID is the environment ID)
//   oidc     /op                 a plain OP that allows only client_secret_basic
//
// It is the OpenID-certified `oidc-provider` package, configured the way the broker meets Entra:
// issuer http://127.0.0.1:<port>/<tenant>/v2.0 (discovery under it), ID tokens signed RS256 and
// carrying oid, tid, name, email, preferred_username; PKCE (S256) required; client_secret_post;
// RP-initiated logout. Accounts come from accounts.json beside this file; any non-empty password
// signs them in. Clients are read from CLIENTS_FILE on every lookup, so a test can add one while
// the OP runs. The signing key is read from KEYS_FILE, or made and written there when the file is
// missing (to rotate keys: replace the file and restart). Port 0 picks a free port.
//
// When listening it prints exactly one JSON line to stdout, {"issuer": "...", "port": N}; all else
// goes to stderr. SIGTERM and SIGINT stop it cleanly.

import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

// oidc-provider prints its notices with console.info: stdout carries only the ready line.
const ready = (line) => process.stdout.write(`${line}\n`);
console.log = console.error;
console.info = console.error;
const log = (...args) => console.error('[op]', ...args);

const { default: Provider, interactionPolicy } = await import('oidc-provider');

const HERE = dirname(fileURLToPath(import.meta.url));
const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAX_FORM_BYTES = 16 * 1024;

function fail(message) {
  log(message);
  process.exit(2);
}

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    tenant: { type: 'string' },
    keys: { type: 'string' },
    clients: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    profile: { type: 'string', default: 'entra' },
  },
  strict: true,
});
if (!args.tenant || !GUID.test(args.tenant)) fail('--tenant must be a GUID');
if (!args.keys) fail('--keys KEYS_FILE is required');
if (!args.clients) fail('--clients CLIENTS_FILE is required');
const requestedPort = Number.parseInt(args.port, 10);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  fail('--port must be 0..65535');
}
const TENANT = args.tenant.toLowerCase();
const PROFILE = args.profile;
const MOUNTS = {
  entra: `/${TENANT}/v2.0`,
  okta: '/oauth2/default',
  pingone: `/${TENANT}/as`,
  oidc: '/op',
};
if (!(PROFILE in MOUNTS)) fail('--profile must be entra, okta, pingone or oidc');
const ENTRA = PROFILE === 'entra';
const BASE = MOUNTS[PROFILE]; // the provider's mount path (and the issuer's path)
// The plain OP takes client_secret_basic only, as some providers do.
const AUTH_METHODS = PROFILE === 'oidc'
  ? ['client_secret_basic']
  : ['client_secret_post', 'client_secret_basic'];

// ---------------------------------------------------------------------------------------------
// Signing keys: a private JWKS file, made (one RSA-2048 key, kid = its RFC 7638 thumbprint) when
// missing.

function writeAtomically(file, text) {
  const temporary = `${file}.${process.pid}.tmp`;
  writeFileSync(temporary, text, { mode: 0o600 });
  renameSync(temporary, file);
}

function thumbprint(jwk) {
  const canonical = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  return createHash('sha256').update(canonical).digest('base64url');
}

function loadOrCreateKeys(file) {
  if (existsSync(file)) {
    const jwks = JSON.parse(readFileSync(file, 'utf8'));
    const keys = Array.isArray(jwks?.keys) ? jwks.keys : [];
    if (!keys.length || !keys.every((k) => k.kty === 'RSA' && k.d && typeof k.kid === 'string')) {
      fail(`${file} must hold {"keys": [private RSA JWKs with a kid]}`);
    }
    log(`signing with ${keys.map((k) => k.kid).join(', ')} from ${file}`);
    return keys.map((k) => ({ ...k, alg: 'RS256', use: 'sig' }));
  }
  // The JWK comes straight out of the generation job: exporting a KeyObject afterwards
  // (privateKey.export({ format: 'jwk' })) can deadlock Node 20 when a garbage collection
  // runs during the export and finalizes the finished generation job.
  const { privateKey: jwk } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { format: 'jwk' },
    privateKeyEncoding: { format: 'jwk' },
  });
  const key = { ...jwk, kid: thumbprint(jwk), alg: 'RS256', use: 'sig' };
  writeAtomically(file, `${JSON.stringify({ keys: [key] }, null, 2)}\n`);
  log(`made a new signing key ${key.kid} in ${file}`);
  return [key];
}

const signingKeys = loadOrCreateKeys(args.keys);

// ---------------------------------------------------------------------------------------------
// Accounts: accounts.json beside this file; the account ID (and sub) is the Entra object ID.

const ACCOUNTS = Object.entries(JSON.parse(readFileSync(join(HERE, 'accounts.json'), 'utf8')))
  .map(([login, account]) => ({ login, ...account }));

function accountByLogin(text) {
  const wanted = String(text ?? '').trim().toLowerCase();
  if (!wanted) return undefined;
  return ACCOUNTS.find((a) => [a.login, a.preferred_username, a.email]
    .some((name) => typeof name === 'string' && name.toLowerCase() === wanted));
}

async function findAccount(_ctx, sub) {
  const account = ACCOUNTS.find((a) => a.oid === sub);
  if (!account) return undefined;
  return {
    accountId: account.oid,
    // The provider keeps only the claims the granted scopes allow (see `claims` below).
    async claims() {
      if (!ENTRA) {
        // Okta, PingOne and plain OPs: sub is the user, and they vouch for the email.
        return {
          sub: account.oid,
          name: account.name,
          preferred_username: account.preferred_username,
          ...(account.email ? { email: account.email, email_verified: true } : undefined),
        };
      }
      return {
        sub: account.oid,
        oid: account.oid,
        tid: TENANT,
        ver: '2.0',
        name: account.name,
        preferred_username: account.preferred_username,
        ...(account.email ? { email: account.email } : undefined),
        // Entra's optional login_hint claim: opaque, handed back at sign-out as logout_hint.
        login_hint: Buffer.from(`${account.oid}:${TENANT}`).toString('base64url'),
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Storage: clients from CLIENTS_FILE (read on every lookup), everything else in memory.

function readClients() {
  let text;
  try {
    text = readFileSync(args.clients, 'utf8');
  } catch (error) {
    if (error.code === 'ENOENT') return [];
    throw error;
  }
  const list = JSON.parse(text);
  if (!Array.isArray(list)) throw new Error(`${args.clients} must hold a JSON array`);
  return list;
}

function clientMetadata(entry) {
  return {
    client_id: entry.client_id,
    client_secret: entry.client_secret,
    redirect_uris: entry.redirect_uris ?? [],
    post_logout_redirect_uris: entry.post_logout_redirect_uris ?? [],
    // A client whose public key was uploaded (the broker's certificate credential) signs in
    // with private_key_jwt against that key set instead of its secret.
    token_endpoint_auth_method: entry.jwks ? 'private_key_jwt' : AUTH_METHODS[0],
    ...(entry.jwks ? { jwks: entry.jwks, token_endpoint_auth_signing_alg: 'RS256' } : {}),
    // Entra lets every confidential client use client_credentials (the broker's connection
    // test asks for a token for the application itself); the others' web apps may not.
    grant_types: ENTRA ? ['authorization_code', 'client_credentials'] : ['authorization_code'],
    response_types: ['code'],
    application_type: 'web',
  };
}

function clientExists(clientId) {
  return typeof clientId === 'string' && readClients().some((c) => c.client_id === clientId);
}

class ClientFileAdapter {
  async find(id) {
    const entry = readClients().find((c) => c.client_id === id);
    return entry ? clientMetadata(entry) : undefined;
  }

  async upsert() { throw new Error('clients are managed in the clients file'); }

  async destroy() { throw new Error('clients are managed in the clients file'); }
}

const memory = new Map(); // "Model:id" -> { payload, expiresAt }
const byGrant = new Map(); // grantId -> Set of "Model:id"
const bySessionUid = new Map(); // session uid -> session id

function live(key) {
  const entry = memory.get(key);
  if (entry?.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    memory.delete(key);
    return undefined;
  }
  return entry?.payload;
}

class MemoryAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    memory.set(key, { payload, expiresAt });
    if (this.model === 'Session' && payload.uid) bySessionUid.set(payload.uid, id);
    if (payload.grantId) {
      if (!byGrant.has(payload.grantId)) byGrant.set(payload.grantId, new Set());
      byGrant.get(payload.grantId).add(key);
    }
  }

  async find(id) { return live(this.key(id)); }

  async findByUid(uid) {
    const id = bySessionUid.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode() { return undefined; }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    const key = this.key(id);
    const payload = live(key);
    memory.delete(key);
    if (payload?.uid && bySessionUid.get(payload.uid) === id) bySessionUid.delete(payload.uid);
  }

  async revokeByGrantId(grantId) {
    for (const key of byGrant.get(grantId) ?? []) memory.delete(key);
    byGrant.delete(grantId);
  }
}

setInterval(() => {
  for (const key of memory.keys()) live(key);
}, 60_000).unref();

function adapter(model) {
  return model === 'Client' ? new ClientFileAdapter() : new MemoryAdapter(model);
}

// ---------------------------------------------------------------------------------------------
// Pages: the login form (our own interactions), logout, errors. No external resources.

const escapeHtml = (value) => String(value ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>
body{font-family:"Segoe UI",system-ui,sans-serif;background:#f2f2f2;margin:0}
main{background:#fff;max-width:380px;margin:60px auto;padding:36px 44px;box-shadow:0 2px 6px rgba(0,0,0,.2)}
h1{font-size:1.5rem;font-weight:600;margin:0 0 16px}
label{display:block;margin:12px 0 4px;font-size:.9rem}
input{width:100%;box-sizing:border-box;padding:6px 2px;border:0;border-bottom:1px solid #666;font-size:1rem}
button{margin-top:24px;background:#0067b8;color:#fff;border:0;padding:8px 32px;font-size:1rem;cursor:pointer}
.error{color:#e81123;margin:8px 0}.muted{color:#666;font-size:.85rem}
</style>
</head>
<body><main>
<p class="muted">Contoso (test tenant ${escapeHtml(TENANT)})</p>
${body}
</main></body>
</html>`;
}

function loginPage({ uid, clientId, loginHint, error, login }) {
  const value = login ?? loginHint ?? '';
  return page('Sign in to your account', `<h1>Sign in</h1>
<p class="muted">to application ${escapeHtml(clientId)}</p>
${error ? `<p class="error" id="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form id="login-form" method="post" action="${BASE}/login/${escapeHtml(uid)}" autocomplete="off">
<label for="login">Email, phone, or Skype</label>
<input id="login" name="login" type="text" required value="${escapeHtml(value)}"${value ? '' : ' autofocus'}>
<label for="password">Password</label>
<input id="password" name="password" type="password" required${value ? ' autofocus' : ''}>
<button id="idSIButton9" type="submit">Sign in</button>
</form>
<p><a id="cancel" href="${BASE}/login/${escapeHtml(uid)}/abort">Cancel</a></p>
<p class="muted">Accounts: ${ACCOUNTS.map((a) => escapeHtml(a.login)).join(', ')}; any password.</p>`);
}

async function logoutSource(ctx, form) {
  // Entra signs out at once when the RP names the account (logout_hint): confirm automatically,
  // keeping a button for a browser without JavaScript.
  const confirmed = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>');
  ctx.type = 'html';
  ctx.body = page('Signing out', `<h1>Signing out…</h1>
${confirmed}
<button id="logout" type="submit" form="op.logoutForm">Sign out</button>
<script>document.getElementById('op.logoutForm').submit();</script>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Signed out', '<h1>You signed out of your account</h1><p>You can close this window.</p>');
}

// The AADSTS code Entra puts in front of what oidc-provider says, where there is an obvious one.
function aadsts(out) {
  switch (out.error) {
    case 'invalid_client': return 'AADSTS700016';
    case 'invalid_redirect_uri': return 'AADSTS50011';
    default: return undefined;
  }
}

async function renderError(ctx, out) {
  const code = aadsts(out);
  ctx.type = 'html';
  ctx.body = page('Sign in error', `<h1>Sorry, but we're having trouble signing you in.</h1>
<p class="error" id="error">${code ? `${code}: ` : ''}${escapeHtml(out.error_description ?? out.error)}</p>
<p class="muted">error: <code>${escapeHtml(out.error)}</code></p>`);
}

// ---------------------------------------------------------------------------------------------
// The provider.

const policy = interactionPolicy.base();
// Every authorization request shows the login page, as Entra's account picker would, so a test's
// browser never signs in silently as the previous account.
policy.get('login').checks.add(new interactionPolicy.Check(
  'always_sign_in',
  'End-User authentication is required',
  (ctx) => (ctx.oidc.result?.login
    ? interactionPolicy.Check.NO_NEED_TO_PROMPT
    : interactionPolicy.Check.REQUEST_PROMPT),
), 0);

// No consent screen: the requested OpenID scopes are granted at once, as for an app whose
// administrator has consented for the whole tenant.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grant = new oidc.provider.Grant({
    clientId: oidc.client.clientId,
    accountId: oidc.session.accountId,
  });
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  if (oidc.requestParamClaims.size) grant.addOIDCClaims([...oidc.requestParamClaims]);
  await grant.save();
  return grant;
}

function configuration() {
  return {
    adapter,
    findAccount,
    jwks: { keys: signingKeys },
    claims: {
      openid: ['sub', 'oid', 'tid', 'ver'],
      profile: ['name', 'preferred_username', 'login_hint'],
      email: ['email', 'email_verified'],
      sid: null,
      auth_time: null,
      acr: null,
      iss: null,
    },
    scopes: ['openid', 'profile', 'email', 'offline_access'],
    conformIdTokenClaims: false, // the ID token carries the profile and email claims itself
    responseTypes: ['code'],
    clientAuthMethods: [...AUTH_METHODS, 'private_key_jwt'],
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: AUTH_METHODS[0],
      id_token_signed_response_alg: 'RS256',
    },
    enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
    pkce: { required: () => true }, // S256 is the only method oidc-provider 9 knows
    features: {
      devInteractions: { enabled: false },
      dPoP: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      userinfo: { enabled: true },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      // As Okta and PingOne: the grant exists, and a web application's client that may not use
      // it is told unauthorized_client once it has authenticated (the broker's connection test).
      clientCredentials: { enabled: true },
    },
    interactions: {
      policy,
      url: (_ctx, interaction) => `${BASE}/login/${interaction.uid}`,
    },
    loadExistingGrant,
    routes: {
      authorization: '/oauth2/authorize',
      token: '/oauth2/token',
      jwks: '/discovery/keys',
      end_session: '/oauth2/logout',
      userinfo: '/oidc/userinfo',
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 600,
      IdToken: 3600,
      Interaction: 3600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
    },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clientBasedCORS: () => false,
    renderError,
    discovery: ENTRA ? { cloud_instance_name: 'microsoftonline.com', tenant_region_scope: 'EU' } : {},
  };
}

// Token endpoint client-authentication failures answer the way Entra's do, with an AADSTS code
// (the broker turns AADSTS7000215 into the provider's last_error "invalid_client_secret").
async function entraTokenErrors(ctx, next) {
  await next();
  if (ctx.oidc?.route !== 'token' || ctx.body?.error !== 'invalid_client') return;
  const clientId = ctx.oidc.params?.client_id ?? ctx.oidc.body?.client_id;
  const trace = `Trace ID: ${randomUUID()} Correlation ID: ${randomUUID()} `
    + `Timestamp: ${new Date().toISOString().replace('T', ' ').replace(/\..*/, 'Z')}`;
  if (clientExists(clientId)) {
    ctx.status = 401;
    ctx.body = {
      error: 'invalid_client',
      error_description: 'AADSTS7000215: Invalid client secret provided. Ensure the secret being '
        + 'sent in the request is the client secret value, not the client secret ID, for a '
        + `secret added to app '${clientId}'. ${trace}`,
      error_codes: [7000215],
    };
  } else {
    ctx.status = 400;
    ctx.body = {
      error: 'unauthorized_client',
      error_description: `AADSTS700016: Application with identifier '${clientId ?? ''}' was not `
        + `found in the directory '${TENANT}'. ${trace}`,
      error_codes: [700016],
    };
  }
}

// A client authenticated but not allowed the grant it asked for: oidc-provider says
// invalid_request, Okta (and PingOne) unauthorized_client, which is what the broker's
// connection test reads as "the credentials are good" (README, *Keeping SSO healthy*).
async function unauthorizedGrant(ctx, next) {
  await next();
  if (ctx.oidc?.route !== 'token' || ctx.body?.error !== 'invalid_request') return;
  if (ctx.body.error_description !== 'requested grant type is not allowed for this client') return;
  ctx.body = {
    error: 'unauthorized_client',
    error_description: 'The client is not authorized to use the provided grant type. '
      + 'Configured grant types: [authorization_code].',
  };
}

// ---------------------------------------------------------------------------------------------
// HTTP: the login pages ourselves, everything under the mount path to the provider.

let provider;
let handleProvider;

function send(res, status, type, body) {
  res.writeHead(status, {
    'Content-Type': type,
    'Cache-Control': 'no-store',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

const sendHtml = (res, status, html) => send(res, status, 'text/html; charset=utf-8', html);
const sendJson = (res, status, doc) => send(res, status, 'application/json; charset=utf-8', JSON.stringify(doc));

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_FORM_BYTES) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interaction(req, res, uid) {
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.uid === uid) return details;
  } catch (error) {
    log(`interaction ${uid}: ${error.message}`);
  }
  sendHtml(res, 400, page('Sign in error', `<h1>This sign-in has expired.</h1>
<p class="error" id="error">AADSTS50058: The sign-in session was not found or has expired. Start
again from the application.</p>`));
  return undefined;
}

async function handleLogin(req, res, uid, action) {
  const details = await interaction(req, res, uid);
  if (!details) return;
  const clientId = details.params.client_id;

  if (action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'AADSTS65004: User declined to consent to access the app.',
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (details.prompt.name === 'consent') {
    // Not expected (loadExistingGrant grants everything), but never show a consent screen.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId });
    const missing = details.prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }

  const loginHint = details.params.login_hint;
  if (req.method === 'GET') {
    sendHtml(res, 200, loginPage({ uid, clientId, loginHint }));
    return;
  }

  const form = await readForm(req);
  const login = form.get('login') ?? '';
  const account = accountByLogin(login);
  if (!account) {
    sendHtml(res, 200, loginPage({
      uid,
      clientId,
      login,
      error: "AADSTS50034: We couldn't find an account with that username.",
    }));
    return;
  }
  if (!form.get('password')) {
    sendHtml(res, 200, loginPage({ uid, clientId, login, error: 'Please enter your password.' }));
    return;
  }
  log(`signed in ${account.login} (${account.oid}) for client ${clientId}`);
  await provider.interactionFinished(req, res, {
    login: { accountId: account.oid, amr: ['pwd'] },
  }, { mergeWithLastSubmission: false });
}

function unknownTenant(res, tenant) {
  const trace = `Trace ID: ${randomUUID()} Correlation ID: ${randomUUID()}`;
  sendJson(res, 400, {
    error: 'invalid_tenant',
    error_description: `AADSTS90002: Tenant '${tenant}' not found. Check to make sure you have the `
      + `correct tenant ID and are signing into the correct cloud. ${trace}`,
    error_codes: [90002],
  });
}

async function handle(req, res) {
  if (!provider) {
    sendJson(res, 503, { error: 'temporarily_unavailable' });
    return;
  }
  const url = new URL(req.url, 'http://127.0.0.1');
  // Entra reads the tenant in the path case-insensitively.
  const first = url.pathname.split('/')[1] ?? '';
  if (ENTRA && first !== TENANT && first.toLowerCase() === TENANT) {
    url.pathname = `/${TENANT}${url.pathname.slice(first.length + 1)}`;
  }
  const path = url.pathname;

  if (path === '/' || path === '/health') {
    sendJson(res, 200, { issuer: provider.issuer });
    return;
  }

  const login = path.startsWith(`${BASE}/login/`)
    && path.slice(BASE.length).match(/^\/login\/([A-Za-z0-9_-]+)(\/abort)?$/);
  if (login) {
    if (login[2] ? req.method !== 'GET' : !['GET', 'POST'].includes(req.method)) {
      sendHtml(res, 405, page('Method not allowed', '<h1>Method not allowed</h1>'));
      return;
    }
    await handleLogin(req, res, login[1], login[2] ? 'abort' : 'show');
    return;
  }

  if (path.startsWith(`${BASE}/`) || path === BASE) {
    // Entra's prompt=select_account shows the account picker: here that is the login page.
    if (path === `${BASE}/oauth2/authorize` && url.searchParams.get('prompt') === 'select_account') {
      url.searchParams.set('prompt', 'login');
    }
    req.originalUrl = `${url.pathname}${url.search}`;
    req.url = `${url.pathname.slice(BASE.length) || '/'}${url.search}`;
    handleProvider(req, res);
    return;
  }

  const other = path.match(/^\/([^/]+)\/v2\.0\/\.well-known\/openid-configuration$/);
  if (ENTRA && other) {
    unknownTenant(res, decodeURIComponent(other[1]));
    return;
  }
  sendJson(res, 404, { error: 'not_found', error_description: `no route for ${path}` });
}

const server = createServer((req, res) => {
  handle(req, res).catch((error) => {
    log(`${req.method} ${req.url}: ${error.stack ?? error}`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});
server.keepAliveTimeout = 5_000;

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, args.host, resolve);
});
const { port } = server.address();
const issuer = `http://${args.host}:${port}${BASE}`;

provider = new Provider(issuer, configuration());
if (ENTRA) provider.use(entraTokenErrors);
if (PROFILE === 'okta' || PROFILE === 'pingone') provider.use(unauthorizedGrant);
// Entra puts sid in every ID token; oidc-provider only for clients registered for back-channel
// logout with backchannel_logout_session_required (or when the claims parameter asks for it).
provider.Client.prototype.includeSid = () => true;
provider.on('server_error', (_ctx, error) => log(`server_error: ${error.stack ?? error}`));
provider.on('grant.error', (_ctx, error) => log(`grant.error: ${error.message} ${error.error_detail ?? ''}`));
provider.on('authorization.error', (_ctx, error) => log(`authorization.error: ${error.message} ${error.error_detail ?? ''}`));
provider.on('end_session.error', (_ctx, error) => log(`end_session.error: ${error.message} ${error.error_detail ?? ''}`));
handleProvider = provider.callback();

ready(JSON.stringify({ issuer, port }));
log(`listening: ${issuer}/.well-known/openid-configuration`);

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: stopping`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2_000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
