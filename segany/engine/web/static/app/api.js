// The tool's HTTP client: same-origin fetches (the session cookie authenticates them), JSON
// errors as ApiError with the server's `detail`, a count of requests in flight (for
// seganyTool.waitIdle) and a fire-and-forget queue for annotation events.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

let inflight = 0;
const idleWaiters = [];

/** Count a promise as in flight until it settles (requests, decodes). */
export function track(promise) {
  inflight += 1;
  const done = () => {
    inflight -= 1;
    if (inflight === 0) {
      // let the callers' continuations run before declaring idle
      setTimeout(() => {
        if (inflight === 0) idleWaiters.splice(0).forEach((resolve) => resolve());
      }, 0);
    }
  };
  promise.then(done, done);
  return promise;
}

/** Resolves when nothing tracked is in flight. */
export function waitIdle() {
  if (inflight === 0) return new Promise((resolve) => setTimeout(resolve, 0));
  return new Promise((resolve) => idleWaiters.push(resolve));
}

export function busy() {
  return inflight;
}

async function request(method, path, body, { raw = false } = {}) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `the server did not answer ${method} ${path} (${err.message})`);
  }
  if (!response.ok) {
    let detail = `${method} ${path}: HTTP ${response.status}`;
    try {
      const j = await response.json();
      if (j && j.detail) detail = String(j.detail);
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, detail);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** POST one file as multipart `file` (an image upload). */
async function upload(path, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch(path, { method: "POST", body: form, credentials: "same-origin" });
  } catch (err) {
    throw new ApiError(0, `the server did not answer the upload of ${file.name} (${err.message})`);
  }
  if (!response.ok) {
    let detail = `upload of ${file.name}: HTTP ${response.status}`;
    try {
      const j = await response.json();
      if (j && j.detail) detail = `${file.name}: ${j.detail}`;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

export const api = {
  upload: (path, file) => track(upload(path, file)),
  get: (path) => track(request("GET", path)),
  post: (path, body) => track(request("POST", path, body ?? {})),
  patch: (path, body) => track(request("PATCH", path, body)),
  del: (path) => track(request("DELETE", path)),
  raw: (path) => track(request("GET", path, undefined, { raw: true })),
};

let eventChain = Promise.resolve();

/** POST an annotation event in order, without waiting; a failure is logged, not thrown. */
export function postEvent(kind, fields = {}) {
  const body = { kind, ...fields };
  eventChain = eventChain.then(() =>
    track(request("POST", "/api/events", body)).catch((err) => {
      console.warn(`event ${kind} not recorded: ${err.message}`);
    }),
  );
  return eventChain;
}

/** Release a lease while the page goes away (a keepalive request outlives the page). */
export function releaseOnExit(imageId) {
  try {
    fetch(`/api/images/${imageId}/lease`, { method: "DELETE", keepalive: true,
                                             credentials: "same-origin" });
  } catch {
    // the page is going away; the lease expires by itself
  }
}
