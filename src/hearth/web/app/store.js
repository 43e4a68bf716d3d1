// Conversations kept in this browser (IndexedDB), and their JSON export format.
import { isImageURL } from "./images.js";

const DB_NAME = "hearth";
const STORE = "conversations";
export const EXPORT_FORMAT = "hearth.conversation";

let opened = null;

function database() {
  if (!opened) {
    opened = new Promise((resolve, reject) => {
      const request = indexedDB.open(DB_NAME, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }
  return opened;
}

async function run(mode, action) {
  const db = await database();
  return new Promise((resolve, reject) => {
    const transaction = db.transaction(STORE, mode);
    const request = action(transaction.objectStore(STORE));
    transaction.oncomplete = () => resolve(request.result);
    transaction.onerror = () => reject(transaction.error);
  });
}

export async function listConversations() {
  const all = await run("readonly", (store) => store.getAll());
  return all.sort((a, b) => b.updated - a.updated);
}

export function saveConversation(conversation) {
  return run("readwrite", (store) => store.put(conversation));
}

export function deleteConversation(id) {
  return run("readwrite", (store) => store.delete(id));
}

export const DEFAULT_SETTINGS = { temperature: 0.7, top_p: 0.95, max_tokens: 1024 };

export function newConversation(model) {
  const now = Date.now();
  return {
    id: crypto.randomUUID(),
    title: "New chat",
    created: now,
    updated: now,
    model,
    system: "",
    settings: { ...DEFAULT_SETTINGS },
    messages: [],
  };
}

export function exportJSON(conversation) {
  return JSON.stringify({ format: EXPORT_FORMAT, version: 1, conversation }, null, 2);
}

// An exported file back into a conversation; refuses anything else in words.
export function parseImport(text, existingIds) {
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error("This file is not JSON.");
  }
  const conversation = parsed && parsed.format === EXPORT_FORMAT ? parsed.conversation : null;
  if (!conversation || typeof conversation !== "object" || !Array.isArray(conversation.messages)) {
    throw new Error("This file is not a conversation exported from Hearth.");
  }
  const messages = conversation.messages
    .filter(
      (m) => m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string",
    )
    .map((m) => {
      // A user message's images are data URLs of the kinds the server takes, and nothing else.
      if (m.images === undefined) return m;
      const { images, ...rest } = m;
      const kept = m.role === "user" && Array.isArray(images) ? images.filter(isImageURL) : [];
      return kept.length ? { ...rest, images: kept } : rest;
    });
  const now = Date.now();
  return {
    ...newConversation(conversation.model ?? null),
    ...conversation,
    // An id already here would overwrite that conversation: the copy gets its own.
    id: typeof conversation.id === "string" && !existingIds.has(conversation.id)
      ? conversation.id
      : crypto.randomUUID(),
    title: String(conversation.title || "Imported chat"),
    settings: { ...DEFAULT_SETTINGS, ...(conversation.settings || {}) },
    messages,
    updated: Number(conversation.updated) || now,
  };
}
