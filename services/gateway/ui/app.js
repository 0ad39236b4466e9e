// Visage web UI: plain JS over the REST API of the Envoy gateway (/v1, see
// /openapi.json) and its server-sent event stream (/v1/events:watch).
// Every call sends the signed-in user's token (kept in sessionStorage: it
// ends with the tab and is never a cookie); images and the event stream are
// fetched with it too, since <img> and EventSource cannot send headers.
// Every user-supplied string reaches the page through textContent (via el()),
// never innerHTML.
"use strict";

const main = document.getElementById("main");
// Each list shows PAGE_SIZE items and "Show more" adds as many again;
// `?pageSize=N` in the page's URL changes the step (the API caps it at 500).
const PAGE_SIZE = Math.min(500, Number(new URLSearchParams(location.search).get("pageSize")) || 200);

// ---- DOM helpers -----------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    // Through CSSOM: the Content-Security-Policy forbids style attributes.
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function stateBox(text, kind = "") {
  return el("p", { class: `state ${kind}`.trim(), dataset: { state: kind || "empty" } }, text);
}

function toast(message, kind = "") {
  const node = el("div", { class: `toast ${kind}`.trim() }, message);
  const box = document.getElementById("toasts");
  box.append(node);
  while (box.children.length > 4) box.firstElementChild.remove();  // bursts of clicks: newest only
  setTimeout(() => node.remove(), kind === "error" ? 8000 : 3500);
}

// ---- Identity --------------------------------------------------------------
const TOKEN_KEY = "visage.token";
const ROLES = ["viewer", "labeller", "operator", "admin"];

// A login link (`make run` prints one) carries the token in the fragment, which
// browsers never send to a server: keep it in this tab and drop it from the address bar.
// `&open=/unknown` (VISAGE_RUN_OPEN) names the page to land on.
(function takeTokenFromLink() {
  const match = location.hash.match(/^#token=([A-Za-z0-9._-]+)(?:&open=(\/[A-Za-z0-9\/_-]*))?$/);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, match[1]);
  history.replaceState(null, "", `${location.pathname}${location.search}#${match[2] || "/"}`);
})();

function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch { return null; }
}

// The token claims that carry the role and the user's name (VISAGE_AUTH_ROLE_CLAIM and
// _SUBJECT_CLAIM), from /ui-config.json before the page starts; these are the defaults.
const CLAIMS = { roleClaim: "roles", subjectClaim: "sub", imageCallsPerSecond: 4 };

// Who is signed in, as the token says (the gateway and services check it; this only shapes the page).
function session() {
  const token = oidcUser ? oidcUser.access_token : sessionStorage.getItem(TOKEN_KEY);
  const claims = token && claimsOf(token);
  if (!claims || (claims.exp && claims.exp * 1000 < Date.now())) return null;
  const values = [].concat(claims[CLAIMS.roleClaim] || []).flatMap((r) => String(r).split(/[ ,]+/))
    .map((r) => r.toLowerCase());
  const rank = Math.max(-1, ...values.map((r) => ROLES.indexOf(r)));
  const name = claims[CLAIMS.subjectClaim] || claims.preferred_username || claims.name || claims.sub || "?";
  return { token, name, role: ROLES[rank] || "none", rank };
}
const can = (role) => { const s = session(); return !!s && s.rank >= ROLES.indexOf(role); };

// ---- Sign-in with the organisation's OpenID Connect provider ---------------------------
// When /ui-config.json names one (VISAGE_UI_OIDC_*): authorization code + PKCE, done by the
// vendored oidc-client-ts (vendor/; version and checksums: mk/gateway.mk). Its tokens live in
// this tab's sessionStorage (gone with the tab; never localStorage, never a cookie), so a reload
// keeps the session. Its refresh token renews the access token before it expires; when renewal
// fails the sign-in page says so and offers the provider again.
let oidcManager = null;
let oidcUser = null;  // the provider's answer; the API is sent its access_token

function oidcSettings() {
  const provider = CLAIMS.signIn;
  return { authority: provider.authority, client_id: provider.clientId, scope: provider.scope,
    response_type: "code", redirect_uri: `${location.origin}/`,
    userStore: new oidc.WebStorageStateStore({ store: window.sessionStorage }),
    stateStore: new oidc.WebStorageStateStore({ store: window.sessionStorage }),  // PKCE verifier, state
    automaticSilentRenew: true, monitorSession: false, loadUserInfo: false };
}

// Back from the provider (?code=…&state=…, or ?error=…), or a session this tab already has.
// Resolves to "" or what went wrong, for the sign-in page.
async function restoreOidcSession() {
  if (!CLAIMS.signIn) return "";
  if (typeof oidc === "undefined") return "The sign-in library did not load: reload the page.";
  oidcManager = new oidc.UserManager(oidcSettings());
  oidcManager.events.addUserLoaded((user) => { oidcUser = user; showWho(); });
  oidcManager.events.addSilentRenewError((error) => {
    if (oidcUser) signOut(`Your sign-in could not be renewed (${error.message}): sign in again.`);
  });
  const params = new URLSearchParams(location.search);
  const returning = params.has("state") && (params.has("code") || params.has("error"));
  try {
    if (returning) {
      oidcUser = await oidcManager.signinRedirectCallback();
      history.replaceState(null, "", `/${oidcUser.state || "#/"}`);  // the code leaves the address bar
      return "";
    }
    oidcUser = await oidcManager.getUser();
    if (oidcUser && oidcUser.expired) oidcUser = await oidcManager.signinSilent();
    return "";
  } catch (error) {
    if (returning) history.replaceState(null, "", "/#/");
    oidcUser = null;
    return `Signing in with ${CLAIMS.signIn.providerName} did not work (${error.message}): sign in again.`;
  }
}

