// Renders Handlebars templates with handlebars.js, as upstream Butler does, for the tests to compare with.
// stdin: JSON {"cases": [{"template": "...", "context": {...}}, ...]}; stdout: JSON [{"out": "..."} or
// {"error": "..."}, ...], one per case in order. A fresh environment per case keeps cases independent.
"use strict";
const Handlebars = require("handlebars");

function render(template, context) {
  const hb = Handlebars.create();
  // Upstream's only custom helper.
  hb.registerHelper("eq", (a, b) => a === b);
  try {
    return { out: hb.compile(template)(context) };
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
}

const chunks = [];
process.stdin.on("data", (c) => chunks.push(c));
process.stdin.on("end", () => {
  const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const results = input.cases.map((c) => render(c.template, c.context));
  process.stdout.write(JSON.stringify(results));
});
