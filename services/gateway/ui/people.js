// Organising many faces (issue 17): suggested people on the Unknown page,
// multi-select with shift-click, keyboard labelling, undo of the last action,
// a type-ahead persona picker that can create a persona, merge, hide, search,
// a persona's photos and one-click verdicts on an image's faces.
// Loaded before app.js, whose helpers (el, api, attempt, toast, rerender, ...)
// these functions call; app.js's routes call the views defined here.
"use strict";

const enc = encodeURIComponent;
const thumbUrl = (imageId, size = 320) => `/v1/images/${enc(imageId)}/content?size=${size}`;
// Stored names may be paths ("../photos/bbt/amy1.png"): show the file name.
const baseName = (path) => String(path || "").split(/[\\/]/).pop();
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// ---- API calls ---------------------------------------------------------------
const batchLabel = (personaId, faceIds, verdict) => api("POST", "/v1/faces:batchLabel",
  { personaId, labels: faceIds.map((faceId) => ({ faceId, verdict })) });
const unlabelAll = (personaId, faceIds) => Promise.all(faceIds.map((faceId) =>
  api("POST", `/v1/faces/${enc(faceId)}:unlabel`, { personaId })));
const hideFaces = (faceIds, hidden) => Promise.all(faceIds.map((faceId) =>
  api("POST", `/v1/faces/${enc(faceId)}:setHidden`, { hidden })));

// ---- Undo of the last action -------------------------------------------------
let lastAction = null;
let undoBarTimer = null;
const UNDO_BAR_MS = 12000;
function offerUndo(text, undo) {
  lastAction = { text, undo };
  let bar = document.getElementById("undo-bar");
  if (!bar) {
    bar = el("div", { id: "undo-bar", class: "undo-bar", role: "status" });
    document.body.append(bar);
  }
  bar.replaceChildren(el("span", {}, text),
    el("button", { type: "button", id: "undo-button", title: "Undo (U)", onclick: undoLast }, "Undo"));
  bar.hidden = false;
  clearTimeout(undoBarTimer);  // the bar steps aside after a while; U still undoes
  undoBarTimer = setTimeout(() => { bar.hidden = true; }, UNDO_BAR_MS);
}

async function undoLast() {
  if (!lastAction) return;
  const { text, undo } = lastAction;
  lastAction = null;
  document.getElementById("undo-bar").hidden = true;
  if (await attempt(async () => { await undo(); return true; }, `Undone: ${text}`)) {
    await personas(true);
    rerender();
  }
}

// Labels faces as a persona, with undo (which also deletes a persona the action created).
async function nameFaces(faceIds, pick) {
  const done = await attempt(() => batchLabel(pick.personaId, faceIds, "VERDICT_BELONGS"),
    `${plural(faceIds.length, "face")} named ${pick.displayName}`);
  if (!done) return false;
  offerUndo(`${plural(faceIds.length, "face")} named ${pick.displayName}`, async () => {
    await unlabelAll(pick.personaId, faceIds);
    if (pick.created) await api("DELETE", `/v1/personas/${enc(pick.personaId)}`);
  });
  return true;
}

async function hideWithUndo(faceIds) {
  if (!await attempt(() => hideFaces(faceIds, true), `${plural(faceIds.length, "face")} hidden`)) return false;
  offerUndo(`${plural(faceIds.length, "face")} hidden`, () => hideFaces(faceIds, false));
  return true;
}

// ---- Type-ahead persona picker -----------------------------------------------
// A text input with the persona names as suggestions; a name nobody has yet
// creates that persona when the action runs.
let pickerCount = 0;
function personaPicker(list, placeholder = "Who is this?") {  // short: the whole of it shows on a phone
  const id = `persona-names-${++pickerCount}`;
  const input = el("input", { type: "text", class: "picker", list: id, placeholder, maxlength: 200,
    autocomplete: "off", "aria-label": "persona name" });
  const options = el("datalist", { id }, list.map((p) => el("option", { value: p.displayName })));
  return { input, node: el("span", { class: "picker-box" }, input, options) };
}

