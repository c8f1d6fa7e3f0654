// A stand-in for the Patchworks dashboard: the browser side of signing in with sso-broker.
//
// Routes (every path serves the same page):
//   /sso/start?provider_id=ID[&return_to=/path][&login_hint=…]
//                                           make a PKCE verifier, keep it in this tab, and go
//                                           to the broker's initiate with its challenge (the
//                                           broker sends a bare initiate, e.g. the My Apps tile,
//                                           here first)
//   /sso/complete?code=…[&return_to=/path]  trade the one-time login code (and the verifier)
//                                           for tokens
//   /sso/error?error=CODE                   the broker could not sign the user in
//   /sso/logged-out                         where the browser lands after signing out
//   /admin/sso                              the administrator's SSO settings (admin.js)
//   anything else                           the "dashboard": who is signed in, if anyone
//
// Configuration comes from /config.js: window.SSO_CONFIG = {brokerUrl, providerId}.
// Plain JavaScript, no build step, no dependencies. Untrusted values (query parameters, API
// answers) are only ever written with textContent, never as HTML.
"use strict";

const CONFIG = window.SSO_CONFIG ?? {};
const BROKER_URL = String(CONFIG.brokerUrl ?? "").replace(/\/+$/, "");
const PROVIDER_ID =
  typeof CONFIG.providerId === "string" && CONFIG.providerId ? CONFIG.providerId : null;

// sessionStorage: per tab, gone when the tab closes, never sent to a server by itself.
const ACCESS_KEY = "sso-broker.access_token";
const REFRESH_KEY = "sso-broker.refresh_token";
// The PKCE verifier of the sign-in this tab started: the login code works only with it, so a
// code from anyone else's sign-in (a link an attacker sent) cannot sign this browser in.
const VERIFIER_KEY = "sso-broker.code_verifier";

// The codes the broker puts in SIGN_IN_ERROR_URL?error=<code> (README, *Signing in*).
const SIGN_IN_ERRORS = {
  provider_not_found:
    "This sign-in link does not lead to a known single sign-on setup. " +
    "Ask your administrator for the right link.",
  provider_disabled:
    "Single sign-on is switched off for your company at the moment. " +
    "Ask your administrator to enable it.",
  invalid_state: "The sign-in link expired or was already used. Please start signing in again.",
  access_denied:
    "The sign-in was cancelled, or your account is not allowed to use this app. " +
    "Ask your administrator to assign you to it.",
  idp_error:
    "Your identity provider reported an error. Please try again; " +
    "if it keeps happening, contact your administrator.",
  token_exchange_failed:
    "We could not complete the sign-in with your identity provider. " +
    "Your administrator may need to check the app's credentials.",
  invalid_id_token:
    "Your identity provider's answer could not be verified. " +
    "Please try again or contact your administrator.",
  user_not_provisioned:
    "You signed in, but there is no Patchworks account for you with this sign-in method. " +
    "Ask your administrator to add you.",
  server_error: "Something went wrong on our side. Please try again in a moment.",
  invalid_request: "The sign-in could not be started. Please start signing in again.",
  temporarily_unavailable:
    "The sign-in service is temporarily unavailable. Please try again in a moment.",
};
const GENERIC_SIGN_IN_ERROR =
  "Signing in did not work. Please try again or contact your administrator.";

// Problem codes of the token exchange and of /me (README, *Signing in* and *The admin API in short*).
const API_ERRORS = {
  invalid_grant:
    "The sign-in code expired, was already used, or belongs to a sign-in that was not " +
    "started in this browser tab. Please sign in again.",
  not_authenticated: "You are not signed in.",
  invalid_token: "Your session is not valid. Please sign in again.",
  token_expired: "Your access token expired and could not be renewed. Please sign in again.",
  session_expired: "Your session has ended. Please sign in again.",
  validation_error: "The sign-in request was malformed. Please sign in again.",
  database_unavailable:
    "The sign-in service is temporarily unavailable. Please try again in a moment.",
  server_error: "Something went wrong on our side. Please try again in a moment.",
  network_error:
    "The sign-in service could not be reached. Check your connection and try again.",
};
const GENERIC_API_ERROR = "The sign-in service answered with an error. Please try again.";

// ---------------------------------------------------------------------------------------------
// Talking to the broker

class ApiError extends Error {
  constructor(code, status, detail) {
    super(detail || code);
    this.code = code;
    this.status = status;
  }
}

