// Open ComfyUI's front end in headless Chromium, load a UI-format workflow, report what the front end
// sees (missing node types, invalid links, error dialogs) as JSON on stdout, and save a screenshot.
//
// node browser_check.js URL WORKFLOW.json SCREENSHOT.png CHROMIUM_BINARY PLAYWRIGHT_CORE_DIR PROFILE_DIR
"use strict";
const fs = require("fs");

const [url, workflowPath, shotPath, chromiumPath, playwrightDir, profileDir] = process.argv.slice(2);
const { chromium } = require(playwrightDir);

async function main() {
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1600, height: 1000 },
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync",
    ],
  });
  const consoleErrors = [];
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") consoleErrors.push(`${msg.type()}: ${msg.text()}`);
  });
  page.on("pageerror", (err) => consoleErrors.push(`pageerror: ${err.message}`));
  try {
    await page.goto(url, { waitUntil: "domcontentloaded", timeout: 60000 });
    await page.waitForFunction(
      () => window.app && window.app.graph && window.LiteGraph &&
        Object.keys(window.LiteGraph.registered_node_types).length > 50,
      null, { timeout: 90000 },
    );
    const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
    const report = await page.evaluate(async (wf) => {
      const LG = window.LiteGraph;
      const graph = window.app.graph;
      const types = [...new Set(wf.nodes.map((n) => n.type))];
      const missingTypes = types.filter((t) => !LG.registered_node_types[t]);
      await window.app.loadGraphData(wf);
      await new Promise((r) => setTimeout(r, 1500));
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
      // Frame the whole graph for the screenshot.
      try {
        if (window.app.canvas && window.app.canvas.ds && nodes.length) {
          let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
          for (const n of nodes) {
            x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
            x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
          }
          const c = window.app.canvas.canvas;
          // Leave room for the side bar (left) and the tab bar and run button (top).
          const scale = Math.min((c.width - 160) / (x1 - x0), (c.height - 260) / (y1 - y0), 1.2);
          window.app.canvas.ds.scale = scale;
          window.app.canvas.ds.offset = [-x0 + 100 / scale, -y0 + 160 / scale];
          window.app.canvas.setDirty(true, true);
        }
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
        missingTypes, invalidLinks, brokenNodes, dialogText,
        nodeTypes: nodes.map((n) => n.type),
      };
    }, workflow);
    await page.waitForTimeout(800);
    await page.screenshot({ path: shotPath });
    report.consoleErrors = consoleErrors;
    process.stdout.write(JSON.stringify(report));
  } finally {
    await context.close();
  }
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err));
  process.exit(2);
});