// The persona a typed name means: an existing one (ignoring case), else a new one.
async function resolvePersona(name, list) {
  const wanted = name.trim().toLowerCase();
  if (!wanted) throw new ApiError("Type a name first");
  const existing = list.find((p) => p.displayName.toLowerCase() === wanted);
  if (existing) return { personaId: existing.personaId, displayName: existing.displayName, created: false };
  const created = await api("POST", "/v1/personas", { displayName: name.trim() });
  await personas(true);
  return { personaId: created.personaId, displayName: created.displayName, created: true };
}

// ---- Selection (shift-click ranges) that survives live re-renders ------------
const selections = new Map();  // location.hash -> Set of face ids
const anchors = new Map();
function selection() {
  if (!selections.has(location.hash)) selections.set(location.hash, new Set());
  return selections.get(location.hash);
}

function makeSelectable(grid, onChange) {
  const cards = [...grid.querySelectorAll(".face-card")];
  const chosen = selection();
  for (const card of cards) {
    const faceId = card.dataset.faceId;
    card.tabIndex = 0;
    const box = el("input", { type: "checkbox", class: "pick", "aria-label": "select face", title: "Select (shift-click: a range)" });
    box.checked = chosen.has(faceId);
    card.classList.toggle("selected", box.checked);
    box.addEventListener("click", (event) => {
      const ids = cards.map((c) => c.dataset.faceId);
      const anchor = anchors.get(location.hash);
      const targets = event.shiftKey && anchor && ids.includes(anchor)
        ? ids.slice(Math.min(ids.indexOf(anchor), ids.indexOf(faceId)), Math.max(ids.indexOf(anchor), ids.indexOf(faceId)) + 1)
        : [faceId];
      for (const id of targets) if (box.checked) chosen.add(id); else chosen.delete(id);
      anchors.set(location.hash, faceId);
      syncSelection(grid);
      onChange();
    });
    card.prepend(box);
  }
}

function syncSelection(grid) {
  const chosen = selection();
  for (const card of grid.querySelectorAll(".face-card")) {
    const on = chosen.has(card.dataset.faceId);
    card.classList.toggle("selected", on);
    const box = card.querySelector("input.pick");
    if (box) box.checked = on;
  }
}

// The selected faces still on screen, or else the focused one.
function targetFaces(grid) {
  const shown = new Set([...grid.querySelectorAll(".face-card")].map((c) => c.dataset.faceId));
  const chosen = [...selection()].filter((id) => shown.has(id));
  if (chosen.length) return chosen;
  const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest(".face-card");
  return focused && grid.contains(focused) ? [focused.dataset.faceId] : [];
}

function selectionBar(grid, buttons) {
  const countLabel = el("span", { class: "selected-count" });
  const bar = el("div", { class: "toolbar selection-bar" }, countLabel, buttons,
    el("button", { type: "button", onclick: () => { selection().clear(); syncSelection(grid); update(); } }, "Clear"));
  function update() {
    const shown = new Set([...grid.querySelectorAll(".face-card")].map((c) => c.dataset.faceId));
    const n = [...selection()].filter((id) => shown.has(id)).length;
    countLabel.textContent = n ? `${n} selected` : "Select faces (shift-click for a range) or use the keys below";
  }
  update();
  return { bar, update };
}

// ---- Keyboard: arrows move between faces, Y / N decide, Space selects, U undoes
let keyHandlers = null;  // { yes(faceIds), no(faceIds), grid } of the current view
function keyboardHelp(yes, no) {
  return el("p", { class: "muted keys" }, "Keys: ← ↑ → ↓ move · Space select · ",
    el("kbd", {}, "Y"), ` ${yes} · `, el("kbd", {}, "N"), ` ${no} · `, el("kbd", {}, "U"), " undo");
}

