// A local OpenID Connect provider for demos and tests: a stand-in for a university's login.
//
//   node deploy/oidc/provider.mjs --config provider.json
//
// It serves the authorization code flow (with or without PKCE) on plain http://127.0.0.1 with its
// own "University login" page, grants consent automatically (the lab is a first-party client) and
// puts sub, preferred_username, name, email and groups into both the id_token and the userinfo
// response. Everything lives in memory: signing keys, sessions and codes die with the process.
// Once listening it prints exactly one line on stdout, `oidc-provider ready at <issuer>`; every
// other message goes to stderr. A bad config file ends it with one line on stderr and exit code 2.
import {
  createHash, generateKeyPairSync, randomBytes, timingSafeEqual,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

const CLAIMS_BY_SCOPE = {
  openid: ['sub'],
  profile: ['preferred_username', 'name'],
  email: ['email'],
  groups: ['groups'],
};
const WRONG_CREDENTIALS = 'Wrong username or password';

class ConfigError extends Error {}

/** Reads and checks the config file, so a mistake stops the program before it listens. */
function loadConfig(path) {
  let config;
  try {
    config = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new ConfigError(`cannot read ${path} as JSON (${error.message})`);
  }
  const need = (ok, field, fix) => {
    if (!ok) throw new ConfigError(`${path}: ${field} ${fix}`);
  };
  const isText = (value) => typeof value === 'string' && value !== '';
  need(config && typeof config === 'object' && !Array.isArray(config), 'the file', 'must hold a JSON object');
  need(isText(config.issuer) && /^https?:\/\/[^/]+/.test(config.issuer), '"issuer"',
    'must be a URL such as "http://127.0.0.1:9000"');
  need(Number.isInteger(config.port) && config.port > 0 && config.port < 65536, '"port"',
    'must be a TCP port number (1-65535)');
  config.host ??= '127.0.0.1';
  need(isText(config.host), '"host"', 'must be a host name or address such as "127.0.0.1"');
  need(Array.isArray(config.clients) && config.clients.length > 0, '"clients"',
    'must list at least one client ({"client_id", "client_secret", "redirect_uris"})');
  config.clients.forEach((client, i) => {
    need(isText(client?.client_id), `clients[${i}].client_id`, 'must be a non-empty string');
    need(isText(client.client_secret), `clients[${i}].client_secret`, 'must be a non-empty string');
    need(Array.isArray(client.redirect_uris) && client.redirect_uris.length > 0
      && client.redirect_uris.every(isText), `clients[${i}].redirect_uris`,
    'must list at least one URL, e.g. ["http://127.0.0.1:8000/hub/oauth_callback"]');
  });
  need(Array.isArray(config.accounts), '"accounts"',
    'must be a list of {"username", "password", "name", "email", "groups"}');
  const seen = new Set();
  config.accounts.forEach((account, i) => {
    need(isText(account?.username), `accounts[${i}].username`, 'must be a non-empty string');
    need(!seen.has(account.username), `accounts[${i}].username`, `"${account.username}" appears twice; make usernames unique`);
    seen.add(account.username);
    need(isText(account.password), `accounts[${i}].password`, 'must be a non-empty string');
    account.groups ??= [];
    need(Array.isArray(account.groups) && account.groups.every(isText), `accounts[${i}].groups`,
      'must be a list of group names');
  });
  return config;
}

/** Compares secrets in constant time (digests have one length), so the form leaks nothing through timing. */
function sameSecret(given, expected) {
  const digest = (text) => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The one page layout shared by the login form and the error page. */
function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>${escapeHtml(title)}</title>
  <style>
    body { font-family: sans-serif; background: #f4f4f4; margin: 3em auto; max-width: 22em; }
    main { background: #fff; padding: 1em 2em 2em; border-radius: 4px; box-shadow: 0 1px 3px #0003; }
    label, input, button { display: block; width: 100%; box-sizing: border-box; margin-top: .5em; }
    input, button { padding: .5em; font-size: 1em; }
    button { margin-top: 1.5em; }
    .error { color: #a00; font-weight: bold; }
  </style>
</head>
<body><main>
${body}
</main></body>
</html>
`;
}

function errorPage(error, description) {
  return page('University login: error', `  <h1>Sign-in failed</h1>
  <p class="error" id="error">${escapeHtml(error)}</p>
  <p>${escapeHtml(description ?? '')}</p>`);
}

function loginPage({ uid, clientId, username = '', error = '' }) {
  return page('University login', `  <h1>University login</h1>
  <p>Sign in to continue to <strong>${escapeHtml(clientId)}</strong>.</p>
  ${error ? `<p class="error" role="alert" id="error">${escapeHtml(error)}</p>` : ''}
  <form method="post" action="/interaction/${escapeHtml(uid)}" autocomplete="off">
    <label for="username">Username</label>
    <input name="username" id="username" value="${escapeHtml(username)}" required autofocus>
    <label for="password">Password</label>
    <input type="password" name="password" id="password" required>
    <button type="submit" id="login">Sign in</button>
  </form>`);
}

function buildProvider(Provider, config, accounts) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'local-1' };

  return new Provider(config.issuer, {
    clients: config.clients,
    jwks: { keys: [signingKey] },
    claims: CLAIMS_BY_SCOPE,
    // The default (true) keeps scope claims out of an id_token that comes with an access token;
    // the lab may read users from either the id_token or userinfo, so both carry them.
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      // Sign-out at end_session_endpoint (a hub's logout_redirect_url can point there); oidc-provider
      // also passes through it when another user signs in (prompt=login) in a browser with a session.
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.body = page('University login: sign out', `  <h1>Sign out</h1>
  ${form}
  <button type="submit" form="op.logoutForm" name="logout" value="yes" id="logout">Sign out</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('University login: signed out', '  <h1>You are signed out</h1>');
        },
      },
    },
    // Cookies are signed with a per-process key; oidc-provider only marks them Secure on
    // https requests, so the browser keeps them over plain http://127.0.0.1.
    cookies: { keys: [randomBytes(32).toString('hex')] },
    async findAccount(ctx, sub) {
      const account = accounts.get(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            preferred_username: account.username,
            name: account.name ?? account.username,
            email: account.email,
            groups: account.groups,
          };
        },
      };
    },
    // Browser calls to the token and userinfo endpoints are not needed; servers make them.
    clientBasedCORS: () => false,
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = errorPage(out.error, out.error_description);
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 14 * 24 * 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
    },
  });
}

