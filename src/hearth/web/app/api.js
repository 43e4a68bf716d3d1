// The server's API as the page uses it: the key (kept in this browser), errors in words, the chat
// stream (SSE) and the pull progress (NDJSON). Every call goes to this page's own origin.

const KEY_STORAGE = "hearth.apiKey";

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
  get needsKey() {
    return this.status === 401;
  }
}

export function savedKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function saveKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function headers(json) {
  const result = {};
  const key = savedKey();
  if (key) result.Authorization = `Bearer ${key}`;
  if (json) result["Content-Type"] = "application/json";
  return result;
}

// OpenAI's {error: {message}}, Ollama's {error: "..."}, else the status line.
function errorMessage(body, response) {
  if (body && typeof body.error === "string") return body.error;
  if (body && body.error && typeof body.error.message === "string") return body.error.message;
  return `The server answered ${response.status} ${response.statusText}`.trim();
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line says enough
  }
  return new ApiError(errorMessage(body, response), response.status);
}

async function send(method, path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("The server cannot be reached. Is `hearth serve` still running?", 0);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJSON(path) {
  return (await send("GET", path)).json();
}

export async function postJSON(path, body) {
  const response = await send("POST", path, body);
  const text = await response.text();
  return text ? JSON.parse(text) : {};
}

export async function deleteJSON(path, body) {
  await send("DELETE", path, body);
}

// Lines of a streamed body as they arrive.
async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer) yield buffer;
}

// POST /v1/chat/completions, streamed: yields each chunk (deltas, then the usage).
export async function* streamChat(request, signal) {
  const body = { ...request, stream: true, stream_options: { include_usage: true } };
  const response = await send("POST", "/v1/chat/completions", body, signal);
  for await (const line of lines(response)) {
    if (!line.startsWith("data:")) continue;
    const data = line.slice(5).trim();
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(errorMessage(chunk, response), 500);
    yield chunk;
  }
}

// POST /api/pull, streamed: yields Ollama's progress objects.
export async function* streamPull(model, signal) {
  const response = await send("POST", "/api/pull", { model, stream: true }, signal);
  for await (const line of lines(response)) {
    if (!line.trim()) continue;
    const progress = JSON.parse(line);
    if (progress.error) throw new ApiError(progress.error, 500);
    yield progress;
  }
}
