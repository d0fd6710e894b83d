// The view of rocm_nb.notebook.monitor.GpuMonitor, an anywidget ES module: draws the titled groups of bars in the
// "sections" trait and tells the kernel when it is visible ({event: "visible" | "hidden", view}).
// It follows static/common.js (whose add() it uses): see rocm_nb.notebook._widget_kit.esm.
function render({ model, el }) {
  const view = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const root = document.createElement("div");
  root.className = "rocm-nb-monitor";
  el.appendChild(root);

  const draw = () => {
    root.replaceChildren();
    add(root, "div", "rocm-nb-monitor-title", model.get("title"));
    for (const section of model.get("sections")) {
      const box = add(root, "div", "rocm-nb-monitor-section rocm-nb-monitor-" + section.kind);
      add(box, "div", "rocm-nb-monitor-heading", section.title);
      if (section.note) add(box, "div", "rocm-nb-monitor-note", section.note);
      for (const bar of section.bars) {
        const row = add(box, "div", "rocm-nb-monitor-row");
        add(row, "span", "rocm-nb-monitor-label", bar.label);
        const track = add(row, "span", "rocm-nb-monitor-track");
        const fill = add(track, "span", "rocm-nb-monitor-fill");
        fill.style.width = bar.fraction === null ? "0" : (100 * bar.fraction).toFixed(1) + "%";
        add(row, "span", "rocm-nb-monitor-value", bar.text);
      }
    }
    add(root, "div", "rocm-nb-monitor-footer", model.get("status"));
    root.dataset.samples = String(model.get("samples"));
    root.dataset.state = model.get("state");
  };
  for (const name of ["title", "sections", "status", "samples", "state"]) model.on("change:" + name, draw);
  draw();

  let inView = false;
  let reported = null;
  const send = (event) => { try { model.send({ event, view }); } catch (e) { /* the model is closed */ } };
  const report = () => {
    const visible = inView && !document.hidden;
    if (visible !== reported) {
      reported = visible;
      send(visible ? "visible" : "hidden");
    }
  };
  const observer = new IntersectionObserver((entries) => {
    inView = entries[entries.length - 1].isIntersecting;
    report();
  });
  observer.observe(root);
  document.addEventListener("visibilitychange", report);
  const beat = setInterval(() => { if (reported) send("visible"); },
                           Math.max(1000, 1000 * model.get("heartbeat_s")));
  return () => {
    observer.disconnect();
    document.removeEventListener("visibilitychange", report);
    clearInterval(beat);
    if (reported) send("hidden");
  };
}
export default { render };