function signInWithProvider() {
  // Where to come back to: a page of this UI, never a link of someone else's choosing.
  const back = location.hash.startsWith("#/") ? location.hash : "#/";
  oidcManager.signinRedirect({ state: back }).catch((error) =>
    showSignIn(`${CLAIMS.signIn.providerName} cannot be reached (${error.message}).`));
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  oidcUser = null;
  if (oidcManager) oidcManager.removeUser();  // also stops its renewal timers
  blobUrls.clear();  // the next user fetches what they may see with their own token
  stopEvents();
  showSignIn(message);
}

function showWho() {
  const s = session();
  const box = document.getElementById("whoami");
  box.replaceChildren(...(s ? [el("span", { id: "whoami-name", title: `role: ${s.role}` }, s.name),
    el("span", { class: "tag", id: "whoami-role" }, s.role),
    el("button", { type: "button", id: "sign-out", onclick: () => signOut("Signed out.") }, "Sign out")] : []));
}

function showSignIn(message = "") {
  showWho();
  const input = el("input", { type: "password", id: "token-input", autocomplete: "off", required: true,
    placeholder: "eyJ…", "aria-label": "token" });
  const form = el("form", { id: "sign-in", class: "sign-in" },
    el("h1", {}, "Sign in to Visage"),
    message ? el("p", { class: "state error", id: "sign-in-message" }, message) : null,
    oidcManager ? el("p", {}, el("button", { class: "primary", type: "button", id: "oidc-sign-in",
      onclick: signInWithProvider }, `Sign in with ${CLAIMS.signIn.providerName}`)) : null,
    el("p", { class: "muted" }, oidcManager ? "Or paste a token: "
      : "Open the sign-in link that `make run` printed, or paste a token: ",
      el("code", {}, "visage token create --role labeller"), " prints one; with Microsoft Entra ID, an access token for the Visage API."),
    input, el("button", { class: "primary", type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!claimsOf(token)) { showSignIn("That is not a token (three base64url parts separated by dots)."); return; }
    sessionStorage.setItem(TOKEN_KEY, token);
    if (!session()) { signOut("That token has expired."); return; }
    try {
      await api("GET", "/v1/personas?pageSize=1");
    } catch (error) {
      if (!(error instanceof SignedOut)) signOut(error.message);
      return;
    }
    start();
  });
  main.replaceChildren(form);
  input.focus();
}

const percent = (x) => `${Math.round(Number(x) * 100)}%`;
// What a prediction's confidence is (Prediction.confidence in the API docs).
const CONFIDENCE_MEANING = "similarity to the persona: 1 − distance/1.2 between face embeddings "
  + "(50% = dlib's same-person limit); a face is named when it reaches the persona's threshold";
const similarMeta = (c) => `${percent(c)} similar`;
// Short enough for a card's two lines; the title says it in full.
const unknownMeta = (c) => `unknown · nearest ${percent(1 - Number(c))}`;
const unknownMetaTitle = (c) => `Nobody is named: the nearest persona is ${percent(1 - Number(c))} similar (${CONFIDENCE_MEANING})`;
const count = (x) => Number(x || 0);
// The face as seen in its photo (upright, with a margin), not the aligned chip the model reads.
const cropUrl = (faceId) => `/v1/faces/${encodeURIComponent(faceId)}/crop?upright=true`;
const imageUrl = (imageId) => `/v1/images/${encodeURIComponent(imageId)}/content`;

// ---- API -------------------------------------------------------------------
class ApiError extends Error {
  // status: the HTTP status (0: no answer); retryAfter: seconds a 429 says to wait (null: it did not say)
  constructor(message, { status = 0, retryAfter = null } = {}) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}
class SignedOut extends ApiError {}

function authorization() {
  const s = session();
  if (!s) { signOut("Your session has ended: sign in again."); throw new SignedOut("signed out"); }
  return { authorization: `Bearer ${s.token}` };
}

// A 401 means the token is no longer accepted: back to the sign-in page.
function checkSignedIn(response) {
  if (response.status === 401) {
    signOut("The gateway did not accept your token (expired or revoked): sign in again.");
    throw new SignedOut("signed out");
  }
}

// Errors come as JSON with a `message` (gRPC status via the transcoder, or
// Envoy's own local replies); anything else is shown as text.
async function api(method, path, body) {
  const options = { method, headers: authorization() };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(`The gateway cannot be reached (${error.message}).`);
  }
  checkSignedIn(response);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : {}; } catch { data = null; }
  if (!response.ok) {
    const message = (data && data.message) || text || response.statusText;
    const retryAfter = response.headers.get("retry-after");
    throw new ApiError(`${message} (HTTP ${response.status})`,
      { status: response.status, retryAfter: retryAfter === null ? null : Number(retryAfter) });
  }
  if (data === null) throw new ApiError(`Unexpected answer from ${path}`);
  return data;
}

async function attempt(action, success) {
  try {
    const result = await action();
    if (success) toast(success);
    return result;
  } catch (error) {
    if (!(error instanceof SignedOut)) toast(error.message, "error");
    return undefined;
  }
}

// How many items each list (by API path) has been asked to show: a live
// refresh reads that many again, so it keeps what "Show more" opened.
const wanted = new Map();

// The first `want` items of a paged List call, following page tokens.
async function listItems(path, field, want = wanted.get(path) || PAGE_SIZE) {
  const separator = path.includes("?") ? "&" : "?";
  let items = [];
  let token = "";
  do {
    const pageToken = token ? `&pageToken=${encodeURIComponent(token)}` : "";
    const page = await api("GET", `${path}${separator}pageSize=${PAGE_SIZE}${pageToken}`);
    items = items.concat(page[field] || []);
    token = page.nextPageToken || "";
  } while (token && items.length < want);
  return { path, items, more: Boolean(token) };
}

