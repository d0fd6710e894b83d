// The view of rocm_nb.notebook.token_view.TokenView: one pill per token (its text, its id below), in segments with counts.
function render({ model, el }) {
  const root = add(el, "div", "rocm-nb-w rocm-nb-tokenview");
  const draw = () => {
    root.replaceChildren();
    add(root, "div", "rocm-nb-note", `${model.get("chars")} characters → ${model.get("total")} tokens`);
    for (const part of model.get("parts_data")) {
      const box = add(root, "div", "rocm-nb-segment");
      box.dataset.label = part.label;
      add(box, "div", "rocm-nb-segment-head", `${part.label} · ${part.count} tokens`);
      for (const tok of part.tokens) {
        const pill = add(box, "span", "rocm-nb-pill" + (tok.special ? " rocm-nb-special" : ""), show(tok.text));
        add(pill, "sub", "", String(tok.id));
        pill.title = `token id ${tok.id}` + (tok.special ? " (special)" : "");
      }
    }
  };
  redrawOn(model, ["parts_data", "total", "chars"], draw);
  draw();
}
export default { render };