function moveFocus(grid, card, key) {
  const cards = [...grid.querySelectorAll(".face-card")];
  const index = cards.indexOf(card);
  if (index < 0) { cards[0]?.focus(); return; }
  const top = card.offsetTop;
  const perRow = cards.filter((c) => c.offsetTop === top).length || 1;
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow }[key];
  const next = cards[Math.max(0, Math.min(cards.length - 1, index + step))];
  next?.focus();
}

document.addEventListener("keydown", async (event) => {
  // Keys typed into a field (search, the sign-in token, a name) are text, not shortcuts.
  if (event.target.closest?.("input:not([type=checkbox]), select, textarea, [contenteditable]")) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "u" || key === "U") { event.preventDefault(); undoLast(); return; }
  if (!keyHandlers || !document.body.contains(keyHandlers.grid)) return;
  const { grid } = keyHandlers;
  const card = document.activeElement && document.activeElement.closest && document.activeElement.closest(".face-card");
  if (key.startsWith("Arrow")) { event.preventDefault(); moveFocus(grid, card && grid.contains(card) ? card : null, key); return; }
  if (key === " " && card && grid.contains(card)) {
    event.preventDefault();
    card.querySelector("input.pick")?.click();
    return;
  }
  const handler = { y: keyHandlers.yes, n: keyHandlers.no }[key.toLowerCase()];
  if (!handler) return;
  const faceIds = targetFaces(grid);
  if (!faceIds.length) { toast("Select a face first (or move to one with the arrow keys)", "error"); return; }
  event.preventDefault();
  const next = card && grid.contains(card) ? nextCardId(grid, faceIds) : null;
  if (await handler(faceIds)) {
    faceIds.forEach((id) => selection().delete(id));
    focusAfterRender = next;
    rerender();
  }
});

// After Y / N the face leaves the list: focus moves to the one after it.
let focusAfterRender = null;
function nextCardId(grid, faceIds) {
  const cards = [...grid.querySelectorAll(".face-card")].map((c) => c.dataset.faceId);
  const last = Math.max(...faceIds.map((id) => cards.indexOf(id)));
  return cards.slice(last + 1).find((id) => !faceIds.includes(id))
    || [...cards].reverse().find((id) => !faceIds.includes(id)) || null;
}
function restoreFocus(root) {
  const id = focusAfterRender;
  focusAfterRender = null;
  if (!id) return;
  const card = root.querySelector(`.face-card[data-face-id="${CSS.escape(id)}"]`);
  if (card) card.focus({ preventScroll: true });
}

// ---- Suggested people (Unknown page) -----------------------------------------
const reviewing = new Set();  // clusters whose faces are open for review
const leftOut = new Map();  // cluster id -> face ids the user removed from it
const drafts = new Map();  // cluster id -> the name typed so far

async function suggestedPeople(list) {
  const data = await api("GET", "/v1/faces:clusters?pageSize=12&sampleSize=4");
  const clusters = data.clusters || [];
  const heading = el("h2", {}, "Suggested people ",
    el("span", { class: "muted" }, clusters.length
      ? `· ${plural(count(data.clusteredFaces), "face")} in ${plural(clusters.length, "group")}${data.nextPageToken ? "+" : ""}`
      : ""));
  if (!clusters.length) {
    const text = data.stale ? "Looking for faces that belong together…"
      : "No suggestions: no two unknown faces look alike.";
    return el("section", { id: "suggested" }, heading, el("p", { class: "muted", dataset: { state: data.stale ? "loading" : "empty" } }, text));
  }
  return el("section", { id: "suggested" }, heading,
    el("div", { class: "clusters" }, clusters.map((cluster) => clusterCard(cluster, list))));
}

