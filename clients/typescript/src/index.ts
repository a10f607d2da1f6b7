// A typed Health Mate client: REST login and refresh, a Socket.IO connection, one typed method per event
// (emitWithAck underneath) and typed listeners for what the server pushes. The types are generated from
// docs/asyncapi.yaml (src/contract.ts).
import { io, type Socket } from "socket.io-client";
import { type Ack, type ClientEvents, EventCalls, type ServerEvents } from "./contract.js";

export * from "./contract.js";

export interface Tokens { access_token: string; refresh_token?: string | null; token_type: "Bearer"; expires_in: number }
export interface Options { deviceId?: string; timeoutMs?: number; fetch?: typeof fetch }

/** A refused REST request: the uniform error's code, message and details, and the HTTP status. */
export class HealthMateError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly details: unknown) {
    super(message);
  }
}

export class HealthMateClient extends EventCalls {
  socket: Socket | null = null;
  tokens: Tokens | null = null;
  private readonly timeoutMs: number;

  constructor(readonly baseUrl: string, readonly options: Options = {}) {
    super();
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  /** POST/GET/... a REST route; the parsed JSON answer, or a HealthMateError. */
  async rest<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (this.tokens) headers.Authorization = `Bearer ${this.tokens.access_token}`;
    const res = await (this.options.fetch ?? fetch)(this.baseUrl + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = res.status === 204 ? null : await res.json();
    if (!res.ok) throw new HealthMateError(res.status, data.error.code, data.error.message, data.error.details);
    return data as T;
  }

  async login(email: string, password: string): Promise<Tokens> {
    this.tokens = await this.rest<Tokens>("POST", "/api/auth/login", { email, password });
    return this.tokens;
  }

  async refresh(): Promise<Tokens> {
    this.tokens = await this.rest<Tokens>("POST", "/api/auth/refresh", { refresh_token: this.tokens?.refresh_token });
    return this.tokens;
  }

  /** Connect with the access token (asked again on every reconnect). */
  connect(): Promise<void> {
    const socket = io(this.baseUrl, {
      transports: ["websocket"],
      auth: (cb) => cb({ token: this.tokens?.access_token, ...(this.options.deviceId ? { device_id: this.options.deviceId } : {}) }),
    });
    this.socket = socket;
    return new Promise((resolve, reject) => {
      socket.once("connect", () => resolve());
      socket.once("connect_error", (err) => reject(err));
    });
  }

  protected call<E extends keyof ClientEvents>(event: E, payload: ClientEvents[E]["payload"]):
      Promise<Ack<ClientEvents[E]["reply"]>> {
    if (!this.socket) throw new Error("connect() first");
    return this.socket.timeout(this.timeoutMs).emitWithAck(event, payload);
  }

  /** Listen to an event the server pushes. */
  on<E extends keyof ServerEvents>(event: E, listener: (message: ServerEvents[E]) => void): () => void {
    if (!this.socket) throw new Error("connect() first");
    const socket = this.socket;
    socket.on(event as string, listener);
    return () => { socket.off(event as string, listener); };
  }

  close(): void {
    this.socket?.disconnect();
    this.socket = null;
  }
}
