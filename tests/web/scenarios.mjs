// Browser scenarios for the creator page, driven by playwright-core against the system Chromium.
//
//   node tests/web/scenarios.mjs '<json config>'
//
// config: {scenario, baseUrl, nodeDir, artifacts, chromium, ...scenario params}. Each scenario
// checks what it can see in the page itself (throwing on a mismatch) and prints, as its last
// stdout line, one JSON object with what it saw, for pytest to check against the server side
// (the feedback store, the request log). tests/test_web_ui.py runs these; see it for the params.
import { createRequire } from "node:module";
import { mkdtempSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const config = JSON.parse(process.argv[2] || "{}");
const require = createRequire(join(config.nodeDir, "package.json"));
const { chromium } = require("playwright-core");

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const WAIT_MS = 60000;

function check(cond, message) {
  if (!cond) throw new Error("check failed: " + message);
}

function log(...args) {
  process.stderr.write(args.join(" ") + "\n");
}

async function withBrowser(opts, fn) {
  const userDataDir = mkdtempSync(join(tmpdir(), "s2c-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: config.chromium || "/usr/bin/chromium",
    headless: true,
    args: [...FLAGS, ...(opts.extraArgs || [])],
    viewport: opts.viewport || { width: 1280, height: 900 },
    deviceScaleFactor: opts.deviceScaleFactor || 1,
    isMobile: !!opts.isMobile,
    hasTouch: !!opts.hasTouch,
    permissions: opts.permissions || [],
    timeout: WAIT_MS,
  });
  context.setDefaultTimeout(WAIT_MS);
  const pageErrors = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") log("[console]", m.text()); });
    if (opts.init) await opts.init(page);
    const out = await fn(page, context);
    check(pageErrors.length === 0, "JavaScript errors on the page: " + pageErrors.join(" | "));
    return out;
  } finally {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

async function openPage(page) {
  await page.goto(config.baseUrl + "/", { waitUntil: "load" });
  check(new URL(page.url()).pathname === "/ui/", "GET / lands on the page at /ui/, got " + page.url());
  await page.locator("#generate").waitFor({ state: "visible" });
}

function shot(page, name, fullPage = true) {
  return page.screenshot({ path: join(config.artifacts, name), fullPage });
}

/** Press Generate and wait until the page shows either a result or an error. */
async function generate(page) {
  const before = await page.locator("#meta").textContent();
  await page.click("#generate");
  await page.waitForFunction((prev) => {
    const busy = document.getElementById("generate").disabled;
    const err = [...document.querySelectorAll(".error")].some((b) => !b.hidden);
    const meta = document.getElementById("meta").textContent;
    return !busy && (err || (meta && meta !== prev));
  }, before, { timeout: WAIT_MS });
  return page.evaluate(() => ([...document.querySelectorAll(".error")].some((b) => !b.hidden) ? "error" : "result"));
}

async function readResult(page) {
  return page.evaluate(() => ({
    caption: document.getElementById("caption").textContent,
    hashtags: [...document.querySelectorAll("#hashtags li:not(.none)")].map((li) => li.textContent),
    alt: document.getElementById("alt-text").textContent,
    others: [...document.querySelectorAll("#candidates li")].map((li) => ({
      caption: li.querySelector(".cand-caption").textContent,
      score: li.querySelector(".score").textContent,
    })),
    meta: document.getElementById("meta").textContent,
    requestId: (document.getElementById("meta").textContent.match(/Request ([0-9a-f]{32})/) || [])[1] || "",
    status: document.getElementById("status").textContent,
  }));
}

async function readError(page) {
  return page.evaluate(() => {
    const boxes = [document.getElementById("error"), document.getElementById("photo-error")];
    const e = boxes.find((b) => !b.hidden) || boxes[0];
    return { hidden: e.hidden, where: e.id, kind: e.dataset.kind || "", role: e.getAttribute("role"),
             title: e.querySelector(".error-title").textContent,
             detail: e.querySelector(".error-detail").textContent,
             visibleBoxes: boxes.filter((b) => !b.hidden).length };
  });
}

async function waitError(page, kind) {
  await page.waitForFunction((k) => [...document.querySelectorAll(".error")].some((b) => !b.hidden && (!k || b.dataset.kind === k)), kind || "");
}

async function expectError(page, kind, titleRe) {
  const err = await readError(page);
  check(!err.hidden, `an error is shown (wanted ${kind})`);
  check(err.kind === kind, `error kind ${kind}, got ${err.kind}: ${err.title} ${err.detail}`);
  check(err.role === "alert", "errors are announced (role=alert)");
  check(err.visibleBoxes === 1, "one error at a time");
  if (titleRe) check(new RegExp(titleRe, "i").test(err.title + " " + err.detail), `error text matches ${titleRe}: ${err.title} ${err.detail}`);
  return err;
}

async function choosePhoto(page, path) {
  await page.setInputFiles("#file-input", path);
  await page.locator("#preview-wrap").waitFor({ state: "visible" });
}

async function waitConfirm(page) {
  await page.locator("#feedback-confirm").waitFor({ state: "visible" });
  const text = await page.locator("#feedback-confirm").textContent();
  check(/Feedback recorded/.test(text), "feedback confirmed, got: " + text);
  return text;
}

/** Elements wider than the viewport, or a page that scrolls sideways. */
async function overflow(page) {
  return page.evaluate(() => {
    const vw = document.documentElement.clientWidth;
    const wide = [];
    for (const node of document.querySelectorAll("body *")) {
      if (node.closest(".visually-hidden, [hidden], .skip-link, datalist, option")) continue;
      const r = node.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      if (r.right > vw + 1 || r.left < -1) wide.push(`${node.tagName.toLowerCase()}#${node.id}.${node.className} [${Math.round(r.left)},${Math.round(r.right)}]`);
    }
    return { viewport: vw, scrollWidth: document.documentElement.scrollWidth, bodyScrollWidth: document.body.scrollWidth, wide: wide.slice(0, 10) };
  });
}

// ------------------------------------------------------------------ scenarios
const scenarios = {
  /** The main flow: upload, options, loading state, result, copy, rate, edit -> feedback. */
  async main() {
    return withBrowser({ permissions: ["clipboard-read", "clipboard-write"] }, async (page) => {
      await openPage(page);
      await shot(page, "web-1-start.png");
      await choosePhoto(page, config.image);
      await page.fill("#tone", "funny");
      await page.selectOption("#audience", "promotional");
      // The platform picker comes from GET /platforms and offers no more hashtags than the platform takes.
      await page.waitForFunction(() => document.querySelectorAll("#platform option").length > 1);
      await page.selectOption("#platform", "linkedin");
      check((await page.locator("#num-hashtags option").count()) === 10, "LinkedIn offers up to 10 hashtags");
      await page.selectOption("#platform", "instagram");
      check((await page.locator("#num-hashtags option").count()) === 5, "Instagram offers at most 5 hashtags");
      check((await page.textContent("#platform-hint")).includes("at most 5"), "the hint shows Instagram's cap");
      await page.selectOption("#num-hashtags", "4");
      await page.selectOption("#num-candidates", "3");
      // Hold the answer back a moment, so the loading state can be seen for certain.
      let release;
      const held = new Promise((r) => { release = r; });
      await page.route("**/generate-caption/upload", async (route) => { await held; await route.continue(); });
      await page.click("#generate");
      const busy = await page.evaluate(() => ({
        disabled: document.getElementById("generate").disabled,
        label: document.querySelector("#generate .btn-label").textContent,
        ariaBusy: document.getElementById("results").getAttribute("aria-busy"),
        spinner: getComputedStyle(document.querySelector("#generate .spinner")).display,
        status: document.getElementById("status").textContent,
      }));
      await shot(page, "web-2-generating.png", false);
      release();
      check(busy.disabled, "Generate is disabled while generating");
      check(busy.label === "Generating\u2026", "button says Generating…, got " + busy.label);
      check(busy.ariaBusy === "true", "results region is aria-busy while generating");
      check(busy.spinner !== "none", "spinner visible while generating");
      await page.waitForFunction(() => !document.getElementById("result").hidden && !document.getElementById("generate").disabled);
      await page.unroute("**/generate-caption/upload");
      const result = await readResult(page);
      const err = await readError(page);
      check(err.hidden, "no error after a good upload: " + err.title + " " + err.detail);
      check(result.caption.trim().length > 0, "a caption is shown");
      check(result.requestId.length === 32, "request id shown in meta: " + result.meta);
      check((await page.getAttribute("#results", "aria-busy")) === "false", "aria-busy cleared");
      check(await page.isEnabled("#generate"), "Generate enabled again");
      await shot(page, "web-3-result.png");

      // Copy buttons: the clipboard gets exactly what is shown.
      await page.click('button.copy[data-copy="caption"]');
      const clipCaption = await page.evaluate(() => navigator.clipboard.readText());
      check(clipCaption === result.caption, "copy caption puts the caption on the clipboard");
      check((await page.textContent('button.copy[data-copy="caption"]')) === "Copied!", "copy button confirms");
      let clipTags = "";
      if (result.hashtags.length) {
        await page.click('button.copy[data-copy="hashtags"]');
        clipTags = await page.evaluate(() => navigator.clipboard.readText());
        check(clipTags === result.hashtags.join(" "), "copy hashtags");
      }

      // Rate up, then edit and send the edit.
      await page.click("#rate-up");
      await waitConfirm(page);
      check((await page.getAttribute("#rate-up", "aria-pressed")) === "true", "rate-up pressed");
      await page.click("#edit-open");
      check(await page.isVisible("#edit-form"), "edit form opens");
      check((await page.inputValue("#edit-caption")) === result.caption, "edit starts from the caption");
      await page.fill("#edit-caption", config.editedCaption);
      await page.fill("#edit-hashtags", config.editedHashtags);
      await page.fill("#edit-reason", "too generic");
      await shot(page, "web-4-edit.png");
      await page.click("#edit-send");
      const confirm = await waitConfirm(page);
      check(await page.isHidden("#edit-form"), "edit form closes after sending");
      await shot(page, "web-5-feedback.png");
      return { result, busy, clipCaption, clipTags, confirm };
    });
  },

  /** A photo dropped on the drop zone, then used with the keyboard only: Tab to tone, Enter, Tab to rate. */
  async keyboard() {
    return withBrowser({}, async (page) => {
      await openPage(page);
      const bytes = readFileSync(config.image).toString("base64");
      await page.evaluate(async (b64) => {
        const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bin], "dropped.png", { type: "image/png" }));
        const zone = document.getElementById("dropzone");
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
      }, bytes);
      await page.locator("#preview-wrap").waitFor({ state: "visible" });
      check((await page.textContent("#preview-name")) === "dropped.png", "dropped file previewed");

      // Every control has an accessible name.
      const unnamed = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea, button, summary")]
        .filter((n) => {
          if (n.tagName === "BUTTON" || n.tagName === "SUMMARY") return !(n.getAttribute("aria-label") || n.textContent.trim());
          return !((n.labels && n.labels.length) || n.getAttribute("aria-label") || n.getAttribute("aria-labelledby"));
        }).map((n) => n.id || n.outerHTML.slice(0, 60)));
      check(unnamed.length === 0, "every control is labelled, not: " + unnamed.join(", "));

      async function tabTo(id, max = 40) {
        const seen = [];
        for (let i = 0; i < max; i++) {
          await page.keyboard.press("Tab");
          const a = await page.evaluate(() => document.activeElement && (document.activeElement.id || document.activeElement.tagName));
          seen.push(a);
          if (a === id) return seen;
        }
        throw new Error(`Tab never reached #${id}; went through ${seen.join(" > ")}`);
      }
      await page.evaluate(() => document.activeElement && document.activeElement.blur());
      const path = await tabTo("tone");
      check(path.includes("file-input"), "the file picker is reachable by Tab: " + path.join(" > "));
      await page.keyboard.press("Control+A");
      await page.keyboard.type("poetic");
      await page.keyboard.press("Escape"); // close the datalist suggestions
      await page.keyboard.press("Enter");  // submits the form
      await page.waitForFunction(() => !document.getElementById("result").hidden && !document.getElementById("generate").disabled);
      const result = await readResult(page);
      check(result.caption.length > 0, "caption after keyboard submit");
      await tabTo("rate-down");
      await page.keyboard.press("Enter");
      await waitConfirm(page);
      check((await page.getAttribute("#rate-down", "aria-pressed")) === "true", "rate-down pressed by keyboard");
      const live = await page.getAttribute("#status", "aria-live");
      check(live === "polite", "status region is aria-live");
      return { result, tabPath: path };
    });
  },

  /** An image address: the server fetches it (image_url), so a site without CORS headers still
   *  gets captioned; a page that isn't an image, a missing image and a blocked address show the
   *  server's reason next to the photo controls. */
  async url() {
    return withBrowser({}, async (page) => {
      await openPage(page);
      await page.fill("#image-url", config.noCorsUrl);
      await page.click("#fetch-url");
      await page.locator("#preview-wrap").waitFor({ state: "visible" });
      const name = await page.textContent("#preview-name");
      // The preview is a plain <img>: it shows without the site's CORS permission.
      await page.waitForFunction(() => document.getElementById("preview").complete);
      const preview = await page.evaluate(() => ({
        width: document.getElementById("preview").naturalWidth,
        shown: !document.getElementById("preview").hidden,
      }));
      check(preview.shown && preview.width > 0, "the image from the address is previewed: " + JSON.stringify(preview));
      const sent = [];
      page.on("request", (r) => { if (r.url().includes("/generate-caption")) sent.push({ url: r.url(), body: r.postData() || "" }); });
      check((await generate(page)) === "result", "caption for an image from a site without CORS: " + JSON.stringify(await readError(page)));
      const result = await readResult(page);
      check(sent.length === 1 && sent[0].url.endsWith("/generate-caption"), "an image address goes as JSON to /generate-caption");
      const body = JSON.parse(sent[0].body);
      check(body.image_url === config.noCorsUrl && !("image" in body), "as image_url, for the server to fetch: " + sent[0].body);
      await shot(page, "web-url-result.png");

      async function failing(url, kind, re) {
        await page.fill("#image-url", url);
        await page.press("#image-url", "Enter");
        check((await generate(page)) === "error", url + " is refused");
        const err = await expectError(page, kind, re);
        check(err.where === "photo-error", "an image-address problem shows next to the photo controls");
        return err;
      }
      const blocked = await failing(config.blockedUrl, "url_fetch", "can't be used");
      await shot(page, "web-url-blocked.png");
      const missing = await failing(config.missingUrl, "url_fetch", "no image at that address");
      const html = await failing(config.htmlUrl, "url_not_image", "isn't a photo");
      check(await page.isVisible("#no-preview"), "a web page shows 'no preview'");

      await page.fill("#image-url", "not a url");
      await page.click("#fetch-url");
      const bad = await expectError(page, "bad_url", "address");
      return { name, preview, result, blocked, missing, html, bad };
    });
  },

  /** Error states on a normal service: a text file (real 415), and busy/5xx/network by interception. */
  async errors() {
    return withBrowser({}, async (page) => {
      await openPage(page);
      await page.click("#generate");
      const noPhoto = await expectError(page, "no_photo", "photo first");

      await choosePhoto(page, config.textFile);
      check(await page.isVisible("#no-preview"), "a non-image shows 'no preview'");
      check((await generate(page)) === "error", "a text file is refused");
      const notImage = await expectError(page, "not_an_image", "isn't a photo");
      await shot(page, "web-error-not-an-image.png");

      await choosePhoto(page, config.image);
      const out = { noPhoto, notImage };
      const cases = [
        ["busy429", (r) => r.fulfill({ status: 429, contentType: "application/json", body: '{"error":"Too many requests"}' }), "busy", "busy"],
        ["busy503", (r) => r.fulfill({ status: 503, contentType: "text/plain", body: "Service Unavailable" }), "busy", "busy"],
        ["server500", (r) => r.fulfill({ status: 500, contentType: "application/json", body: '{"error":"internal","detail":"boom"}' }), "server", "error 500"],
        ["network", (r) => r.abort("connectionrefused"), "network", "connection"],
      ];
      for (const [name, handler, kind, re] of cases) {
        await page.route("**/generate-caption/upload", handler);
        check((await generate(page)) === "error", name + " shows an error");
        out[name] = await expectError(page, kind, re);
        if (name === "busy429") await shot(page, "web-error-busy.png");
        await page.unroute("**/generate-caption/upload");
      }
      // "Try again" on the busy message retries, and now works.
      await page.route("**/generate-caption/upload", (r) => r.fulfill({ status: 429, contentType: "application/json", body: '{"error":"Too many requests"}' }));
      await generate(page);
      await page.unroute("**/generate-caption/upload");
      await page.click("#error .error-actions button");
      await page.waitForFunction(() => !document.getElementById("result").hidden && !document.getElementById("generate").disabled);
      check(await page.isHidden("#error"), "retry clears the error");
      // Feedback that can't be delivered is not silent either.
      await page.route("**/feedback", (r) => r.abort("internetdisconnected"));
      await page.click("#rate-up");
      await waitError(page, "network");
      out.feedbackNetwork = await expectError(page, "network", "connection");
      check(await page.isHidden("#feedback-confirm"), "no false 'recorded' when feedback failed");
      await page.unroute("**/feedback");
      return out;
    });
  },

  /** A service with a small SNAP2CAPTION_MAX_IMAGE_BYTES: a too-large photo, by upload and by address. */
  async too_large() {
    return withBrowser({}, async (page) => {
      await openPage(page);
      await choosePhoto(page, config.image);
      check((await generate(page)) === "error", "an over-size upload is refused");
      const upload = await expectError(page, "too_large", "too large");
      await shot(page, "web-error-too-large.png");
      // The same photo from an address, fetched by the server: the same message.
      await page.fill("#image-url", config.url);
      await page.click("#fetch-url");
      const fromUrl = decodeURIComponent(new URL(config.url).pathname.split("/").pop());
      await page.waitForFunction((n) => document.getElementById("preview-name").textContent === n, fromUrl);
      check((await generate(page)) === "error", "an over-size photo from an address is refused");
      const json = await expectError(page, "too_large", "too large");
      return { upload, json };
    });
  },

  /** A service with API keys: no key -> asked for one; a wrong key -> told; the right key works and is remembered. */
  async auth() {
    return withBrowser({}, async (page) => {
      await openPage(page);
      await choosePhoto(page, config.image);
      check((await generate(page)) === "error", "no key is refused");
      const noKey = await expectError(page, "unauthorized", "needs an API key");
      await shot(page, "web-error-unauthorized.png");
      await page.click("#error .error-actions button");
      check(await page.evaluate(() => document.getElementById("settings").open), "the API key panel opens");
      check(await page.evaluate(() => document.activeElement.id === "api-key"), "the key field has focus");

      await page.fill("#api-key", "wrong-key");
      await page.click("#save-key");
      check((await generate(page)) === "error", "a wrong key is refused");
      const wrong = await expectError(page, "unauthorized", "wasn't accepted");

      await page.fill("#api-key", config.apiKey);
      await page.press("#api-key", "Enter");
      check((await page.textContent("#key-state")) === "saved", "key state shows saved");
      check((await generate(page)) === "result", "the right key works: " + JSON.stringify(await readError(page)));
      const result = await readResult(page);
      await page.click("#rate-up");
      await waitConfirm(page);

      await page.reload();
      check((await page.inputValue("#api-key")) === config.apiKey, "the key is remembered after a reload");
      return { noKey, wrong, result };
    });
  },

  /** A 390 px phone: no sideways scrolling at any step; a full-page screenshot. */
  async phone() {
    return withBrowser({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true }, async (page) => {
      await openPage(page);
      const steps = { start: await overflow(page) };
      await shot(page, "web-phone-1-start.png");
      await choosePhoto(page, config.image);
      await page.selectOption("#num-candidates", "3");
      check((await generate(page)) === "result", "phone: caption");
      steps.result = await overflow(page);
      await shot(page, "web-phone-2-result.png");
      await page.click("#edit-open");
      await page.evaluate(() => { document.getElementById("settings").open = true; });
      steps.editAndSettings = await overflow(page);
      await shot(page, "web-phone-3-edit.png");
      await page.route("**/generate-caption/upload", (r) => r.fulfill({ status: 429, contentType: "application/json", body: '{"error":"Too many requests"}' }));
      await generate(page);
      steps.error = await overflow(page);
      for (const [name, o] of Object.entries(steps)) {
        check(o.scrollWidth <= o.viewport && o.wide.length === 0,
          `phone ${name}: no horizontal overflow (scrollWidth ${o.scrollWidth} > ${o.viewport}?) ${o.wide.join("; ")}`);
      }
      const fontSize = await page.evaluate(() => parseFloat(getComputedStyle(document.getElementById("caption")).fontSize));
      check(fontSize >= 16, "caption text is readable on a phone: " + fontSize);
      return { steps, fontSize };
    });
  },

  /** Webcam with Chromium's fake camera; and without getUserMedia the button is hidden. */
  async webcam() {
    const withCam = await withBrowser({ extraArgs: ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"] }, async (page) => {
      await openPage(page);
      check(await page.isVisible("#webcam-open"), "camera button offered");
      await page.click("#webcam-open");
      await page.locator("#webcam").waitFor({ state: "visible" });
      await page.waitForFunction(() => document.getElementById("webcam-video").videoWidth > 0);
      await shot(page, "web-webcam.png", false);
      await page.click("#webcam-capture");
      await page.locator("#preview-wrap").waitFor({ state: "visible" });
      check(await page.isHidden("#webcam"), "camera closes after the photo");
      const name = await page.textContent("#preview-name");
      check((await generate(page)) === "result", "caption for a camera photo: " + JSON.stringify(await readError(page)));
      return { name, result: await readResult(page) };
    });
    const noCam = await withBrowser({
      init: (page) => page.addInitScript(() => { Object.defineProperty(Navigator.prototype, "mediaDevices", { get: () => undefined }); }),
    }, async (page) => {
      await openPage(page);
      return { buttonHidden: await page.isHidden("#webcam-open") };
    });
    check(noCam.buttonHidden, "no camera button without getUserMedia");
    return { withCam, noCam };
  },

  /** The trained demo model: the same photo with two tones reads differently. */
  async tone() {
    return withBrowser({}, async (page) => {
      await openPage(page);
      await choosePhoto(page, config.image);
      await page.selectOption("#num-candidates", "1");
      const captions = {};
      for (const tone of config.tones) {
        await page.fill("#tone", tone);
        check((await generate(page)) === "result", `caption for tone ${tone}: ` + JSON.stringify(await readError(page)));
        captions[tone] = await readResult(page);
        await shot(page, `web-tone-${tone}.png`);
      }
      return { captions };
    });
  },
};

const fn = scenarios[config.scenario];
if (!fn) {
  console.error("unknown scenario " + config.scenario + "; have: " + Object.keys(scenarios).join(", "));
  process.exit(2);
}
try {
  const out = await fn();
  process.stdout.write("\n" + JSON.stringify({ ok: true, ...out }) + "\n");
} catch (err) {
  console.error(err && err.stack ? err.stack : String(err));
  process.stdout.write("\n" + JSON.stringify({ ok: false, error: String(err && err.message || err) }) + "\n");
  process.exit(1);
}