function clusterCard(cluster, list) {
  const id = cluster.clusterId;
  const removed = leftOut.get(id) || new Set();
  const faceIds = cluster.faceIds.filter((f) => !removed.has(f));
  const picker = personaPicker(list);
  picker.input.dataset.draft = `cluster-${id}`;
  picker.input.value = drafts.get(id) || "";
  picker.input.addEventListener("input", () => drafts.set(id, picker.input.value));
  const name = async () => {
    const pick = await attempt(() => resolvePersona(picker.input.value, list));
    if (!pick) return;
    if (await nameFaces(faceIds, pick)) {
      drafts.delete(id); reviewing.delete(id); leftOut.delete(id);
      rerender();
    }
  };
  picker.input.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); name(); } });
  const mosaic = el("div", { class: "mosaic" }, faceIds.slice(0, 4).map((faceId) =>
    authImage(cropUrl(faceId), { alt: "", loading: "lazy" })));
  const review = el("button", { type: "button", class: "review", "aria-expanded": String(reviewing.has(id)), onclick: () => {
    if (reviewing.has(id)) reviewing.delete(id); else reviewing.add(id);
    rerender();
  } }, reviewing.has(id) ? "Done reviewing" : "Review faces");
  const hide = el("button", { type: "button", class: "hide-cluster", title: "Strangers: hide these faces", onclick: async () => {
    if (await hideWithUndo(faceIds)) rerender();
  } }, "Hide");
  const card = el("div", { class: "cluster-card", dataset: { clusterId: id } },
    mosaic,
    el("div", { class: "body" },
      el("span", { class: "name" }, plural(faceIds.length, "face"),
        removed.size ? el("span", { class: "muted" }, ` (${removed.size} left out)`) : null),
      el("span", { class: "meta", title: "how alike the faces are" }, `similarity ${percent(cluster.quality)}`),
      el("div", { class: "actions" }, picker.node,
        el("button", { type: "button", class: "primary name-cluster", onclick: name }, "Name"), review, hide)));
  if (reviewing.has(id)) card.append(clusterReview(cluster, removed));
  return card;
}

// Every face of a group: clicking one leaves it out of (or takes it back into) the naming.
function clusterReview(cluster, removed) {
  return el("div", { class: "review-faces" },
    el("p", { class: "muted" }, "Click a face that is not this person to leave it out."),
    el("div", { class: "review-grid" }, cluster.faceIds.map((faceId) => el("button", {
      type: "button", class: `review-face${removed.has(faceId) ? " left-out" : ""}`, dataset: { faceId },
      "aria-pressed": String(!removed.has(faceId)), title: removed.has(faceId) ? "Left out: click to include" : "Click to leave out",
      onclick: () => {
        const set = leftOut.get(cluster.clusterId) || new Set();
        if (set.has(faceId)) set.delete(faceId); else set.add(faceId);
        leftOut.set(cluster.clusterId, set);
        rerender();
      } }, authImage(cropUrl(faceId), { alt: "face", loading: "lazy" })))));
}

// ---- Unknown page: suggestions, then every unknown face with bulk actions ----
async function viewUnknownPeople() {
  const list = await personas(true);
  if (!can("labeller")) return el("div", {}, await viewUnknown());  // a viewer is not offered what it may not do
  const [suggested, rest] = await Promise.all([suggestedPeople(list), viewUnknown()]);
  const view = el("div", {}, rest);
  const grid = view.querySelector("#unknown");
  const heading = view.querySelector("h1");
  heading.after(suggested);
  // The pickers below create personas as they go: no need to create one first.
  [...view.querySelectorAll("p.muted")].filter((p) => p.textContent.startsWith("Create a persona first")).forEach((p) => p.remove());
  if (!grid) return view;
  const picker = personaPicker(list, "Assign selected to…");
  picker.input.id = picker.input.dataset.draft = "bulk-persona";
  const assign = async (faceIds) => {
    const pick = await attempt(() => resolvePersona(picker.input.value, list));
    return pick ? nameFaces(faceIds, pick) : false;
  };
  const { bar, update } = selectionBar(grid, [picker.node,
    el("button", { type: "button", class: "primary", id: "assign-selected", onclick: async () => {
      const faceIds = targetFaces(grid);
      if (!faceIds.length) { toast("Select faces first", "error"); return; }
      if (await assign(faceIds)) { selection().clear(); rerender(); }
    } }, "Assign"),
    el("button", { type: "button", id: "hide-selected", title: "Strangers in the background", onclick: async () => {
      const faceIds = targetFaces(grid);
      if (!faceIds.length) { toast("Select faces first", "error"); return; }
      if (await hideWithUndo(faceIds)) { selection().clear(); rerender(); }
    } }, "Hide")]);
  makeSelectable(grid, update);
  grid.before(el("h2", {}, "All unknown faces"), bar, keyboardHelp("assign to the name above", "hide (a stranger)"));
  keyHandlers = { grid, yes: assign, no: hideWithUndo };
  return view;
}

