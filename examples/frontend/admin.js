// The administrator's SSO settings page (/admin/sso): the set-up stages of the broker's README
// (*Setting up Entra ID, stage by stage*) in a browser. Choose a provider type and paste its
// base URL; see the three URLs to paste into the provider, with copy buttons; paste the client
// ID and secret (or make a certificate and download it); enable; save; test the connection;
// read last_error and warnings in words. Only administrators see it.
//
// Loaded before app.js, which routes /admin/sso here; it uses app.js's api helpers at call
// time. Every value from the API is written with textContent, never as HTML.
"use strict";

const PROVIDER_TYPES = [
  ["entra", "Microsoft Entra ID"],
  ["okta", "Okta"],
  ["pingone", "PingOne"],
  ["oidc", "Any OpenID Provider"],
];
const BASE_URL_HINTS = {
  entra: "Directory (tenant) ID, or a verified domain such as contoso.onmicrosoft.com",
  okta: "Org URL, e.g. https://acme.okta.com (or …/oauth2/default)",
  pingone: "Environment ID, or its issuer URL",
  oidc: "Issuer URL, e.g. https://id.example.com",
};
// Where each of the provider's URLs goes (the broker's OpenAPI says the same).
const URL_HINTS = {
  initiate_sign_in_url:
    "Entra: Branding & properties → Home page URL; Okta / PingOne: Initiate login URI.",
  callback_url:
    "Entra: Authentication → Web → Redirect URIs; Okta: Sign-in redirect URIs; " +
    "PingOne: Redirect URIs. Paste it exactly.",
  logout_url:
    "Optional. Entra: Front-channel logout URL; Okta: Sign-out redirect URIs; PingOne: Signoff URLs.",
};
const URL_LABELS = {
  initiate_sign_in_url: "Initiate sign-in URL",
  callback_url: "Callback (redirect) URL",
  logout_url: "Logout URL",
};

/** document.createElement with attributes, listeners (onclick…) and text, never innerHTML. */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

function labelled(text, control) {
  return el("label", { class: "field" }, el("span", { text }), control);
}

function showProblem(error) {
  const code = error instanceof ApiError ? error.code : "client_error";
  const detail = error instanceof ApiError && error.message ? error.message : null;
  showError(code, detail ?? API_ERRORS[code] ?? GENERIC_API_ERROR);
  if (!(error instanceof ApiError)) console.error(error);
}

function clearProblem() {
  $("error").hidden = true;
}

// /admin/sso
async function adminPage() {
  let me;
  try {
    me = await authorized("/api/v1/auth/me");
  } catch (error) {
    if (error.status === 400 || error.status === 401) return showSignedOut("Not signed in");
    setStatus("Could not check your session");
    return showProblem(error);
  }
  showSignOut();
  if (me.user.role !== "administrator") {
    setStatus("Only administrators can change the SSO settings.");
    return;
  }
  setStatus(`SSO settings for ${me.company.name}`);
  $("admin").hidden = false;
  await renderProviders();
}

/** Every provider of the company: the list comes a page at a time (`next_cursor`). */
async function allProviders() {
  const providers = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: "200" });
    if (cursor) query.set("cursor", cursor);
    const page = await authorized(`/api/v1/sso-providers?${query}`);
    providers.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return providers;
}

async function renderProviders() {
  const section = $("admin");
  let providers;
  try {
    providers = await allProviders();
  } catch (error) {
    return showProblem(error);
  }
  section.replaceChildren();
  if (providers.length === 0) section.append(createForm());
  for (const provider of providers) section.append(providerCard(provider));
}

function createForm() {
  const type = el(
    "select",
    { id: "new-type" },
    ...PROVIDER_TYPES.map(([value, text]) => el("option", { value, text })),
  );
  const baseUrl = el("input", {
    id: "new-base-url", type: "text", required: true, placeholder: BASE_URL_HINTS.entra,
  });
  type.addEventListener("change", () => {
    baseUrl.placeholder = BASE_URL_HINTS[type.value];
  });
  const name = el("input", { id: "new-name", type: "text", placeholder: "optional" });
  const form = el(
    "form",
    { id: "create-form" },
    el("h2", { text: "Set up single sign-on" }),
    labelled("Identity provider", type),
    labelled("Base URL", baseUrl),
    labelled("Display name", name),
    el("button", { id: "create-provider", type: "submit", text: "Create" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearProblem();
    const body = { type: type.value, base_url: baseUrl.value.trim() };
    if (name.value.trim()) body.name = name.value.trim();
    try {
      await authorized("/api/v1/sso-providers", { method: "POST", body });
    } catch (error) {
      return showProblem(error);
    }
    await renderProviders();
  });
  return form;
}

function urlRow(key, url) {
  const copied = el("span", { class: "copied", id: `copied-${key}` });
  const copy = el("button", {
    type: "button",
    id: `copy-${key}`,
    text: "Copy",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(url);
        copied.textContent = "copied";
      } catch {
        copied.textContent = "select and copy it";
      }
    },
  });
  return el(
    "div",
    { class: "url" },
    el("div", { class: "url-label", text: URL_LABELS[key] }),
    el("code", { id: `url-${key}`, text: url }),
    copy,
    copied,
    el("p", { class: "hint", text: URL_HINTS[key] }),
  );
}

function describeWhen(value) {
  return value ? new Date(value).toLocaleString() : "";
}

