// The view of rocm_nb.notebook.playground.SamplerPlayground: sliders write the "settings" trait; the kernel answers with
// the server's post-sampling distribution; Sample asks for n continuations.
function render({ model, el }) {
  const root = add(el, "div", "rocm-nb-w rocm-nb-playground");
  add(root, "div", "rocm-nb-tokens rocm-nb-code", model.get("prompt"));
  const controls = add(root, "div", "rocm-nb-controls");
  const specs = [["temperature", 0, 2, 0.05], ["top_k", 0, 100, 1], ["top_p", 0.01, 1, 0.01], ["min_p", 0, 1, 0.01]];
  const sliders = {};
  for (const [name, min, max, step] of specs) {
    const label = add(controls, "label", "", name);
    const input = add(label, "input");
    Object.assign(input, { type: "range", min: String(min), max: String(max), step: String(step) });
    input.setAttribute("aria-label", name);
    input.dataset.name = name;
    const value = add(label, "span", "rocm-nb-pct");
    input.addEventListener("input", () => { value.textContent = input.value; });
    input.addEventListener("change", () => {  // on release: one request per setting, not per pixel
      model.set("settings", { ...model.get("settings"), [name]: Number(input.value) });
      model.save_changes();
    });
    sliders[name] = [input, value];
  }
  const status = add(controls, "span", "rocm-nb-note");
  const chart = add(root, "div", "rocm-nb-playground-bars");
  const sample = add(add(root, "div", "rocm-nb-controls"), "button", "rocm-nb-sample", "");
  sample.addEventListener("click", () => model.send({ event: "sample" }));
  const list = add(root, "ol", "rocm-nb-samples");

  const draw = () => {
    const settings = model.get("settings");
    for (const [name, [input, value]] of Object.entries(sliders)) {
      if (settings[name] !== undefined) { input.value = String(settings[name]); value.textContent = String(settings[name]); }
    }
    const busy = model.get("busy");
    root.dataset.busy = String(busy);
    status.textContent = busy ? "asking the server…" : model.get("error")
      || "faint: the model's own probability; solid: what the sampler chain leaves" + fragments(model.get("raw_options"));
    sample.textContent = `Sample ${model.get("n")} continuations`;
    sample.disabled = busy;
    const kept = new Map(model.get("post_options"));
    root.dataset.topk = String(model.get("drawn_for").top_k);
    root.dataset.kept = String(model.get("post_options").length);
    chart.replaceChildren();
    bars(chart, model.get("raw_options").map(([label, p]) => ({ label, p: kept.get(label) || 0, raw: p })));
    list.replaceChildren();
    for (const text of model.get("samples")) add(list, "li", "rocm-nb-code", text);
  };
  redrawOn(model, ["settings", "raw_options", "post_options", "drawn_for", "samples", "busy", "error", "n"], draw);
  draw();
}
export default { render };