// ---- Persona page: bulk verdicts, merge, hide, photos ------------------------
async function viewPersonaPeople(personaId) {
  const [content, list] = await Promise.all([viewPersona(personaId), personas(true)]);
  const view = el("div", {}, content);
  const persona = list.find((p) => p.personaId === personaId)
    || await api("GET", `/v1/personas/${enc(personaId)}`);
  if (!can("labeller")) {  // a viewer is not offered what it may not do
    view.append(await personaPhotos(personaId));
    return view;
  }
  view.querySelector("#rename-persona").after(personaTools(persona, list));
  const grid = view.querySelector("#predicted");
  if (grid) {
    const verdict = (value, word) => async (faceIds) => {
      if (!await attempt(() => batchLabel(personaId, faceIds, value), `${plural(faceIds.length, "face")} ${word}`)) return false;
      offerUndo(`${plural(faceIds.length, "face")} ${word}`, () => unlabelAll(personaId, faceIds));
      return true;
    };
    const yes = verdict("VERDICT_BELONGS", "confirmed"), no = verdict("VERDICT_NOT_BELONGS", "rejected");
    const run = (handler) => async () => {
      const faceIds = targetFaces(grid);
      if (!faceIds.length) { toast("Select faces first", "error"); return; }
      if (await handler(faceIds)) { selection().clear(); rerender(); }
    };
    const { bar, update } = selectionBar(grid, [
      el("button", { type: "button", id: "select-confident", onclick: () => {
        for (const card of grid.querySelectorAll(".face-card")) {
          if (Number(card.dataset.confidence) >= 0.9) selection().add(card.dataset.faceId);
        }
        syncSelection(grid); update();
      } }, "Select all above 90%"),
      el("button", { type: "button", class: "ok", id: "confirm-selected", onclick: run(yes) }, "✓ Belongs"),
      el("button", { type: "button", class: "danger", id: "reject-selected", onclick: run(no) }, "✗ Not")]);
    makeSelectable(grid, update);
    grid.before(bar, keyboardHelp("belongs", "not this person"));
    keyHandlers = { grid, yes, no };
  }
  view.append(await personaPhotos(personaId));
  return view;
}

function personaTools(persona, list) {
  const others = list.filter((p) => p.personaId !== persona.personaId);
  const target = el("select", { id: "merge-target", "aria-label": "merge into" },
    el("option", { value: "" }, "Merge into…"), others.map((p) => el("option", { value: p.personaId }, p.displayName)));
  const merge = el("button", { type: "button", id: "merge-persona", onclick: async () => {
    if (!target.value) { toast("Choose the persona to merge into", "error"); return; }
    const into = others.find((p) => p.personaId === target.value);
    if (!confirm(`Merge “${persona.displayName}” into “${into.displayName}”? Its labels move; “${persona.displayName}” is deleted.`)) return;
    const merged = await attempt(() => api("POST", `/v1/personas/${enc(into.personaId)}:merge`,
      { sourcePersonaIds: [persona.personaId] }), `Merged into ${into.displayName}`);
    if (merged) { await personas(true); location.hash = `#/persona/${enc(into.personaId)}`; }
  } }, "Merge");
  const hidden = Boolean(persona.hidden);
  const hide = el("button", { type: "button", id: "hide-persona", onclick: async () => {
    const body = { hidden: !hidden };
    if (await attempt(() => api("POST", `/v1/personas/${enc(persona.personaId)}:setHidden`, body),
      hidden ? "Shown in the persona list again" : "Hidden from the persona list")) {
      offerUndo(hidden ? "persona shown" : "persona hidden",
        () => api("POST", `/v1/personas/${enc(persona.personaId)}:setHidden`, { hidden }));
      await personas(true);
      rerender();
    }
  } }, hidden ? "Show in list" : "Hide");
  return el("div", { class: "toolbar", id: "persona-tools" },
    others.length ? [target, merge] : null, hide, hidden ? el("span", { class: "tag" }, "hidden") : null);
}