function providerCard(provider) {
  const base = `/api/v1/sso-providers/${encodeURIComponent(provider.id)}`;
  const name = el("input", { id: "provider-name", type: "text", value: provider.name });
  const clientId = el("input", {
    id: "client-id", type: "text", value: provider.client_id ?? "", autocomplete: "off",
  });
  const secret = el("input", {
    id: "client-secret",
    type: "password",
    autocomplete: "off",
    placeholder: provider.client_secret_set ? "set (leave empty to keep it)" : "the secret's value",
  });
  const expires = el("input", {
    id: "client-secret-expires",
    type: "date",
    value: provider.client_secret_expires_at ? provider.client_secret_expires_at.slice(0, 10) : "",
  });
  const method = el(
    "select",
    { id: "client-auth-method" },
    el("option", { value: "client_secret", text: "Client secret" }),
    el("option", { value: "private_key_jwt", text: "Certificate (private_key_jwt)" }),
  );
  method.value = provider.client_auth_method;
  const enabled = el("input", { id: "enabled", type: "checkbox", checked: provider.enabled });
  const saved = el("span", { id: "saved", class: "copied" });
  const certificate = el("p", { id: "certificate", class: "hint" });
  const results = el("ul", { id: "test-result", class: "checks" });

  const save = async () => {
    clearProblem();
    saved.textContent = "";
    const body = {};
    if (name.value.trim() && name.value.trim() !== provider.name) body.name = name.value.trim();
    if (clientId.value.trim() !== (provider.client_id ?? "")) {
      body.client_id = clientId.value.trim() || null;
    }
    if (secret.value) body.client_secret = secret.value;
    const day = expires.value ? `${expires.value}T00:00:00Z` : null;
    if ((provider.client_secret_expires_at ?? "").slice(0, 10) !== (expires.value || "")) {
      body.client_secret_expires_at = day;
    } else if (secret.value && day) {
      body.client_secret_expires_at = day; // a new secret without it would clear the expiry
    }
    if (method.value !== provider.client_auth_method) body.client_auth_method = method.value;
    if (enabled.checked !== provider.enabled) body.enabled = enabled.checked;
    try {
      await authorized(base, { method: "PATCH", body });
    } catch (error) {
      return showProblem(error);
    }
    await renderProviders();
    $("saved").textContent = "Saved.";
  };

  const makeCertificate = async () => {
    clearProblem();
    let made;
    try {
      made = await authorized(`${base}/certificate`, { method: "POST" });
    } catch (error) {
      return showProblem(error);
    }
    // The certificate to upload to the provider: downloaded as a file, never the private key.
    const link = el("a", {
      href: URL.createObjectURL(new Blob([made.certificate_pem], { type: "application/x-pem-file" })),
      download: `sso-broker-${made.thumbprint_sha256.slice(0, 12)}.pem`,
    });
    document.body.append(link);
    link.click();
    link.remove();
    certificate.textContent =
      `Certificate ${made.thumbprint_sha256} (valid until ${describeWhen(made.expires_at)}) ` +
      "downloaded: upload it to the identity provider, then choose Certificate and save.";
  };

  const test = async () => {
    clearProblem();
    results.replaceChildren(el("li", { text: "Testing…" }));
    let answer;
    try {
      answer = await authorized(`${base}/test`, { method: "POST" });
    } catch (error) {
      results.replaceChildren();
      return showProblem(error);
    }
    results.replaceChildren(
      el("li", {
        id: "test-verdict",
        class: answer.ok ? "ok" : "bad",
        text: answer.ok ? "Connection test passed." : "Connection test failed.",
      }),
      ...answer.checks.map((check) =>
        el("li", {
          class: check.ok ? "ok" : "bad",
          "data-check": check.name,
          "data-code": check.code,
          text: `${check.ok ? "✓" : "✗"} ${check.name}: ${check.detail}`,
        }),
      ),
    );
  };

  const problems = [];
  if (provider.last_error) {
    problems.push(
      el("p", {
        id: "last-error",
        class: "error",
        text: `Last error (${provider.last_error.code}, ${describeWhen(provider.last_error.at)}): ` +
          provider.last_error.message,
      }),
    );
  }
  for (const warning of provider.warnings ?? []) {
    problems.push(el("p", { class: "warning", "data-code": warning.code, text: warning.message }));
  }

  return el(
    "article",
    { class: "provider", id: `provider-${provider.id}` },
    el("h2", { text: provider.name }),
    el(
      "p",
      { class: "hint", id: "provider-kind" },
      `${PROVIDER_TYPES.find(([value]) => value === provider.type)?.[1] ?? provider.type} · `,
      el("code", { text: provider.base_url }),
      provider.enabled ? " · enabled" : " · disabled",
    ),
    ...problems,
    el("h3", { text: "1. Paste these into the identity provider" }),
    ...Object.entries(provider.urls).map(([key, url]) => urlRow(key, url)),
    el("h3", { text: "2. Paste the application's credentials here" }),
    labelled("Display name", name),
    labelled("Client ID", clientId),
    labelled("Client secret (value)", secret),
    labelled("Secret expires", expires),
    labelled("Sign-ins authenticate with", method),
    el("p", {}, el("button", {
      id: "make-certificate", type: "button", text: "Make a certificate", onclick: makeCertificate,
    })),
    certificate,
    el("h3", { text: "3. Enable, save and test" }),
    el("label", { class: "toggle" }, enabled, " Enabled"),
    el(
      "p",
      { class: "buttons" },
      el("button", { id: "save", type: "button", text: "Save", onclick: save }),
      el("button", { id: "test-connection", type: "button", text: "Test connection", onclick: test }),
      saved,
    ),
    results,
  );
}
