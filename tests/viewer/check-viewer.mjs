// Drives the viewer in headless Chromium (Debian's /usr/bin/chromium; playwright-core
// downloads no browser): the page loads with no console error, its live stream opens,
// an uploaded image shows up with a box for the expected label, and a screenshot is kept.
//
// Usage: node check-viewer.mjs BASE_URL TOKEN IMAGE LABEL SCREENSHOT
//   BASE_URL    where the API serves, e.g. http://127.0.0.1:8080
//   TOKEN       a token that may ingest (api.tokens), or "" when the API has none
//   IMAGE       a JPEG to upload (source viewer-cam)
//   LABEL       the label a box must carry, e.g. dog
//   SCREENSHOT  where to write the PNG
// Environment: CHROMIUM (default /usr/bin/chromium). Prints one JSON line; exit 1 with the
// reasons when a check fails.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [base, token, image, label, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: node check-viewer.mjs BASE_URL TOKEN IMAGE LABEL SCREENSHOT");
  process.exit(2);
}
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const problems = [];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // Root in a container has no user namespaces for Chromium's sandbox.
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));

  await page.goto(token ? `${base}/#token=${encodeURIComponent(token)}` : `${base}/`);
  await page.waitForSelector('body[data-stream="open"]', { timeout: 30_000 });

  const response = await fetch(`${base}/v1/frames?source=viewer-cam`, {
    method: "POST",
    headers: { ...auth, "Content-Type": "image/jpeg" },
    body: readFileSync(image),
  });
  if (response.status !== 202) throw new Error(`upload answered ${response.status}: ${await response.text()}`);
  const { frame_id: frameId } = await response.json();

  const card = `figure[data-frame-id="${frameId}"]`;
  await page.waitForSelector(`${card} g.box[data-label="${label}"]`, { timeout: 120_000, state: "attached" });
  await page.waitForFunction(
    (selector) => {
      const img = document.querySelector(`${selector} img`);
      return img && img.complete && img.naturalWidth > 0;
    },
    card,
    { timeout: 30_000 },
  );
  const live = await page.locator(`#live li[data-frame-id="${frameId}"]`).textContent({ timeout: 10_000 });
  if (!live.includes(label)) problems.push(`the live list shows "${live}", without ${label}`);
  const e2e = await page.locator("#stat-e2e").textContent();
  if (!/\d/.test(e2e)) problems.push(`no end-to-end latency shown: "${e2e}"`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ frame_id: frameId, live, e2e, screenshot }));
} catch (e) {
  problems.push(e.message);
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