/** Grants everything the client asked for: the lab is first-party, so nobody is asked to consent. */
async function grantRequested(provider, { params }, accountId) {
  const grant = new provider.Grant({ accountId, clientId: params.client_id });
  grant.addOIDCScope(params.scope ?? 'openid');
  return grant.save();
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 64 * 1024) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

function send(res, status, html) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(html);
}

/** Serves /interaction/:uid: the login form (GET), the password check (POST), automatic consent. */
async function handleInteraction(provider, accounts, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { uid, prompt, params } = details;

  if (prompt.name === 'consent') {
    const grantId = await grantRequested(provider, details, details.session.accountId);
    await provider.interactionFinished(req, res, { consent: { grantId } });
    return;
  }
  if (prompt.name !== 'login') {
    send(res, 400, errorPage('unsupported_prompt', `This provider cannot handle the "${prompt.name}" prompt.`));
    return;
  }
  if (req.method !== 'POST') {
    send(res, 200, loginPage({ uid, clientId: params.client_id }));
    return;
  }

  const form = await readForm(req);
  const username = form.get('username') ?? '';
  const account = accounts.get(username);
  // Compare a password even for unknown users, so both failures take the same time.
  const passwordMatches = sameSecret(form.get('password') ?? '', account?.password ?? randomBytes(16).toString('hex'));
  if (!account || !passwordMatches) {
    send(res, 401, loginPage({ uid, clientId: params.client_id, username, error: WRONG_CREDENTIALS }));
    return;
  }
  const grantId = await grantRequested(provider, details, username);
  await provider.interactionFinished(req, res, {
    login: { accountId: username },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
}

async function main() {
  const { values } = parseArgs({ options: { config: { type: 'string' } } });
  if (!values.config) {
    console.error('usage: node deploy/oidc/provider.mjs --config PATH (a JSON file with issuer, port, clients, accounts)');
    process.exit(2);
  }

  let config;
  let accounts;
  let provider;
  try {
    config = loadConfig(values.config);
    accounts = new Map(config.accounts.map((account) => [account.username, account]));
    // Imported only now: oidc-provider prints runtime warnings when loaded, and a bad config
    // should end with nothing but its one-line message.
    const { default: Provider } = await import('oidc-provider');
    provider = buildProvider(Provider, config, accounts);
    // oidc-provider checks client metadata on first use; check it now, while we can still refuse.
    for (const { client_id: clientId } of config.clients) {
      await provider.Client.find(clientId).catch((error) => {
        throw new ConfigError(`${values.config}: client "${clientId}": ${error.error_description ?? error.message}`);
      });
    }
  } catch (error) {
    const reason = error instanceof ConfigError ? error.message : `${values.config}: ${error.message}`;
    console.error(`oidc-provider: bad config: ${reason.replace(/\s+/g, ' ')}`);
    process.exit(2);
  }

  const oidc = provider.callback();
  const server = http.createServer((req, res) => {
    if (!req.url.startsWith('/interaction/')) {
      oidc(req, res);
      return;
    }
    handleInteraction(provider, accounts, req, res).catch((error) => {
      // oidc-provider's errors carry an OAuth error code and a description (an expired or missing
      // interaction cookie, for example); anything else is a bug here and shows its message.
      const description = error.error_description ?? error.message;
      console.error(`oidc-provider: ${req.method} ${req.url}: ${description}`);
      if (!res.headersSent) {
        send(res, 400, errorPage(error.error ?? 'server_error', `${description}. Go back to the application and sign in again.`));
      }
    });
  });
  server.on('error', (error) => {
    console.error(`oidc-provider: cannot listen on ${config.host}:${config.port}: ${error.message}`);
    process.exit(1);
  });
  server.listen(config.port, config.host, () => {
    process.stdout.write(`oidc-provider ready at ${config.issuer}\n`);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => process.exit(0));
  }
  // SIGHUP re-reads the accounts (a university changing someone's groups, or removing them): the next
  // userinfo request, such as a lab refreshing a sign-in, sees the change. A bad file keeps the old accounts.
  process.on('SIGHUP', () => {
    try {
      const fresh = loadConfig(values.config);
      accounts.clear();
      for (const account of fresh.accounts) accounts.set(account.username, account);
      console.error(`oidc-provider: accounts reloaded (${accounts.size})`);
    } catch (error) {
      console.error(`oidc-provider: accounts not reloaded: ${error.message}`);
    }
  });
}

await main();