function showMore(list) {
  if (!list.more) return null;
  return el("button", { type: "button", class: "more", onclick: () => {
    wanted.set(list.path, list.items.length + PAGE_SIZE);
    rerender();
  } }, "Show more");
}

// Every persona, for names and "Assign to…" menus.
let personaCache = null;
async function personas(refresh = false) {
  if (!personaCache || refresh) personaCache = (await listItems("/v1/personas", "personas", Infinity)).items;
  return personaCache;
}
const personaName = (list, id) => (list.find((p) => p.personaId === id) || {}).displayName || "deleted persona";

function label(faceId, personaId, verdict) {
  return api("POST", `/v1/faces/${encodeURIComponent(faceId)}:label`,
    { personaId, verdict }).then((face) => {
    offerUndo(verdict === "VERDICT_BELONGS" ? "face labelled" : "face rejected",
      () => api("POST", `/v1/faces/${encodeURIComponent(faceId)}:unlabel`, { personaId }));
    return face;
  });
}

// ---- Images ----------------------------------------------------------------
// Crops and photos need the token too: fetched, then shown from blob: URLs
// (kept per URL: crops and photos never change).
const blobUrls = new Map();
function authImage(url, attrs) {
  const img = el("img", attrs);
  if (!blobUrls.has(url)) {
    blobUrls.set(url, fetch(url, { headers: authorization() }).then((response) => {
      checkSignedIn(response);
      if (!response.ok) throw new ApiError(`${url}: HTTP ${response.status}`);
      return response.blob();
    }).then((blob) => URL.createObjectURL(blob)));
    blobUrls.get(url).catch(() => blobUrls.delete(url));  // retried by the next render
  }
  blobUrls.get(url).then((src) => { img.src = src; }, () => { img.classList.add("broken"); });
  return img;
}

// ---- Face tiles ------------------------------------------------------------
function faceImage(faceId, alt) {
  return authImage(cropUrl(faceId), { class: "face", alt });
}

function faceCard(face, { caption = "", meta = "", metaTitle = null, confidence = null, actions = [], href = null } = {}) {
  const dataset = confidence === null ? { faceId: face.faceId } : { faceId: face.faceId, confidence: String(confidence) };
  return el("div", { class: "card face-card", dataset },
    el("a", { href: href || `#/image/${encodeURIComponent(face.imageId)}`, title: "Open the image" },
      faceImage(face.faceId, caption || "face")),
    confidence === null ? null
      : el("div", { class: "confidence", title: percent(confidence) },
        el("span", { style: { width: percent(confidence) } })),
    el("div", { class: "body" },
      caption ? el("span", { class: "name" }, caption) : null,
      meta ? el("span", { class: "meta", title: metaTitle }, meta) : null,
      actions.length ? el("div", { class: "actions" }, actions) : null));
}

// Who made a face's "belongs" label (the token subject the services recorded).
function labelledBy(face) {
  const belongs = (face.labels || []).find((l) => l.verdict === "VERDICT_BELONGS");
  return belongs && belongs.labelledBy ? `labelled by ${belongs.labelledBy}` : "";
}

function personaSelect(list, placeholder = "Assign to…") {
  return el("select", { "aria-label": "persona" },
    el("option", { value: "" }, placeholder),
    list.map((p) => el("option", { value: p.personaId }, p.displayName)));
}

// ---- Views -----------------------------------------------------------------
async function viewPersonas() {
  const page = await listItems("/v1/personas", "personas");
  const nameInput = el("input", { type: "text", name: "displayName", placeholder: "New persona name",
    maxlength: 200, required: true, "aria-label": "new persona name" });
  const form = el("form", { class: "toolbar", id: "create-persona" }, nameInput,
    el("button", { class: "primary", type: "submit" }, "Create persona"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const created = await attempt(() => api("POST", "/v1/personas", { displayName: nameInput.value.trim() }),
      "Persona created");
    if (created) rerender();
  });
  const cards = page.items.map((p) => el("a", { class: "card persona-card", href: `#/persona/${encodeURIComponent(p.personaId)}`,
    dataset: { personaId: p.personaId } },
  p.coverFaceId ? faceImage(p.coverFaceId, p.displayName)
    : el("div", { class: "face placeholder", "aria-hidden": "true" }, (p.displayName || "?").trim().charAt(0).toUpperCase()),
  el("div", { class: "body" },
    el("span", { class: "name" }, p.displayName),
    el("span", { class: "meta" }, `${count(p.labelledFaceCount)} labelled · ${count(p.predictedFaceCount)} predicted`))));
  return [el("h1", {}, "Personas"), can("labeller") ? form : null,
    cards.length ? [el("div", { class: "grid", id: "personas" }, cards), showMore(page)]
      : stateBox("No personas yet. Create one, then label faces from Unknown faces or an image.")];
}

