// The chat view: messages (markdown, reasoning, figures), per-conversation settings, composer.
import { html, useEffect, useMemo, useRef, useState } from "./html.js";
import { renderMarkdown } from "./markdown.js";
import { figures as formatFigures } from "./format.js";
import { IMAGE_TYPES, MAX_IMAGES, readImages } from "./images.js";

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
      if (!draft.trim() && !(message.images && message.images.length)) return;
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
  const images = message.images || [];
  return html`<div class="message user">
    ${images.length > 0 && html`<div class="user-images">
      ${images.map((url, i) => html`<img key=${i} src=${url}
        alt=${`Attached image ${i + 1} of ${images.length}`} />`)}
    </div>`}
    ${(message.content || !images.length) && html`<div class="bubble user-text">
      ${message.content}</div>`}
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

// Whether a drag carries files (text dragged within the page is left alone).
function carriesFiles(event) {
  return !!event.dataTransfer && [...event.dataTransfer.types].includes("Files");
}

// A file dropped outside the composer would make the browser leave the page to show it.
function keepDroppedFiles(event) {
  if (carriesFiles(event)) event.preventDefault();
}

// `vision`: true when the model takes images, false when not, null while that is being asked;
// `visionNote` says why attaching is off; `room` is how many more images the request may carry.
function Composer({ busy, vision, visionNote, room, onSend, onStop }) {
  const [text, setText] = useState("");
  const [images, setImages] = useState([]);
  const [problems, setProblems] = useState([]);
  const [dragging, setDragging] = useState(false);
  useEffect(() => {
    window.addEventListener("dragover", keepDroppedFiles);
    window.addEventListener("drop", keepDroppedFiles);
    return () => {
      window.removeEventListener("dragover", keepDroppedFiles);
      window.removeEventListener("drop", keepDroppedFiles);
    };
  }, []);
  // Images attached for a model that takes none are not sent: they wait for another model.
  const blocked = images.length > 0 && vision !== true;
  const ready = (text.trim() || images.length > 0) && !blocked;
  const send = () => {
    if (busy || !ready) return;
    onSend(text, images.map((image) => image.url));
    setText("");
    setImages([]);
    setProblems([]);
  };
  const attach = async (files) => {
    if (!files.length) return;
    if (vision !== true) {
      setProblems([visionNote]);
      return;
    }
    const read = await readImages(files, room - images.length);
    setImages((attached) => [...attached, ...read.images]);
    setProblems(read.problems);
  };
  const remove = (id) => {
    setImages((attached) => attached.filter((image) => image.id !== id));
    setProblems([]);
  };
  return html`<form class=${`composer${dragging ? " dragging" : ""}`}
    onSubmit=${(e) => {
      e.preventDefault();
      send();
    }}
    onDragOver=${(e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      setDragging(true);
    }}
    onDragLeave=${(e) => {
      if (!e.currentTarget.contains(e.relatedTarget)) setDragging(false);
    }}
    onDrop=${(e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault();
      setDragging(false);
      attach([...e.dataTransfer.files]);
    }}>
    ${images.length > 0 && html`<ul class="attachments" aria-label="Attached images">
      ${images.map((image) => html`<li class="attachment" key=${image.id}>
        <img src=${image.url} alt=${image.name} title=${image.name} />
        <button type="button" class="remove" aria-label=${`Remove ${image.name}`}
          title="Remove" onClick=${() => remove(image.id)}>✕</button>
      </li>`)}
    </ul>`}
    ${(problems.length > 0 || blocked) && html`<div class="attach-error" role="alert">
      <span class="attach-error-text">
        ${(blocked && !problems.length ? [visionNote] : problems).map((problem) =>
          html`<span key=${problem}>${problem}</span>`)}
      </span>
      ${problems.length > 0 && html`<button type="button" class="icon"
        aria-label="Dismiss image message" onClick=${() => setProblems([])}>✕</button>`}
    </div>`}
    <div class="composer-row">
      <label class=${`button ghost attach${vision === true ? "" : " disabled"}`}
        title=${vision === true
          ? `Attach images: PNG, JPEG, GIF, BMP or WebP, up to 10 MiB each, ${MAX_IMAGES} a request`
          : visionNote}>
        <span aria-hidden="true">+</span>
        <input type="file" multiple accept=${IMAGE_TYPES.join(",")} aria-label="Attach image"
          class="visually-hidden" disabled=${vision !== true}
          onChange=${(e) => {
            const files = [...e.target.files];
            e.target.value = "";
            attach(files);
          }} />
      </label>
      <textarea rows="1" aria-label="Message"
        placeholder="Message (Enter sends, Shift+Enter: new line)"
        value=${text} onInput=${(e) => setText(e.target.value)}
        onPaste=${(e) => {
          const files = e.clipboardData ? [...e.clipboardData.files] : [];
          if (!files.length) return;
          e.preventDefault();
          attach(files);
        }}
        onKeyDown=${(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            send();
          }
        }} />
      ${busy
        ? html`<button type="button" class="stop" aria-label="Stop" onClick=${onStop}>Stop</button>`
        : html`<button type="submit" class="primary" aria-label="Send"
            disabled=${!ready}>Send</button>`}
    </div>
  </form>`;
}

export function ChatView({ conversation, busy, showSettings, vision, onSend, onStop, onEdit,
  onRegenerate, onChange }) {
  const scroller = useRef(null);
  const messages = conversation.messages;
  const model = conversation.model || "This model";
  const visionNote = vision === null
    ? `Checking whether ${model} takes images…`
    : `${model} does not take images (it was not given a vision projector).`;
  // Every image of the conversation goes with each request.
  const sent = messages.reduce((n, m) => n + (m.images ? m.images.length : 0), 0);
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
    <${Composer} busy=${busy} vision=${vision} visionNote=${visionNote}
      room=${MAX_IMAGES - sent} onSend=${onSend} onStop=${onStop} />
  </div>`;
}