// The photos a persona appears in (by its labelled faces), newest label first.
async function personaPhotos(personaId) {
  const faces = (await listItems(`/v1/personas/${enc(personaId)}/faces?kind=FACE_KIND_LABELLED`, "faces", 200)).items;
  const imageIds = [...new Set(faces.map((f) => f.imageId))].slice(0, 48);
  const images = await Promise.all(imageIds.map((id) => api("GET", `/v1/images/${enc(id)}`).then((r) => r.image, () => null)));
  const cards = images.filter(Boolean).map(imageCard);
  return el("section", { id: "persona-photos" }, el("h2", {}, "Photos"),
    cards.length ? el("div", { class: "grid", id: "photos" }, cards)
      : stateBox("No photos yet: the photos of this persona's labelled faces show here."));
}

function imageCard(image) {
  const title = baseName(image.filename) || image.imageId.slice(0, 12);
  return el("a", { class: "card image-card", href: `#/image/${enc(image.imageId)}`, title: image.filename || title },
    authImage(thumbUrl(image.imageId), { class: "face", alt: title, loading: "lazy" }),
    el("div", { class: "body" },
      el("span", { class: "name" }, title),
      el("span", { class: "meta" }, `${plural(image.faceCount, "face")} · ${image.width}×${image.height}`)));
}

// ---- Personas page: search and hidden personas -------------------------------
let personaQuery = "";
let showHidden = false;
async function viewPersonasPeople() {
  const view = el("div", {}, await viewPersonas());
  const search = el("input", { type: "search", id: "persona-search", placeholder: "Search people…", value: personaQuery,
    "aria-label": "search personas" });
  const hiddenBox = el("input", { type: "checkbox", id: "show-hidden" });
  hiddenBox.checked = showHidden;
  const results = el("div", { id: "search-results" });
  const refresh = async () => {
    personaQuery = search.value;
    showHidden = hiddenBox.checked;
    if (!personaQuery.trim() && !showHidden) { results.replaceChildren(); view.querySelector("#personas")?.removeAttribute("hidden"); return; }
    const params = `query=${enc(personaQuery.trim())}${showHidden ? "&includeHidden=true" : ""}`;
    const found = await attempt(() => listItems(`/v1/personas?${params}`, "personas", Infinity));
    if (!found) return;
    view.querySelector("#personas")?.setAttribute("hidden", "");
    results.replaceChildren(found.items.length
      ? el("div", { class: "grid", id: "persona-results" }, found.items.map(personaCardPlus))
      : stateBox(`Nobody called “${personaQuery.trim()}”.`));
  };
  search.addEventListener("input", refresh);
  hiddenBox.addEventListener("change", refresh);
  (view.querySelector("#create-persona") || view.querySelector("h1")).after(el("div", { class: "toolbar" }, search,
    el("label", { class: "muted" }, hiddenBox, " show hidden")), results);
  if (personaQuery || showHidden) await refresh();
  return view;
}