async function viewPersona(personaId) {
  const id = encodeURIComponent(personaId);
  const faces = (kind) => listItems(`/v1/personas/${id}/faces?kind=FACE_KIND_${kind}`, "faces");
  const [persona, labelled, predicted, rejected] = await Promise.all([
    api("GET", `/v1/personas/${id}`), faces("LABELLED"), faces("PREDICTED"), faces("REJECTED")]);
  const nameInput = el("input", { type: "text", value: persona.displayName, maxlength: 200,
    "aria-label": "persona name", required: true });
  const rename = el("form", { class: "toolbar", id: "rename-persona" }, nameInput,
    el("button", { type: "submit" }, "Rename"),
    el("button", { type: "button", class: "danger", id: "delete-persona", onclick: async () => {
      const choice = await choosePersonaDeletion(persona);
      if (!choice) return;
      const done = choice === "erase" ? "Persona and its faces erased" : "Persona deleted";
      if (await attempt(() => api("DELETE", `/v1/personas/${id}?eraseFaces=${choice === "erase"}`), done)) location.hash = "#/";
    } }, "Delete…"));
  rename.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { personaId: persona.personaId, displayName: nameInput.value.trim() };
    if (await attempt(() => api("PATCH", `/v1/personas/${id}`, body), "Renamed")) rerender();
  });
  const unlabel = (face) => async () => {
    const body = { personaId: persona.personaId };
    if (await attempt(() => api("POST", `/v1/faces/${encodeURIComponent(face.faceId)}:unlabel`, body), "Label removed")) rerender();
  };
  const verdict = (face, value, message) => async (event) => {
    event.target.closest(".card").querySelectorAll("button").forEach((b) => { b.disabled = true; });
    if (await attempt(() => label(face.faceId, persona.personaId, value), message)) rerender();
    else event.target.closest(".card").querySelectorAll("button").forEach((b) => { b.disabled = false; });
  };
  const labeller = can("labeller");
  const labelledCards = labelled.items.map((face) => faceCard(face, { meta: labelledBy(face),
    actions: labeller ? [el("button", { type: "button", onclick: unlabel(face) }, "Remove")] : [] }));
  const predictedCards = predicted.items.map((face) => faceCard(face, {
    meta: `${similarMeta(face.prediction.confidence)} · model v${face.prediction.modelVersion}`,
    confidence: face.prediction.confidence,
    actions: labeller ? [
      el("button", { type: "button", class: "ok confirm", title: "This face is this persona",
        onclick: verdict(face, "VERDICT_BELONGS", "Confirmed") }, "✓ Belongs"),
      el("button", { type: "button", class: "danger reject", title: "This face is not this persona",
        onclick: verdict(face, "VERDICT_NOT_BELONGS", "Rejected") }, "✗ Not"),
    ] : [] }));
  const rejectedCards = rejected.items.map((face) => faceCard(face, {
    actions: labeller ? [el("button", { type: "button", onclick: unlabel(face) }, "Undo")] : [] }));
  return [
    el("p", { class: "muted" }, el("a", { href: "#/" }, "← Personas")),
    rejectionBanner(persona),
    el("h1", { id: "persona-name" }, persona.displayName),
    el("p", { class: "muted" }, `${count(persona.labelledFaceCount)} labelled · ${count(persona.predictedFaceCount)} predicted`),
    labeller ? rename : null,
    el("h2", {}, "Labelled faces"),
    labelledCards.length ? [el("div", { class: "grid", id: "labelled" }, labelledCards), showMore(labelled)]
      : stateBox("No labelled faces yet: assign faces from Unknown faces or an image."),
    el("h2", {}, "Predicted faces, most confident first"),
    predictedCards.length ? [el("div", { class: "grid", id: "predicted" }, predictedCards), showMore(predicted)]
      : stateBox("No predictions for this persona yet. They appear here live once a model has been trained."),
    rejectedCards.length
      ? [el("h2", {}, "Rejected faces"), el("div", { class: "grid", id: "rejected" }, rejectedCards), showMore(rejected)]
      : null,
  ];
}

async function viewUnknown() {
  const [list, unknown] = await Promise.all([personas(true), listItems("/v1/faces:unknown", "faces")]);
  const cards = unknown.items.map((face) => {
    const select = personaSelect(list);
    const assign = el("button", { type: "button", class: "primary", onclick: async () => {
      if (!select.value) { toast("Choose a persona first", "error"); return; }
      if (await attempt(() => label(face.faceId, select.value, "VERDICT_BELONGS"), "Assigned")) rerender();
    } }, "Assign");
    const classified = face.prediction && face.prediction.modelVersion !== "0";
    const meta = classified ? unknownMeta(face.prediction.confidence) : "not classified yet";
    const metaTitle = classified ? unknownMetaTitle(face.prediction.confidence) : null;
    return faceCard(face, { meta, metaTitle, actions: list.length && can("labeller") ? [select, assign] : [] });
  });
  return [el("h1", {}, "Unknown faces"),
    list.length || !can("labeller") ? null : el("p", { class: "muted" }, "Create a persona first to assign faces to it."),
    cards.length ? [el("div", { class: "grid", id: "unknown" }, cards), showMore(unknown)]
      : stateBox("No unknown faces. Upload images to find more.")];
}

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new ApiError(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// Uploads start at most imageCallsPerSecond a second (the gateway's limit per caller on
// image calls), UPLOAD_PARALLEL at a time so the face pipeline's workers stay busy. A 429
// (another tab or script of this caller took the budget) waits what its retry-after says,
// else a doubling backoff, and sends the same file again: none is lost.
const UPLOAD_PARALLEL = 2;
const RATE_LIMITED_TRIES = 30;
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

function uploadPacer() {
  const spacing = 1000 / (Number(CLAIMS.imageCallsPerSecond) || Infinity);  // 0: no limit
  let next = 0;
  return async () => {
    const now = performance.now();
    const wait = next - now;
    next = Math.max(now, next) + spacing;
    if (wait > 0) await sleep(wait);
  };
}

async function ingestPaced(file, content, paced) {
  for (let tries = 1, backoff = 1; ; tries++, backoff = Math.min(backoff * 2, 30)) {
    await paced();
    try {
      return await api("POST", "/v1/images:ingest", { content, filename: file.name });
    } catch (error) {
      if (error.status !== 429 || tries >= RATE_LIMITED_TRIES) throw error;
      await sleep(1000 * (error.retryAfter > 0 ? error.retryAfter : backoff));
    }
  }
}

async function uploadOne(file, log, paced) {
  const line = el("li", {}, `${file.name}: uploading…`);
  log.append(line);
  try {
    const result = await ingestPaced(file, await readAsBase64(file), paced);
    const faces = (result.faces || []).length;
    line.textContent = "";
    line.append(el("a", { href: `#/image/${encodeURIComponent(result.image.imageId)}` }, file.name),
      result.duplicate ? ": already uploaded" : `: ${faces} face${faces === 1 ? "" : "s"} found`);
    return true;
  } catch (error) {
    line.className = "failed";
    line.textContent = `${file.name}: ${error.message}`;
    return false;
  }
}

// One progress bar for the whole batch: "Uploaded 37 of 100 · 1 failed".
async function upload(files, log, progress) {
  const queue = [...files];
  const paced = uploadPacer();
  let done = 0, failed = 0;
  delete progress.dataset.done;
  const show = () => {
    progress.hidden = false;
    progress.querySelector("progress").max = Math.max(1, files.length);
    progress.querySelector("progress").value = done;
    progress.querySelector(".progress-label").textContent = `Uploaded ${done} of ${files.length}`
      + (failed ? ` · ${failed} failed` : "") + (done === files.length ? "" : "…");
  };
  show();
  const worker = async () => {
    while (queue.length) {
      const ok = await uploadOne(queue.shift(), log, paced);
      done += 1;
      failed += ok ? 0 : 1;
      show();
    }
  };
  await Promise.all(Array.from({ length: Math.min(UPLOAD_PARALLEL, files.length) }, worker));
  progress.dataset.done = String(done);
}

async function viewImages() {
  const images = await listItems("/v1/images", "images");
  const input = el("input", { type: "file", accept: "image/*", multiple: true, id: "upload-input", "aria-label": "images to upload" });
  const log = el("ul", { class: "uploads", id: "upload-log" });
  const progress = el("div", { class: "progress upload-progress", id: "upload-progress", hidden: true },
    el("span", { class: "progress-label" }), el("progress", { max: 1, value: 0 }));
  const drop = el("div", { class: "dropzone" }, input, el("span", { class: "muted" }, "Choose or drop images (JPEG, PNG, WebP, up to 20 MB each)"),
    progress);
  const start = async (files) => { await upload([...files], log, progress); rerender({ keep: [drop, log] }); };
  input.addEventListener("change", () => start(input.files));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); start(e.dataTransfer.files); });
  const cards = images.items.map(imageCard);  // small thumbnails, titled by file name (people.js)
  return [el("h1", {}, "Images"), can("operator") ? [drop, log] : null,
    cards.length ? [el("div", { class: "grid", id: "images" }, cards), showMore(images)]
      : stateBox("No images yet. Upload some above.")];
}

