// The page: conversations in the sidebar, the chat or models view, the key prompt and errors.
import { html, render, useCallback, useEffect, useRef, useState } from "./html.js";
import { getJSON, saveKey, savedKey, streamChat } from "./api.js";
import {
  deleteConversation,
  exportJSON,
  listConversations,
  newConversation,
  parseImport,
  saveConversation,
} from "./store.js";
import { ChatView } from "./chat.js";
import { ModelsView } from "./models.js";

function KeyPrompt({ message, onSubmit }) {
  const [key, setKey] = useState("");
  return html`<div class="overlay">
    <form class="dialog" role="dialog" aria-modal="true" aria-labelledby="key-title"
      onSubmit=${(e) => {
        e.preventDefault();
        if (key.trim()) onSubmit(key.trim());
      }}>
      <h2 id="key-title">API key needed</h2>
      <p>This server was started with <code>--api-key</code>. Enter a key to use it; it is kept
        in this browser.</p>
      ${message && html`<p class="key-error" role="alert">${message}</p>`}
      <input type="password" autocomplete="off" aria-label="API key" placeholder="API key"
        value=${key} onInput=${(e) => setKey(e.target.value)} autofocus />
      <button type="submit" class="primary" aria-label="Save API key" disabled=${!key.trim()}>
        Continue</button>
    </form>
  </div>`;
}

