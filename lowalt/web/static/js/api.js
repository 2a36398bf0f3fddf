// The server's HTTP API as the page uses it: every request carries `Authorization: Bearer`;
// streams (EventSource, WebSocket) cannot set headers and take `?access_token=` instead.

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class Api {
  /** @param {string} token @param {() => void} onUnauthorized called on any 401 */
  constructor(token, onUnauthorized = () => {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  url(path, params = {}) {
    const url = new URL(path, location.origin);
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    return url;
  }

  async request(path, params) {
    const response = await fetch(this.url(path, params), {
      headers: { Authorization: `Bearer ${this.token}`, Accept: "application/json" },
      cache: "no-store",
    });
    if (response.status === 401) this.onUnauthorized();
    return response;
  }

  /** GET path as JSON; HttpError for any answer but 2xx. */
  async get(path, params) {
    const response = await this.request(path, params);
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.error) message = body.error;
      } catch { /* not JSON */ }
      throw new HttpError(response.status, message);
    }
    return response.json();
  }

  /** The status a GET of path answers (0 when the server cannot be reached). */
  async status(path, params) {
    try {
      const response = await this.request(path, params);
      response.body?.cancel().catch(() => {});
      return response.status;
    } catch {
      return 0;
    }
  }

  /** A stream URL (http(s) for EventSource, ws(s) for WebSocket) carrying the token. */
  streamUrl(path, params = {}, websocket = false) {
    const url = this.url(path, { ...params, access_token: this.token });
    if (websocket) url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }
}
