// Open ComfyUI's front end in headless Chromium, load a bundled workflow the way a user does (Templates dialog
// -> the pack's category -> click the template), report what the front end sees as JSON on stdout (missing
// node types, invalid links, error dialogs, nodes over group titles, errors after the page was ready) and save
// a screenshot; with THUMBNAIL.png, also a square picture of the whole graph (for the template's thumbnail).
//
// node browser_check.js URL WORKFLOW.json SCREENSHOT.png CHROMIUM_BINARY PLAYWRIGHT_CORE_DIR PROFILE_DIR PACK [THUMBNAIL.png]
//
// With SSPIR_BAD_WIDGET=NODE_TYPE:WIDGET:VALUE, that widget is set to VALUE after loading, the workflow is queued
// (Run) and the report's widgetErrors lists, per node id, the inputs the front end marked as wrong (hasErrors:
// the red outline), as ComfyUI's answer to the queued prompt made it do.
"use strict";
const fs = require("fs");
const path = require("path");

const [url, workflowPath, shotPath, chromiumPath, playwrightDir, profileDir, pack, thumbPath] = process.argv.slice(2);
const { chromium } = require(playwrightDir);
const template = path.basename(workflowPath, ".json");

// Errors the front end logs whatever the workflow: its registry look-ups (api.comfy.org, blocked offline) and
// "Failed to load resource" (each failed response is judged by its URL below instead).
const UNRELATED = [/api\.comfy\.org/, /^Failed to load resource/];