function ConversationItem({ conversation, active, onOpen, onRename, onDelete }) {
  const [renaming, setRenaming] = useState(null);
  if (renaming !== null) {
    const done = () => {
      if (renaming.trim()) onRename(conversation, renaming.trim());
      setRenaming(null);
    };
    return html`<li class="conversation renaming">
      <input type="text" aria-label="Conversation title" value=${renaming} autofocus
        onInput=${(e) => setRenaming(e.target.value)} onBlur=${done}
        onKeyDown=${(e) => {
          if (e.key === "Enter") done();
          if (e.key === "Escape") setRenaming(null);
        }} />
    </li>`;
  }
  return html`<li class=${`conversation${active ? " active" : ""}`}>
    <button type="button" class="open" aria-label=${`Open ${conversation.title}`}
      aria-current=${active ? "true" : undefined} onClick=${() => onOpen(conversation.id)}>
      ${conversation.title}</button>
    <button type="button" class="icon" aria-label=${`Rename ${conversation.title}`}
      title="Rename" onClick=${() => setRenaming(conversation.title)}>✎</button>
    <button type="button" class="icon" aria-label=${`Delete ${conversation.title}`}
      title="Delete" onClick=${() => onDelete(conversation)}>✕</button>
  </li>`;
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function titleFrom(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 40 ? `${line.slice(0, 40)}…` : line || "New chat";
}

// A message with images goes as content parts: the images (data URLs), then its text.
function wireContent(message) {
  if (!message.images || !message.images.length) return message.content;
  const parts = message.images.map((url) => ({ type: "image_url", image_url: { url } }));
  if (message.content.trim()) parts.push({ type: "text", text: message.content });
  return parts;
}

function requestMessages(conversation, messages) {
  const wire = [];
  if (conversation.system.trim()) wire.push({ role: "system", content: conversation.system });
  for (const message of messages) {
    if (message.role === "assistant" && (message.error || !message.content)) continue;
    wire.push({ role: message.role, content: wireContent(message) });
  }
  return wire;
}

// A model's path under /v1/models/ (names such as hf.co/org/repo:Q4_1 keep their slashes).
function modelPath(name) {
  return name.split("/").map(encodeURIComponent).join("/");
}

function App() {
  const [models, setModels] = useState([]);
  const [running, setRunning] = useState([]);
  const [tags, setTags] = useState([]);
  const [conversations, setConversations] = useState([]);
  const [current, setCurrent] = useState(null);
  const [view, setView] = useState("chat");
  const [error, setError] = useState(null);
  const [keyPrompt, setKeyPrompt] = useState(null);
  const [streaming, setStreaming] = useState(null);
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [showSettings, setShowSettings] = useState(false);
  // What each model can do (`capabilities` of GET /v1/models/{id}), asked once per model.
  const [capabilities, setCapabilities] = useState({});
  // Deleted while a reply was still streaming into them: its end must not store them again.
  const deleted = useRef(new Set());

  const report = useCallback((problem) => {
    if (problem && problem.name === "AbortError") return;
    if (problem && problem.needsKey) {
      setKeyPrompt({ message: savedKey() ? `The server refused this key: ${problem.message}` : "" });
      return;
    }
    setError(problem instanceof Error ? problem.message : String(problem));
  }, []);

  const refreshModels = useCallback(async () => {
    try {
      const [list, ps, store] = await Promise.all([
        getJSON("/v1/models"),
        getJSON("/api/ps"),
        getJSON("/api/tags"),
      ]);
      setModels(list.data.map((m) => m.id));
      setRunning(ps.models);
      setTags(store.models);
      setKeyPrompt(null);
      return list.data.map((m) => m.id);
    } catch (problem) {
      report(problem);
      return null;
    }
  }, [report]);

  // Shows a conversation; `persist` also stores it and updates the sidebar (not done for each
  // streamed delta, which would redraw the whole list many times a second).
  const commit = useCallback((conversation, persist) => {
    setCurrent((open) => (open && open.id === conversation.id ? conversation : open));
    if (!persist || deleted.current.has(conversation.id)) return;
    setConversations((all) => {
      const rest = all.filter((c) => c.id !== conversation.id);
      return conversation.messages.length ? [conversation, ...rest] : rest;
    });
    if (conversation.messages.length) saveConversation(conversation).catch(report);
  }, [report]);

  useEffect(() => {
    (async () => {
      const names = await refreshModels();
      let stored = [];
      try {
        stored = await listConversations();
      } catch (problem) {
        report(new Error(`Saved conversations cannot be read: ${problem.message}`));
      }
      setConversations(stored);
      setCurrent(stored[0] || newConversation(names ? names[0] : null));
    })();
  }, []);

  // The conversation's model when the server still serves it, else the server's first.
  const modelFor = (conversation) =>
    models.includes(conversation.model) ? conversation.model : models[0] || conversation.model;

  // Whether the model shown takes images: asked when it is first picked (null until known).
  const shown = current ? modelFor(current) : null;
  useEffect(() => {
    if (!shown || !models.includes(shown) || capabilities[shown]) return;
    getJSON(`/v1/models/${modelPath(shown)}`)
      .then((card) => setCapabilities((known) => ({ ...known, [shown]: card.capabilities || [] })))
      .catch((problem) => {
        if (problem.needsKey) report(problem);
        else setCapabilities((known) => ({ ...known, [shown]: [] }));
      });
  }, [shown, models]);

  const generate = async (base, messages) => {
    const model = modelFor(base);
    const assistant = { role: "assistant", content: "", reasoning: "", model, pending: true };
    let conversation = { ...base, model, messages: [...messages, assistant], updated: Date.now() };
    commit(conversation, true);
    const controller = new AbortController();
    setStreaming(controller);
    const started = performance.now();
    let firstAt = null;
    let usage = null;
    // Deltas are drawn once per animation frame, however fast they come.
    let frame = null;
    const draw = () => {
      frame = null;
      conversation = { ...conversation, messages: [...messages, { ...assistant }] };
      commit(conversation, false);
    };
    try {
      const request = {
        model,
        messages: requestMessages(base, messages),
        temperature: base.settings.temperature,
        top_p: base.settings.top_p,
        max_tokens: base.settings.max_tokens,
      };
      for await (const chunk of streamChat(request, controller.signal)) {
        if (chunk.model) assistant.model = chunk.model;
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && (delta.content || delta.reasoning_content)) {
          if (firstAt === null) firstAt = performance.now();
          assistant.content += delta.content || "";
          assistant.reasoning += delta.reasoning_content || "";
          if (frame === null) frame = requestAnimationFrame(draw);
        }
      }
      const ended = performance.now();
      if (usage) {
        const tokens = usage.completion_tokens;
        const details = usage.prompt_tokens_details;
        assistant.figures = {
          tokens,
          tokensPerSecond:
            tokens > 1 && firstAt !== null && ended > firstAt
              ? ((tokens - 1) * 1000) / (ended - firstAt) : null,
          ttftMs: firstAt === null ? null : firstAt - started,
          cached: (details && details.cached_tokens) || 0,
          promptTokens: usage.prompt_tokens,
        };
      }
    } catch (problem) {
      if (problem.name === "AbortError") {
        assistant.stopped = true;
      } else {
        assistant.error = problem.message;
        if (problem.needsKey) report(problem);
      }
    } finally {
      if (frame !== null) cancelAnimationFrame(frame);
      delete assistant.pending;
      conversation = { ...conversation, messages: [...messages, { ...assistant }] };
      commit(conversation, true);
      setStreaming(null);
      refreshModels();
    }
  };

  const stop = useCallback(() => {
    if (streaming) streaming.abort();
  }, [streaming]);

  useEffect(() => {
    const onKey = (event) => {
      if (event.key === "Escape" && streaming) {
        event.preventDefault();
        streaming.abort();
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [streaming]);

  if (!current) {
    return html`<div class="loading">${keyPrompt
      ? html`<${KeyPrompt} message=${keyPrompt.message} onSubmit=${async (key) => {
          saveKey(key);
          const names = await refreshModels();
          if (names) setCurrent(newConversation(names[0]));
        }} />`
      : "Loading…"}</div>`;
  }

  const send = (text, images) => {
    const message = { role: "user", content: text };
    if (images.length) message.images = images;
    const title = titleFrom(text.trim() || !images.length ? text : "Image");
    const base = current.messages.length ? current : { ...current, title };
    generate(base, [...current.messages, message]);
  };
  // An edited message keeps its images.
  const edit = (index, text) => generate(current, [
    ...current.messages.slice(0, index),
    { ...current.messages[index], content: text },
  ]);
  const regenerate = () => {
    const messages = current.messages;
    if (messages.length && messages[messages.length - 1].role === "assistant") {
      generate(current, messages.slice(0, -1));
    }
  };
  const change = (conversation) => commit(conversation, true);
  const open = (id) => {
    if (streaming) streaming.abort();
    const found = conversations.find((c) => c.id === id);
    if (found) setCurrent(found);
    setView("chat");
    setSidebarOpen(false);
  };
  const startNew = () => {
    if (streaming) streaming.abort();
    setCurrent(newConversation(modelFor(current)));
    setView("chat");
    setSidebarOpen(false);
  };
  const rename = async (conversation, title) => {
    const renamed = { ...(conversation.id === current.id ? current : conversation), title };
    // Shown once stored, so that a reload right after a rename keeps it (commit stores it
    // again: the same record).
    try {
      await saveConversation(renamed);
    } catch (problem) {
      report(problem);
      return;
    }
    commit(renamed, true);
  };
  const remove = async (conversation) => {
    if (!confirm(`Delete “${conversation.title}”?`)) return;
    deleted.current.add(conversation.id);
    if (streaming && conversation.id === current.id) streaming.abort();
    try {
      await deleteConversation(conversation.id);
    } catch (problem) {
      report(problem);
      return;
    }
    setConversations((all) => all.filter((c) => c.id !== conversation.id));
    if (conversation.id === current.id) setCurrent(newConversation(modelFor(current)));
  };
  const importFile = async (file) => {
    try {
      const ids = new Set(conversations.map((c) => c.id));
      const conversation = parseImport(await file.text(), ids);
      deleted.current.delete(conversation.id);
      await saveConversation(conversation);
      setConversations((all) => [conversation, ...all]);
      setCurrent(conversation);
      setView("chat");
    } catch (problem) {
      report(problem);
    }
  };
  const exportCurrent = () => {
    const slug = current.title.replace(/[^\w-]+/g, "-").replace(/^-|-$/g, "") || "chat";
    download(`${slug}.json`, exportJSON(current));
  };

  const loadedNames = new Set(running.map((m) => m.name));
  const selected = modelFor(current);
  const vision = capabilities[selected] ? capabilities[selected].includes("vision") : null;
  return html`<div class=${`app${sidebarOpen ? " sidebar-open" : ""}`}>
    <aside class="sidebar" aria-label="Sidebar">
      <div class="brand"><span class="logo" aria-hidden="true"></span>Hearth</div>
      <button type="button" class="primary new-chat" aria-label="New chat" onClick=${startNew}>
        + New chat</button>
      <nav class="tabs" aria-label="Views">
        <button type="button" class=${view === "chat" ? "tab active" : "tab"} aria-label="Chat"
          onClick=${() => { setView("chat"); setSidebarOpen(false); }}>Chat</button>
        <button type="button" class=${view === "models" ? "tab active" : "tab"}
          aria-label="Models" onClick=${() => {
            setView("models");
            setSidebarOpen(false);
            refreshModels();
          }}>Models</button>
      </nav>
      <ul class="conversations" aria-label="Conversations">
        ${conversations.map((c) => html`<${ConversationItem} key=${c.id} conversation=${c}
          active=${c.id === current.id} onOpen=${open} onRename=${rename} onDelete=${remove} />`)}
      </ul>
      <div class="sidebar-foot">
        <label class="button ghost">Import
          <input type="file" accept="application/json,.json" aria-label="Import conversation"
            class="visually-hidden" onChange=${(e) => {
              const file = e.target.files[0];
              e.target.value = "";
              if (file) importFile(file);
            }} />
        </label>
        <button type="button" class="ghost" aria-label="Export conversation"
          disabled=${!current.messages.length} onClick=${exportCurrent}>Export</button>
      </div>
    </aside>
    <div class="scrim" onClick=${() => setSidebarOpen(false)} aria-hidden="true"></div>
    <main class="main">
      <header class="topbar">
        <button type="button" class="icon menu" aria-label="Menu"
          onClick=${() => setSidebarOpen(!sidebarOpen)}>☰</button>
        ${view === "chat" ? html`
          <select class="model-picker" aria-label="Model" value=${selected}
            disabled=${!!streaming}
            onChange=${(e) => change({ ...current, model: e.target.value })}>
            ${models.map((name) => html`<option value=${name} key=${name}>
              ${loadedNames.has(name) ? `● ${name}` : name}</option>`)}
          </select>
          ${models.length > 0 && html`<span class="loaded-hint">
            ${loadedNames.has(selected) ? "loaded" : "loads on first use"}</span>`}
          <span class="spacer"></span>
          <button type="button" class=${`ghost${showSettings ? " active" : ""}`}
            aria-label="Conversation settings" aria-expanded=${showSettings}
            onClick=${() => setShowSettings(!showSettings)}>Settings</button>`
          : html`<h1 class="view-title">Models</h1>`}
      </header>
      ${error && html`<div class="banner" role="alert">
        <span class="banner-text">${error}</span>
        <button type="button" class="icon" aria-label="Dismiss error"
          onClick=${() => setError(null)}>✕</button>
      </div>`}
      ${view === "chat"
        ? html`<${ChatView} conversation=${{ ...current, model: selected }} busy=${!!streaming}
            showSettings=${showSettings} vision=${vision} onSend=${send} onStop=${stop} onEdit=${edit}
            onRegenerate=${regenerate} onChange=${change} />`
        : html`<${ModelsView} tags=${tags} running=${running} onChanged=${refreshModels}
            onError=${report} />`}
    </main>
    ${keyPrompt && html`<${KeyPrompt} message=${keyPrompt.message} onSubmit=${(key) => {
      saveKey(key);
      refreshModels();
    }} />`}
  </div>`;
}

const root = document.getElementById("app");
// A failure the views did not catch still ends in words, never in a blank page.
window.addEventListener("error", (event) => {
  if (!root.querySelector(".app")) {
    root.textContent = `The page could not start: ${event.message}. Reload to try again.`;
  }
});
render(html`<${App} />`, root);