function personaCardPlus(p) {
  return el("a", { class: "card persona-card", href: `#/persona/${enc(p.personaId)}`, dataset: { personaId: p.personaId } },
    p.coverFaceId ? faceImage(p.coverFaceId, p.displayName)
      : el("div", { class: "face placeholder", "aria-hidden": "true" }, (p.displayName || "?").trim().charAt(0).toUpperCase()),
    el("div", { class: "body" },
      el("span", { class: "name" }, p.displayName, p.hidden ? el("span", { class: "tag" }, " hidden") : null),
      el("span", { class: "meta" }, `${count(p.labelledFaceCount)} labelled · ${count(p.predictedFaceCount)} predicted`)));
}

// ---- Image page: one click decides a face ------------------------------------
async function viewImagePeople(imageId) {
  const [content, result, list] = await Promise.all([viewImage(imageId),
    api("GET", `/v1/images/${enc(imageId)}`), personas()]);
  const view = el("div", {}, content);
  const h1 = view.querySelector("h1");
  if (h1 && result.image.filename) { h1.textContent = baseName(result.image.filename); h1.title = result.image.filename; }
  if (!can("labeller")) return view;
  for (const face of result.faces || []) {
    const card = view.querySelector(`.face-card[data-face-id="${CSS.escape(face.faceId)}"]`);
    const actions = card && card.querySelector(".actions");
    if (!card) continue;
    const p = face.prediction;
    const buttons = [];
    const labelled = (face.labels || []).some((l) => l.verdict === "VERDICT_BELONGS");
    if (p && p.personaId && !labelled) {
      const name = personaName(list, p.personaId);
      const decide = (verdict, word) => async () => {
        if (!await attempt(() => batchLabel(p.personaId, [face.faceId], verdict), `${word} ${name}`)) return;
        offerUndo(`${word} ${name}`, () => unlabelAll(p.personaId, [face.faceId]));
        rerender();
      };
      buttons.push(el("button", { type: "button", class: "ok confirm", title: `This is ${name}`,
        onclick: decide("VERDICT_BELONGS", "Confirmed") }, `✓ ${name}`),
      el("button", { type: "button", class: "danger reject", title: `This is not ${name}`,
        onclick: decide("VERDICT_NOT_BELONGS", "Not") }, "✗ Not"));
    }
    const hide = async () => {
      if (face.hidden) {
        if (await attempt(() => hideFaces([face.faceId], false), "Face shown again")) rerender();
      } else if (await hideWithUndo([face.faceId])) rerender();
    };
    if (!labelled) {
      buttons.push(el("button", { type: "button", class: "hide-face", title: "A stranger: hide from Unknown faces",
        onclick: hide }, face.hidden ? "Unhide" : "Hide"));
    }
    if (!buttons.length) continue;
    const row = el("div", { class: "actions one-click" }, buttons);
    if (actions) actions.before(row); else card.querySelector(".body").append(row);
  }
  return view;
}

// ---- Live refreshes keep the face under the pointer where it is ---------------
// New faces arrive at the top of newest-first lists: without this, a refresh
// would slide every card down under the user's pointer. At the top of the page
// with nothing under the pointer the page stays at its top: what arrives above
// (suggested people, computed after the list) is what the user should see.
function screenAnchor(root) {
  const cards = [...root.querySelectorAll(".face-card, .cluster-card, .image-card")];
  const card = root.querySelector(".face-card:hover, .cluster-card:hover, .image-card:hover")
    || (window.scrollY > 0 ? cards.find((c) => c.getBoundingClientRect().top >= 0) : null);
  if (!card) return null;
  const key = card.dataset.faceId ? `face-card[data-face-id="${CSS.escape(card.dataset.faceId)}"]`
    : card.dataset.clusterId ? `cluster-card[data-cluster-id="${CSS.escape(card.dataset.clusterId)}"]`
      : card.getAttribute("href") ? `image-card[href="${CSS.escape(card.getAttribute("href"))}"]` : null;
  return key ? { selector: `.${key}`, top: card.getBoundingClientRect().top } : null;
}

function keepAnchor(root, anchor) {
  const card = root.querySelector(anchor.selector);
  if (card) window.scrollBy(0, card.getBoundingClientRect().top - anchor.top);
}