async function main() {
  const size = thumbPath ? { width: 1100, height: 1100 } : { width: 1600, height: 1000 };
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: chromiumPath,
    headless: true,
    viewport: size,
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync",
    ],
  });
  const log = [];  // {ready, text}: every console error/warning and page error, and whether the page was ready
  const failed = [];  // responses >= 400 after the page was ready
  const fetched = {};  // our pack's template files: url -> [status, content-type]
  let ready = false;
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") log.push({ ready, text: `${msg.type()}: ${msg.text()}` });
  });
  page.on("pageerror", (err) => log.push({ ready, text: `pageerror: ${err.message}` }));
  page.on("response", (r) => {
    if (r.url().includes(`/workflow_templates/${pack}/`)) fetched[r.url()] = [r.status(), r.headers()["content-type"]];
    if (ready && r.status() >= 400) failed.push(`HTTP ${r.status()} ${r.url()}`);
  });
  try {
    await page.goto(url, { waitUntil: "domcontentloaded", timeout: 60000 });
    await page.waitForFunction(
      () => window.app && window.app.graph && window.LiteGraph &&
        Object.keys(window.LiteGraph.registered_node_types).length > 50,
      null, { timeout: 90000 },
    );
    await page.waitForTimeout(1500);  // the front end's own start-up (it logs a few errors of its own)
    ready = true;
    const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
    const missingTypes = await page.evaluate((wf) => [...new Set(wf.nodes.map((n) => n.type))]
      .filter((t) => !window.LiteGraph.registered_node_types[t]), workflow);

    // The Templates dialog, the pack's category, the template's card: what a user clicks.
    await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    await page.getByText(pack, { exact: true }).first().click({ timeout: 30000 });
    const card = page.locator(`[data-testid="template-workflow-${template}"]`);
    await card.waitFor({ timeout: 30000 });
    await page.waitForFunction((t) => {  // the card's thumbnail was asked for (see templateFiles)
      const img = document.querySelector(`[data-testid="template-workflow-${t}"] img`);
      return img && img.complete;
    }, template, { timeout: 15000 }).catch(() => {});
    const cardText = await card.innerText().catch(() => "");
    await card.click();
    await page.waitForFunction((n) => {
      const g = window.app.graph;
      return g && (g._nodes || g.nodes || []).length === n && !document.querySelector("[data-testid=template-workflows-content]");
    }, workflow.nodes.length, { timeout: 30000 }).catch(() => {});
    await page.waitForTimeout(1500);

    // Where the loaded graph is drawn, before anything moves the view: each node's box (title bar included) on
    // the page, against the canvas less the side bar and the top menu that cover its edges.
    const view = await page.evaluate(() => {
      const c = window.app.canvas;
      const g = window.app.graph;
      const at = c.canvas.getBoundingClientRect();
      const box = (sel) => {
        const el = document.querySelector(sel);
        const r = el && el.getBoundingClientRect();
        return r && r.width > 0 && r.height > 0 ? { left: r.left, top: r.top, right: r.right, bottom: r.bottom } : null;
      };
      const sidebar = box(".side-tool-bar-container") || box("[class*=side-tool-bar]");
      const topbar = box(".comfyui-menu") || box(".workflow-tabs-container") || box("[class*=topbar]");
      const area = {
        left: Math.max(at.left, sidebar ? sidebar.right : at.left), right: at.right,
        top: Math.max(at.top, topbar ? topbar.bottom : at.top), bottom: at.bottom,
      };
      const s = c.ds.scale, [ox, oy] = c.ds.offset;
      const th = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
      const nodes = (g._nodes || g.nodes || []).map((n) => ({
        node: `${n.id}:${n.type}`,
        left: at.left + (n.pos[0] + ox) * s, top: at.top + (n.pos[1] - th + oy) * s,
        right: at.left + (n.pos[0] + n.size[0] + ox) * s, bottom: at.top + (n.pos[1] + n.size[1] + oy) * s,
      }));
      const outOfView = nodes.filter((b) => b.left < area.left || b.right > area.right || b.top < area.top ||
        b.bottom > area.bottom).map((b) => `${b.node} at [${b.left.toFixed(0)}, ${b.top.toFixed(0)}, ` +
        `${b.right.toFixed(0)}, ${b.bottom.toFixed(0)}]`);
      return { area, sidebar, topbar, ds: { scale: s, offset: [ox, oy] }, outOfView };
    });

    const report = await page.evaluate(async (wf) => {
      const LG = window.LiteGraph;
      const g = window.app.graph;
      const nodes = g._nodes || g.nodes || [];
      const byId = new Map(nodes.map((n) => [n.id, n]));
      const links = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links || {});
      const invalidLinks = [];
      const compatible = (a, b) => a === b || a === "*" || b === "*" || String(b).split(",").includes(String(a));
      for (const l of links) {
        if (!l) continue;
        const from = byId.get(l.origin_id);
        const to = byId.get(l.target_id);
        const out = from && from.outputs && from.outputs[l.origin_slot];
        const inp = to && to.inputs && to.inputs[l.target_slot];
        let problem = null;
        if (!from || !to) problem = "endpoint node missing";
        else if (!out || !inp) problem = "slot missing";
        else if (inp.link !== l.id) problem = "input does not point back at the link";
        else if (!compatible(out.type, inp.type)) problem = `type ${out.type} -> ${inp.type}`;
        if (problem) invalidLinks.push({ id: l.id, from: l.origin_id, to: l.target_id, problem });
      }
      // Nodes the front end could not build show up with has_errors or without their type registered.
      const brokenNodes = nodes.filter((n) => n.has_errors || !LG.registered_node_types[n.type])
        .map((n) => `${n.id}:${n.type}`);
      const dialogText = [...document.querySelectorAll(".p-dialog, [role=dialog]")]
        .map((d) => d.innerText).join("\n");
      // A node (with its title bar) drawn over a group's title, at the sizes the front end gave the nodes.
      const groups = g._groups || g.groups || [];
      const titleOverlaps = [];
      const nodeTitle = LG.NODE_TITLE_HEIGHT || 30;
      for (const grp of groups) {
        const [gx, gy, gw] = grp._bounding || grp.bounding;
        const band = grp.titleHeight || (grp.font_size || 24) * 1.4;
        for (const n of nodes) {
          const x0 = n.pos[0], x1 = n.pos[0] + n.size[0], y0 = n.pos[1] - nodeTitle, y1 = n.pos[1] + n.size[1];
          if (x0 < gx + gw && gx < x1 && y0 < gy + band && gy < y1) titleOverlaps.push(`${n.type} over "${grp.title}"`);
        }
      }
      // Frame the whole graph, groups included, for the screenshot; graphRect: where it is drawn on the page.
      let graphRect = null;
      try {
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        const boxes = [...nodes.map((n) => [n.pos[0], n.pos[1] - nodeTitle, n.size[0], n.size[1] + nodeTitle]),
          ...groups.map((grp) => grp._bounding || grp.bounding)];
        for (const [x, y, w, h] of boxes) {
          x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
        }
        const c = window.app.canvas.canvas;
        // Leave room for the side bar (left) and the tab bar and run button (top).
        const scale = Math.min((c.width - 140) / (x1 - x0), (c.height - 220) / (y1 - y0), 1.2);
        const offset = [-x0 + 90 / scale, -y0 + 150 / scale];
        window.app.canvas.ds.scale = scale;
        window.app.canvas.ds.offset = offset;
        window.app.canvas.setDirty(true, true);
        const at = c.getBoundingClientRect();
        const pad = 12;
        graphRect = {
          x: Math.max(0, at.left + (x0 + offset[0]) * scale - pad), y: Math.max(0, at.top + (y0 + offset[1]) * scale - pad),
          width: (x1 - x0) * scale + 2 * pad, height: (y1 - y0) * scale + 2 * pad,
        };
      } catch (e) { /* framing is cosmetic */ }
      // What the Run button would queue: widget values as the front end reads them from the file.
      let apiPrompt = null;
      try {
        apiPrompt = (await window.app.graphToPrompt()).output;
      } catch (e) { apiPrompt = { error: String(e) }; }
      return {
        apiPrompt,
        nodeCount: nodes.length,
        expectedNodes: wf.nodes.length,
        linkCount: links.filter(Boolean).length,
        expectedLinks: wf.links.length,
        invalidLinks, brokenNodes, dialogText, titleOverlaps, graphRect,
        nodeTypes: nodes.map((n) => n.type),
      };
    }, workflow);
    const bad = process.env.SSPIR_BAD_WIDGET;
    if (bad) {
      const [type, name, value] = bad.split(":");
      report.widgetErrors = await page.evaluate(async ([type, name, value]) => {
        const g = window.app.graph;
        for (const n of g._nodes || g.nodes || []) {
          const w = n.type === type && (n.widgets || []).find((x) => x.name === name);
          if (w) w.value = Number(value);
        }
        try { await window.app.queuePrompt(0, 1); } catch (e) { /* refused: that is the point */ }
        const marked = () => {
          const out = {};
          for (const n of g._nodes || g.nodes || []) {
            const names = (n.inputs || []).filter((i) => i.hasErrors).map((i) => i.name);
            if (names.length) out[n.id] = names;
          }
          return out;
        };
        for (let i = 0; i < 100 && !Object.keys(marked()).length; i++) await new Promise((r) => setTimeout(r, 100));
        return marked();
      }, [type, name, value]);
    }
    await page.waitForTimeout(800);
    await page.screenshot({ path: shotPath });
    if (thumbPath && report.graphRect) {  // the graph alone, without the menus and the minimap around it
      await page.evaluate(() => window.app.extensionManager.setting.set("Comfy.Minimap.Visible", false)).catch(() => {});
      await page.waitForTimeout(500);
      await page.screenshot({ path: thumbPath, clip: report.graphRect });
    }
    report.missingTypes = missingTypes;
    report.view = view;
    report.cardText = cardText;
    report.templateFiles = fetched;
    report.startupErrors = log.filter((e) => !e.ready).map((e) => e.text);
    report.errorsAfterReady = log.filter((e) => e.ready && !UNRELATED.some((re) => re.test(e.text.replace(/^\w+: /, ""))))
      .map((e) => e.text);
    report.failedResponses = failed;
    process.stdout.write(JSON.stringify(report));
  } finally {
    await context.close();
  }
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err));
  process.exit(2);
});
