// The view of rocm_nb.notebook.reply_view.ReplyView: a "Thinking" block, a prefill progress bar, the answer (Markdown,
// or tokens shaded by probability with their alternatives), a before/after sampling toggle, a context meter.
function render({ model, el }) {
  const root = add(el, "div", "rocm-nb-w rocm-nb-reply");
  const thinking = add(root, "details", "rocm-nb-thinking");
  const summary = add(thinking, "summary", "", "Thinking");
  const thought = add(thinking, "div", "rocm-nb-thinking-text");
  let toggledByUser = false;
  summary.addEventListener("click", () => { toggledByUser = true; });
  const progress = add(root, "div", "rocm-nb-progress");
  const toggle = add(root, "div", "rocm-nb-controls rocm-nb-toggle");
  const raw = add(toggle, "button", "", "before sampling");
  const post = add(toggle, "button", "", "after sampling");
  const toggleNote = add(toggle, "span", "rocm-nb-note");
  raw.addEventListener("click", () => model.send({ event: "mode", mode: "raw" }));
  post.addEventListener("click", () => model.send({ event: "mode", mode: "post" }));
  const answer = add(root, "div", "rocm-nb-answer");
  const context = add(root, "div", "rocm-nb-context");
  const footer = add(root, "div", "rocm-nb-note rocm-nb-footer");
  let shown = { mode: null, count: 0, box: null };

  const drawThinking = () => {
    const text = model.get("reasoning");
    const t = model.get("thinking");
    thinking.style.display = text ? "" : "none";
    if (!text) return;
    const secs = t.seconds === undefined ? "" : ` · ${t.seconds.toFixed(1)} s`;
    summary.textContent = `${t.done ? "Thought" : "Thinking…"} · ${t.tokens || 0} tokens${secs}`;
    thought.textContent = text;
    if (!toggledByUser) thinking.open = !t.done;
    root.dataset.thinking = t.done ? "done" : "live";
  };
  const drawProgress = () => {
    progress.replaceChildren();
    const p = model.get("progress");
    if (!p.total || p.processed >= p.total) return;
    meter(progress, "reading the prompt", p.processed / p.total,
          `${p.processed} / ${p.total} tokens` + (p.cached ? ` (${p.cached} from cache)` : ""));
  };
  const drawAnswer = () => {
    const probs = model.get("probs");
    toggle.style.display = probs ? "" : "none";
    answer.style.display = model.get("show_answer") ? "" : "none";
    root.dataset.streaming = String(model.get("streaming"));
    if (!probs) {
      shown = { mode: null, count: 0, box: null };
      const html = model.get("answer_html");
      if (html) answer.innerHTML = html;  // rendered by rocm_nb (rocm_nb._markdown): no raw HTML, no images
      else answer.textContent = model.get("answer") + (model.get("streaming") ? "▌" : "");
      answer.classList.toggle("rocm-nb-tokens", !html);
      return;
    }
    const mode = model.get("mode");
    const state = model.get("post_state");
    raw.setAttribute("aria-pressed", String(mode === "raw"));
    post.setAttribute("aria-pressed", String(mode === "post"));
    post.disabled = state === "off" || state === "loading";
    toggleNote.textContent = state === "loading" ? "asking the server again with the same seed…"
      : state.startsWith("error") ? state : mode === "post" ? "what top-k, top-p, min-p and temperature left"
      : "the model's own distribution";
    root.dataset.mode = mode;
    const tokens = model.get(mode === "post" ? "post_tokens" : "tokens");
    if (shown.mode !== mode || tokens.length < shown.count || !shown.box) {
      answer.replaceChildren();
      shown = { mode, count: 0, box: add(answer, "div", "rocm-nb-tokens") };
    }
    for (let i = shown.count; i < tokens.length; i++) tokenSpan(shown.box, tokens[i], i);
    shown.count = tokens.length;
  };
  const drawContext = () => {
    context.replaceChildren();
    const c = model.get("context");
    if (!c.n_ctx) return;
    meter(context, "context", c.used / c.n_ctx,
          `${c.used} / ${c.n_ctx} tokens (${Math.round((100 * c.used) / c.n_ctx)} %)`);
  };
  const drawFooter = () => { footer.textContent = model.get("footer"); };
  redrawOn(model, ["reasoning", "thinking"], drawThinking);
  redrawOn(model, ["progress"], drawProgress);
  redrawOn(model, ["probs", "tokens", "post_tokens", "mode", "post_state", "answer", "answer_html", "streaming",
                  "show_answer"],
           drawAnswer);
  redrawOn(model, ["context"], drawContext);
  redrawOn(model, ["footer"], drawFooter);
  drawThinking(); drawProgress(); drawAnswer(); drawContext(); drawFooter();
}
export default { render };
