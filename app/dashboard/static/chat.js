// tuneserve dashboard, chat models: the playground (#/models/<id>) and a chat job's base-vs-tuned
// report. Uses app.js's helpers (h, api, table, facts, fmt, show, authHeaders, failure, sseEvents), which
// are globals of the page; every value from the server goes in as text, never as HTML.
// The playground link may carry a first message: #/models/<id>?say=...&temperature=0&max_new_tokens=32
// sends it at once (a shareable example, and how the browser test drives the page).
"use strict";

const CHAT_DEFAULT_TEMPERATURE = 0.7;
const CHAT_DEFAULT_MAX_NEW_TOKENS = 256;

// POST /generate with stream=true; onToken(piece) per `token` event; resolves with the `done` body.
async function streamReply(body, onToken, signal) {
  const resp = await fetch("/generate", {
    method: "POST", signal,
    headers: { ...authHeaders(), "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!resp.ok) throw await failure(resp);
  for await (const { event, data } of sseEvents(resp)) {
    const payload = JSON.parse(data);
    if (event === "token") onToken(payload.text);
    else if (event === "done") return payload;
    else if (event === "error") throw new Error(payload.detail);
  }
  throw new Error("the stream ended before the reply was complete");
}

function chatBubble(role, text) {
  return h("li", { class: `chat-turn chat-${role}`, "data-role": role },
    h("span", { class: "chat-role" }, role), h("span", { class: "chat-text" }, text));
}

async function chatModelPage(id, query) {
  const model = await api(`/models/${encodeURIComponent(id)}`);
  if (model.task !== "chat") {
    show(`Model ${model.id}`, facts([["task", model.task], ["base model", model.base_model],
      ["labels", model.labels]]), h("p", { class: "muted" }, "A classifier: POST /predict classifies texts."));
    return null;
  }
  // The system prompt the model was tuned with (the server adds it to every conversation).
  let systemPrompt = null;
  if (model.job_id) {
    try { systemPrompt = (await api(`/jobs/${encodeURIComponent(model.job_id)}`)).hyperparameters.system_prompt; }
    catch (_) { /* the job was deleted: the model still serves */ }
  }
  const messages = [];
  const log = h("ol", { class: "chat-log", id: "chat-log", "aria-live": "polite", "aria-label": "conversation" });
  const input = h("textarea", { id: "chat-input", rows: 3, required: true, placeholder: "Write a message" });
  const temperature = h("input", { id: "chat-temperature", type: "number", min: 0, max: 2, step: 0.1,
                                   value: query.get("temperature") ?? CHAT_DEFAULT_TEMPERATURE });
  const maxNew = h("input", { id: "chat-max-new-tokens", type: "number", min: 1, step: 1,
                              value: query.get("max_new_tokens") ?? CHAT_DEFAULT_MAX_NEW_TOKENS });
  const send = h("button", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", disabled: true }, "Stop");
  const status = h("p", { class: "muted", role: "status" });
  const form = h("form", { class: "chat-form" },
    h("label", { for: "chat-input" }, "Message"), input,
    h("div", { class: "chat-controls" },
      h("label", { for: "chat-temperature" }, "Temperature (0: greedy)"), temperature,
      h("label", { for: "chat-max-new-tokens" }, "Max new tokens"), maxNew, send, stop),
    status);
  let controller = null;

  async function say(text) {
    messages.push({ role: "user", content: text });
    log.append(chatBubble("user", text));
    const reply = chatBubble("assistant", "");
    const target = reply.querySelector(".chat-text");
    let tokens = 0;
    reply.dataset.streamedTokens = "0";
    log.append(reply);
    controller = new AbortController();
    send.disabled = true; stop.disabled = false;
    status.textContent = "Generating…";
    try {
      const done = await streamReply({ model_id: model.id, messages, temperature: Number(temperature.value),
                                       max_new_tokens: Number(maxNew.value) }, (piece) => {
        target.textContent += piece;
        reply.dataset.streamedTokens = String(++tokens);
      }, controller.signal);
      target.textContent = done.message.content;
      messages.push({ role: "assistant", content: done.message.content });
      reply.dataset.finishReason = done.finish_reason;
      status.textContent = `${done.usage.completion_tokens} tokens (${done.finish_reason}).`;
    } catch (err) {
      messages.pop();  // the turn gets no answer: the next message starts from the one before
      reply.dataset.finishReason = controller.signal.aborted ? "stopped" : "error";
      status.textContent = controller.signal.aborted ? "Stopped." : `Error: ${err.message}`;
    } finally {
      send.disabled = false; stop.disabled = true; controller = null;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    say(text);
  });
  stop.addEventListener("click", () => controller && controller.abort());  // the server stops decoding it
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  show(`Chat with ${model.id}`,
    facts([["base model", model.base_model], ["job", model.job_id ? link(`#/jobs/${model.job_id}`, model.job_id) : "–"],
      ["system prompt", systemPrompt || "none"]]),
    h("section", { "aria-labelledby": "chat-h", class: "chat" }, h("h2", { id: "chat-h" }, "Conversation"), log, form));
  if (query.get("say")) say(query.get("say"));
  return { stop: () => controller && controller.abort() };
}

// A chat job's comparison: scores side by side, the run's facts, then example replies.
function chatReportSection(job, comparison) {
  const section = h("section", { "aria-labelledby": "chat-report-h", id: "chat-report" },
    h("h2", { id: "chat-report-h" }, "Base vs tuned"));
  if (!comparison || !comparison.tuned) {
    section.append(h("p", { class: "muted" }, TERMINAL.has(job.state)
      ? "No comparison was recorded." : "Made when training ends: the base and the tuned model answer the held-out prompts."));
    return section;
  }
  const names = { bleu: `BLEU (${comparison.bleu_tokenize})`, chrf: "chrF", cosine_similarity: "cosine (MiniLM)" };
  section.append(
    table(null, ["metric", "base", "tuned", "change"], Object.keys(names).map((m) =>
      [names[m], comparison.base[m], comparison.tuned[m], comparison.delta ? comparison.delta[m] : "–"])),
    facts([["split", comparison.split],
      ["prompts scored", comparison.prompts_in_split !== undefined
        ? `${comparison.prompts} of ${comparison.prompts_in_split}` + (comparison.max_prompts ? ` (capped at ${comparison.max_prompts})` : "")
        : comparison.prompts],
      ["decoding", `${comparison.decoding}, at most ${comparison.max_new_tokens} new tokens`],
      comparison.generation_s !== undefined ? ["generation time", `${fmt(comparison.generation_s, 1)} s`] : null]),
    table("Example replies", ["row", "prompt", "reference", "base", "tuned"],
      (comparison.examples || []).map((e) => [e.row, e.prompt, e.reference, e.base, e.tuned]),
      { text: ["prompt", "reference", "base", "tuned"] }));
  return section;
}