function faceName(face, list) {
  const belongs = (face.labels || []).find((l) => l.verdict === "VERDICT_BELONGS");
  if (belongs) return { text: personaName(list, belongs.personaId), kind: "labelled" };
  const p = face.prediction;
  if (p && p.personaId) return { text: `${personaName(list, p.personaId)} ${percent(p.confidence)}`, kind: "predicted" };
  return { text: "unknown", kind: "unknown" };
}

async function viewImage(imageId) {
  const [list, result] = await Promise.all([personas(true), api("GET", `/v1/images/${encodeURIComponent(imageId)}`)]);
  const { image, faces = [] } = result;
  const boxes = faces.map((face) => {
    const { text, kind } = faceName(face, list);
    const b = face.box;
    const style = {
      left: `${(100 * b.left) / image.width}%`, top: `${(100 * b.top) / image.height}%`,
      width: `${(100 * (b.right - b.left)) / image.width}%`, height: `${(100 * (b.bottom - b.top)) / image.height}%`,
    };
    return el("div", { class: `box ${kind}`, style, dataset: { faceId: face.faceId } }, el("span", { class: "label" }, text));
  });
  const cards = faces.map((face) => {
    const select = personaSelect(list);
    const assign = el("button", { type: "button", onclick: async () => {
      if (!select.value) { toast("Choose a persona first", "error"); return; }
      if (await attempt(() => label(face.faceId, select.value, "VERDICT_BELONGS"), "Assigned")) rerender();
    } }, "Assign");
    const meta = [labelledBy(face), face.drawnBy ? `drawn by ${face.drawnBy}` : ""].filter(Boolean).join(" · ");
    return faceCard(face, { caption: faceName(face, list).text, meta,
      actions: [...(list.length && can("labeller") ? [select, assign] : []), ...(can("admin") ? [eraseFaceButton(face)] : [])] });
  });
  const photo = el("div", { class: "photo", id: "photo" },
    authImage(imageUrl(image.imageId), { alt: image.filename || "image" }), boxes);
  return [
    el("p", { class: "muted" }, el("a", { href: "#/images" }, "← Images")),
    el("h1", {}, image.filename || image.imageId),
    el("p", { class: "muted" }, `${image.width}×${image.height} · ${image.contentType} · ${faces.length} face${faces.length === 1 ? "" : "s"}`),
    can("admin") ? el("div", { class: "toolbar" }, eraseImageButton(image, faces)) : null,
    can("labeller") ? addFaceControl(image, photo, list) : null,  // draw a face the detector missed (draw.js)
    photo,
    faces.length ? [el("h2", {}, "Faces"), el("div", { class: "grid" }, cards)] : stateBox("No face was found in this image."),
  ];
}

// ---- Erasure (privacy) -------------------------------------------------------
// Each confirm says exactly what goes; erasure cannot be undone.
const faceWord = (n) => `${n} face${n === 1 ? "" : "s"}`;

function eraseImageButton(image, faces) {
  return el("button", { type: "button", class: "danger", id: "erase-image", onclick: async () => {
    const labelled = faces.filter((f) => (f.labels || []).length).length;
    if (!confirm(`Erase this image for good?\n\nGoes: the photo, its ${faceWord(faces.length)} with their crops and `
      + `embeddings, ${labelled ? `the labels of ${faceWord(labelled)}, ` : ""}all predictions, and every model version `
      + "trained on those labels (a new one is trained from what remains).")) return;
    if (await attempt(() => api("DELETE", `/v1/images/${encodeURIComponent(image.imageId)}`), "Image erased")) location.hash = "#/images";
  } }, "Erase image");
}

