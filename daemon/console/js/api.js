// api.js - the console's one way to keygated: POST /api/<cmd> with the
// command's arguments as JSON. The session cookie is HttpOnly (the page
// never sees it); the CSRF token that every call must carry comes from
// session.login or session.whoami and is kept for this tab only.

export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;       // the protocol's error code, or "network"
    this.status = status;   // HTTP status, 0 when the request never got an answer
  }
}

let csrf = sessionStorage.getItem('kg_csrf') || '';
let signedOutHandler = null;

export function setCsrf(token) {
  csrf = token || '';
  if (csrf) sessionStorage.setItem('kg_csrf', csrf);
  else sessionStorage.removeItem('kg_csrf');
}

// Called when a call answers "unauthenticated": the session has ended.
export function onSignedOut(fn) { signedOutHandler = fn; }

// Runs one admin command; resolves to its result or rejects with ApiError.
export async function call(cmd, args = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (csrf) headers['X-CSRF-Token'] = csrf;
  let res;
  try {
    res = await fetch('/api/' + cmd, {
      method: 'POST', headers, body: JSON.stringify(args), credentials: 'same-origin',
    });
  } catch (e) {
    throw new ApiError('network', 'keygated cannot be reached: check that it is running', 0);
  }
  let body;
  try {
    body = await res.json();
  } catch (e) {
    throw new ApiError('internal', `keygated sent an unexpected answer (HTTP ${res.status})`, res.status);
  }
  if (body.ok) return body.result;
  const err = new ApiError(body.error.code, body.error.message, res.status);
  const signInCall = cmd === 'session.login' || cmd === 'user.signup';
  if (err.code === 'unauthenticated' && !signInCall && signedOutHandler) signedOutHandler(err);
  throw err;
}

// Runs a paged listing command (docs/protocol.md, "Paging") to its end,
// following next_cursor, and resolves to the result with `field` holding
// every page's items. `max` bounds the pages fetched (a runaway guard).
export async function callAll(cmd, args, field, max = 1000) {
  let r = await call(cmd, { ...args, limit: 1000 });
  const items = r[field];
  for (let pages = 1; r.next_cursor && pages < max; pages++) {
    r = await call(cmd, { ...args, limit: 1000, cursor: r.next_cursor });
    items.push(...r[field]);
  }
  return { ...r, [field]: items, next_cursor: undefined };
}
