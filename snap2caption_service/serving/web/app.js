/* Snap2Caption creator page: plain JavaScript, no build step, no framework.
 *
 * Talks to the service it is served by (same origin, so no CORS):
 *   POST /generate-caption/upload  multipart  (a photo chosen from disk)
 *   POST /generate-caption         JSON       (a photo from the camera or the clipboard as a data URL;
 *                                             an image address as image_url, which the server fetches)
 *   POST /feedback                 JSON       (ratings and edits, keyed by request_id)
 */
(function () {
  "use strict";

  // The page lives at <service>/ui/; the API is one level up. Resolved from this script's own
  // address so the page also works behind a proxy that adds a path prefix.
  const SCRIPT_URL = (document.currentScript && document.currentScript.src) || location.href;
  const API_BASE = new URL("../", SCRIPT_URL);
  const REQUEST_TIMEOUT_MS = 180000;
  const STORE_KEY = "snap2caption.apiKey";
  const STORE_CREATOR = "snap2caption.creatorId";
  const FORMATS_HINT = "Please use a JPEG, PNG, WebP, GIF, BMP or TIFF photo.";

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("caption-form"), fileInput: $("file-input"), dropzone: $("dropzone"),
    previewWrap: $("preview-wrap"), preview: $("preview"), noPreview: $("no-preview"),
    previewName: $("preview-name"), previewSize: $("preview-size"), dropEmpty: $("drop-empty"),
    clearPhoto: $("clear-photo"), url: $("image-url"), fetchUrl: $("fetch-url"),
    webcamOpen: $("webcam-open"), webcam: $("webcam"), video: $("webcam-video"),
    webcamCapture: $("webcam-capture"), webcamClose: $("webcam-close"),
    tone: $("tone"), audience: $("audience"), numHashtags: $("num-hashtags"), numCandidates: $("num-candidates"),
    platform: $("platform"), platformHint: $("platform-hint"),
    modelInfo: $("model-info"), lowConfidence: $("low-confidence"),
    generate: $("generate"), generateLabel: document.querySelector("#generate .btn-label"),
    results: $("results"), status: $("status"), error: $("error"), photoError: $("photo-error"),
    empty: $("results-empty"),
    result: $("result"), caption: $("caption"), hashtags: $("hashtags"), alt: $("alt-text"),
    others: $("others"), candidates: $("candidates"), meta: $("meta"),
    rateUp: $("rate-up"), rateDown: $("rate-down"), editOpen: $("edit-open"), editForm: $("edit-form"),
    editCaption: $("edit-caption"), editCaptionCount: $("edit-caption-count"), editHashtags: $("edit-hashtags"),
    editReason: $("edit-reason"), editSend: $("edit-send"), editCancel: $("edit-cancel"),
    feedbackConfirm: $("feedback-confirm"),
    settings: $("settings"), apiKey: $("api-key"), saveKey: $("save-key"), clearKey: $("clear-key"),
    keyState: $("key-state"), creatorId: $("creator-id"),
  };

  const state = {
    photo: null,     // {blob, name, via: "file"|"camera"|"paste", dataUrl?} or {url, name, via: "url"}
    previewUrl: null,
    result: null,    // last CaptionResult
    busy: false,
    stream: null,    // webcam MediaStream
    rating: null,
  };

  // ---------------------------------------------------------------- storage (may be blocked)
  const store = {
    get(k) { try { return localStorage.getItem(k) || ""; } catch (_) { return ""; } },
    set(k, v) { try { v ? localStorage.setItem(k, v) : localStorage.removeItem(k); } catch (_) { /* private mode */ } },
  };

  // ---------------------------------------------------------------- status and errors
  let statusTimer = null;
  function say(message, ok) {
    clearTimeout(statusTimer);
    el.status.classList.toggle("is-ok", !!ok);
    el.status.textContent = message;
    if (ok) statusTimer = setTimeout(() => { if (el.status.textContent === message) el.status.textContent = ""; }, 6000);
  }

  function clearError() {
    for (const box of [el.error, el.photoError]) {
      box.hidden = true;
      box.querySelector(".error-title").textContent = "";
      box.querySelector(".error-detail").textContent = "";
      box.querySelector(".error-actions").replaceChildren();
      box.removeAttribute("data-kind");
    }
  }

  // Problems with getting a photo in show next to the photo controls; problems with a request
  // show with the results. Either way the box is role=alert, so it is announced.
  const PHOTO_ERRORS = new Set(["no_photo", "bad_url", "url_fetch", "url_not_image", "drop", "camera"]);

  /** Show a problem in creator words. kind is a stable name tests and styles can use. */
  function showError(kind, title, detail, actions) {
    clearError();
    say("");
    const box = PHOTO_ERRORS.has(kind) ? el.photoError : el.error;
    box.dataset.kind = kind;
    box.querySelector(".error-title").textContent = title;
    box.querySelector(".error-detail").textContent = detail || "";
    box.querySelector(".error-actions").replaceChildren(...(actions || []).map(([label, fn]) => {
      const b = document.createElement("button");
      b.type = "button"; b.className = "btn btn-small"; b.textContent = label;
      b.addEventListener("click", fn);
      return b;
    }));
    box.hidden = false;
    // On a phone the box may be off screen; bring it into view without stealing focus.
    const r = box.getBoundingClientRect();
    if (r.top < 0 || r.bottom > window.innerHeight) {
      box.scrollIntoView({ block: "nearest", behavior: window.matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth" });
    }
  }

  function humanSize(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + " KB";
    return n + " bytes";
  }

  function detailText(body) {
    if (!body) return "";
    const d = body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map((e) => {
        const where = Array.isArray(e.loc) ? e.loc.filter((p) => p !== "body").join(" → ") : "";
        return (where ? where + ": " : "") + (e.msg || JSON.stringify(e));
      }).join("; ");
    }
    return typeof body.error === "string" ? body.error : "";
  }

  function askForKey() {
    el.settings.open = true;
    el.apiKey.focus();
  }

  /** Turn an HTTP answer that is not OK into a message a creator can act on. */
  function explainHttpError(status, body, what) {
    const code = body && typeof body.error === "string" ? body.error : "";
    const detail = detailText(body);
    const retry = [["Try again", () => el.generate.click()]];
    if (status === 401 || code === "unauthorized") {
      const had = !!store.get(STORE_KEY);
      return showError("unauthorized",
        had ? "Your API key wasn't accepted" : "This server needs an API key",
        had ? "Check the key under \u201cAPI key\u201d at the top of the page, save it, and try again."
            : "Enter the key you were given under \u201cAPI key\u201d at the top of the page, save it, and try again.",
        [["Enter API key", askForKey]]);
    }
    const fromUrl = state.photo && state.photo.via === "url";
    if (fromUrl && body && body.stage === "fetch" && status !== 503 && status !== 413) {
      return explainUrlError(status, code, detail, what);
    }
    if (fromUrl && code === "not_an_image") {
      return showError("url_not_image", "That address isn't a photo",
        "The server fetched it, but it isn't an image (perhaps a web page). " +
        "Right-click the picture and use \u201cCopy image address\u201d instead.");
    }
    if (status === 429 || status === 503) {
      return showError("busy", "The server is busy right now",
        "Lots of people are making captions at the moment. Please wait a few seconds and try again.", what === "caption" ? retry : []);
    }
    if (code === "not_an_image") {
      return showError("not_an_image", "That file isn't a photo",
        "We couldn't read it as an image. " + FORMATS_HINT);
    }
    if (code === "unsupported_format") {
      return showError("unsupported_format", "That image type isn't supported", FORMATS_HINT);
    }
    if (status === 413 || code === "image_too_large" || code === "too_many_pixels") {
      const tip = code === "too_many_pixels"
        ? "The photo has too many pixels. Please resize it (for example to 4000 pixels on the long side) and try again."
        : "Please choose a smaller photo, or export it at a lower quality or size, and try again.";
      return showError("too_large", "That photo is too large", (detail ? detail + " " : "") + tip);
    }
    if (code === "invalid_base64" || code === "empty_image" || code === "truncated_image") {
      return showError("damaged", "That photo looks damaged or incomplete",
        "It may not have finished downloading. Please try another copy of the photo." + (detail ? " (" + detail + ")" : ""));
    }
    if (status >= 400 && status < 500) {
      return showError("invalid", "Something in the request wasn't accepted",
        detail || ("The server answered " + status + "."));
    }
    return showError("server", "Something went wrong on our side",
      "The server answered with error " + status + (detail ? " (" + detail + ")" : "") + ". Please try again in a moment.",
      what === "caption" ? retry : []);
  }

  /** The server could not fetch an image address: say which way, with the server's own reason. */
  function explainUrlError(status, code, detail, what) {
    const titles = {
      ssrf_blocked: "That address can't be used",
      url_scheme_not_allowed: "That address can't be used",
      invalid_url: "That doesn't look like an image address",
      url_unresolvable: "That website doesn't exist",
      url_not_found: "There's no image at that address",
      url_forbidden: "That website won't share its image",
      too_many_redirects: "That address keeps redirecting",
      fetch_timeout: "That website took too long",
      dns_timeout: "That website took too long",
    };
    const title = titles[code] || (status >= 500 ? "That website didn't answer" : "Couldn't get the image at that address");
    const tip = status >= 500
      ? " Please try again in a moment, or save the photo and choose the file instead."
      : " Check the address, or save the photo and choose the file instead.";
    const reason = detail ? detail + (/[.!?]$/.test(detail) ? "" : ".") : "The server answered " + status + ".";
    return showError("url_fetch", title, reason + tip,
      status >= 500 && what === "caption" ? [["Try again", () => el.generate.click()]] : []);
  }

  function explainNetworkError(err, what) {
    if (err && err.name === "AbortError") {
      return showError("timeout", "That took too long",
        "The server didn't answer in time. Please try again; a smaller photo or fewer caption options is quicker.");
    }
    return showError("network", "Can't reach Snap2Caption",
      "Check your internet connection and try again. If it keeps happening the server may be down.",
      what === "caption" ? [["Try again", () => el.generate.click()]] : []);
  }

  // ---------------------------------------------------------------- HTTP
  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const key = store.get(STORE_KEY).trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  /** fetch + JSON; resolves {ok, status, body} or rejects on network failure / timeout. */
  async function call(path, init) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), REQUEST_TIMEOUT_MS);
    try {
      const res = await fetch(new URL(path, API_BASE), Object.assign({ signal: ctrl.signal, credentials: "same-origin" }, init));
      let body = null;
      const text = await res.text();
      try { body = text ? JSON.parse(text) : null; } catch (_) { body = { detail: text.slice(0, 300) }; }
      return { ok: res.ok, status: res.status, body };
    } finally {
      clearTimeout(timer);
    }
  }

  // ---------------------------------------------------------------- the photo
  /** Make ``photo`` the one to caption, previewed from ``src``. */
  function usePhoto(photo, src, sizeText, message) {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.photo = photo;
    state.previewUrl = photo.blob ? src : null;
    el.preview.hidden = false;
    el.noPreview.hidden = true;
    el.noPreview.textContent = photo.via === "url" ? "No preview; the server fetches the image" : "No preview for this file";
    el.preview.src = src;
    el.previewName.textContent = photo.name;
    el.previewSize.textContent = sizeText;
    el.previewWrap.hidden = false;
    el.dropEmpty.hidden = true;
    el.fileInput.labels[0].textContent = "Choose another photo";
    clearError();
    say(message);
  }

  function setPhoto(blob, name, via) {
    const photo = { blob, name: name || "photo", via };
    usePhoto(photo, URL.createObjectURL(blob), "(" + humanSize(blob.size) + ")",
      "Photo ready: " + photo.name + ". Choose a style and press Generate.");
  }

  function clearPhoto() {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.photo = null; state.previewUrl = null;
    el.preview.removeAttribute("src");
    el.previewWrap.hidden = true;
    el.dropEmpty.hidden = false;
    el.fileInput.value = "";
    el.fileInput.labels[0].textContent = "Choose a photo";
    say("Photo removed.");
    el.fileInput.focus();
  }

  el.preview.addEventListener("error", () => {
    // Not every file the server accepts can be shown (TIFF), and a non-image can't: the server decides.
    if (!state.photo) return;
    el.preview.hidden = true;
    el.noPreview.hidden = false;
  });

  el.fileInput.addEventListener("change", () => {
    const file = el.fileInput.files && el.fileInput.files[0];
    if (file) setPhoto(file, file.name, "file");
  });
  el.clearPhoto.addEventListener("click", clearPhoto);

  // Drag and drop: a file from the desktop, or an image dragged from another web page (its URL).
  ["dragenter", "dragover"].forEach((t) => el.dropzone.addEventListener(t, (e) => {
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
    el.dropzone.classList.add("is-over");
  }));
  ["dragleave", "dragend"].forEach((t) => el.dropzone.addEventListener(t, (e) => {
    if (!el.dropzone.contains(e.relatedTarget)) el.dropzone.classList.remove("is-over");
  }));
  el.dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    el.dropzone.classList.remove("is-over");
    const dt = e.dataTransfer;
    if (!dt) return;
    const file = dt.files && dt.files[0];
    if (file) { setPhoto(file, file.name, "file"); return; }
    const uri = (dt.getData("text/uri-list") || dt.getData("text/plain") || "").split("\n")[0].trim();
    if (/^https?:\/\//i.test(uri)) { el.url.value = uri; loadFromUrl(); return; }
    showError("drop", "Nothing to use in what you dropped", "Drop a photo file, or choose one with the button.");
  });
  // Keep a missed drop from navigating away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  // Paste an image (a screenshot, a copied photo) anywhere on the page.
  document.addEventListener("paste", (e) => {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        const f = item.getAsFile();
        if (f) { e.preventDefault(); setPhoto(f, f.name && f.name !== "image.png" ? f.name : "pasted image", "paste"); return; }
      }
    }
  });

  // From an address: the server fetches the image (image_url), so a site that refuses other
  // pages' reads (no CORS headers) still works. The preview is a plain <img>, which needs no CORS;
  // whether it shows or not, the caption never depends on it.
  function loadFromUrl() {
    const raw = el.url.value.trim();
    clearError();
    let url;
    try { url = new URL(raw); } catch (_) { url = null; }
    if (!url || !/^https?:$/.test(url.protocol)) {
      showError("bad_url", "That doesn't look like an image address",
        "Paste a full address starting with http:// or https://, for example https://example.com/photo.jpg.");
      el.url.focus();
      return;
    }
    const last = url.pathname.split("/").pop() || "";
    let name;
    try { name = decodeURIComponent(last); } catch (_) { name = last; }  // a stray "%" in the address
    name = name || url.hostname;
    usePhoto({ url: url.href, name, via: "url" }, url.href, "(from " + url.hostname + ")",
      "Image address ready: " + name + ". Choose a style and press Generate; the server fetches the image.");
  }
  el.fetchUrl.addEventListener("click", loadFromUrl);
  el.url.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); loadFromUrl(); }
  });

  // Camera: only offered where the browser has getUserMedia (secure pages).
  const hasCamera = !!(navigator.mediaDevices && typeof navigator.mediaDevices.getUserMedia === "function");
  el.webcamOpen.hidden = !hasCamera;

  function stopCamera() {
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    el.video.srcObject = null;
    el.webcam.hidden = true;
  }

  el.webcamOpen.addEventListener("click", async () => {
    clearError();
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    } catch (err) {
      const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
      showError("camera", denied ? "Camera access was blocked" : "No camera available",
        denied ? "Allow camera access for this page in your browser settings, or choose a photo file instead."
               : "We couldn't find a camera on this device. Choose a photo file instead.");
      if (!denied) el.webcamOpen.hidden = true;
      return;
    }
    el.video.srcObject = state.stream;
    el.webcam.hidden = false;
    say("Camera on. Press \u201cTake photo\u201d when ready.");
    el.webcamCapture.focus();
  });
  el.webcamClose.addEventListener("click", () => { stopCamera(); el.webcamOpen.focus(); });
  el.webcamCapture.addEventListener("click", () => {
    const v = el.video;
    if (!v.videoWidth) { say("The camera is still starting; try again in a moment."); return; }
    const canvas = document.createElement("canvas");
    canvas.width = v.videoWidth; canvas.height = v.videoHeight;
    canvas.getContext("2d").drawImage(v, 0, 0);
    canvas.toBlob((blob) => {
      stopCamera();
      if (blob) setPhoto(blob, "camera photo.jpg", "camera");
      el.generate.focus();
    }, "image/jpeg", 0.92);
  });

  function blobToDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(r.error);
      r.readAsDataURL(blob);
    });
  }

  // ---------------------------------------------------------------- generate
  function setBusy(busy) {
    state.busy = busy;
    el.generate.disabled = busy;
    el.generate.classList.toggle("is-busy", busy);
    el.generate.setAttribute("aria-busy", String(busy));
    el.results.setAttribute("aria-busy", String(busy));
    el.generateLabel.textContent = busy ? "Generating\u2026" : "Generate caption";
  }

  function options() {
    const opts = {
      tone: el.tone.value.trim().slice(0, 32) || "casual",
      audience: el.audience.value,
      platform: el.platform.value,
      num_hashtags: parseInt(el.numHashtags.value, 10),
      num_candidates: parseInt(el.numCandidates.value, 10),
    };
    // The caption is made for this creator: only their feedback on it will count.
    const creator = store.get(STORE_CREATOR).trim();
    if (creator) opts.creator_id = creator.slice(0, 128);
    return opts;
  }

  el.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (state.busy) return;
    clearError();
    if (!state.photo) {
      showError("no_photo", "Choose a photo first",
        "Pick a file, drag one here, paste an image address, or use your camera.");
      el.fileInput.focus();
      return;
    }
    const opts = options();
    setBusy(true);
    say("Generating your caption\u2026");
    try {
      let res;
      if (state.photo.via === "file") {
        const fd = new FormData();
        fd.append("image", state.photo.blob, state.photo.name);
        for (const [k, v] of Object.entries(opts)) fd.append(k, String(v));
        res = await call("generate-caption/upload", { method: "POST", headers: headers(), body: fd });
      } else if (state.photo.via === "url") {
        res = await call("generate-caption", {
          method: "POST", headers: headers({ "Content-Type": "application/json" }),
          body: JSON.stringify(Object.assign({ image_url: state.photo.url }, opts)),
        });
      } else {
        if (!state.photo.dataUrl) state.photo.dataUrl = await blobToDataUrl(state.photo.blob);
        res = await call("generate-caption", {
          method: "POST", headers: headers({ "Content-Type": "application/json" }),
          body: JSON.stringify(Object.assign({ image: state.photo.dataUrl }, opts)),
        });
      }
      if (!res.ok) { say(""); explainHttpError(res.status, res.body, "caption"); return; }
      if (!res.body || typeof res.body.caption !== "string") {
        say(""); showError("server", "Something went wrong on our side", "The server's answer was not a caption. Please try again.");
        return;
      }
      render(res.body);
      say("Caption ready.", true);
    } catch (err) {
      say("");
      explainNetworkError(err, "caption");
    } finally {
      setBusy(false);
    }
  });

  // ---------------------------------------------------------------- results
  function chip(tag) {
    const li = document.createElement("li");
    li.textContent = tag;
    return li;
  }

  function render(r) {
    state.result = r;
    state.rating = null;
    el.empty.hidden = true;
    el.result.hidden = false;
    el.caption.textContent = r.caption;
    // An answer the model itself doubts is shown, but marked, never passed off as fine.
    el.lowConfidence.hidden = !r.low_confidence;
    el.lowConfidence.textContent = r.low_confidence
      ? (r.notice || "The model is not sure about this picture.") +
        (typeof r.confidence === "number" ? " (confidence " + Math.round(r.confidence * 100) + "%)" : "")
      : "";
    const tags = r.hashtags || [];
    el.hashtags.replaceChildren(...tags.map(chip));
    if (!tags.length) {
      const li = document.createElement("li"); li.className = "none"; li.textContent = "No hashtags this time.";
      el.hashtags.append(li);
    }
    el.alt.textContent = r.alt_text || "No alt text this time. Please describe the photo yourself for people using screen readers.";
    el.alt.classList.toggle("muted", !r.alt_text);
    document.querySelector('button.copy[data-copy="alt"]').disabled = !r.alt_text;
    document.querySelector('button.copy[data-copy="hashtags"]').disabled = !tags.length;
    el.rateUp.setAttribute("aria-pressed", "false");
    el.rateDown.setAttribute("aria-pressed", "false");
    el.rateUp.disabled = el.rateDown.disabled = false;
    closeEdit();
    el.feedbackConfirm.hidden = true;

    const others = (r.candidates || []).slice(1);
    el.candidates.replaceChildren(...others.map((c, i) => {
      const li = document.createElement("li");
      const p = document.createElement("p"); p.className = "cand-caption"; p.textContent = c.caption;
      const t = document.createElement("p"); t.className = "cand-tags"; t.textContent = (c.hashtags || []).join(" ");
      const foot = document.createElement("div"); foot.className = "cand-foot";
      const s = document.createElement("span"); s.className = "score";
      s.textContent = "Score " + Number(c.score).toFixed(2);
      s.title = "How confident the model is (higher is better)";
      const btns = document.createElement("div"); btns.className = "row";
      const copy = document.createElement("button");
      copy.type = "button"; copy.className = "btn btn-small copy"; copy.textContent = "Copy";
      copy.setAttribute("aria-label", "Copy option " + (i + 2));
      copy.addEventListener("click", () => copyText([c.caption, (c.hashtags || []).join(" ")].filter(Boolean).join("\n\n"), copy));
      const use = document.createElement("button");
      use.type = "button"; use.className = "btn btn-small"; use.textContent = "Use & edit";
      use.setAttribute("aria-label", "Use option " + (i + 2) + " and edit it");
      use.addEventListener("click", () => openEdit(c));
      btns.append(copy, use);
      foot.append(s, btns);
      li.append(p, t, foot);
      return li;
    }));
    el.others.hidden = others.length === 0;
    const top = r.candidates && r.candidates[0];
    el.meta.textContent = [
      top ? "Score " + Number(top.score).toFixed(2) : "",
      typeof r.confidence === "number" ? "Confidence " + Math.round(r.confidence * 100) + "%" : "",
      r.model_version ? "Model " + r.model_version : "",
      typeof r.latency_ms === "number" ? (r.latency_ms / 1000).toFixed(1) + " s" : "",
      r.request_id ? "Request " + r.request_id : "",
    ].filter(Boolean).join(" · ");
  }

  // ---------------------------------------------------------------- copy
  async function copyText(text, button) {
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); ok = true; }
    } catch (_) { ok = false; }
    if (!ok) {
      // Fallback for older browsers and non-secure pages.
      const ta = document.createElement("textarea");
      ta.value = text; ta.setAttribute("readonly", ""); ta.style.position = "fixed"; ta.style.opacity = "0";
      document.body.appendChild(ta);
      ta.select();
      try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
      ta.remove();
      if (button) button.focus();
    }
    if (ok) {
      say("Copied to your clipboard.", true);
      if (button) {
        const old = button.dataset.label || button.textContent;
        button.dataset.label = old;
        button.textContent = "Copied!";
        button.classList.add("copied");
        setTimeout(() => { button.textContent = old; button.classList.remove("copied"); }, 1600);
      }
    } else {
      showError("copy", "Couldn't copy automatically", "Select the text and copy it with your keyboard or long-press.");
    }
  }

  document.querySelectorAll("button.copy[data-copy]").forEach((b) => b.addEventListener("click", () => {
    const r = state.result;
    if (!r) return;
    const tags = (r.hashtags || []).join(" ");
    const text = { caption: r.caption, hashtags: tags, alt: r.alt_text,
                   all: [r.caption, tags].filter(Boolean).join("\n\n") }[b.dataset.copy];
    copyText(text || "", b);
  }));

  // ---------------------------------------------------------------- feedback
  async function sendFeedback(payload, doneMessage) {
    const creator = store.get(STORE_CREATOR).trim();
    const body = Object.assign({ request_id: state.result.request_id }, payload);
    if (creator) body.creator_id = creator.slice(0, 128);
    clearError();
    try {
      const res = await call("feedback", {
        method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
      });
      if (!res.ok) { explainHttpError(res.status, res.body, "feedback"); return false; }
      say("");
      el.feedbackConfirm.textContent = doneMessage;
      el.feedbackConfirm.hidden = false;
      return true;
    } catch (err) {
      explainNetworkError(err, "feedback");
      return false;
    }
  }

  async function rate(rating) {
    if (!state.result) return;
    const btn = rating === "up" ? el.rateUp : el.rateDown;
    const other = rating === "up" ? el.rateDown : el.rateUp;
    btn.disabled = other.disabled = true;
    const ok = await sendFeedback({ rating }, "Feedback recorded. Thank you!");
    btn.disabled = other.disabled = false;
    if (ok) {
      state.rating = rating;
      btn.setAttribute("aria-pressed", "true");
      other.setAttribute("aria-pressed", "false");
    }
  }
  el.rateUp.addEventListener("click", () => rate("up"));
  el.rateDown.addEventListener("click", () => rate("down"));

  function parseHashtags(text) {
    const seen = new Set();
    return text.split(/[\s,]+/).map((t) => t.trim().replace(/^#+/, "")).filter(Boolean)
      .map((t) => "#" + t).filter((t) => (seen.has(t.toLowerCase()) ? false : seen.add(t.toLowerCase())))
      .slice(0, 30);
  }

  function updateCount() {
    el.editCaptionCount.textContent = el.editCaption.value.length + " / 2200 characters";
  }

  function openEdit(candidate) {
    const c = candidate || state.result;
    if (!c) return;
    el.editCaption.value = c.caption || "";
    el.editHashtags.value = (c.hashtags || []).join(" ");
    el.editReason.value = "";
    updateCount();
    el.editForm.hidden = false;
    el.editOpen.setAttribute("aria-expanded", "true");
    el.feedbackConfirm.hidden = true;
    el.editCaption.focus();
  }

  function closeEdit() {
    el.editForm.hidden = true;
    el.editOpen.setAttribute("aria-expanded", "false");
  }

  el.editOpen.addEventListener("click", () => (el.editForm.hidden ? openEdit() : closeEdit()));
  el.editCancel.addEventListener("click", () => { closeEdit(); el.editOpen.focus(); });
  el.editCaption.addEventListener("input", updateCount);
  el.editForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const caption = el.editCaption.value.trim();
    if (!caption) {
      showError("edit_empty", "Your caption is empty", "Write the caption you would post, then send it.");
      el.editCaption.focus();
      return;
    }
    // An edit says the suggestion needed fixing: rating "down" with the fixed text, unless the
    // creator already said it was good.
    const payload = { rating: state.rating === "up" ? "up" : "down", edited_caption: caption,
                      edited_hashtags: parseHashtags(el.editHashtags.value) };
    const reason = el.editReason.value.trim();
    if (reason) payload.reason = reason.slice(0, 500);
    el.editSend.disabled = true;
    const ok = await sendFeedback(payload, "Feedback recorded. Thanks for your edit!");
    el.editSend.disabled = false;
    if (ok) { closeEdit(); el.editOpen.focus(); }
  });

  // ---------------------------------------------------------------- settings
  function showKeyState() {
    const set = !!store.get(STORE_KEY);
    el.keyState.textContent = set ? "saved" : "not set";
    el.keyState.classList.toggle("is-set", set);
  }
  el.apiKey.value = store.get(STORE_KEY);
  el.creatorId.value = store.get(STORE_CREATOR);
  showKeyState();

  function saveKey() {
    store.set(STORE_KEY, el.apiKey.value.trim());
    showKeyState();
    clearError();
    say(el.apiKey.value.trim() ? "API key saved in this browser." : "API key removed.", true);
  }
  el.saveKey.addEventListener("click", saveKey);
  el.apiKey.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); saveKey(); } });
  el.apiKey.addEventListener("change", () => { store.set(STORE_KEY, el.apiKey.value.trim()); showKeyState(); });
  el.clearKey.addEventListener("click", () => { el.apiKey.value = ""; saveKey(); el.apiKey.focus(); });
  el.creatorId.addEventListener("change", () => store.set(STORE_CREATOR, el.creatorId.value.trim()));

  // ---------------------------------------------------------------- platforms
  // The picker shows each platform's hashtag cap; the count offers no more than it accepts.
  const platformRules = {};
  function showPlatform(keepCount) {
    const p = platformRules[el.platform.value];
    if (!p) return;
    const wanted = keepCount ? parseInt(el.numHashtags.value, 10) : p.recommended_hashtags;
    const options = [];
    for (let n = 1; n <= p.hashtag_cap; n++) {
      const o = document.createElement("option");
      o.textContent = String(n);
      o.selected = n === Math.min(wanted, p.hashtag_cap);
      options.push(o);
    }
    el.numHashtags.replaceChildren(...options);
    el.platformHint.textContent = p.label + ": at most " + p.hashtag_cap + " hashtag" + (p.hashtag_cap === 1 ? "" : "s") +
      ", " + p.caption_limit.toLocaleString("en") + " characters" + (p.alt_text ? "." : ", no alt text field.");
  }
  el.platform.addEventListener("change", () => showPlatform(false));
  call("platforms", { headers: headers() }).then((res) => {
    if (!res.ok || !res.body || !Array.isArray(res.body.platforms)) return;  // keep the built-in Instagram choice
    const chosen = el.platform.value || res.body.default;
    el.platform.replaceChildren(...res.body.platforms.map((p) => {
      platformRules[p.name] = p;
      const o = document.createElement("option");
      o.value = p.name; o.textContent = p.label; o.selected = p.name === chosen;
      return o;
    }));
    showPlatform(true);
  }).catch(() => {});

  // ---------------------------------------------------------------- model
  // Which model answers. The demo model says in one line what it knows and how to serve a real one,
  // so a first photo of a cat does not read as the product's best effort.
  function loadInfo(triesLeft) {
    call("info", { headers: headers() }).then((res) => {
      if (res.status === 503 && triesLeft > 0) { setTimeout(() => loadInfo(triesLeft - 1), 5000); return; }  // still loading
      if (!res.ok || !res.body || !res.body.model_version) return;
      const m = res.body;
      el.modelInfo.textContent = m.demo
        ? "Demo model: " + m.knows + " For photos, serve a LLaVA checkpoint: " + m.serve_a_checkpoint + "."
        : "Model " + m.model_version + " (" + m.model_type + ").";
      el.modelInfo.classList.toggle("is-demo", !!m.demo);
      el.modelInfo.hidden = false;
    }).catch(() => {});
  }
  loadInfo(24);

  window.addEventListener("pagehide", stopCamera);
})();
