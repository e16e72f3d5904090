// The API as the dashboard calls it: JSON requests carrying the operator's key, errors as the
// API words them, and a reader of Server-Sent Events that can send the key too.

// The key lives in sessionStorage: it stays in this tab (gone when the tab closes, never on
// disk across sessions as localStorage would keep it), the browser never attaches it by itself
// (unlike a cookie, so no other site can make this page's requests), and it never appears in a
// URL (where history, logs and Referer headers would keep it).
const KEY_SLOT = "agentlog.api-key";

export function getKey() {
  return sessionStorage.getItem(KEY_SLOT) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_SLOT, key);
  else sessionStorage.removeItem(KEY_SLOT);
}

/** An error answer of the API: `{"error": {"code", "message", "field"}}`, or a transport failure. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

/** Listeners of 401 answers (the key is missing or wrong): the page asks for a key. */
const unauthorized = new Set();
export function onUnauthorized(listener) {
  unauthorized.add(listener);
}

function headers(extra) {
  const out = { accept: "application/json", ...extra };
  const key = getKey();
  if (key) out.authorization = `Bearer ${key}`;
  return out;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const e = body && body.error;
  return new ApiError(response.status, e?.code || `http_${response.status}`, e?.message || `${response.status} ${response.statusText}`, e?.field);
}

/**
 * Calls the API: `api("/v1/tasks", {method: "POST", body: {...}})`. Answers the parsed JSON,
 * or throws an ApiError (a 401 also tells the listeners). `accept` lists statuses that are
 * answers, not errors (e.g. 503 from /readyz, which carries a body).
 */
export async function api(path, { method = "GET", body, signal, accept = [] } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "content-type": "application/json" }), signal, cache: "no-store" };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", `agentlog did not answer (${e.message})`);
  }
  if (response.ok || accept.includes(response.status)) {
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }
  const error = await errorOf(response);
  if (response.status === 401) for (const listener of unauthorized) listener(error);
  throw error;
}

/**
 * Reads a Server-Sent Events stream with the key in a header (EventSource cannot send one):
 * calls `onEvent({event, id, data})` for each event, and `onState(text)` as the connection
 * changes. A dropped connection is opened again after a pause, with `Last-Event-ID` set to the
 * last event's id, so nothing is missed or repeated. Ends when the server ends the stream after
 * `endOn` (an event name), when `signal` aborts, or on an error answer (thrown).
 */
export async function readEvents(path, { onEvent, onState = () => {}, signal, endOn }) {
  let lastId = null;
  let pause = 500;
  for (;;) {
    let ended = false;
    try {
      const extra = { accept: "text/event-stream" };
      if (lastId) extra["last-event-id"] = lastId;
      const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
      if (!response.ok) {
        const error = await errorOf(response);
        if (response.status === 401) for (const listener of unauthorized) listener(error);
        throw error;
      }
      onState(lastId ? `resumed after ${lastId}` : "connected");
      pause = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        // Events end with a blank line; lines end with \n, \r\n or \r.
        const parts = buffer.split(/\r\n\r\n|\n\n|\r\r/);
        buffer = parts.pop();
        for (const block of parts) {
          const event = parseEvent(block);
          if (!event) continue;
          if (event.id) lastId = event.id;
          if (event.event === endOn) ended = true;
          onEvent(event);
        }
      }
      if (ended) {
        onState("ended");
        return;
      }
      onState("closed by the server; reconnecting");
    } catch (e) {
      if (e.name === "AbortError" || signal?.aborted) return;
      if (e instanceof ApiError && e.status !== 0 && e.status !== 503) throw e;
      onState(`disconnected (${e.message}); reconnecting`);
    }
    await new Promise((resolve) => setTimeout(resolve, pause));
    if (signal?.aborted) return;
    pause = Math.min(pause * 2, 10_000);
  }
}

function parseEvent(block) {
  const event = { event: "message", id: null, data: "" };
  const data = [];
  for (const line of block.split(/\r\n|\n|\r/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event.event = value;
    else if (field === "id") event.id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  event.data = data.join("\n");
  return event;
}