/** One JSON call to the broker; throws ApiError carrying the problem's `code`. */
async function api(path, { method = "GET", token = null, body = undefined } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(`${BROKER_URL}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", // bearer tokens only; the broker allows no credentials
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
  } catch {
    // Offline, DNS, or a CORS refusal (SSO_BROKER_FRONTEND_URL is not this origin).
    throw new ApiError("network_error", 0, "network error");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const code = data && typeof data.code === "string" ? data.code : `http_${response.status}`;
    throw new ApiError(code, response.status, data && data.detail);
  }
  return data;
}

function loadTokens() {
  try {
    return {
      access: sessionStorage.getItem(ACCESS_KEY),
      refresh: sessionStorage.getItem(REFRESH_KEY),
    };
  } catch {
    return { access: null, refresh: null }; // storage disabled
  }
}

function storeTokens(answer) {
  sessionStorage.setItem(ACCESS_KEY, answer.access_token);
  sessionStorage.setItem(REFRESH_KEY, answer.refresh_token);
}

function clearTokens() {
  try {
    sessionStorage.removeItem(ACCESS_KEY);
    sessionStorage.removeItem(REFRESH_KEY);
  } catch {
    // storage disabled: nothing stored
  }
}

/** Takes the verifier this tab kept at /sso/start (once: a code is traded once). */
function takeVerifier() {
  try {
    const verifier = sessionStorage.getItem(VERIFIER_KEY);
    sessionStorage.removeItem(VERIFIER_KEY);
    return verifier;
  } catch {
    return null; // storage disabled: the broker answers invalid_grant
  }
}

/** Trades the one-time login code from /sso/complete, with this tab's PKCE verifier, for an
 * access + refresh token. Without the verifier the broker refuses the code (and spends it). */
async function exchangeLoginCode(code) {
  const body = { grant_type: "login_code", code };
  const verifier = takeVerifier();
  if (verifier) body.code_verifier = verifier;
  const answer = await api("/api/v1/auth/token", { method: "POST", body });
  storeTokens(answer);
}

/** base64url without padding (RFC 7636, appendix A). */
function base64url(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A fresh PKCE pair: 32 random bytes as the verifier (43 characters), its S256 challenge. */
async function pkcePair() {
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(32)));
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return { verifier, challenge: base64url(new Uint8Array(digest)) };
}

// Refresh tokens rotate and each works once; presenting one twice ends the whole session.
// So concurrent callers share a single refresh.
let refreshing = null;

function refreshTokens() {
  if (!refreshing) {
    refreshing = (async () => {
      const { refresh } = loadTokens();
      if (!refresh) throw new ApiError("not_authenticated", 401, "no refresh token");
      try {
        const answer = await api("/api/v1/auth/token", {
          method: "POST",
          body: { grant_type: "refresh_token", refresh_token: refresh },
        });
        storeTokens(answer); // the rotated pair replaces the old one
        return answer.access_token;
      } catch (error) {
        if (error.status === 400 || error.status === 401) clearTokens(); // session is over
        throw error;
      }
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

/** A call with the bearer token; on 401 (expired access token) one refresh, then one retry. */
async function authorized(path, options = {}) {
  const { access } = loadTokens();
  if (!access) throw new ApiError("not_authenticated", 401, "not signed in");
  try {
    return await api(path, { ...options, token: access });
  } catch (error) {
    if (error.status !== 401) throw error;
  }
  const fresh = await refreshTokens();
  return api(path, { ...options, token: fresh });
}

// ---------------------------------------------------------------------------------------------
// The page

const $ = (id) => document.getElementById(id);

function setStatus(text) {
  $("status").textContent = text;
}

function showError(code, message) {
  $("error-code").textContent = code;
  $("error-message").textContent = message;
  $("error").hidden = false;
}

function showApiError(error) {
  const code = error instanceof ApiError ? error.code : "client_error";
  showError(code, API_ERRORS[code] ?? GENERIC_API_ERROR);
  if (!(error instanceof ApiError)) console.error(error);
}

function showDetail(rowId, valueId, text) {
  $(valueId).textContent = text;
  $(rowId).hidden = false;
  $("details").hidden = false;
}

function showSignIn() {
  $("sign-out").hidden = true;
  $("admin-link").hidden = true;
  if (!PROVIDER_ID) return; // no provider configured: the user starts at Entra / My Apps
  const link = $("sign-in");
  // Through our own start page, which makes the PKCE pair before going to the broker.
  link.href = `/sso/start?provider_id=${encodeURIComponent(PROVIDER_ID)}`;
  link.hidden = false;
}

function showSignOut() {
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
}

/** return_to as the broker promises it: a path on this origin, nothing else. */
function safeReturnTo(value) {
  if (!value || !value.startsWith("/") || value.startsWith("//") || value.includes("\\")) {
    return null;
  }
  // Control characters, and white space other than a plain space (tab and newline tricks).
  if (/[\u0000-\u001f\u007f]|[^\S ]/.test(value)) return null;
  try {
    const url = new URL(value, window.location.origin);
    // The resolved path must not itself read as another origin (/..//evil.com resolves
    // to //evil.com), and must be the path that was asked for: no dot segments.
    if (url.origin !== window.location.origin || url.pathname.startsWith("//")) return null;
    const path = value.split(/[?#]/, 1)[0];
    const segments = decodeURIComponent(path).split("/");
    return segments.some((s) => s === "." || s === "..") ? null : url.pathname + url.search + url.hash;
  } catch {
    return null;
  }
}

/** Asks the broker who is signed in and shows it; throws ApiError. */
async function showSignedIn(returnTo) {
  const me = await authorized("/api/v1/auth/me");
  setStatus(`Signed in as ${me.user.name} (${me.user.email})`);
  showDetail("company-row", "company", me.company.name);
  $("admin-link").hidden = me.user.role !== "administrator";
  if (returnTo) showDetail("return-to-row", "return-to", returnTo);
  showSignOut();
}

function showSignedOut(status) {
  setStatus(status);
  showSignIn();
}

// /sso/start?provider_id=ID[&return_to=/path][&login_hint=…]
async function start(params) {
  const providerId = params.get("provider_id");
  if (!providerId || !/^[0-9a-fA-F-]{36}$/.test(providerId)) {
    setStatus("Sign-in failed");
    showError("provider_not_found", SIGN_IN_ERRORS.provider_not_found);
    return;
  }
  setStatus("Signing in…");
  let pair;
  try {
    pair = await pkcePair();
    sessionStorage.setItem(VERIFIER_KEY, pair.verifier);
  } catch (error) {
    // crypto.subtle needs a secure context (https, or http on localhost / 127.0.0.1).
    setStatus("Sign-in failed");
    showError("client_error", "This browser cannot start a secure sign-in here.");
    console.error(error);
    return;
  }
  const query = new URLSearchParams({ code_challenge: pair.challenge, code_challenge_method: "S256" });
  const returnTo = safeReturnTo(params.get("return_to"));
  if (returnTo) query.set("return_to", returnTo);
  const hint = params.get("login_hint");
  if (hint) query.set("login_hint", hint);
  // replace: the start page stays out of history, so Back does not start another sign-in.
  window.location.replace(`${BROKER_URL}/sso/${encodeURIComponent(providerId)}/initiate?${query}`);
}

// /sso/complete?code=…[&return_to=/path]
async function complete(params) {
  const code = params.get("code");
  const returnTo = safeReturnTo(params.get("return_to"));
  // The code works once: take it out of the address bar (and history) before anything else,
  // so a reload, a bookmark or a shared screenshot cannot replay it. A real dashboard would
  // now route to return_to; this one lands there (or on /) and shows it.
  const landing = returnTo && !returnTo.startsWith("/sso/") ? returnTo : "/";
  window.history.replaceState(null, "", landing);
  if (!code) return home();

  setStatus("Signing in…");
  try {
    await exchangeLoginCode(code);
  } catch (error) {
    setStatus("Sign-in failed");
    showApiError(error);
    showSignIn();
    return;
  }
  try {
    await showSignedIn(returnTo);
  } catch (error) {
    setStatus("Sign-in failed");
    showApiError(error);
    showSignIn();
  }
}

// /sso/error?error=CODE
function signInError(params) {
  const code = params.get("error") || "unknown_error";
  setStatus("Sign-in failed");
  const known = Object.hasOwn(SIGN_IN_ERRORS, code);
  showError(code, known ? SIGN_IN_ERRORS[code] : GENERIC_SIGN_IN_ERROR);
  showSignIn();
}

// /sso/logged-out
function loggedOut() {
  clearTokens();
  showSignedOut("You are signed out.");
}

// / and every other path
async function home() {
  if (!loadTokens().access) return showSignedOut("Not signed in");
  setStatus("Loading…");
  try {
    await showSignedIn(null);
  } catch (error) {
    if (error.status === 400 || error.status === 401) {
      clearTokens(); // the session ended (signed out elsewhere, expired, revoked)
      showSignedOut("Not signed in");
    } else {
      setStatus("Could not check your session");
      showApiError(error);
    }
  }
}

async function signOut() {
  const button = $("sign-out");
  button.disabled = true;
  setStatus("Signing out…");
  let idpLogoutUrl = null;
  try {
    const answer = await authorized("/api/v1/auth/logout", { method: "POST" });
    idpLogoutUrl = answer.idp_logout_url;
  } catch {
    // The session is already over, or the broker is unreachable: sign out locally regardless.
  }
  clearTokens();
  // Entra's end-session URL signs the user out of Microsoft too; Entra then sends the browser
  // back through the broker to /sso/logged-out.
  if (typeof idpLogoutUrl === "string" && /^https?:\/\//i.test(idpLogoutUrl)) {
    window.location.assign(idpLogoutUrl);
  } else {
    window.location.assign("/sso/logged-out");
  }
}

function main() {
  $("sign-out").addEventListener("click", signOut);
  if (!BROKER_URL) {
    setStatus("Not configured");
    showError("missing_config", "window.SSO_CONFIG.brokerUrl is not set (see /config.js).");
    return;
  }
  const { pathname, searchParams } = new URL(window.location.href);
  const route = pathname.length > 1 ? pathname.replace(/\/+$/, "") : pathname;
  switch (route) {
    case "/sso/start":
      return start(searchParams);
    case "/sso/complete":
      return complete(searchParams);
    case "/sso/error":
      return signInError(searchParams);
    case "/sso/logged-out":
      return loggedOut();
    case "/admin/sso":
      return adminPage();
    default:
      return home();
  }
}

main();
