// Visage UI: "Add a face" on an image page (issue 30). The person drags a box over the
// photo (mouse, pen or touch: Pointer Events), names it with the same type-ahead picker as
// elsewhere (people.js) or leaves it unknown, and the face pipeline finds the face in the box
// (POST /v1/images/{id}/faces). Escape cancels at any step. Uses app.js's helpers at call time.
"use strict";

const MIN_DRAG_PX = 8;  // a click, not a drag: no box

// The toolbar button that starts drawing on `photo` (the .photo element of viewImage).
function addFaceControl(image, photo, list) {
  const hint = el("span", { class: "muted draw-hint", hidden: true },
    "Drag a box around the face on the photo · Esc cancels");
  const button = el("button", { type: "button", id: "add-face", "aria-pressed": "false",
    onclick: () => (photo.classList.contains("drawing") ? stopDrawing(photo) : startDrawing(image, photo, list)) },
  "Add a face");
  photo.addEventListener("visage-drawing", (e) => {
    hint.hidden = !e.detail;
    button.setAttribute("aria-pressed", String(e.detail));
    button.textContent = e.detail ? "Cancel" : "Add a face";
  });
  return el("div", { class: "toolbar draw-toolbar" }, button, hint);
}

// The box the pointer spans, in the stored image's pixels, whatever the page's zoom and the
// photo's displayed size: client coordinates relative to the image's box on screen, scaled.
function naturalPoint(img, image, event) {
  const rect = img.getBoundingClientRect();
  const clamp = (v, max) => Math.round(Math.min(max, Math.max(0, v)));
  return { x: clamp(((event.clientX - rect.left) * image.width) / rect.width, image.width),
    y: clamp(((event.clientY - rect.top) * image.height) / rect.height, image.height) };
}

function boxBetween(a, b) {
  return { left: Math.min(a.x, b.x), top: Math.min(a.y, b.y), right: Math.max(a.x, b.x), bottom: Math.max(a.y, b.y) };
}

function placeBox(node, box, image) {
  Object.assign(node.style, { left: `${(100 * box.left) / image.width}%`, top: `${(100 * box.top) / image.height}%`,
    width: `${(100 * (box.right - box.left)) / image.width}%`, height: `${(100 * (box.bottom - box.top)) / image.height}%` });
}

function startDrawing(image, photo, list) {
  const img = photo.querySelector("img");
  const draft = el("div", { class: "box draft", hidden: true });
  photo.append(draft);
  photo.classList.add("drawing");
  photo.dispatchEvent(new CustomEvent("visage-drawing", { detail: true }));
  let start = null;
  const down = (e) => {
    if (start || photo.querySelector(".draw-form")) return;
    e.preventDefault();
    photo.setPointerCapture(e.pointerId);
    start = naturalPoint(img, image, e);
    placeBox(draft, boxBetween(start, start), image);
    draft.hidden = false;
  };
  const move = (e) => { if (start) placeBox(draft, boxBetween(start, naturalPoint(img, image, e)), image); };
  const up = (e) => {
    if (!start) return;
    const end = naturalPoint(img, image, e);
    const rect = img.getBoundingClientRect();
    const box = boxBetween(start, end);
    start = null;
    // The drag's size on screen decides whether it was a drag at all.
    if (((box.right - box.left) * rect.width) / image.width < MIN_DRAG_PX
        || ((box.bottom - box.top) * rect.height) / image.height < MIN_DRAG_PX) {
      draft.hidden = true;
      return;
    }
    placeBox(draft, box, image);
    nameDrawnFace(image, photo, list, box);
  };
  const escape = (e) => {
    if (e.key !== "Escape") return;
    e.preventDefault();
    e.stopPropagation();  // the page's own keys (people.js) do not see it
    stopDrawing(photo);
  };
  photo.addEventListener("pointerdown", down);
  photo.addEventListener("pointermove", move);
  photo.addEventListener("pointerup", up);
  photo.addEventListener("pointercancel", () => { start = null; draft.hidden = true; });
  document.addEventListener("keydown", escape, true);
  photo.stopDrawing = () => {
    for (const [type, handler] of [["pointerdown", down], ["pointermove", move], ["pointerup", up]]) {
      photo.removeEventListener(type, handler);
    }
    document.removeEventListener("keydown", escape, true);
  };
}

function stopDrawing(photo) {
  if (photo.stopDrawing) photo.stopDrawing();
  photo.stopDrawing = null;
  photo.classList.remove("drawing");
  photo.querySelectorAll(".box.draft, .draw-form").forEach((node) => node.remove());
  photo.dispatchEvent(new CustomEvent("visage-drawing", { detail: false }));
}

// The name box under the drawn box: a name (existing, or a new persona) or none (unknown).
function nameDrawnFace(image, photo, list, box) {
  const picker = personaPicker(list, "Who is this? (optional)");
  const add = el("button", { type: "submit", class: "ok" }, "Add face");
  const form = el("form", { class: "draw-form", onsubmit: async (e) => {
    e.preventDefault();
    add.disabled = true;
    if (await addDrawnFace(image, box, picker.input.value, list)) {
      stopDrawing(photo);
      rerender();
    } else {
      add.disabled = false;
    }
  } }, picker.node, add);
  form.style.top = `${(100 * box.bottom) / image.height}%`;
  form.style.left = `${(100 * box.left) / image.width}%`;
  photo.append(form);
  picker.input.focus();
}

// Resolves the typed name (creating the persona when new), then draws the face in one request;
// a persona created for a face that is refused is deleted again.
async function addDrawnFace(image, box, name, list) {
  return attempt(async () => {
    const pick = name.trim() ? await resolvePersona(name, list) : null;
    try {
      const { face } = await api("POST", `/v1/images/${encodeURIComponent(image.imageId)}/faces`,
        { box, personaId: pick ? pick.personaId : "" });
      return face;
    } catch (error) {
      if (pick && pick.created) await api("DELETE", `/v1/personas/${encodeURIComponent(pick.personaId)}`).catch(() => {});
      throw error;
    }
  }, name.trim() ? `Face added as ${name.trim()}` : "Face added");
}
