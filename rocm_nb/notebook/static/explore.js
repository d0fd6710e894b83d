// The view of rocm_nb.notebook.explore.NextTokenExplorer: the text so far, the next-token candidates as bars
// (click one to append it), Back, and a temperature slider applied here (normalised over the candidates).
function render({ model, el }) {
  const root = add(el, "div", "rocm-nb-w rocm-nb-explore");
  const text = add(root, "div", "rocm-nb-tokens rocm-nb-explore-text");
  const controls = add(root, "div", "rocm-nb-controls");
  const back = add(controls, "button", "rocm-nb-back", "◀ Back");
  back.addEventListener("click", () => model.send({ event: "back" }));
  const label = add(controls, "label", "", "temperature");
  const slider = add(label, "input");
  Object.assign(slider, { type: "range", min: "0", max: "2", step: "0.05" });
  slider.setAttribute("aria-label", "temperature");
  const value = add(label, "span", "rocm-nb-pct");
  slider.addEventListener("input", () => { model.set("temperature", Number(slider.value)); model.save_changes(); });
  const status = add(controls, "span", "rocm-nb-note");
  const chart = add(root, "div", "rocm-nb-explore-bars");

  const scaled = (options, t) => {
    if (!options.length) return [];
    if (t <= 0) { const best = options.reduce((b, o, i) => (o[1] > options[b][1] ? i : b), 0);
                  return options.map((_, i) => (i === best ? 1 : 0)); }
    const logs = options.map(([, p]) => (p > 0 ? Math.log(p) / t : -Infinity));
    const top = Math.max(...logs);
    const w = logs.map((x) => Math.exp(x - top));
    const sum = w.reduce((a, b) => a + b, 0);
    return w.map((x) => x / sum);
  };
  const draw = () => {
    text.replaceChildren();
    add(text, "span", "rocm-nb-explore-prompt", model.get("prompt"));
    for (const piece of model.get("added")) add(text, "span", "rocm-nb-tok rocm-nb-added", piece).style.background = "#d2e3fc";
    const t = model.get("temperature");
    slider.value = String(t);
    value.textContent = t.toFixed(2);
    back.disabled = model.get("added").length === 0 || model.get("busy");
    root.dataset.busy = String(model.get("busy"));
    root.dataset.steps = String(model.get("added").length);
    const options = model.get("options");
    status.textContent = model.get("busy") ? "asking…" : model.get("error")
      || "bars: at this temperature, over these tokens; faint: the model's own probability" + fragments(options);
    chart.replaceChildren();
    const ps = scaled(options, t);
    bars(chart, options.map(([label, p], i) => ({ label, p: ps[i], raw: p })),
         model.get("busy") ? null : (i) => model.send({ event: "pick", index: i }));
  };
  redrawOn(model, ["prompt", "added", "options", "temperature", "busy", "error"], draw);
  draw();
}
export default { render };
