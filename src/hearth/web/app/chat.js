// The chat view: messages (markdown, reasoning, figures), per-conversation settings, composer.
import { html, useEffect, useMemo, useRef, useState } from "./html.js";
import { renderMarkdown } from "./markdown.js";
import { figures as formatFigures } from "./format.js";

function Markdown({ text, className }) {
  const ref = useRef(null);
  const rendered = useMemo(() => renderMarkdown(text), [text]);
  useEffect(() => {
    // Copy buttons are added to the sanitized HTML as elements, never as markup.
    for (const pre of ref.current.querySelectorAll("pre")) {
      if (pre.querySelector(".copy-code")) continue;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy code");
      pre.prepend(button);
    }
  }, [rendered]);
  return html`<div ref=${ref} class=${`markdown ${className || ""}`}
    dangerouslySetInnerHTML=${{ __html: rendered }} />`;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

// Code blocks' copy buttons, delegated: they are created outside Preact.
function onMessagesClick(event) {
  const button = event.target.closest(".copy-code");
  if (!button) return;
  const code = button.parentElement.querySelector("code");
  copyText(code ? code.textContent : "", button);
}

function UserMessage({ message, index, busy, onEdit }) {
  const [draft, setDraft] = useState(null);
  if (draft !== null) {
    const submit = () => {
      if (!draft.trim()) return;
      setDraft(null);
      onEdit(index, draft);
    };
    return html`<div class="message user editing">
      <textarea class="edit-box" aria-label="Edit message" value=${draft}
        onInput=${(e) => setDraft(e.target.value)}
        onKeyDown=${(e) => {
          if (e.key === "Enter" && !e.shiftKey) {
            e.preventDefault();
            submit();
          }
        }} />
      <div class="actions">
        <button type="button" class="ghost" aria-label="Cancel editing"
          onClick=${() => setDraft(null)}>Cancel</button>
        <button type="button" class="primary" aria-label="Send edited message"
          onClick=${submit}>Send</button>
      </div>
    </div>`;
  }
  return html`<div class="message user">
    <div class="bubble user-text">${message.content}</div>
    <div class="actions">
      <button type="button" class="ghost small" aria-label="Edit message" disabled=${busy}
        onClick=${() => setDraft(message.content)}>Edit</button>
    </div>
  </div>`;
}

function AssistantMessage({ message, isLast, busy, onRegenerate }) {
  const waiting = message.pending && !message.content && !message.reasoning;
  return html`<div class="message assistant" aria-busy=${message.pending ? "true" : "false"}>
    <div class="meta"><span class="model-name">${message.model || ""}</span></div>
    ${message.reasoning && html`<details class="reasoning">
      <summary>Reasoning</summary>
      <${Markdown} text=${message.reasoning} />
    </details>`}
    ${waiting ? html`<div class="typing" aria-label="Waiting for the reply">
      <span></span><span></span><span></span></div>` : html`<${Markdown}
      className="reply" text=${message.content} />`}
    ${message.error && html`<div class="message-error" role="alert">${message.error}</div>`}
    ${!message.pending && html`<div class="footer">
      <span class="figures">${message.figures ? formatFigures(message.figures)
        : message.stopped ? "Stopped" : ""}</span>
      <span class="actions">
        <button type="button" class="ghost small" aria-label="Copy reply"
          onClick=${(e) => copyText(message.content, e.currentTarget)}>Copy</button>
        ${isLast && html`<button type="button" class="ghost small" aria-label="Regenerate reply"
          disabled=${busy} onClick=${onRegenerate}>Regenerate</button>`}
      </span>
    </div>`}
  </div>`;
}

function Settings({ conversation, onChange }) {
  const settings = conversation.settings;
  const number = (name, value) => {
    const parsed = Number(value);
    if (value === "" || !Number.isFinite(parsed)) return;
    onChange({ ...conversation, settings: { ...settings, [name]: parsed } });
  };
  return html`<section class="settings" aria-label="Conversation settings">
    <label class="field wide">
      <span>System prompt</span>
      <textarea rows="2" aria-label="System prompt" value=${conversation.system}
        placeholder="You are a helpful assistant."
        onInput=${(e) => onChange({ ...conversation, system: e.target.value })} />
    </label>
    <label class="field">
      <span>Temperature</span>
      <input type="number" min="0" max="2" step="0.1" aria-label="Temperature"
        value=${settings.temperature} onChange=${(e) => number("temperature", e.target.value)} />
    </label>
    <label class="field">
      <span>Top p</span>
      <input type="number" min="0" max="1" step="0.05" aria-label="Top p"
        value=${settings.top_p} onChange=${(e) => number("top_p", e.target.value)} />
    </label>
    <label class="field">
      <span>Max tokens</span>
      <input type="number" min="1" step="1" aria-label="Max tokens"
        value=${settings.max_tokens} onChange=${(e) => number("max_tokens", e.target.value)} />
    </label>
  </section>`;
}

function Composer({ busy, onSend, onStop }) {
  const [text, setText] = useState("");
  const send = () => {
    if (busy || !text.trim()) return;
    onSend(text);
    setText("");
  };
  return html`<form class="composer" onSubmit=${(e) => {
    e.preventDefault();
    send();
  }}>
    <textarea rows="1" aria-label="Message" placeholder="Message (Enter sends, Shift+Enter: new line)"
      value=${text} onInput=${(e) => setText(e.target.value)}
      onKeyDown=${(e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          send();
        }
      }} />
    ${busy
      ? html`<button type="button" class="stop" aria-label="Stop" onClick=${onStop}>Stop</button>`
      : html`<button type="submit" class="primary" aria-label="Send"
          disabled=${!text.trim()}>Send</button>`}
  </form>`;
}

export function ChatView({ conversation, busy, showSettings, onSend, onStop, onEdit,
  onRegenerate, onChange }) {
  const scroller = useRef(null);
  const messages = conversation.messages;
  const last = messages[messages.length - 1];
  useEffect(() => {
    const element = scroller.current;
    if (element) element.scrollTop = element.scrollHeight;
  }, [messages.length, last && last.content, last && last.reasoning]);
  return html`<div class="chat">
    ${showSettings && html`<${Settings} conversation=${conversation} onChange=${onChange} />`}
    <div class="messages" id="messages" ref=${scroller} onClick=${onMessagesClick}
      aria-live="polite">
      ${messages.length === 0 && html`<div class="empty">
        <h2>What can I help with?</h2>
        <p>Replies come from ${conversation.model || "the model"}, on this machine.</p>
      </div>`}
      ${messages.map((message, index) => message.role === "user"
        ? html`<${UserMessage} key=${index} message=${message} index=${index} busy=${busy}
            onEdit=${onEdit} />`
        : html`<${AssistantMessage} key=${index} message=${message} busy=${busy}
            isLast=${index === messages.length - 1} onRegenerate=${onRegenerate} />`)}
    </div>
    <${Composer} busy=${busy} onSend=${onSend} onStop=${onStop} />
  </div>`;
}
