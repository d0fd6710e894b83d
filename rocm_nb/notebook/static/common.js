// Shared helpers of rocm_nb's teaching widgets; each widget's ES module is this file followed by its own.
const add = (parent, tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
};
const pct = (p) => (p >= 0.995 ? "100" : p <= 0 ? "0" : p < 0.0005 ? "<0.1" : (100 * p).toFixed(p < 0.1 ? 1 : 0)) + " %";
// Visible whitespace for a token's text, so that " " and "\n" can be seen and hovered.
const show = (text) => (text === "" ? "∅" : text.replace(/\n/g, "↵\n").replace(/\t/g, "→"));
// A legend's addition when some of the candidates are parts of a character (rocm_nb.notebook._widget_kit.FRAGMENT).
const fragments = (options) =>
  (options.some(([text]) => text.includes("\ufffd")) ? " · �: part of a character the model spells in several tokens" : "");
// Shade from probability: likely tokens pale, unlikely ones strong orange-red.
const shade = (p) => `hsla(${Math.round(120 * p)}, 85%, 55%, ${(0.15 + 0.55 * (1 - p)).toFixed(2)})`;
// One token: shaded, focusable, with a tooltip of its alternatives (shown on hover and on keyboard focus).
function tokenSpan(parent, tok, index) {
  const span = add(parent, "span", "rocm-nb-tok", tok.t);
  span.tabIndex = 0;
  span.style.background = shade(tok.p);
  span.dataset.index = String(index);
  span.dataset.prob = tok.p.toFixed(4);
  const tip = add(span, "span", "rocm-nb-tip");
  tip.setAttribute("role", "tooltip");
  const head = add(tip, "div", "rocm-nb-tip-row rocm-nb-chosen");
  add(head, "span", "rocm-nb-code", show(tok.t));
  add(head, "span", "rocm-nb-pct", pct(tok.p));
  for (const [text, p] of tok.top) {
    if (text === tok.t) continue;
    const row = add(tip, "div", "rocm-nb-tip-row");
    add(row, "span", "rocm-nb-code", show(text));
    add(row, "span", "rocm-nb-pct", pct(p));
  }
  const alts = tok.top.map(([text, p]) => `${JSON.stringify(text)} ${pct(p)}`).join(", ");
  span.setAttribute("aria-label", `${JSON.stringify(tok.t)}: ${pct(tok.p)}; alternatives: ${alts}`);
  return span;
}
// A labelled horizontal bar chart; rows: {label, p, raw?}; onPick(i) makes the labels buttons.
function bars(parent, rows, onPick) {
  const grid = add(parent, "div", "rocm-nb-bars");
  rows.forEach((row, i) => {
    const label = add(grid, "div", "rocm-nb-bar-label");
    if (onPick) {
      const button = add(label, "button", "rocm-nb-pick", show(row.label));
      button.title = `append ${JSON.stringify(row.label)} and ask again`;
      button.addEventListener("click", () => onPick(i));
    } else {
      add(label, "span", "rocm-nb-code", show(row.label));
    }
    const track = add(grid, "div", "rocm-nb-bar-track");
    if (row.raw !== undefined) add(track, "span", "rocm-nb-bar-raw").style.width = (100 * row.raw).toFixed(1) + "%";
    add(track, "span", "rocm-nb-bar-fill").style.width = (100 * row.p).toFixed(1) + "%";
    add(grid, "div", "rocm-nb-pct", pct(row.p));
  });
  return grid;
}
// A one-line meter: label, bar, text; fraction in [0, 1].
function meter(parent, label, fraction, text, cls) {
  const row = add(parent, "div", "rocm-nb-meter " + (cls || ""));
  add(row, "span", "", label);
  const fill = add(add(row, "span", "rocm-nb-meter-track"), "span", "rocm-nb-meter-fill");
  fill.style.width = (100 * Math.min(1, Math.max(0, fraction))).toFixed(1) + "%";
  if (fraction >= 0.9) fill.classList.add("rocm-nb-full");
  add(row, "span", "", text);
  return row;
}
const redrawOn = (model, names, draw) => { for (const name of names) model.on("change:" + name, draw); };