function eraseFaceButton(face) {
  return el("button", { type: "button", class: "danger erase-face", onclick: async () => {
    const labels = (face.labels || []).length;
    if (!confirm(`Erase this face for good?\n\nGoes: its crop and embedding, ${labels ? `its ${labels} label${labels === 1 ? "" : "s"}, ` : ""}`
      + "its prediction, and every model version trained on its labels. The photo itself stays.")) return;
    if (await attempt(() => api("DELETE", `/v1/faces/${encodeURIComponent(face.faceId)}`), "Face erased")) rerender();
  } }, "Erase");
}

// Resolves "keep" (faces stay, as unknown), "erase" (faces and their photos go) or null.
function choosePersonaDeletion(persona) {
  return new Promise((resolve) => {
    const n = count(persona.labelledFaceCount);
    const dialog = el("dialog", { id: "delete-persona-dialog" },
      el("h2", {}, `Delete “${persona.displayName}”?`),
      el("p", {}, "Either way the persona, its labels and predictions go, and every model version naming it is withdrawn."),
      el("form", { method: "dialog", class: "choices" },
        el("button", { value: "keep", id: "delete-keep-faces" }, `Delete, keep the ${faceWord(n)} as unknown`),
        can("admin") ? el("button", { value: "erase", class: "danger", id: "delete-erase-faces" },
          `Delete and erase the ${faceWord(n)} labelled as this person, with their whole photos`) : null,
        el("button", { value: "", id: "delete-cancel" }, "Cancel")));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue || null); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// A job that found nothing new (no label yet, or none changed) ends SUCCEEDED without a
// version: it is shown as what it did, not as a success.
const trained = (job) => Boolean(job.modelVersion) && job.modelVersion !== "0";
function jobPhase(job) {
  const phase = job.phase.replace("TRAINING_PHASE_", "").toLowerCase();
  return phase === "succeeded" && !trained(job) ? "nothing to train" : phase;
}

// A rate and how many faces it was measured on: "–" when none could be held out.
const rate = (value, evaluatedOn) => (count(evaluatedOn) ? Number(value || 0).toFixed(2) : "–");

async function viewModels() {
  const [versions, jobs] = await Promise.all([
    listItems("/v1/modelVersions", "modelVersions"), api("GET", "/v1/trainingJobs?pageSize=10")]);
  const rows = versions.items.map((v) => {
    const state = v.state.replace("MODEL_STATE_", "").toLowerCase();
    const m = v.metrics || {};
    const activate = el("button", { type: "button", onclick: async () => {
      if (await attempt(() => api("POST", `/v1/modelVersions/${v.version}:activate`, {}), `Version ${v.version} is active`)) rerender();
    } }, "Activate");
    return el("tr", { dataset: { version: v.version } },
      el("td", {}, `v${v.version}`),
      el("td", {}, el("span", { class: `tag ${state}` }, state),
        v.pinned ? el("span", { class: "tag pinned", title: "activated by hand: new versions wait until the pin is released" }, "pinned") : null),
      el("td", {}, rate(m.accuracy, m.evaluatedFaces)), el("td", {}, rate(m.unknownRejectionRate, m.evaluatedUnknowns)),
      el("td", {}, `${count(m.labelledFaces)} / ${count(m.personas)}`),
      el("td", {}, v.createTime ? new Date(v.createTime).toLocaleString() : "–"),
      el("td", { class: "muted" }, v.gateReason || ""),
      el("td", {}, ["active", "withdrawn"].includes(state) || !can("operator") ? null : activate));
  });
  const jobRows = (jobs.trainingJobs || []).map((j) => el("tr", { dataset: { jobId: j.jobId } },
    el("td", {}, j.jobId), el("td", { class: "phase" }, jobPhase(j)),
    el("td", {}, trained(j) ? `v${j.modelVersion}` : "–"), el("td", {}, j.activated ? "yes" : "no"),
    el("td", { class: "muted" }, (j.message || "").replace(/^nothing to train: /, ""))));
  const train = el("button", { type: "button", class: "primary", onclick: async () => {
    if (await attempt(() => api("POST", "/v1/trainingJobs", { reason: "web UI" }), "Training started")) rerender();
  } }, "Train now");
  const pinned = versions.items.find((v) => v.pinned);
  const release = pinned ? el("button", { type: "button", id: "release-pin", onclick: async () => {
    if (await attempt(() => api("POST", "/v1/modelVersions:releasePin", {}), "Pin released")) rerender();
  } }, `Release pin on v${pinned.version}`) : null;
  return [el("h1", {}, "Models"), can("operator") ? el("div", { class: "toolbar" }, train, release) : null,
    pinned ? el("p", { class: "muted", id: "pin-note" }, `v${pinned.version} was activated by hand and is pinned: `
      + "new versions are trained and listed here but not activated until the pin is released.") : null,
    el("p", { class: "muted" }, `Confidence is the ${CONFIDENCE_MEANING}. Accuracy and unknown rejection are `
      + "measured on held-out labelled faces; hover a version's gate text for the full reason."),
    rows.length ? [el("table", { id: "models" }, el("thead", {}, el("tr", {},
      ["Version", "State", "Accuracy", "Unknown rejection", "Faces / personas", "Created", "Gate", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)), showMore(versions)]
      : stateBox("No model yet: label faces of at least two personas and one is trained."),
    el("h2", {}, "Recent training jobs"),
    jobRows.length ? el("table", {}, el("thead", {}, el("tr", {},
      ["Job", "Phase", "Version", "Activated", "Message"].map((h) => el("th", {}, h)))), el("tbody", {}, jobRows))
      : stateBox("No training job yet.")];
}

// ---- Router ----------------------------------------------------------------
const routes = [
  [/^#?\/?$/, viewPersonasPeople, "personas"],
  [/^#\/persona\/([^/]+)$/, viewPersonaPeople, "personas"],
  [/^#\/unknown$/, viewUnknownPeople, "unknown"],
  [/^#\/images$/, viewImages, "images"],
  [/^#\/image\/([^/]+)$/, viewImagePeople, "images"],
  [/^#\/models$/, viewModels, "models"],
];

// Text typed while a refresh was fetching (its inputs were built before the typing)
// carries over to the new inputs of the same data-draft key; returns the new input
// to focus when the user was typing in one.
function carryDrafts(from, into) {
  const focused = document.activeElement;
  let typing = null;
  for (const old of from.querySelectorAll("input[data-draft]")) {
    const fresh = into.querySelector(`input[data-draft="${CSS.escape(old.dataset.draft)}"]`);
    if (!fresh) continue;
    if (old.value) fresh.value = old.value;
    if (old === focused) typing = fresh;
  }
  return typing;
}

let renderSeq = 0;
// Renders the view for the current hash. A refresh keeps what is on screen
// until the new content is ready (no flash, no reload); `keep` moves live
// nodes (an upload log, a file input) into the new content.
async function render({ refresh = false, keep = [] } = {}) {
  const seq = ++renderSeq;
  if (!session()) { showSignIn(); return; }
  const match = routes.map(([re, view, nav]) => [location.hash.match(re), view, nav]).find(([m]) => m);
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", !!match && a.dataset.nav === match[2]));
  if (!match) { main.replaceChildren(stateBox("Page not found.", "error")); return; }
  const [m, view] = match;
  if (!refresh) { main.replaceChildren(stateBox("Loading…", "loading")); keyHandlers = null; }
  try {
    const content = await view(...m.slice(1).map(decodeURIComponent));
    if (seq !== renderSeq) return;  // a newer render started meanwhile
    const fragment = el("div", { class: "view" }, content);
    for (const node of keep) {
      const placeholder = fragment.querySelector(`.${node.className.split(" ")[0]}`);
      if (placeholder) placeholder.replaceWith(node);
    }
    // A live refresh must not move the page under the user: keep the scroll
    // position and the focused face (selections live in people.js's state).
    const scrolled = window.scrollY;
    const anchor = refresh ? screenAnchor(main) : null;
    const focusedFace = document.activeElement?.closest?.(".face-card")?.dataset.faceId;
    if (focusedFace && !focusAfterRender) focusAfterRender = focusedFace;
    const typing = carryDrafts(main, fragment);
    main.replaceChildren(fragment);
    if (refresh) window.scrollTo(0, scrolled);
    if (anchor) keepAnchor(main, anchor);
    restoreFocus(main);
    if (typing) {
      typing.focus({ preventScroll: true });
      typing.setSelectionRange(typing.value.length, typing.value.length);
    }
    main.dataset.ready = String(seq);
    if (!refresh) catchUpIfWaiting();
  } catch (error) {
    if (seq !== renderSeq || error instanceof SignedOut) return;
    if (refresh) { toast(error.message, "error"); return; }
    main.replaceChildren(stateBox(error.message, "error"),
      el("p", { class: "muted" }, el("a", { href: location.hash || "#/", onclick: () => render() }, "Try again")));
  }
}
const rerender = (options = {}) => render({ refresh: true, ...options });

// ---- Live updates (server-sent events) ---------------------------------------
const REFRESH_ON = new Set(["EVENT_TYPE_IMAGE_INGESTED", "EVENT_TYPE_FACE_LABELLED", "EVENT_TYPE_FACE_UNLABELLED",
  "EVENT_TYPE_PERSONA_CREATED", "EVENT_TYPE_PERSONA_RENAMED", "EVENT_TYPE_PERSONA_DELETED",
  "EVENT_TYPE_MODEL_VERSION_ACTIVATED", "EVENT_TYPE_PREDICTIONS_WRITTEN", "EVENT_TYPE_ERASED",
  "EVENT_TYPE_HIDDEN_CHANGED", "EVENT_TYPE_FACE_CLUSTERS_UPDATED", "EVENT_TYPE_FACE_ADDED"]);
let refreshTimer = null;
let refreshDeferrals = 0;
const MAX_POINTER_DEFERRALS = 40;  // x 500 ms: a live change waits at most ~20 s for the pointer to move on
function scheduleRefresh() {
  // Many events arrive in bursts (a re-classification writes in batches): one refresh per burst.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    // Do not replace a form the user is typing in, nor a photo a face is being drawn on.
    if ((main.contains(document.activeElement) && document.activeElement.matches("input[type=text], input[type=search], select"))
        || main.querySelector("#photo.drawing")) {
      scheduleRefresh();
      return;
    }
    // Nor the list under the pointer, whose face is about to be clicked (for a while).
    if (main.querySelector(".card:hover, .cluster-card:hover") && refreshDeferrals++ < MAX_POINTER_DEFERRALS) {
      main.dataset.pending = "pointer";  // tests and styles can see a change is waiting
      scheduleRefresh();
      return;
    }
    refreshDeferrals = 0;
    delete main.dataset.pending;
    rerender({ keep: [...main.querySelectorAll(".dropzone, .uploads")] });
  }, 500);
}

// A view still waiting for data (suggested people being computed) may have missed the event
// saying it is ready, appended before the event stream opened: once both are there, look again.
function catchUpIfWaiting() {
  if (document.getElementById("live-dot").classList.contains("on")
      && main.querySelector('.view [data-state="loading"]')) scheduleRefresh();
}

const hideTimers = {};
function showProgress(id, text, done, total, finished) {
  const box = document.getElementById(id);
  box.hidden = false;
  box.querySelector(".progress-label").textContent = text;
  box.title = text;  // a phone shows the bar without its text
  const bar = box.querySelector("progress");
  bar.max = Math.max(1, total);
  bar.value = finished ? bar.max : Math.min(done, bar.max);
  clearTimeout(hideTimers[id]);
  if (finished) hideTimers[id] = setTimeout(() => { box.hidden = true; }, 4000);
}

function onEvent(event) {
  const a = event.attributes || {};
  if (event.type === "EVENT_TYPE_TRAINING_PROGRESS") {
    const phase = (a.phase || "").replace("TRAINING_PHASE_", "").toLowerCase();
    showProgress("progress-training", trainingText(phase, a), count(a.done), count(a.total),
      ["succeeded", "failed"].includes(phase));
    if (phase === "failed") toast(`Training failed${a.message ? `: ${a.message}` : ""}`, "error");
  } else if (event.type === "EVENT_TYPE_MODEL_VERSION_REJECTED") {
    showRejection({ version: event.subject, reason: a.reason || "", personaIds: (a.persona_ids || "").split(",").filter(Boolean) });
    toast(`Model v${event.subject} was not activated: ${a.reason || "the gate rejected it"}`, "error");
    scheduleRefresh();
  } else if (event.type === "EVENT_TYPE_RECLASSIFY_PROGRESS") {
    const state = (a.state || "").replace("RECLASSIFY_STATE_", "").toLowerCase();
    const rate = a.faces_per_second ? ` · ${Math.round(Number(a.faces_per_second))} faces/s` : "";
    showProgress("progress-reclassify", `Re-classifying (v${a.model_version || "?"}): ${count(a.done)}/${count(a.total)}${rate}`,
      count(a.done), count(a.total), state !== "running");
    if (state !== "running") scheduleRefresh();
  }
  if (event.type === "EVENT_TYPE_MODEL_VERSION_ACTIVATED" && latestRejection
      && Number(event.subject) > Number(latestRejection.version)) {
    latestRejection = null;  // a newer version went live: the rejection is history
    document.getElementById("gate-status")?.remove();
  }
  if (REFRESH_ON.has(event.type)) scheduleRefresh();
}

// The header never says "succeeded" for a version that did not go live.
function trainingText(phase, a) {
  if (phase !== "succeeded") return `Training: ${phase}`;
  const version = a.model_version && a.model_version !== "0" ? a.model_version : "";
  if (!version) return "Training: nothing new to train";
  return a.activated === "true" ? `Training: v${version} is live` : `Training: v${version} not activated`;
}

// The newest gate rejection: shown in the header and on the persona pages it affects.
let latestRejection = null;
function showRejection(rejection) {
  latestRejection = rejection;
  let status = document.getElementById("gate-status");
  if (!status) {
    status = el("a", { id: "gate-status", class: "tag rejected", href: "#/models" });
    document.getElementById("live").append(status);
  }
  status.textContent = `v${rejection.version} rejected`;
  status.title = rejection.reason;
}
function rejectionBanner(persona) {
  const r = latestRejection;
  if (!r || !(r.personaIds.includes(persona.personaId) || r.reason.includes(persona.displayName))) return null;
  return el("p", { class: "state error", id: "rejection" },
    `Model v${r.version} was not activated, because of faces of this persona: ${r.reason}`);
}
// On load: the newest version, if the gate rejected it and nothing newer went live.
async function loadGateStatus() {
  try {
    const newest = (await api("GET", "/v1/modelVersions?pageSize=1")).modelVersions || [];
    if (newest.length && newest[0].state === "MODEL_STATE_REJECTED") {
      showRejection({ version: newest[0].version, reason: newest[0].gateReason || "", personaIds: [] });
    }
  } catch { /* the trainer may not be up yet: live events will tell */ }
}

// The event stream is read with fetch (EventSource cannot send the token);
// reconnecting resumes after the last cursor seen so no event is lost.
let lastCursor = "";
let events = null;  // the AbortController of the open stream
let retryDelay = 1000;
let retryTimer = null;

function stopEvents() {
  clearTimeout(retryTimer);
  if (events) events.abort();
  events = null;
  const dot = document.getElementById("live-dot");
  dot.className = "dot";
}

async function connectEvents() {
  const dot = document.getElementById("live-dot");
  const controller = new AbortController();
  events = controller;
  const url = `/v1/events:watch${lastCursor ? `?afterCursor=${encodeURIComponent(lastCursor)}` : ""}`;
  try {
    const response = await fetch(url, { headers: { ...authorization(), accept: "text/event-stream" },
      signal: controller.signal });
    checkSignedIn(response);
    if (!response.ok) throw new ApiError(`HTTP ${response.status}`);
    dot.className = "dot on"; dot.title = "live updates: connected"; retryDelay = 1000;
    catchUpIfWaiting();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trim()).join("\n");
        buffer = buffer.slice(end + 2);
        let event;
        try { event = JSON.parse(data); } catch { continue; }
        if (event.cursor) lastCursor = event.cursor;
        onEvent(event);
      }
    }
  } catch (error) {
    if (error instanceof SignedOut || controller.signal.aborted) return;
  }
  if (controller.signal.aborted || events !== controller) return;
  dot.className = "dot off";
  dot.title = "live updates: reconnecting";
  retryTimer = setTimeout(connectEvents, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 15000);
}

// Signed in (or on a sign-in page that leads here): the page and its live updates.
function start() {
  showWho();
  if (!session()) { showSignIn(); return; }
  if (location.hash.startsWith("#token=")) location.hash = "#/";
  render();
  if (!events) connectEvents();
  loadGateStatus();
}

window.addEventListener("hashchange", () => render());
fetch("/ui-config.json").then((response) => (response.ok ? response.json() : {}))
  .then((config) => Object.assign(CLAIMS, config), () => {})
  .then(restoreOidcSession)
  .then((problem) => (problem ? signOut(problem) : start()));
